"""`make stress`: SIGKILL the runner at seeded moments inside chosen phases of stages 02-06, rerun each
time, and compare the final outputs with an uninterrupted run of the same profile and seed.

Phases: ``teacher`` (stage 02, at a random point of the stage), ``training`` (a kill a moment after the
trainer logged a step: stage 03's junior SFT), ``generation`` (a kill while the llama.cpp server is
answering a generator request: stage 04's junior samples, stage 06's writer and revisor). Each kill
records the phase it was aimed at.

Checks: every output file equal row for row; no teacher request sent twice (ledger); no file holding a
partial line (speed-repro verify). Prints the counts the issue asks for. The profile is smoke with one
llama.cpp slot for the teacher and one for the generators, so that replies and rows do not depend on how
requests share a batch and outputs can be compared byte for byte (the ``cpu`` profile's 8 generator slots
keep, after a kill, every journalled row and repeat none, but new rows may differ in their bytes:
tests/test_llamacpp_generator.py::test_batched_slots_resume_keeps_finished_rows_and_repeats_none).
Usage: python benchmarks/stress.py [--kills 2:teacher=3,3:training=2,4:generation=2,6:generation=3]
       [--seed 0] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = ["data/tasks.jsonl", "data/seed.jsonl", "data/rejects.jsonl", "data/root.jsonl", "data/prefs.jsonl",
           "data/prefs_rejects.jsonl", "data/revisions.jsonl", "data/synthetic.jsonl", "data/synthesis_rejects.jsonl"]


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "speed_utils.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, **kw)


def starts(run: Path, stage: int) -> int:
    logs = list((run / "logs").glob(f"{stage:02d}_*.stdout.log"))
    return logs[0].read_text().count(f"stage {stage:02d} ====") if logs else 0


def phase_signal(run: Path, stage: int, phase: str) -> int:
    """A count that grows while ``phase`` runs: generator requests the llama.cpp server started, or
    training steps the trainer logged (stage stdout)."""
    if phase == "generation":
        log = run / "logs" / "llama-generator.log"
        return log.read_text(errors="replace").count("launch_slot_") if log.exists() else 0
    logs = list((run / "logs").glob(f"{stage:02d}_*.stdout.log"))
    return sum(1 for x in logs[0].read_text(errors="replace").splitlines() if x.startswith("step ")) if logs else 0


def parse_kills(spec: str) -> list[tuple[int, str, int]]:
    out = []
    for part in spec.split(","):
        where, n = part.split("=")
        stage, phase = where.split(":")
        assert phase in ("teacher", "training", "generation"), f"unknown phase {phase!r} in --kills"
        out.append((int(stage), phase, int(n)))
    return out


def rows(path: Path) -> list:
    # split on newlines only: str.splitlines() also splits on U+2028 and the like, which JSON strings may hold
    return [json.loads(x) for x in path.read_text().split("\n") if x] if path.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", default="2:teacher=3,3:training=2,4:generation=2,6:generation=3",
                    help="STAGE:PHASE=N,... (phases: teacher, training, generation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None)
    a = ap.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="stress-"))
    prof = root / "stress.yaml"
    prof.parent.mkdir(parents=True, exist_ok=True)
    prof.write_text(yaml.safe_dump({"extends": "smoke", "teacher": {"n_parallel": 1, "max_concurrency": 1},
                                    "generation": {"parallel": 1},
                                    "seed": {"n_examples": 24}, "senior": {"n_prompts": 6}, "revisor": {"n_examples": 12},
                                    "synthesis": {"n_examples": 24, "chunk_size": 3}}))
    runs = root / "runs"
    plan = parse_kills(a.kills)
    base = ["run", "--profile", str(prof), "--runs-dir", str(runs), "--until", str(max(st for st, _, _ in plan))]
    t0 = time.monotonic()
    assert cli(*base, "--run-id", "ref").wait() == 0, "the uninterrupted run failed"
    ref_s = time.monotonic() - t0
    took = {r["stage"]: r["wall_s"] for r in rows(runs / "ref" / "logs" / "timings.jsonl")}
    rng = random.Random(a.seed)
    killed = runs / "killed"
    kills, carry = [], 0
    for stage, phase, n in plan:
        want, carry, got, tries = n + carry, 0, 0, 0
        marker = killed / "stages" / f"{stage:02d}.done.json"
        while got < want:
            if marker.exists():
                carry = want - got  # the stage finished between kills: its remaining kills go to the next stage
                break
            tries += 1
            if tries > 3 * want + 5:
                raise SystemExit(f"stage {stage:02d}: {got} of {want} kills after {tries - 1} tries; see {killed}/logs")
            before, signal0 = starts(killed, stage), phase_signal(killed, stage, phase)
            proc = cli(*base, "--run-id", "killed", "--until", str(stage))
            give_up = time.monotonic() + 10 * max(took.values())
            while starts(killed, stage) == before and proc.poll() is None and time.monotonic() < give_up:
                time.sleep(0.1)
            if phase == "teacher":  # somewhere inside the stage (a resumed stage is quicker)
                delay = rng.uniform(0.05, 0.35) * took[stage]
            else:  # wait until the phase is seen running in this attempt, then a moment more
                while phase_signal(killed, stage, phase) == signal0 and proc.poll() is None:
                    time.sleep(0.05)
                delay = rng.uniform(0.2, 1.0) if phase == "generation" else rng.uniform(0.5, 3.0)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if not marker.exists():  # a kill after the marker was written did not interrupt the stage
                    kills.append({"stage": stage, "phase": phase, "after_s": round(delay, 1)})
                    got += 1
            elif proc.returncode != 0:
                raise SystemExit(f"stage {stage:02d}: the runner failed on its own (exit {proc.returncode}); "
                                 f"see {killed}/logs")
            time.sleep(0.5)
    if carry:
        print(f"stage {plan[-1][0]:02d} finished before its last {carry} kill(s)", flush=True)
    assert cli(*base, "--run-id", "killed").wait() == 0, "the resumed run failed"
    lost = differing = 0
    for rel in OUTPUTS:
        want, got = rows(runs / "ref" / rel), rows(killed / rel)
        differing += want != got
        lost += len([r for r in want if r not in got])
    ledger = [r for r in rows(killed / "ledger.jsonl") if not r["cache_hit"]]
    keys = [r["key"] for r in ledger]
    verify = subprocess.run([sys.executable, "-m", "speed_utils.cli", "verify", str(killed)], cwd=REPO,
                            capture_output=True, text=True)
    summary = {"kills": len(kills), "kills_by_stage": {f"{st:02d} {ph}": sum(k["stage"] == st for k in kills)
                                                       for st, ph, _ in plan},
               "outputs_compared": len(OUTPUTS), "outputs_differing": differing, "rows_lost": lost,
               "requests_repeated": len(keys) - len(set(keys)), "teacher_calls": len(keys),
               "verify": verify.stdout.strip().splitlines()[-1], "reference_run_s": round(ref_s), "folder": str(root)}
    print(json.dumps(summary, indent=1))
    ok = summary["rows_lost"] == 0 and summary["requests_repeated"] == 0 and differing == 0 and verify.returncode == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
