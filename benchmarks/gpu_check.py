"""On a machine with one CUDA GPU: the `gpu` tests, then a tiny end-to-end run through the GPU code paths
(params/gpu-smoke.yaml: QLoRA, vLLM where .venv-vllm exists, bf16 or fp16 by the card), with a pass/fail
table at the end. The steps' time limits add up to 7.5 minutes (stages 00-07 of the run: the QLoRA trainings,
vLLM sampling and the 4-bit embedder's merge; stage 08's evaluation is the CPU's). Run it as is
(`make gpu-check`) when a GPU is at hand.

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


def step(name: str, cmd: list[str], timeout: int, env: dict | None = None) -> dict:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
        ok, tail = proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        ok, tail = False, f"timed out after {timeout} s\n" + str(e.stdout or "")[-2000:]
    row = {"step": name, "ok": ok, "seconds": round(time.monotonic() - t0, 1)}
    print(f"{'PASS' if ok else 'FAIL'}  {name}  ({row['seconds']} s)", flush=True)
    if not ok:
        print(tail, flush=True)
    return row


def main() -> int:
    rows = [step("cuda visible", [PY, "-c", "import torch; assert torch.cuda.is_available(); "
                                        "print(torch.cuda.get_device_name(), torch.cuda.mem_get_info())"], 30)]
    rows.append(step("pre-flight (gpu-smoke)", [PY, "-m", "speed_utils.cli", "validate", "gpu-smoke"], 30))
    eager = {"SPEED_REPRO_VLLM_EAGER": "1"}  # tiny models: no CUDA-graph capture, a quicker vLLM start
    rows.append(step("gpu tests", [PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/"], 120,
                     {"SPEED_REPRO_TEST_GPU": "1", **eager}))
    runs = tempfile.mkdtemp(prefix="gpu-check-")
    rows.append(step("tiny end-to-end run (stages 00-07)", [PY, "-m", "speed_utils.cli", "run", "--profile",
                                                           "gpu-smoke", "--until", "7", "--runs-dir", runs], 270, eager))
    print(f"\n{'step':40s} {'result':6s} seconds")
    for r in rows:
        print(f"{r['step']:40s} {'pass' if r['ok'] else 'FAIL':6s} {r['seconds']}")
    print(f"run folder: {runs}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
