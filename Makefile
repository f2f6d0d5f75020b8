# speed-repro: `make run` (the cpu profile, end to end) and `make test` work on a fresh machine.
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROFILE ?= cpu
PIP     := $(BIN)/python -m pip --disable-pip-version-check -q
# The machine's pip config prints harmless "Location ... is ignored" lines; keep the log readable
# (pipefail keeps pip's own exit status).
SHELL   := /bin/bash
.SHELLFLAGS := -o pipefail -c
QUIET   := 2>&1 | { grep -v "is ignored" || true; }

SCALE   := $(VENV)/.scale-installed

.PHONY: setup scale-setup gpu-setup vllm-env run smoke study test test-fast test-python validate bench stress gpu-check clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt $(QUIET)
	$(PIP) install --no-deps -e . $(QUIET)
	$(BIN)/python -c "import torch, speed_utils; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(BIN)/python -m ipykernel install --sys-prefix --name speed-repro --display-name "speed-repro (Python 3)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

## Ray Data for stage 06 at scale (distributed.synthesis: ray; the paper profile), beside the main environment
$(SCALE): $(STAMP) requirements-scale.txt
	$(PIP) install -r requirements-scale.txt $(QUIET)
	$(BIN)/python -c "import ray.data, torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(SCALE)

scale-setup: $(SCALE)

## on a CUDA machine: the GPU extra (bitsandbytes, DeepSpeed) and Ray beside the main environment, and vLLM in
## its own (.venv-vllm: vLLM pins another torch); generation reaches it in a child process
gpu-setup: setup vllm-env scale-setup
	$(PIP) install -r requirements-gpu.txt $(QUIET)

vllm-env:
	test -x .venv-vllm/bin/python || $(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/python -m pip --disable-pip-version-check -q install -r requirements-vllm.txt $(QUIET)
	.venv-vllm/bin/python -c "import vllm; print('vllm', vllm.__version__)" && touch .venv-vllm/.installed

## on a GPU machine: the environments it tests (vLLM's, the GPU extra), then the `gpu` tests and a tiny end-to-end
## run, with a pass/fail table (limits adding up to 16 minutes; exit 0 all passed, 1 a step failed). Without CUDA
## (nvidia-smi finds no GPU) it installs nothing more and prints the table with every CUDA-only step skipped (exit 0)
gpu-check: setup
	@if nvidia-smi -L >/dev/null 2>&1; then $(MAKE) --no-print-directory gpu-setup; fi
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/gpu_check.py

## run the default profile end to end (stages 00-11, about an hour on 2 cores); PROFILE=smoke for a quick look
run: setup
	$(BIN)/speed-repro run --profile $(PROFILE)

smoke: setup
	$(BIN)/speed-repro run --profile smoke

## issue 16's study (params/study.yaml, 63 min measured after `make run` on a 2-core bf16 CPU): the larger ablation and a scaling curve
## over 1.5 decades; stages 00-10 are adopted from results/runs/cpu where it exists (else run first, +1 h).
## Its tables and figures land in results/reference/study/. A rerun resumes where it stopped.
study: setup
	$(BIN)/speed-repro run --profile study $(if $(wildcard results/runs/cpu/config.yaml),--donor results/runs/cpu)
	$(BIN)/speed-repro snapshot results/runs/study results/reference/study

## the whole test suite (unit tests, real llama.cpp server, real papermill runs on the smoke profile, a local Ray)
test: setup scale-setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

## the fast tests under another Python (issue 33: Colab and many laptops run 3.12), in .venv-pyXY from the pinned
## files: `make test-python PYVER=3.12` (CI) or PYVER=3.13; finds it under pyenv, or pythonX.Y on PATH (one that runs)
PYVER   ?= 3.12
PYOTHER := $(shell for c in $(HOME)/.pyenv/versions/$(PYVER).*/bin/python3 python$(PYVER); do $$c -c "" 2>/dev/null && { command -v $$c; break; }; done)
test-python:
	@test -n "$(PYOTHER)" || { echo "no Python $(PYVER) found (python$(PYVER) on PATH or pyenv)"; exit 2; }
	test -x .venv-py$(PYVER)/bin/python || $(PYOTHER) -m venv .venv-py$(PYVER)
	.venv-py$(PYVER)/bin/python -m pip --disable-pip-version-check -q install -r requirements.txt $(QUIET)
	.venv-py$(PYVER)/bin/python -m pip --disable-pip-version-check -q install --no-deps -e . $(QUIET)
	HF_HUB_OFFLINE=1 .venv-py$(PYVER)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

## only the fast tests (no model, no server, no papermill)
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

## benchmarks: each measures both sides of a ratio in one run, then one table (heavy; not part of CI)
bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

## crash-resume stress: 10 SIGKILLs (teacher calls, training, llama.cpp generation), compared with an uninterrupted run
stress: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/stress.py

validate: setup
	$(BIN)/speed-repro validate --schema-only

clean-venv:
	rm -rf $(VENV)
