"""Stage 11's sweeps (SPEED Table 2 and §4.4): every point of a spec run through the stage notebooks.

Each point is a run folder ``<run>/sweeps/<sweep name>/<point>`` with a generated profile that
``extends`` the sweep's profile (:mod:`speed_utils.sweep_spec`). Before a point runs, every stage that a
finished run (a donor: the main run, an earlier point, another sweep's points) made with the same config
and inputs is adopted (:mod:`speed_utils.adoption`), so nothing is trained or asked of the teacher twice.
Stage 11's ``run(ctx)`` calls :func:`run_sweeps`; the runner runs stages and nothing else.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import yaml

from .adoption import adopt_stages
from .files import atomic_write_json, atomic_write_text
from .paths import RESULTS_DIR
from .profiles import Config, load_profile, merge_dicts
from .registry import STAGES, StageError
from .runner import run
from .runs import RunPaths
from .sweep_spec import SUMMARY, SWEEP_KINDS, load_sweep, sweeps_dir


def sweep(spec_path: str | Path, runs_dir: Path | None = None, donors: Sequence[Path] = (), log=print) -> dict:
    """Run every point of a sweep through the stage notebooks, reusing what points share.

    Each point is a run folder ``<runs_dir>/<sweep name>/<point>`` with a generated profile that
    ``extends`` the sweep's profile. Before a point runs, stages that one of ``donors`` (finished runs,
    e.g. the main run and another sweep's points) or an earlier point made with the same config and
    inputs are adopted (:func:`adopt_stages`), and the first donor's synthesis chunk cache is shared,
    so variants reuse generator passes they have in common.
    Returns a summary (also written to ``sweep.json``); raises :class:`StageError` if a point fails.
    """
    spec = load_sweep(spec_path)
    root = Path(runs_dir or RESULTS_DIR) / spec["name"]
    profiles = {}
    for name, over in spec["points"].items():  # validate every point before running any
        text = yaml.safe_dump({"extends": spec["profile"], **merge_dicts(spec.get("set") or {}, over)}, sort_keys=False)
        prof = root / "profiles" / f"{name}.yaml"
        if not prof.exists() or prof.read_text() != text:
            atomic_write_text(prof, text)
        profiles[name] = prof, load_profile(prof)
    donors = [RunPaths(Path(d)) for d in donors]
    # "order": the spec's order of the points (the JSON file sorts "points" by name); its first point is the
    # one the others are compared with (the ablation's senior+revisor)
    summary = {"name": spec["name"], "spec": str(spec["path"]), "order": list(profiles), "points": {},
               "bases": spec["bases"]}  # point -> (the spec's point, its seed)
    for name, (prof, cfg) in profiles.items():
        run_paths = RunPaths(root / name).make()
        if donors and not run_paths.synthesis_chunks.exists():  # content-addressed: safe to share
            donors[0].synthesis_chunks.mkdir(parents=True, exist_ok=True)
            os.symlink(donors[0].synthesis_chunks.resolve(), run_paths.synthesis_chunks)
        log(f"sweep {spec['name']}: point {name}")
        adopted = adopt_stages(run_paths, cfg, donors, spec["until"], log)
        t0 = time.monotonic()
        rc = run(str(prof), run_id=name, until=spec["until"], runs_dir=root, log=log, verbose=False)  # logs: its folder
        if rc != 0:
            raise StageError(f"sweep {spec['name']}: point {name} failed; see {run_paths.logs}")
        summary["points"][name] = {"run": str(run_paths.root), "adopted": adopted, "seconds": round(time.monotonic() - t0, 1),
                                   "profile": str(prof)}
        donors.append(run_paths)
    atomic_write_json(root / SUMMARY, summary)
    return summary


def run_sweeps(cfg: Config, run_paths: RunPaths, log=print) -> dict:
    """Stage 11: the profile's ablation and scaling sweeps, inside ``<run>/sweeps/``. This run donates
    every stage the points share with it, and the ablation's points donate to the scaling sweep (a
    scaling point with the ablation's size and data adopts its embedder and scores). So do the points of
    the runs this run adopted its stages from: a study that repeats a point the default run's stage 11
    already ran adopts it whole."""
    out: dict = {}
    donors, donated = [run_paths.root], donated_points(run_paths)
    for kind in SWEEP_KINDS:
        spec = getattr(cfg.sweeps, kind)
        if spec:
            out[kind] = sweep(spec, runs_dir=sweeps_dir(run_paths), donors=donors + donated, log=log)
            donors += [Path(p["run"]) for p in out[kind]["points"].values()]
    return out


def donated_points(run_paths: RunPaths) -> list[Path]:
    """The sweep points of the runs that ``run_paths`` adopted stages from (``adopted_from`` in its markers)."""
    sources = []
    for n in STAGES:
        source = run_paths.read_marker(n).get("adopted_from")
        if source and source not in sources:
            sources.append(source)
    return [c.parent for s in sources for c in sorted(sweeps_dir(RunPaths(Path(s))).glob("*/*/config.yaml"))]


__all__ = ["sweep", "run_sweeps", "donated_points"]
