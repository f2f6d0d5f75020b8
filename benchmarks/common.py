"""Shared bits of the benchmarks: timing, peak memory, a result line that run_all.py collects."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RESULT_PREFIX = "BENCH_RESULT "


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timer():
    box = {}
    t0 = time.perf_counter()
    yield box
    box["s"] = time.perf_counter() - t0


def report(name: str, ratio: float | None, detail: dict, target: str = "") -> None:
    """Print a human line and a machine line (read by run_all.py)."""
    print(f"{name}: ratio {ratio:.2f}" if ratio is not None else f"{name}: (no ratio)",
          f"{'target ' + target if target else ''}", json.dumps(detail), flush=True)
    print(RESULT_PREFIX + json.dumps({"name": name, "ratio": ratio, "target": target, "detail": detail}), flush=True)


def machine() -> dict:
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "argv": " ".join(sys.argv[1:])}
