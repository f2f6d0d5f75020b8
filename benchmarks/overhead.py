"""papermill's share of a run, and the wall time of each stage, from a run folder's logs/timings.jsonl.

The runner records each stage's wall time around papermill and the time spent inside the notebook
(from StageContext to its done marker); the difference is kernel start, imports and papermill itself.
Usage: python benchmarks/overhead.py [RUN_DIR ...]   (default: results/runs/smoke and results/runs/cpu)
With --smoke it first runs the smoke profile into a fresh folder, so the numbers come from this machine now.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine, report

REPO = Path(__file__).resolve().parent.parent


def latest(run: Path) -> dict[int, dict]:
    rows = {}
    for line in (run / "logs" / "timings.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[r["stage"]] = r  # the last run of each stage
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    runs = list(a.runs) or [p for p in (REPO / "results/runs/smoke", REPO / "results/runs/cpu")
                            if (p / "logs/timings.jsonl").exists()]
    if a.smoke:  # a fresh smoke run measured now, then the cpu run's stage times if it exists
        d = Path(tempfile.mkdtemp())
        subprocess.run([sys.executable, "-m", "speed_utils.cli", "run", "--profile", "smoke", "--runs-dir", str(d),
                        "--until", "10"], check=True, cwd=REPO)
        runs = [d / "smoke"] + [p for p in runs if p.name != "smoke"]
    for run in runs:
        rows = latest(run)
        wall = sum(r["wall_s"] for r in rows.values())
        inside = sum(r["in_kernel_s"] for r in rows.values())
        report(f"papermill overhead share of {run.name} ({len(rows)} stages)", (wall - inside) / wall,
               {"wall_s": round(wall, 1), "in_notebook_s": round(inside, 1),
                "per_stage": {f"{k:02d} {r['name']}": {"wall_s": r["wall_s"], "in_notebook_s": r["in_kernel_s"]}
                              for k, r in sorted(rows.items())}, **machine()}, target="a small share")


if __name__ == "__main__":
    main()
