"""The papermill runner: each stage notebook in a fresh kernel, in order, skipping what is done.

:func:`run` validates the profile and runs the pre-flight before it creates anything, writes the run's
``config.yaml`` once (the stages read it), then executes ``notebooks/NN_*.ipynb`` into the run folder.
By default the terminal gets one line per stage, the stages' progress bars and warnings, a table of
seconds per stage and a summary; papermill's cell log and the kernels' messages go to ``logs/``.
Stage 11 runs its sweeps' points itself (:mod:`speed_utils.sweeps`), each through this runner.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from ipykernel.kernelspec import install
from jupyter_client.kernelspec import KernelSpecManager

from . import mteb_tasks, preflight, report
from .adoption import adopt_run
from .budget import estimate as wall_time
from .budget import in_words, rates_for, slower_here
from .config import MTEB_LOCAL_ENV
from .cost import STAGE_OF
from .cost import estimate as teacher_plan
from .files import append_jsonl, atomic_write_text, remove
from .paths import NOTEBOOKS_DIR
from .profiles import Config, load_profile, profile_path
from .registry import STAGES, StageError, marker_matches
from .runs import LOCK_ENV, RunLock, RunLocked, RunPaths, record_path, unwritable

KERNEL_NAME = "speed-repro"  # pinned; registered in the venv by `make setup` or on first run

# Variables every stage kernel gets unless the caller set them (toolchain.md, "Recommendations").
KERNEL_ENV = {"TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore::FutureWarning",
              # glibc >= 2.35 backs malloc's large chunks with transparent huge pages: torch's CPU training
              # allocates and frees GBs a step, and 4 KiB page faults took a quarter of an SFT step's CPU time
              # (benchmarks/precision.py --task sft, 2026-12-02: system time 80 -> 42 s, 94 -> 81 s a step)
              "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
              # one iteration order for sets: PEFT writes an adapter's target_modules (a set) in it, and a
              # forced rerun otherwise wrote the same weights under an adapter_config.json in another order
              "PYTHONHASHSEED": "0"}


def ensure_kernel() -> None:
    """Register the pinned kernel in this environment (``--sys-prefix``) if it is missing."""
    if KERNEL_NAME in KernelSpecManager().find_kernel_specs():
        return
    install(kernel_name=KERNEL_NAME, display_name="speed-repro (Python 3)", prefix=sys.prefix)


def _stage_files(notebooks_dir: Path) -> dict[int, Path]:
    found = {}
    for nb in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        found[int(nb.name[:2])] = nb
    return found


def run(profile: str, run_id: str | None = None, start: int = 0, until: int | None = None,
        force: bool = False, notebooks_dir: Path = NOTEBOOKS_DIR, runs_dir: Path | None = None,
        log=print, donors: Sequence[Path] = (), verbose: bool = True) -> int:
    """Execute the stage notebooks in order; return a process exit code (3: the run folder is in use).

    ``donors``: finished runs whose stages this run adopts where config and inputs match
    (:func:`adopt_run`), e.g. ``make study`` adopting stages 00-10 from the default cpu run.
    ``verbose=False`` (the command line's default): one line per stage and the stages' own progress
    bars and warnings; papermill's cell chatter, the notebooks' prints and the kernels' messages go to
    ``logs/``. Sweeps and tests keep everything."""
    cfg = load_profile(profile)  # validate before anything is created
    prof = profile_path(profile)
    preflight.require(preflight.check(cfg, prof, network=False))  # the Hub and the endpoint: stage 00
    if os.environ.get(MTEB_LOCAL_ENV):  # the kernels (cwd notebooks/) read the profile again: the path absolute
        os.environ[MTEB_LOCAL_ENV] = str(Path(os.environ[MTEB_LOCAL_ENV]).expanduser().resolve())
    for donor in map(RunPaths, map(Path, donors)):  # before the run folder is made
        if not donor.config.exists():
            raise StageError(f"--donor {donor.root}: not a run folder (no config.yaml)")
    run_paths = RunPaths.for_run(run_id or cfg.name, runs_dir)
    try:
        run_paths.make()
    except OSError as e:
        log(f"error: the run folder {run_paths.root} cannot be made ({e.strerror}: {e.filename}); nothing ran")
        return 2
    if why := unwritable(run_paths.root):
        log(f"error: the run folder cannot be written ({why}); nothing ran and no teacher call was made. "
            "Give this user write access to it, or choose another --runs-dir or --run-id")
        return 2
    try:
        lock = RunLock(run_paths.root).acquire()
    except RunLocked as e:
        log(f"error: {e}")
        return 3
    previous = os.environ.get(LOCK_ENV)
    try:
        os.environ[LOCK_ENV] = str(run_paths.root.resolve())  # the stage kernels inherit it
        if donors and not force:
            adopt_run(run_paths, cfg, [RunPaths(Path(d)) for d in donors], until if until is not None else max(STAGES), log)
        return _run_stages(cfg, prof, run_paths, start, until, force, notebooks_dir, log, verbose)
    finally:
        if previous is None:
            os.environ.pop(LOCK_ENV, None)
        else:
            os.environ[LOCK_ENV] = previous
        lock.release()


def forget_trainings(run_paths: RunPaths, stage) -> None:
    """A forced stage starts from scratch: remove the records beside its outputs that let a resumed stage
    reuse a finished training (``train.trained_before``), so it trains again."""
    for rel in stage.outputs + stage.optional_outputs:
        remove(record_path(run_paths.root / rel))


def _run_stages(cfg: Config, prof: Path, run_paths: RunPaths, start: int, until: int | None, force: bool,
                notebooks_dir: Path, log, verbose: bool = True) -> int:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    t_run = time.monotonic()

    atomic_write_text(run_paths.config, cfg.to_yaml())
    files = _stage_files(notebooks_dir)
    todo = [n for n in sorted(files) if n >= start and (until is None or n <= until)]
    unknown = [n for n in todo if n not in STAGES]
    if unknown:
        log(f"error: notebooks {unknown} have no entry in speed_utils.registry.STAGES")
        return 2
    for k, v in KERNEL_ENV.items():
        os.environ.setdefault(k, v)
    if cfg.run.offline == "always":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    ensure_kernel()
    log(f"run {run_paths.root} (profile {cfg.name}, stages {', '.join(f'{n:02d}' for n in todo)})")
    if any(STAGES[n].name in ("evaluate", "scaling") for n in todo):  # the stages that evaluate
        log(mteb_tasks.describe(mteb_tasks.plan(cfg, cfg.use_hub())))
    if not verbose:
        log(_expected(cfg, run_paths, todo, force))
    walls: dict[int, float | None] = {}
    for i, n in enumerate(todo, 1):
        stage = STAGES[n]
        label = f"[{i}/{len(todo)}] stage {n:02d} {stage.name}"
        ok, why = marker_matches(run_paths, cfg, stage)
        if ok and not force:
            log(f"{label}: skipped ({why}; --force reruns it)")
            walls[n] = None
            continue
        log(f"{label}: running ({why if not force else 'forced'})")
        if force:
            forget_trainings(run_paths, stage)
        out_nb = run_paths.notebooks / files[n].name
        t0 = time.monotonic()
        logs = run_paths.logs / files[n].stem
        try:
            with open(f"{logs}.stdout.log", "a") as out, open(f"{logs}.stderr.log", "a") as err:
                for f in (out, err):
                    f.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} stage {n:02d} ====\n")
                    f.flush()  # visible at once to whoever watches the logs
                with _quiet(err, Path(f"{logs}.papermill.log"), not verbose):
                    papermill.execute_notebook(
                        str(files[n]), str(out_nb), kernel_name=KERNEL_NAME, cwd=str(notebooks_dir),
                        parameters={"run_dir": str(run_paths.root), "profile": str(prof)},
                        log_output=True, progress_bar=False, stdout_file=out, stderr_file=err)
        except PapermillExecutionError as e:
            log(f"{label}: FAILED in cell {e.cell_index} (execution count {e.exec_count})\n"
                f"  {e.ename}: {e.evalue}\n  executed notebook: {out_nb}\n"
                f"  logs: {run_paths.logs / (files[n].stem + '.stderr.log')}")
            return 1
        except Exception as e:  # kernel died, notebook unreadable, ...
            hint = ("\n  the kernel process was killed, most often by the out-of-memory killer: lower the stage's "
                    "micro_batch_size or max_length in the profile (`speed-repro plan` estimates GPU memory)"
                    if type(e).__name__ == "DeadKernelError" else "")
            log(f"{label}: FAILED before or outside a cell: {type(e).__name__}: {e}\n  executed notebook: {out_nb}{hint}")
            return 1
        ok, why = marker_matches(run_paths, cfg, stage)
        if not ok:
            log(f"{label}: FAILED: the notebook ran but its done marker does not match ({why}); "
                f"see {out_nb}")
            return 1
        marker = json.loads(run_paths.marker(n).read_text())
        wall = time.monotonic() - t0
        append_jsonl(run_paths.logs / "timings.jsonl", [{"stage": n, "name": stage.name, "wall_s": round(wall, 2),
                                                         "in_kernel_s": marker["seconds"], "profile": cfg.name,
                                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}])
        log(f"{label}: done in {wall:.1f}s  " + (json.dumps(marker["metrics"])[:300] if verbose
                                                  else report.headline(n, marker["metrics"])))
        walls[n] = wall
    log(stage_time_table(walls))
    if any(w is not None for w in walls.values()) or not (run_paths.root / "report.html").exists():
        try:
            report.build(run_paths)
        except Exception as e:  # noqa: BLE001 - the run's results stand without their rendering
            log(f"warning: report.html could not be built ({type(e).__name__}: {e}); `speed-repro report "
                f"{run_paths.root}` retries")
    log(f"finished: {run_paths.root}")
    if not verbose:
        log(report.summary(run_paths, time.monotonic() - t_run))
    return 0


def _expected(cfg: Config, run_paths: RunPaths, todo: list[int], force: bool) -> str:
    """Before a run: the wall time the stages still to run should take here, and what the teacher costs."""
    left = [n for n in todo if force or not marker_matches(run_paths, cfg, STAGES[n])[0]]
    if not left:
        return "every stage is up to date: nothing to do but the report"
    rates = rates_for(cfg)
    factor = slower_here(rates)
    seconds = sum(x.seconds for x in wall_time(cfg) if x.stage in left) * (factor or 1.0)
    where = (f"on one {rates['gpu']} (published rates)" if rates.get("gpu") else
             "on this CPU, which has no bf16 units (fp32)" if factor else "on this machine")
    when = (f"about {in_words(seconds)} for {len(left)} stage(s) {where} (speed-repro estimate --profile {cfg.name})"
            if "no params/rates-" not in rates["machine"] and not rates.get("other_models")
            else f"{len(left)} stage(s) (no rates measured for this profile's hardware and models)")
    teacher = [r for r in teacher_plan(cfg) if STAGE_OF.get(r["kind"]) in left]
    calls, usd = sum(r["calls"] for r in teacher), sum(r["usd_max"] for r in teacher)
    money = "on the local llama.cpp server, at no cost" if cfg.teacher.backend == "llamacpp" else \
        f"at most ${usd:,.2f} at {cfg.teacher.model}'s list prices (params/prices.yaml)"
    return f"expected: {when}; at most {calls:,} teacher calls, {money}"


@contextlib.contextmanager
def _quiet(kernel_log, papermill_log: Path, quiet: bool):
    """Quiet mode for one stage. The terminal gets what papermill logs as warnings: the stage's stderr, its
    progress bars and warnings. papermill's cell chatter and the notebook's prints go to ``papermill_log``,
    and the kernel process's own messages (it inherits file descriptor 2) to ``kernel_log``."""
    if not quiet:
        yield
        return
    pm = logging.getLogger("papermill")
    saved_state = (pm.level, pm.propagate, list(pm.handlers))
    with open(papermill_log, "a") as chatter:
        to_file, to_terminal = logging.StreamHandler(chatter), logging.StreamHandler(sys.stdout)
        to_terminal.setLevel(logging.WARNING)
        to_terminal.terminator = ""  # the stage's stderr as it came: a progress bar redraws its line with \r, and a
        # newline after each chunk printed every redraw on a line of its own (a smoke run: 110 such lines)
        for h in (to_file, to_terminal):
            h.setFormatter(logging.Formatter("%(message)s"))
        pm.setLevel(logging.INFO)
        pm.propagate, pm.handlers = False, [to_file, to_terminal]
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(kernel_log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            pm.setLevel(saved_state[0])
            pm.propagate, pm.handlers = saved_state[1], saved_state[2]


def stage_time_table(walls: dict[int, float | None]) -> str:
    """Seconds per stage of this invocation (None: skipped as up to date), with the total."""
    lines = ["stage                  seconds"]
    for n, wall in walls.items():
        lines.append(f"{n:02d} {STAGES[n].name:<18s} {'skipped' if wall is None else f'{wall:7.0f}':>8s}")
    ran = [w for w in walls.values() if w is not None]
    lines.append(f"{'total':21s} {sum(ran):8.0f}  ({sum(ran) / 60:.1f} min, {len(ran)} stage(s) ran)")
    return "\n".join(lines)
