"""Stage registry, stage context, the papermill runner and the ``speed-repro`` command line.

One stage is one notebook (``notebooks/NN_*.ipynb``) run in a fresh kernel. The notebook opens
a :class:`StageContext`, does its work through ``speed_utils`` and calls ``ctx.done(metrics)``,
which writes ``stages/NN.done.json``: the config hash of the sections the stage reads, the hashes
of its inputs and outputs, its metrics, wall time and package versions. The runner skips a
stage whose marker still matches (same config hash, inputs and outputs unchanged).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .assets import AssetError
from .config import Config, ConfigError, list_profiles, load_profile, profile_path, resolve_path
from .runs import (LOCK_ENV, REPO_ROOT, RESULTS_DIR, RunLock, RunLocked, RunPaths, append_jsonl, atomic_write_json,
                   atomic_write_text, read_jsonl, read_manifest, remove, sha256_path, update_manifest, verify_files,
                   versions, write_jsonl)
from . import preflight
from .train import record_path

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "speed-repro"  # pinned; registered in the venv by `make setup` or on first run

# Variables every stage kernel gets unless the caller set them (toolchain.md, "Recommendations").
KERNEL_ENV = {"TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore::FutureWarning",
              # glibc >= 2.35 backs malloc's large chunks with transparent huge pages: torch's CPU training
              # allocates and frees GBs a step, and 4 KiB page faults took a quarter of an SFT step's CPU time
              # (benchmarks/precision.py --task sft, 2026-12-02: system time 80 -> 42 s, 94 -> 81 s a step)
              "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


@dataclass(frozen=True)
class Stage:
    """What a stage reads and writes, relative to the run folder."""

    number: int
    name: str
    notebook: str
    config_keys: tuple[str, ...]  # sections or dotted keys whose change invalidates the stage
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()  # hashed when present (e.g. a baseline the profile may skip)
    optional_outputs: tuple[str, ...] = ()  # recorded when the stage wrote them
    config_files: Callable[[Config], list[Path]] | None = None  # files the config names whose content counts


_TEACHER_KEYS = ("run.seed", "teacher.backend", "teacher.model", "teacher.structured_output")
STAGES: dict[int, Stage] = {s.number: s for s in [
    Stage(0, "environment", "00_environment.ipynb", ("models", "teacher.backend", "teacher.model"),
          outputs=("env.json",)),
    Stage(1, "brainstorm", "01_brainstorm.ipynb", (*_TEACHER_KEYS, "brainstorm"),
          outputs=("data/tasks.jsonl", "data/brainstorm_rejects.jsonl")),
    Stage(2, "seed", "02_seed_data.ipynb", (*_TEACHER_KEYS, "seed"), inputs=("data/tasks.jsonl",),
          outputs=("data/seed.jsonl", "data/rejects.jsonl")),
    Stage(3, "junior", "03_junior_sft.ipynb", ("run.seed", "models.generator", "junior"),
          inputs=("data/seed.jsonl",), outputs=("adapters/junior",)),
    Stage(4, "senior", "04_senior_dpo.ipynb", (*_TEACHER_KEYS, "models.generator", "senior", "generation"),
          inputs=("data/tasks.jsonl", "adapters/junior"),
          outputs=("data/root.jsonl", "data/prefs.jsonl", "data/prefs_rejects.jsonl", "adapters/senior")),
    Stage(5, "revisor", "05_revisor_sft.ipynb",
          (*_TEACHER_KEYS, "models.generator", "senior.k_samples", "revisor", "quality", "generation"),
          inputs=("data/tasks.jsonl", "data/root.jsonl", "adapters/junior", "adapters/senior"),
          outputs=("data/revisions.jsonl", "data/revision_rejects.jsonl", "adapters/revisor", "data/quality.jsonl")),
    Stage(6, "synthesis", "06_synthesis.ipynb", ("run.seed", "models.generator", "synthesis", "generation.batch_size"),
          inputs=("data/tasks.jsonl", "adapters/junior", "adapters/senior", "adapters/revisor"),
          outputs=("data/synthetic.jsonl", "data/synthesis_rejects.jsonl")),
    Stage(7, "embedder", "07_embedder.ipynb", ("run.seed", "models.embedder", "models.baseline_embedder", "embedder"),
          inputs=("data/synthetic.jsonl",), optional_inputs=("data/seed.jsonl",), outputs=("models/embedder",),
          optional_outputs=("models/baseline",)),
    Stage(8, "evaluate", "08_evaluate.ipynb",
          ("run.seed", "models.embedder", "models.baseline_embedder", "embedder.max_length", "evaluate"),
          inputs=("models/embedder",),
          optional_inputs=("models/baseline",), outputs=("mteb", "data/scores.jsonl", "data/sts_pairs.json", "data/score_intervals.jsonl")),
    Stage(9, "results", "09_results.ipynb", ("evaluate",), inputs=("mteb", "data/scores.jsonl"),
          outputs=("data/results.json",)),
    Stage(10, "cost", "10_cost.ipynb", ("teacher.backend", "teacher.model"), optional_inputs=("ledger.jsonl",),
          outputs=("data/cost.json",)),
    Stage(11, "scaling", "11_scaling.ipynb", ("sweeps",), inputs=("data/scores.jsonl",), outputs=("data/sweeps.json", "data/claims.json"),
          config_files=lambda cfg: [resolve_path(p) for p in (cfg.sweeps.ablation, cfg.sweeps.scaling) if p]),
]}
PRODUCER = {out: s.number for s in STAGES.values() for out in s.outputs + s.optional_outputs}


class StageError(RuntimeError):
    """A stage cannot start or finish; the message names the file or key at fault."""


from .synthesis import SynthesisError  # noqa: E402
from .gguf_lora import ConversionError  # noqa: E402
from .llama_server import ServerError  # noqa: E402
from .teacher import TeacherError  # noqa: E402  (after StageError: teacher imports nothing from here)


# ---------------------------------------------------------------- markers
def expected_marker(run: RunPaths, cfg: Config, stage: Stage) -> dict:
    """The parts of a done marker that must match for the stage to be skipped."""
    config_hash = cfg.section_hash(*stage.config_keys)
    if stage.config_files:  # e.g. sweep specs: editing one must rerun the stage
        files = {str(p): sha256_path(p) for p in stage.config_files(cfg)}
        config_hash = hashlib.sha256(json.dumps([config_hash, files], sort_keys=True).encode()).hexdigest()[:16]
    return {"config_hash": config_hash,
            "inputs": {rel: sha256_path(run.root / rel) for rel in stage.inputs + stage.optional_inputs
                       if (run.root / rel).exists()}}


def marker_matches(run: RunPaths, cfg: Config, stage: Stage) -> tuple[bool, str]:
    """Whether the stage's marker still holds, and if not, why (for the runner's log)."""
    path = run.marker(stage.number)
    if not path.exists():
        return False, "not run yet"
    marker = json.loads(path.read_text())
    want = expected_marker(run, cfg, stage)
    if marker.get("config_hash") != want["config_hash"]:
        return False, "config changed"
    if marker.get("inputs") != want["inputs"]:
        return False, "inputs changed"
    for rel, digest in marker.get("outputs", {}).items():
        if not (run.root / rel).exists():
            return False, f"output {rel} is missing"
        if sha256_path(run.root / rel) != digest:
            return False, f"output {rel} was modified"
    return True, "up to date"


SECRET_NAMES = ("api_key", "apikey", "openai_api_key", "azure_openai_api_key")


def refuse_secret_parameters() -> None:
    """Stop a stage whose notebook was given an API key as a papermill parameter.

    papermill writes parameters into the executed notebook, so a key passed that way is already on
    disk; say where, and how the key should be given instead."""
    import __main__

    found = [name for name, value in vars(__main__).items() if isinstance(value, str) and (
        name.lower() in SECRET_NAMES or value.startswith(("sk-", "sk_")))]
    if found:
        raise StageError(f"{', '.join(found)}: API keys must not be papermill parameters: papermill writes them "
                         "into the executed notebook, which now holds it (delete that file and rotate the key). "
                         "Put the key in the environment variable named by teacher.api_key_env instead.")


class StageContext:
    """What a stage notebook opens first: config, run folder, input checks, then ``done()``.

    >>> ctx = StageContext(run_dir, profile, stage=2)   # doctest: +SKIP
    >>> ctx.done({"valid": 120})                         # doctest: +SKIP
    """

    def __init__(self, run_dir: str | Path, profile: str | Path, stage: int):
        self.t0 = time.monotonic()
        refuse_secret_parameters()
        self.stage = STAGES[stage]
        self.cfg = load_profile(profile)
        self.run = RunPaths(Path(run_dir).resolve()).make()
        self.lock = RunLock(self.run.root).acquire()  # a no-op under the runner, which holds it
        atomic_write_text(self.run.config, self.cfg.to_yaml())
        for rel in self.stage.inputs:
            self._check_input(rel)
        for rel in self.stage.outputs + self.stage.optional_outputs:  # adopted from a donor run (a sweep):
            if self.path(rel).is_symlink():  # unlink, so that rebuilding never writes into the donor's folder
                self.path(rel).unlink()
        for rel in self.stage.optional_inputs:
            if self.path(rel).exists():
                self._check_input(rel)

    def _check_input(self, rel: str) -> None:
        path = self.run.root / rel
        maker = PRODUCER.get(rel)
        if not path.exists():
            source = f"stage {maker:02d} writes; run it first (speed-repro run --from {maker})" if maker is not None \
                else "an earlier stage writes; run the pipeline from the start"
            raise StageError(f"stage {self.stage.number:02d} needs {path}, which {source}")
        pinned = read_manifest(self.run)["files"].get(rel, {}).get("sha256")
        if pinned and pinned != sha256_path(path):
            raise StageError(f"{path} does not match its checksum in {self.run.manifest}: it was modified "
                             f"or damaged after stage {maker} wrote it; rerun that stage with --force")

    @property
    def name(self) -> str:
        return f"{self.stage.number:02d}_{self.stage.name}"

    def path(self, rel: str) -> Path:
        return self.run.root / rel

    def done(self, metrics: dict) -> dict:
        """Record outputs in the manifest and write the stage's done marker (atomically)."""
        missing = [rel for rel in self.stage.outputs if not self.path(rel).exists()]
        if missing:
            raise StageError(f"stage {self.name} finished without writing {', '.join(missing)}")
        written = list(self.stage.outputs) + [rel for rel in self.stage.optional_outputs if self.path(rel).exists()]
        update_manifest(self.run, self.stage.number, [self.path(rel) for rel in written])
        marker = {"stage": self.stage.number, "name": self.stage.name, "profile": self.cfg.name,
                  **expected_marker(self.run, self.cfg, self.stage),
                  "outputs": {rel: sha256_path(self.path(rel)) for rel in written},
                  "metrics": metrics, "seconds": round(time.monotonic() - self.t0, 1),
                  "versions": versions(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(self.run.marker(self.stage.number), marker)
        self.lock.release()
        return marker


# ---------------------------------------------------------------- runner
def ensure_kernel() -> None:
    """Register the pinned kernel in this environment (``--sys-prefix``) if it is missing."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL_NAME in KernelSpecManager().find_kernel_specs():
        return
    from ipykernel.kernelspec import install

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
    for donor in map(RunPaths, map(Path, donors)):  # before the run folder is made
        if not donor.config.exists():
            raise StageError(f"--donor {donor.root}: not a run folder (no config.yaml)")
    run_paths = RunPaths.for_run(run_id or cfg.name, runs_dir).make()
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


def _run_stages(cfg: Config, prof: Path, run_paths: RunPaths, start: int, until: int | None, force: bool,
                notebooks_dir: Path, log, verbose: bool = True) -> int:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from . import report

    t_run = time.monotonic()

    atomic_write_text(run_paths.config, cfg.to_yaml())
    files = _stage_files(notebooks_dir)
    todo = [n for n in sorted(files) if n >= start and (until is None or n <= until)]
    unknown = [n for n in todo if n not in STAGES]
    if unknown:
        log(f"error: notebooks {unknown} have no entry in speed_utils.pipeline.STAGES")
        return 2
    for k, v in KERNEL_ENV.items():
        os.environ.setdefault(k, v)
    if cfg.run.offline == "always":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    ensure_kernel()
    log(f"run {run_paths.root} (profile {cfg.name}, stages {', '.join(f'{n:02d}' for n in todo)})")
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
        if force:  # from scratch: a forced stage trains again rather than reusing its finished trainings
            for rel in stage.outputs + stage.optional_outputs:
                remove(record_path(run_paths.root / rel))
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
    from .budget import estimate as wall_time, in_words, rates_for, slower_here
    from .cost import STAGE_OF, estimate as teacher_plan

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


def verify(run_dir: Path, log=print) -> int:
    """Check a run folder against its manifest and done markers; print each problem; 1 if any."""
    run_paths = RunPaths(Path(run_dir))
    if not run_paths.config.exists():
        log(f"{run_dir}: not a run folder (no config.yaml)")
        return 2
    from .config import load_run_config

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
    import shutil

    from .cost import usage

    run_paths, dest = RunPaths(Path(run_dir)), Path(dest)
    if not run_paths.config.exists():
        log(f"{run_dir}: not a run folder (no config.yaml)")
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in [run_paths.config, run_paths.root / "env.json", *sorted(run_paths.stages.glob("*.json")),
                *sorted(run_paths.figures.glob("*.png")), *sorted(run_paths.data.glob("*.json*")),
                run_paths.logs / "timings.jsonl"]:
        if src.is_file() and (src.suffix == ".png" or src.stat().st_size <= SNAPSHOT_MAX_BYTES):
            shutil.copyfile(src, dest / src.name)
            copied.append(src.name)
    rows = list(read_jsonl(run_paths.ledger))
    per_stage = usage(rows, by="stage")
    summary = {stage: {"calls": u.calls, "cache_hits": u.cache_hits, "prompt_tokens": u.prompt_tokens,
                       "completion_tokens": u.completion_tokens} for stage, u in sorted(per_stage.items())}
    summary["total"] = {"calls": sum(u.calls for u in per_stage.values()),
                        "unique_request_keys": len({r["key"] for r in rows if not r.get("cache_hit")}),
                        "prompt_tokens": sum(u.prompt_tokens for u in per_stage.values()),
                        "completion_tokens": sum(u.completion_tokens for u in per_stage.values())}
    atomic_write_json(dest / "ledger_summary.json", summary)
    log(f"snapshot of {run_dir} in {dest}: {len(copied) + 1} files")
    return 0


def status(run_dir: Path, log=print) -> int:
    """Print each stage's marker state for a run folder."""
    run_paths = RunPaths(Path(run_dir))
    if not run_paths.config.exists():
        log(f"{run_dir}: not a run folder (no config.yaml)")
        return 2
    from .config import load_run_config

    cfg = load_run_config(run_paths.config)
    for n, stage in STAGES.items():
        ok, why = marker_matches(run_paths, cfg, stage)
        log(f"{n:02d} {stage.name:12s} {'done' if ok else 'todo'}  ({why})")
    return 0


def synthesize(profile: str, run_id: str | None, shard: str, runs_dir: Path | None = None, log=print) -> int:
    """Make one shard of stage 06's chunks outside papermill (one process per machine or GPU).

    Once every shard's chunk files sit in the run folder, ``run --from 6`` merges them."""
    from . import synthesis

    cfg = load_profile(profile)
    try:
        part = synthesis.Shard.parse(shard)
    except ValueError as e:
        raise synthesis.SynthesisError(str(e)) from None
    run_paths = RunPaths.for_run(run_id or cfg.name, runs_dir)
    for rel in STAGES[6].inputs:
        if not (run_paths.root / rel).exists():
            raise StageError(f"synthesis needs {run_paths.root / rel}, which stage {PRODUCER[rel]:02d} writes")
    stats = synthesis.make_chunks(cfg, run_paths, part)
    log(f"shard {part}: made {stats['made']} chunks, {stats['skipped']} already there, of {stats['owned']} owned "
        f"({stats['chunks']} in all) in {run_paths.root / stats['folder']}")
    return 0


def plan_memory(profile: str, log=print) -> int:
    """Print the memory planner's table for a profile (estimates; see speed_utils/plan.py)."""
    from .plan import GPUS, plan, table

    cfg = load_profile(profile)
    rows = table(plan(cfg))
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
    from .cost import estimate as plan, prices

    cfg = load_profile(profile)
    rows = plan(cfg)
    table = prices()
    log(f"profile {cfg.name}: teacher {cfg.teacher.model} ({cfg.teacher.backend}); $ at {rows[0]['priced_as']} "
        f"prices as of {table['as_of']}; prompt tokens from the rendered prompts (~4 chars/token), "
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
    from .budget import colab_line, estimate as wall_time, gpus_for, hardware_line, rates_for, table

    rates, rows = rates_for(cfg, gpu), wall_time(cfg, gpu)
    log(f"\nwall time on {rates['machine']} (rates: params/rates-*.yaml; measured per stage: logs/timings.jsonl)")
    log(table(rows))
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


# ---------------------------------------------------------------- sweeps
def load_sweep(path: str | Path) -> dict:
    """A sweep spec: ``name``, ``profile``, ``until`` (last stage), ``set`` (overrides for every point),
    and ``points`` (name -> overrides) or ``grid`` (dotted key -> values, every combination)."""
    import itertools

    import yaml

    from .config import resolve_path

    path = resolve_path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep spec")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"name", "description", "profile", "until", "set", "points", "grid"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("name", "profile"):
        if key not in spec:
            raise ConfigError(f"{path}: {key}: required key is missing")
    points = dict(spec.get("points") or {})
    grid = spec.get("grid") or {}
    for combo in itertools.product(*grid.values()) if grid else ():  # no grid: product() would give one empty point
        over: dict = {}
        for dotted, value in zip(grid, combo):
            node = over
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        points["-".join(f"{k.split('.')[-1]}={v}" for k, v in zip(grid, combo))] = over
    if not points:
        raise ConfigError(f"{path}: a sweep needs points or a grid")
    return {**spec, "path": path, "points": points, "until": spec.get("until", 8)}


def adopt_stages(run_paths: RunPaths, cfg: Config, donors: list[RunPaths], until: int, log=print) -> list[int]:
    """Link into ``run_paths`` every stage a donor run already made with the same config and inputs.

    A stage is adopted when a donor's done marker has this point's config hash and input hashes and
    its outputs are intact; its outputs are symlinked and its marker copied (with ``adopted_from``),
    so the runner then skips it. Nothing is retrained and no teacher call is repeated.
    """
    adopted = []
    for n in sorted(k for k in STAGES if k <= until):
        stage = STAGES[n]
        if marker_matches(run_paths, cfg, stage)[0]:
            continue
        want = expected_marker(run_paths, cfg, stage)
        for donor in donors:
            if not donor.marker(n).exists():
                continue
            mark = json.loads(donor.marker(n).read_text())
            if (mark.get("config_hash"), mark.get("inputs")) != (want["config_hash"], want["inputs"]):
                continue
            if any(not (donor.root / rel).exists() or sha256_path(donor.root / rel) != h
                   for rel, h in mark.get("outputs", {}).items()):
                continue
            for rel in mark["outputs"]:
                target = run_paths.root / rel
                remove(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink((donor.root / rel).resolve(), target)
            manifest = read_manifest(run_paths)
            donor_files = read_manifest(donor)["files"]
            manifest["files"].update({rel: donor_files[rel] for rel in mark["outputs"] if rel in donor_files})
            atomic_write_json(run_paths.manifest, manifest)
            atomic_write_json(run_paths.marker(n), {**mark, "adopted_from": str(donor.root)})
            adopted.append(n)
            log(f"  stage {n:02d} {stage.name}: adopted from {donor.root}")
            break
    return adopted


def adopt_run(run_paths: RunPaths, cfg: Config, donors: list[RunPaths], until: int, log=print) -> list[int]:
    """:func:`adopt_stages` for a whole run. The teacher calls of the adopted stages come with them: a run
    without a ledger gets the donor's ledger rows of those stages (so stage 10's cost and the claims table
    count them, never a call made twice), and stage 10 itself can then be adopted when they are all of it."""
    adopted = adopt_stages(run_paths, cfg, donors, until, log)
    if adopted and not run_paths.ledger.exists():
        source = RunPaths(Path(json.loads(run_paths.marker(adopted[0]).read_text())["adopted_from"]))
        names = {f"{n:02d}_{STAGES[n].name}" for n in adopted}
        rows = [r for r in read_jsonl(source.ledger) if r.get("stage") in names] if source.ledger.exists() else []
        if rows:
            write_jsonl(run_paths.ledger, rows)
            adopted += adopt_stages(run_paths, cfg, donors, until, log)  # stage 10 hashes the ledger
    return sorted(set(adopted))


def sweep(spec_path: str | Path, runs_dir: Path | None = None, donors: Sequence[Path] = (), log=print) -> dict:
    """Run every point of a sweep through the stage notebooks, reusing what points share.

    Each point is a run folder ``<runs_dir>/<sweep name>/<point>`` with a generated profile that
    ``extends`` the sweep's profile. Before a point runs, stages that one of ``donors`` (finished runs,
    e.g. the main run and another sweep's points) or an earlier point made with the same config and
    inputs are adopted (:func:`adopt_stages`), and the first donor's synthesis chunk cache is shared,
    so variants reuse generator passes they have in common.
    Returns a summary (also written to ``sweep.json``); raises :class:`StageError` if a point fails.
    """
    import yaml

    from .config import merge_dicts

    spec = load_sweep(spec_path)
    root = Path(runs_dir or RESULTS_DIR) / spec["name"]
    profiles = {}
    for name, over in spec["points"].items():  # validate every point before running any
        text = yaml.safe_dump({"extends": spec["profile"], **merge_dicts(spec.get("set") or {}, over)}, sort_keys=False)
        prof = root / "profiles" / f"{name}.yaml"
        if not prof.exists() or prof.read_text() != text:
            atomic_write_text(prof, text)
        load_profile(prof)
        profiles[name] = prof
    donors = [RunPaths(Path(d)) for d in donors]
    summary = {"name": spec["name"], "spec": str(spec["path"]), "points": {}}
    for name, prof in profiles.items():
        cfg = load_profile(prof)
        run_paths = RunPaths(root / name).make()
        if donors and not (run_paths.data / "synthesis").exists():  # content-addressed: safe to share
            (donors[0].data / "synthesis").mkdir(parents=True, exist_ok=True)
            os.symlink((donors[0].data / "synthesis").resolve(), run_paths.data / "synthesis")
        log(f"sweep {spec['name']}: point {name}")
        adopted = adopt_stages(run_paths, cfg, donors, spec["until"], log)
        t0 = time.monotonic()
        rc = run(str(prof), run_id=name, until=spec["until"], runs_dir=root, log=log, verbose=False)  # logs: its folder
        if rc != 0:
            raise StageError(f"sweep {spec['name']}: point {name} failed; see {run_paths.logs}")
        summary["points"][name] = {"run": str(run_paths.root), "adopted": adopted, "seconds": round(time.monotonic() - t0, 1),
                                   "profile": str(prof)}
        donors.append(run_paths)
    atomic_write_json(root / "sweep.json", summary)
    return summary


def run_sweeps(cfg: Config, run_paths: RunPaths, log=print) -> dict:
    """Stage 11: the profile's ablation and scaling sweeps, inside ``<run>/sweeps/``. This run donates
    every stage the points share with it, and the ablation's points donate to the scaling sweep (a
    scaling point with the ablation's size and data adopts its embedder and scores)."""
    out: dict = {}
    donors = [run_paths.root]
    for kind in ("ablation", "scaling"):
        spec = getattr(cfg.sweeps, kind)
        if spec:
            out[kind] = sweep(spec, runs_dir=run_paths.root / "sweeps", donors=donors, log=log)
            donors += [Path(p["run"]) for p in out[kind]["points"].values()]
    return out


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
            from .report import build

            print(f"report: {build(RunPaths(a.run_dir), include_code=a.code)}")
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
            return synthesize(a.profile, a.run_id, a.shard, a.runs_dir)
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
    from . import assets

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
