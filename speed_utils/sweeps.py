"""Sweeps: a spec of profile variants (points), and the adoption that lets points share finished stages.

A sweep spec (``params/sweeps/*.yaml``) names a base profile and its points; each point is a run folder
with a generated profile that ``extends`` the base. Before a point runs, every stage that a finished
run (a donor) made with the same config and inputs is adopted: its outputs are linked, its marker
copied, and nothing is trained or asked of the teacher twice. The runner (:mod:`speed_utils.runner`)
runs the points; stage 11 reads their summaries (:func:`read_summaries`).
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import yaml

from .config import Config, ConfigError, resolve_path
from .registry import STAGES, StageError, expected_marker, marker_matches
from .runs import RunPaths, atomic_write_json, read_jsonl, read_manifest, remove, sha256_path, write_jsonl

SWEEP_KINDS = ("ablation", "scaling")
SUMMARY = "sweep.json"  # a sweep's summary, in the sweep's folder


def sweeps_dir(run: RunPaths) -> Path:
    """Where a run's own sweeps (stage 11) keep their points: ``<run>/sweeps/<name>/<point>``."""
    return run.root / "sweeps"


def load_sweep(path: str | Path) -> dict:
    """A sweep spec: ``name``, ``profile``, ``until`` (last stage), ``set`` (overrides for every point),
    and ``points`` (name -> overrides) or ``grid`` (dotted key -> values, every combination)."""
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


def summary_path(run: RunPaths, spec_path: str | Path) -> Path:
    """Where the runner writes a sweep's summary inside a run (``<run>/sweeps/<name>/sweep.json``)."""
    return sweeps_dir(run) / load_sweep(spec_path)["name"] / SUMMARY


def read_summaries(cfg: Config, run: RunPaths) -> dict:
    """The summaries of the profile's sweeps (kind -> summary), which the runner made before stage 11."""
    out = {}
    for kind in SWEEP_KINDS:
        spec = getattr(cfg.sweeps, kind)
        if spec:
            path = summary_path(run, spec)
            if not path.exists():
                raise StageError(f"{path} is missing: the runner runs the {kind} sweep before stage 11 "
                                 f"(speed-repro run --profile {cfg.name} --from 11)")
            out[kind] = json.loads(path.read_text())
    return out
