"""Training stages through ``accelerate launch``: one script entry per training stage (SPEED App. B).

The stage notebooks call :func:`train`. With ``distributed.launcher: python`` (the default) the
trainer runs in the notebook's own process. With ``accelerate`` the notebook starts

    accelerate launch --config_file params/accelerate/deepspeed_zero3.yaml --num_processes 8 \\
        --num_machines 2 -m speed_utils.launch junior --run-dir results/runs/paper

and reads back the result that rank 0 wrote. Every launched process reads the run's ``config.yaml``
(:func:`~speed_utils.profiles.load_run_config`), the config the stage itself runs with, not the profile. trl and sentence-transformers pick the process group up
from the environment accelerate sets, so the trainers need no change. On several nodes, start the
same command on each with ``--machine_rank`` (see README, "Scaling out").

Everything around a training (sampling root data, teacher judgements) stays in the notebook: only
the part that needs the GPUs is launched.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from . import align, embed
from .config import resolve_path
from .embed import per_device_batch
from .files import atomic_write_json, atomic_write_text
from .paths import REPO_ROOT
from .profiles import Config, load_run_config
from .runs import RunPaths
from .train import batch_plan

STAGES = ("junior", "senior", "revisor", "embedder")


def _trainer(stage: str):
    return {"junior": align.train_junior, "senior": align.train_senior, "revisor": align.train_revisor,
            "embedder": embed.train_stage}[stage]


def _as_dict(result) -> dict:
    return result if isinstance(result, dict) else result.to_dict()


def result_path(run: RunPaths, stage: str) -> Path:
    return run.logs / f"launch-{stage}.result.json"


def command(cfg: Config, stage: str, run_dir: str | Path) -> list[str]:
    """The ``accelerate launch`` command line for one training stage of a run."""

    d = cfg.distributed
    procs, machines = d.processes(stage)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(resolve_path(d.accelerate_config)),
            "--num_processes", str(procs), "--num_machines", str(machines),
            "-m", "speed_utils.launch", stage, "--run-dir", str(run_dir)]


def train(stage: str, cfg: Config, run: RunPaths) -> dict:
    """Run one training stage in this process or through accelerate; return its result as a dict."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; one of {', '.join(STAGES)}")
    if cfg.distributed.launcher == "python":
        return _as_dict(_trainer(stage)(cfg, run))
    out = result_path(run, stage)
    out.unlink(missing_ok=True)
    if not run.config.exists():  # a training called outside a stage: the launched processes read this
        atomic_write_text(run.config, cfg.to_yaml())
    cmd = command(cfg, stage, run.root)
    print("launching:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}; its output is above")
    return json.loads(out.read_text())


def batch_arithmetic(cfg: Config) -> dict[str, str]:
    """How each training reaches its batch, by training name (junior, senior, revisor, embedder):
    per-device micro-batch x devices x accumulation, or the contrastive batch split across devices
    (negatives gathered) and mini-batched by GradCache."""

    lines = {}
    for name in ("junior", "senior", "revisor"):
        tc, n = getattr(cfg, name), cfg.distributed.processes(name)[0]
        micro, accum = batch_plan(tc.batch_size, n, tc.micro_batch_size, on_gpu=n > 1)  # several devices: GPUs
        lines[name] = (f"{name}: batch {tc.batch_size} = micro-batch {micro} x {n} device(s) x accumulation {accum}"
                       + ("" if micro * n * accum == tc.batch_size else f" (= {micro * n * accum}, rounded up)"))
    ec, n = cfg.embedder, cfg.distributed.processes("embedder")[0]
    per = per_device_batch(ec, n)
    cached = f", each device embedding in mini-batches of {ec.mini_batch_size} (GradCache)" if ec.mini_batch_size else ""
    lines["embedder"] = (f"embedder: contrastive batch {ec.batch_size} = {per} per device x {n} device(s)"
                         + (", in-batch negatives gathered across devices" if n > 1 else "") + cached
                         + " (no gradient accumulation: it would shrink the set of in-batch negatives)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m speed_utils.launch", description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--run-dir", required=True, type=Path)
    a = ap.parse_args(argv)
    run = RunPaths(a.run_dir.resolve())
    cfg = load_run_config(run.config)
    result = _as_dict(_trainer(a.stage)(cfg, run))
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(result_path(run, a.stage), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
