"""On a machine with one CUDA GPU: the `gpu` tests, then a tiny end-to-end run through the GPU code paths
(params/gpu-smoke.yaml: QLoRA, vLLM where .venv-vllm exists, bf16 or fp16 by the card), with a pass/fail
table at the end. The steps' time limits add up to 16 minutes (cold vLLM starts; stages 00-07 of the run: the
QLoRA trainings, vLLM sampling and the 4-bit embedder's merge; stage 08's evaluation is the CPU's). Run it as
is (`make gpu-check`) when a GPU is at hand. On a machine without CUDA it prints the same table with every
CUDA-only step skipped and exits 0 (CI runs it so: tests/test_gpu.py); ``--require-cuda`` makes that exit 2.

Each step runs in its own process with a time limit; a step that fails prints the tail of its output.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def step(name: str, cmd: list[str], timeout: int, env: dict | None = None, quiet_fail: bool = False) -> dict:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
        ok, tail = proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        ok, tail = False, f"timed out after {timeout} s\n" + str(e.stdout or "")[-2000:]
    row = {"step": name, "ok": ok, "seconds": round(time.monotonic() - t0, 1)}
    if ok or not quiet_fail:
        print(f"{'PASS' if ok else 'FAIL'}  {name}  ({row['seconds']} s)", flush=True)
    if not ok and not quiet_fail:
        print(tail, flush=True)
    return row


CUDA_CHECK = "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(), torch.cuda.mem_get_info())"
# time limits: the gpu tests start vLLM cold several times (about a minute each on a fresh machine), and the
# tiny run's stages 03-06 start it six times; together at most 15 minutes
LIMITS = {"cuda": 60, "preflight": 60, "tests": 300, "run": 540}


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 when every step passed, or was skipped because this machine has no CUDA (the CPU's
    run of this script, CI's); 1 when a step failed; 2 with ``--require-cuda`` on a machine without CUDA."""
    argv = sys.argv[1:] if argv is None else argv
    cuda = step("cuda visible", [PY, "-c", CUDA_CHECK], LIMITS["cuda"], quiet_fail=True)
    rows = [cuda]
    eager = {"SPEED_REPRO_VLLM_EAGER": "1"}  # tiny models: no CUDA-graph capture, a quicker vLLM start
    runs = tempfile.mkdtemp(prefix="gpu-check-")
    later = [("pre-flight (gpu-smoke)", [PY, "-m", "speed_utils.cli", "validate", "gpu-smoke"], LIMITS["preflight"], None),
             ("gpu tests", [PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/"], LIMITS["tests"],
              {"SPEED_REPRO_TEST_GPU": "1", **eager}),
             ("tiny end-to-end run (stages 00-07)", [PY, "-m", "speed_utils.cli", "run", "--profile", "gpu-smoke",
                                                     "--until", "7", "--runs-dir", runs], LIMITS["run"], eager)]
    for name, cmd, limit, env in later:  # every later step needs CUDA (gpu-smoke trains with QLoRA)
        rows.append(step(name, cmd, limit, env) if cuda["ok"] else {"step": name, "ok": None, "seconds": 0.0})
    if not cuda["ok"]:
        cuda["ok"] = None
        print("no CUDA on this machine: every CUDA-only step is skipped", flush=True)
    print(f"\n{'step':40s} {'result':6s} seconds")
    for r in rows:
        print(f"{r['step']:40s} {'skip' if r['ok'] is None else 'pass' if r['ok'] else 'FAIL':6s} {r['seconds']}")
    if cuda["ok"] is not None:
        print(f"run folder: {runs}")
    if any(r["ok"] is False for r in rows):
        return 1
    return 2 if cuda["ok"] is None and "--require-cuda" in argv else 0


if __name__ == "__main__":
    sys.exit(main())
