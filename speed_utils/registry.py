"""The stage registry, the stage context and the done markers: what every stage notebook imports.

One stage is one notebook (``notebooks/NN_*.ipynb``) run in a fresh kernel, and one module of
:mod:`speed_utils.stages` that does its work. The notebook opens a :class:`StageContext`, calls its
stage's ``run(ctx)``, shows what came back, and calls ``ctx.done(result.metrics)``, which writes
``stages/NN.done.json``: the config hash of the sections the stage reads, the hashes of its inputs
and outputs, its metrics, wall time and package versions. The runner (:mod:`speed_utils.runner`)
skips a stage whose marker still matches (same config hash, inputs and outputs unchanged).

Inputs and outputs are named as in :data:`speed_utils.runs.FILES`, the one place their paths are
written; the services read and write them through ``RunPaths.file(name)``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import resolve_path
from .files import atomic_write_json, atomic_write_text, sha256_path
from .profiles import Config, load_profile, load_run_config
from .runs import FILES, RunLock, RunPaths, read_manifest, runner_holds, update_manifest, versions


class StageError(RuntimeError):
    """A stage cannot start or finish; the message names the file or key at fault."""


@dataclass(frozen=True)
class Stage:
    """What a stage reads and writes, as paths relative to the run folder (from names in ``FILES``)."""

    number: int
    name: str
    notebook: str
    config_keys: tuple[str, ...]  # sections or dotted keys whose change invalidates the stage
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()  # hashed when present (e.g. a baseline the profile may skip)
    optional_outputs: tuple[str, ...] = ()  # recorded when the stage wrote them
    config_files: Callable[[Config], list[Path]] | None = None  # files the config names whose content counts


def _files(*names: str) -> tuple[str, ...]:
    return tuple(FILES[n] for n in names)


_TEACHER_KEYS = ("run.seed", "teacher.backend", "teacher.model", "teacher.structured_output")
STAGES: dict[int, Stage] = {s.number: s for s in [
    Stage(0, "environment", "00_environment.ipynb", ("models", "teacher.backend", "teacher.model"),
          outputs=_files("env")),
    Stage(1, "brainstorm", "01_brainstorm.ipynb", (*_TEACHER_KEYS, "brainstorm"),
          outputs=_files("tasks", "brainstorm_rejects")),
    Stage(2, "seed", "02_seed_data.ipynb", (*_TEACHER_KEYS, "seed"), inputs=_files("tasks"),
          outputs=_files("seed", "seed_rejects")),
    Stage(3, "junior", "03_junior_sft.ipynb", ("run.seed", "models.generator", "junior"),
          inputs=_files("seed"), outputs=_files("junior")),
    Stage(4, "senior", "04_senior_dpo.ipynb", (*_TEACHER_KEYS, "models.generator", "senior", "generation"),
          inputs=_files("tasks", "junior"), outputs=_files("root", "prefs", "prefs_rejects", "senior")),
    Stage(5, "revisor", "05_revisor_sft.ipynb",
          (*_TEACHER_KEYS, "models.generator", "senior.k_samples", "revisor", "quality", "generation"),
          inputs=_files("tasks", "root", "junior", "senior"),
          outputs=_files("revisions", "revision_rejects", "revisor", "quality")),
    Stage(6, "synthesis", "06_synthesis.ipynb", ("run.seed", "models.generator", "synthesis", "generation.batch_size"),
          inputs=_files("tasks", "junior", "senior", "revisor"), outputs=_files("synthetic", "synthesis_rejects")),
    Stage(7, "embedder", "07_embedder.ipynb", ("run.seed", "models.embedder", "models.baseline_embedder", "embedder"),
          inputs=_files("synthetic"), optional_inputs=_files("seed"), outputs=_files("embedder"),
          optional_outputs=_files("baseline")),
    Stage(8, "evaluate", "08_evaluate.ipynb",
          ("run.seed", "models.embedder", "models.baseline_embedder", "embedder.max_length", "evaluate"),
          inputs=_files("embedder"), optional_inputs=_files("baseline"),
          outputs=_files("mteb", "scores", "sts_pairs", "score_intervals")),
    Stage(9, "results", "09_results.ipynb", ("evaluate",), inputs=_files("mteb", "scores"), outputs=_files("results")),
    Stage(10, "cost", "10_cost.ipynb", ("teacher.backend", "teacher.model"), optional_inputs=_files("ledger"),
          outputs=_files("cost")),
    Stage(11, "scaling", "11_scaling.ipynb", ("sweeps",), inputs=_files("scores"), outputs=_files("sweeps", "claims"),
          config_files=lambda cfg: [resolve_path(p) for p in (cfg.sweeps.ablation, cfg.sweeps.scaling) if p]),
]}
PRODUCER = {out: s.number for s in STAGES.values() for out in s.outputs + s.optional_outputs}


@dataclass
class StageResult:
    """What a stage's ``run(ctx)`` returns: ``metrics`` for its done marker, and ``shown``, what its
    notebook tables and plots (losses, per-type counts) without recording it."""

    metrics: dict
    shown: dict = field(default_factory=dict)


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
    marker = run.read_marker(stage.number)
    if not marker:
        return False, "not run yet"
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
    import __main__  # the notebook kernel's globals, as they are when the stage starts

    found = [name for name, value in vars(__main__).items() if isinstance(value, str) and (
        name.lower() in SECRET_NAMES or value.startswith(("sk-", "sk_")))]
    if found:
        raise StageError(f"{', '.join(found)}: API keys must not be papermill parameters: papermill writes them "
                         "into the executed notebook, which now holds it (delete that file and rotate the key). "
                         "Put the key in the environment variable named by teacher.api_key_env instead.")


def frozen_config(run: RunPaths, profile: str | Path) -> Config:
    """The run's config: ``config.yaml``, written once by the runner when a run starts (or by the first
    stage run by hand), and read through :func:`~speed_utils.profiles.load_run_config`, as every stage
    and launched training reads it. Under the runner, which wrote it from the profile moments before,
    that is the one parse; a notebook run by hand also loads the profile, and one that has changed
    since the run started is refused, not mixed in."""
    if runner_holds(run.root) and run.config.exists():
        return load_run_config(run.config)
    cfg = load_profile(profile)
    if not run.config.exists():
        atomic_write_text(run.config, cfg.to_yaml())
        return load_run_config(run.config)
    frozen = load_run_config(run.config)
    if frozen.section_hash() != cfg.section_hash():
        raise StageError(f"{run.config} (config hash {frozen.section_hash()}) is not profile {profile} as it is "
                         f"now (hash {cfg.section_hash()}): the profile changed after this run started. "
                         f"`speed-repro run --profile {profile}` writes the run's config anew and reruns what it "
                         "changes; a notebook run by hand reads the run's config as it is.")
    return frozen


class StageContext:
    """What a stage notebook opens first: config, run folder, input checks, then ``done()``.

    >>> ctx = StageContext(run_dir, profile, stage=2)   # doctest: +SKIP
    >>> ctx.done(brainstorm.run(ctx).metrics)            # doctest: +SKIP
    """

    def __init__(self, run_dir: str | Path, profile: str | Path, stage: int):
        self.t0 = time.monotonic()
        refuse_secret_parameters()
        self.stage = STAGES[stage]
        self.profile = profile
        self.run = RunPaths(Path(run_dir).resolve()).make()
        self.lock = RunLock(self.run.root).acquire()  # a no-op under the runner, which holds it
        self.cfg = frozen_config(self.run, profile)
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
