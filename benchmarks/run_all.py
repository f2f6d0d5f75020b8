"""`make bench`: every benchmark, one after another, then one table of the ratios they measured.

Each benchmark measures its two sides in one run, so a ratio is not thrown by the machine being
faster or slower today. Pass --quick for a shorter version (fewer requests and tokens).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import RESULT_PREFIX

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    q = a.quick
    jobs = [["teacher.py", *(["--requests", "8", "--llama-requests", "4", "--llama-tokens", "32"] if q else [])],
            ["generation.py", *(["--n", "8", "--tokens", "64", "--naive-n", "2"] if q else [])],
            ["slots.py", *(["--tokens", "32", "--gen-slots", "1", "4", "--teacher-slots", "2", "4"] if q else [])],
            ["precision.py", *(["--steps", "1", "--texts", "64"] if q else [])],
            ["precision.py", "--malloc", "--only", "sft", *(["--steps", "1"] if q else [])],
            ["embedder.py", *(["--steps", "2"] if q else [])],
            ["overhead.py", "--smoke"]]
    results = []
    for job in jobs:
        print(f"==== {' '.join(job)}", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / job[0]), *job[1:]], capture_output=True, text=True, cwd=HERE.parent)
        sys.stdout.write("".join(line + "\n" for line in proc.stdout.splitlines() if not line.startswith(RESULT_PREFIX)))
        if proc.returncode:
            print(proc.stderr[-2000:])
            results.append({"name": job[0], "ratio": None, "target": "FAILED", "detail": {}})
        results += [json.loads(x[len(RESULT_PREFIX):]) for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    width = max(len(r["name"]) for r in results)
    print("\n" + "benchmark".ljust(width), "  ratio   target")
    for r in results:
        ratio = f"{r['ratio']:.2f}" if isinstance(r["ratio"], (int, float)) else "—"
        print(r["name"].ljust(width), f"{ratio:>7}  ", r["target"])
    out = HERE.parent / "results" / "runs" / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nfull results: {out}")


if __name__ == "__main__":
    main()
