"""Sweep specs: a base profile and its variants (points), where a sweep keeps them, and its summary.

A sweep spec (``params/sweeps/*.yaml``) names a base profile and its points; each point is a run folder
with a generated profile that ``extends`` the base. :mod:`speed_utils.sweeps` runs them (stage 11);
this module only reads specs, so that the results, the budget and the runner can use it without
importing the code that runs sweeps.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import yaml

from .config import resolve_path
from .profiles import ConfigError, merge_dicts
from .runs import RunPaths

SWEEP_KINDS = ("ablation", "scaling")
SUMMARY = "sweep.json"  # a sweep's summary, in the sweep's folder


def sweeps_dir(run: RunPaths) -> Path:
    """Where a run's own sweeps (stage 11) keep their points: ``<run>/sweeps/<name>/<point>``."""
    return run.root / "sweeps"


def load_sweep(path: str | Path) -> dict:
    """A sweep spec: ``name``, ``profile``, ``until`` (last stage), ``set`` (overrides for every point),
    ``points`` (name -> overrides) or ``grid`` (dotted key -> values, every combination), and ``seeds``
    (issue 31): each point trains once per seed (``embedder.seed``: row order, LoRA initialisation and
    subset), as points named ``<point>@<seed>``; ``bases`` maps each to (point, seed)."""
    path = resolve_path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep spec")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"name", "description", "profile", "until", "set", "points", "grid", "seeds"}
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
    seeds = spec.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                              or not all(isinstance(x, int) and x >= 0 for x in seeds)):
        raise ConfigError(f"{path}: seeds: a list of distinct non-negative integers (got {seeds!r})")
    bases = {name: (name, None) for name in points}
    if seeds:
        bases = {f"{name}@{sd}": (name, sd) for name in points for sd in seeds}
        points = {f"{name}@{sd}": merge_dicts(over, {"embedder": {"seed": sd}}) for name, over in points.items() for sd in seeds}
    return {**spec, "path": path, "points": points, "bases": bases, "until": spec.get("until", 8)}
