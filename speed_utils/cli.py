"""The ``speed-repro`` command line: run, sweep, status, verify, report, estimate and the rest.

Each command is a thin front over a module: :mod:`speed_utils.runner` runs stages, :mod:`speed_utils.sweeps` sweeps,
:mod:`speed_utils.budget` and :mod:`speed_utils.cost` estimate, :mod:`speed_utils.plan` plans GPU
memory, :mod:`speed_utils.report` renders. Errors the user can act on are printed in one line naming
the file or key at fault (exit code 2 for a bad profile, 1 for a failed stage, 3 for a busy run folder).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from . import assets, preflight, scale, synthesis
from .assets import AssetError
from .budget import colab_line, gpus_for, hardware_line, rates_for
from .budget import estimate as wall_time
from .budget import table as time_table
from .cost import estimate as teacher_plan
from .cost import prices, usage
from .cost import total as ledger_total
from .files import atomic_write_json, read_jsonl
from .gguf_lora import ConversionError
from .llama_server import ServerError
from .plan import GPUS, plan
from .plan import table as memory_table
from .profiles import ConfigError, list_profiles, load_profile, load_run_config, profile_path
from .registry import PRODUCER, STAGES, StageError, marker_matches
from .report import build as build_report
from .runner import run
from .runs import RunLocked, RunPaths, read_manifest, verify_files
from .sweeps import sweep
from .synthesis import SynthesisError
from .teacher import TeacherError


def _run_folder(run_dir: Path, log) -> RunPaths | None:
    """The run folder at ``run_dir``, or None (said in one line) where it holds no run."""
    run_paths = RunPaths(Path(run_dir))
    if not run_paths.config.exists():
        log(f"{run_dir}: not a run folder (no config.yaml)")
        return None
    return run_paths


def verify(run_dir: Path, log=print) -> int:
    """Check a run folder against its manifest and done markers; print each problem; 1 if any."""
    run_paths = _run_folder(run_dir, log)
    if run_paths is None:
        return 2
    cfg = load_run_config(run_paths.config)
    problems = verify_files(run_paths)
    for n, stage in STAGES.items():
        if run_paths.marker(n).exists():
            ok, why = marker_matches(run_paths, cfg, stage)
            if not ok:
                problems.append(f"stages/{n:02d}.done.json: {why}")
    for p in problems:
        log(f"problem: {p}")
    log(f"{run_dir}: {len(problems)} problem(s)" if problems else f"{run_dir}: ok "
        f"({len(read_manifest(run_paths)['files'])} files, {sum(run_paths.marker(n).exists() for n in STAGES)} stages done)")
    return 1 if problems else 0


SNAPSHOT_MAX_BYTES = 1_500_000  # data files larger than this stay out of a snapshot


def snapshot(run_dir: Path, dest: Path, log=print) -> int:
    """Copy a run's small, readable results to ``dest`` (``results/reference/<name>/``): the resolved
    config, env.json, done markers, figures, data files under 1.5 MB and the stage timings, plus a
    ledger summary (calls and tokens per stage, unique request keys)."""
    run_paths, dest = _run_folder(run_dir, log), Path(dest)
    if run_paths is None:
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in [run_paths.config, run_paths.file("env"), *sorted(run_paths.stages.glob("*.json")),
                *sorted(run_paths.figures.glob("*.png")), *sorted(run_paths.data.glob("*.json*")),
                run_paths.logs / "timings.jsonl"]:
        if src.is_file() and (src.suffix == ".png" or src.stat().st_size <= SNAPSHOT_MAX_BYTES):
            shutil.copyfile(src, dest / src.name)
            copied.append(src.name)
    rows = list(read_jsonl(run_paths.ledger))
    per_stage = usage(rows, by="stage")
    summary = {stage: {"calls": u.calls, "cache_hits": u.cache_hits, "prompt_tokens": u.prompt_tokens,
                       "completion_tokens": u.completion_tokens} for stage, u in sorted(per_stage.items())}
    whole = ledger_total(rows)  # the rows read once
    summary["total"] = {"calls": whole.calls,
                        "unique_request_keys": len({r["key"] for r in rows if not r.get("cache_hit")}),
                        "prompt_tokens": whole.prompt_tokens, "completion_tokens": whole.completion_tokens}
    atomic_write_json(dest / "ledger_summary.json", summary)
    log(f"snapshot of {run_dir} in {dest}: {len(copied) + 1} files")
    return 0


def status(run_dir: Path, log=print) -> int:
    """Print each stage's marker state for a run folder."""
    run_paths = _run_folder(run_dir, log)
    if run_paths is None:
        return 2
    cfg = load_run_config(run_paths.config)
    for n, stage in STAGES.items():
        ok, why = marker_matches(run_paths, cfg, stage)
        log(f"{n:02d} {stage.name:12s} {'done' if ok else 'todo'}  ({why})")
    return 0


def synthesize(profile: str, run_id: str | None, shard: str, runs_dir: Path | None = None, log=print,
               executor: str | None = None) -> int:
    """Make one shard of stage 06's chunks outside papermill: a SLURM-style array job without Ray (one
    process per machine or GPU, ``executor="local"``), or one shard's Ray pipeline. The chunks a shard
    owns come from :func:`speed_utils.synthesis.plan` either way.

    Once every shard's chunk files sit in the run folder, ``run --from 6`` merges them."""
    cfg = load_profile(profile)
    if executor:  # where the chunks are made does not change them (tests/test_scale.py)
        cfg = cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"synthesis": executor})})
    try:
        part = synthesis.Shard.parse(shard)
    except ValueError as e:
        raise synthesis.SynthesisError(str(e)) from None
    run_paths = RunPaths.for_run(run_id or cfg.name, runs_dir)
    for rel in STAGES[6].inputs:
        if not (run_paths.root / rel).exists():
            raise StageError(f"synthesis needs {run_paths.root / rel}, which stage {PRODUCER[rel]:02d} writes")
    stats = synthesis.make_chunks(cfg, run_paths, part, remote=scale.executor_for(cfg))
    on = f"Ray, {stats['replicas']} replicas" if stats["executor"] == "ray" else "this process"
    log(f"shard {part}: made {stats['made']} chunks ({on}), {stats['skipped']} already there, of {stats['owned']} "
        f"owned ({stats['chunks']} in all) in {run_paths.root / stats['folder']}")
    return 0


def plan_memory(profile: str, log=print) -> int:
    """Print the memory planner's table for a profile (estimates; see speed_utils/plan.py)."""
    cfg = load_profile(profile)
    rows = memory_table(plan(cfg))
    if not rows:
        log(f"profile {cfg.name}: no model with a known architecture to plan")
        return 0
    log(f"profile {cfg.name}: estimated peak GPU memory per stage (GiB, incl. 1 GiB CUDA overhead); "
        "a stage fits a GPU when the total is within 95% of it (vLLM: within its 85% share)")
    if cfg.distributed.accelerate_config and "deepspeed" in cfg.distributed.accelerate_config:
        log("  (per GPU without sharding: ZeRO-3 splits weights and optimizer state across the GPUs, so these are upper bounds)")
    cols = list(dict.fromkeys(c for r in rows for c in r if c not in GPUS))  # every row's columns, in order
    cols = [c for c in cols if c != "total GiB"] + ["total GiB"]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols + list(GPUS)}
    log("  ".join(c.ljust(widths[c]) for c in cols + list(GPUS)))
    for r in rows:
        log("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols + list(GPUS)))
    return 0


def estimate(profile: str, log=print, gpu: str | None = None) -> int:
    """Print the teacher calls, tokens and $ a profile will need, before any money is spent."""
    cfg = load_profile(profile)
    rows = teacher_plan(cfg)
    listed = prices()
    log(f"profile {cfg.name}: teacher {cfg.teacher.model} ({cfg.teacher.backend}); $ at {rows[0]['priced_as']} "
        f"prices as of {listed['as_of']}; prompt tokens from the rendered prompts (~4 chars/token), "
        "completion tokens at the max_tokens upper bound")
    log(f"{'kind':11s} {'calls':>9s} {'prompt tok':>13s} {'completion tok':>15s} {'$ (max)':>10s}  purpose")
    for r in rows:
        log(f"{r['kind']:11s} {r['calls']:9,d} {r['prompt_tokens']:13,d} {r['completion_tokens_max']:15,d} "
            f"{r['usd_max']:10,.2f}  {r['purpose']}")
    total = {k: sum(r[k] for r in rows) for k in ("calls", "prompt_tokens", "completion_tokens_max", "usd_max")}
    log(f"{'total':11s} {total['calls']:9,d} {total['prompt_tokens']:13,d} {total['completion_tokens_max']:15,d} "
        f"{total['usd_max']:10,.2f}")
    guard = cfg.teacher.max_calls
    if guard is not None and total["calls"] > guard:
        log(f"warning: teacher.max_calls={guard} is below the {total['calls']:,} calls planned; the run will stop there")
    rates, rows = rates_for(cfg, gpu), wall_time(cfg, gpu)
    log(f"\nwall time on {rates['machine']} (rates: params/rates-*.yaml; measured per stage: logs/timings.jsonl)")
    log(time_table(rows))
    for line in (colab_line(rates, rows), hardware_line(rates, rows)):
        if line:
            log(line)
    others = [g for g in gpus_for(cfg) if g != rates.get("gpu")]
    if others:
        log(f"other cards: --gpu {' | '.join(others)}")
    return 0


def validate(profiles: Sequence[str], schema_only: bool = False) -> int:
    """Each profile's file (schema, keys, paths), then its pre-flight: what would stop a run of it here,
    before any teacher call (:mod:`speed_utils.preflight`). Exit code 2 if anything fails."""
    failed = 0
    for name in profiles:
        cfg = load_profile(name)
        print(f"ok  {profile_path(name)}  (config hash {cfg.section_hash()})")
        if schema_only:
            continue
        for c in preflight.check(cfg, profile_path(name)):
            print(f"    {c.line()}")
            failed += c.status == "fail"
    if failed:
        print(f"{failed} pre-flight check(s) failed: a run of that profile would stop (see above)", file=sys.stderr)
    return 2 if failed else 0


# ---------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="speed-repro", description="SPEED reproduction pipeline (arXiv 2410.18634)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the stage notebooks with papermill")
    r.add_argument("--profile", default="cpu", help="profile name in params/ or a YAML path (default: cpu)")
    r.add_argument("--run-id", help="run folder name under results/runs/ (default: the profile name)")
    r.add_argument("--from", dest="start", type=int, default=0, help="first stage number")
    r.add_argument("--until", type=int, default=None, help="last stage number")
    r.add_argument("--force", action="store_true", help="rerun stages even when their markers match")
    r.add_argument("--runs-dir", type=Path, default=None, help="parent of run folders (default: results/runs)")
    r.add_argument("--verbose", action="store_true",
                   help="print papermill's cell log, the notebooks' prints and kernel messages (default: logs/ only)")
    r.add_argument("--donor", type=Path, action="append", default=[],
                   help="a finished run whose stages this run adopts where config and inputs match (repeatable)")
    v = sub.add_parser("validate", help="validate profiles without running anything")
    v.add_argument("profiles", nargs="*", help="profile names or paths (default: all in params/)")
    v.add_argument("--schema-only", action="store_true",
                   help="only the files; no pre-flight (Hub access, teacher endpoint, QLoRA and GPU memory)")
    rp = sub.add_parser("report", help="(re)build a run folder's report.html from its executed notebooks")
    rp.add_argument("run_dir", type=Path)
    rp.add_argument("--code", action="store_true", help="include the code cells")
    s = sub.add_parser("status", help="show which stages of a run folder are done")
    s.add_argument("run_dir", type=Path)
    y = sub.add_parser("synthesize", help="make one shard of stage 06's chunks (merge: run stage 06)")
    y.add_argument("--profile", default="cpu")
    y.add_argument("--run-id", help="run folder name (default: the profile name)")
    y.add_argument("--runs-dir", type=Path, default=None)
    y.add_argument("--shard", default="0/1", help="i/n: make the chunks whose number is i modulo n")
    y.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="override distributed.synthesis: local (this process) or ray (a Ray Data pipeline)")
    w = sub.add_parser("sweep", help="run a grid of profiles (ablation, scaling), reusing shared stages")
    w.add_argument("spec", help="a sweep spec, e.g. params/sweeps/smoke-scaling.yaml")
    w.add_argument("--runs-dir", type=Path, default=None)
    w.add_argument("--donor", type=Path, action="append", default=[],
                   help="a finished run whose stages points may adopt (repeatable; the first also shares its synthesis cache)")
    pl = sub.add_parser("plan", help="estimated peak GPU memory per stage, and which GPUs it fits")
    pl.add_argument("--profile", default="gpu-24gb")
    e = sub.add_parser("estimate", help="pre-flight: expected teacher calls, tokens and $ of a profile")
    e.add_argument("--profile", default="cpu")
    e.add_argument("--gpu", default=None, help="the card to estimate the wall time on, where the profile's rates "
                                               "file lists several (params/rates-gpu-24gb.yaml: L4, A100-40GB)")
    n = sub.add_parser("snapshot", help="copy a run's small results (markers, figures, tables) to a folder")
    n.add_argument("run_dir", type=Path)
    n.add_argument("dest", type=Path)
    f = sub.add_parser("verify", help="check a run folder against its manifest and done markers")
    f.add_argument("run_dir", type=Path)
    m = sub.add_parser("models", help="list, fetch or verify the named models")
    m.add_argument("action", choices=["list", "fetch", "verify"])
    m.add_argument("names", nargs="*")
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "httpx2", "openai", "traitlets", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "run":
            return run(a.profile, a.run_id, a.start, a.until, a.force, runs_dir=a.runs_dir, donors=a.donor,
                       verbose=a.verbose)
        if a.cmd == "report":
            print(f"report: {build_report(RunPaths(a.run_dir), include_code=a.code)}")
            return 0
        if a.cmd == "validate":
            return validate(a.profiles or list_profiles(), schema_only=a.schema_only)
        if a.cmd == "status":
            return status(a.run_dir)
        if a.cmd == "verify":
            return verify(a.run_dir)
        if a.cmd == "snapshot":
            return snapshot(a.run_dir, a.dest)
        if a.cmd == "sweep":
            sweep(a.spec, a.runs_dir, a.donor)
            return 0
        if a.cmd == "plan":
            return plan_memory(a.profile)
        if a.cmd == "estimate":
            return estimate(a.profile, gpu=a.gpu)
        if a.cmd == "synthesize":
            return synthesize(a.profile, a.run_id, a.shard, a.runs_dir, executor=a.executor)
        return _models(a.action, a.names)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (StageError, AssetError, TeacherError, SynthesisError, RunLocked, ServerError, ConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into head or less, closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _models(action: str, names: list[str]) -> int:
    for name in names or sorted(assets.MODELS):
        m = assets.spec(name)
        if action == "list":
            src = "PyPI wheels" if (m.gguf or m.folder) else "Hub only"
            print(f"{name:30s} {m.hf_id:42s} {src:12s} {m.notes}")
        elif m.gguf or m.folder:
            path = assets.verify(name) if action == "verify" else (
                assets.gguf_path(name, online=False) if m.gguf else assets.st_folder(name, online=False))
            print(f"ok  {name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
