"""Stage 11's tables: one row per sweep point, and intervals that cover the trainings (issue 31).

A point of a sweep with ``seeds`` trains once per seed (``<point>@<seed>``). Each readout (the trained
decoder; MiniLM fine-tuned on the same rows, where the sweep trains it) gets per point the mean STS
average over the seeds with a two-level bootstrap interval (test pairs, then trainings:
:func:`speed_utils.stats.seeded_interval`), each point minus the first (the ablation's
senior+revisor) and minus the shuffled-positives control, paired by seed, and for the scaling sweep the
slope per tenfold data with its two-level interval. A readout whose first point does not beat the
shuffled control cannot see the data, and the claims say so (:mod:`speed_utils.claims`).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from statistics import mean

from .evaluate import model_pairs, pairable, trained_label
from .files import read_jsonl
from .profiles import load_run_config
from .runs import RunPaths
from .stats import seeded_difference, seeded_interval, seeded_slope
from .sweep_spec import load_sweep

SHUFFLED, TEACHER = "shuffled", "teacher"  # the two control points of a sweep spec (issue 31)
CONTROLS = (SHUFFLED, TEACHER)


def point_order(summary: dict) -> list[str]:
    """A sweep's points in its spec's order: the summary's ``order``, or, in a summary written before it
    recorded one, the spec's own (``sweep.json`` sorts its keys, so ``points`` is alphabetical)."""
    names = summary.get("order")
    if not names:
        try:
            names = list(load_sweep(summary["spec"])["points"])
        except (OSError, KeyError, ValueError):
            names = []
    return [n for n in names if n in summary["points"]] + sorted(set(summary["points"]) - set(names))


def sweep_rows(summary: dict) -> list[dict]:
    """One row per sweep point (a point and seed): what it trained on, for how many steps, and each
    readout's scores. ``avg`` and ``tasks`` are the trained decoder's (the first readout)."""

    bases = summary.get("bases") or {}
    out = []
    for name in point_order(summary):
        point = summary["points"][name]
        run = RunPaths(Path(point["run"]))
        cfg = load_run_config(run.config)
        trained = run.read_marker(7)["metrics"]
        synth = run.read_marker(6)["metrics"]
        labels = [trained_label(m) for m in (cfg.models.embedder, cfg.models.baseline_embedder) if m]
        scores = list(read_jsonl(run.file("scores")))
        readouts = {}
        for label in labels:
            tasks = {r["task"]: r["score"] for r in scores if r["label"] == label}
            if tasks:
                readouts[label] = {"avg": round(mean(tasks.values()), 2), "tasks": tasks}
        base, seed = bases.get(name, (name, None))
        first = readouts.get(labels[0], {})
        out.append({"point": name, "base": base, "seed": seed, "run": str(run.root), "label": labels[0],
                    "generator": cfg.synthesis.generator, "revised": cfg.synthesis.revise,
                    "control": SHUFFLED if cfg.embedder.shuffle_positives else
                    TEACHER if "synthetic" not in cfg.embedder.train_on else None,
                    "synthetic_kept": synth["kept"], "asked": cfg.embedder.train_examples,
                    "train_examples": trained["embedder"]["examples"], "steps": trained["embedder"].get("steps"),
                    "avg": first.get("avg"), "tasks": first.get("tasks", {}), "readouts": readouts,
                    "adopted_stages": point["adopted"]})
    return out


def _records(rows: list[dict], label: str) -> tuple[dict, list[str], dict | None]:
    """{base: {seed: pairs}} of one readout, the points left out (no per-pair record, or other pairs than
    the first point's), and the first record (to pair an untrained model with)."""

    runs: dict[str, dict] = {}
    skipped, first = [], None
    for r in rows:
        f = RunPaths(Path(r["run"])).file("sts_pairs")
        rec = json.loads(f.read_text()) if f.exists() else None
        if rec is None or label not in rec["models"] or (first is not None and not pairable(first, rec)):
            skipped.append(r["point"])
            continue
        first = first or rec
        runs.setdefault(r["base"], {})[r["seed"]] = model_pairs(rec, label)
    return runs, skipped, first


def _paired(runs: dict, a: str, b: str, seed: int) -> dict | None:
    """``a`` minus ``b`` over the seeds both trained with, paired by seed."""
    common = [s for s in runs[a] if s in runs[b]]
    if not common:
        return None
    return seeded_difference([runs[a][s] for s in common], [runs[b][s] for s in common], seed=seed).scaled(100).to_dict()


def readout_intervals(kind: str, rows: list[dict], label: str, seed: int = 0, untrained: dict | None = None) -> dict:
    """One readout's intervals over a sweep (the module's docstring); ``untrained``: a stage 08 pair record of
    the untrained embedder on the same samples, for each point's gain over it (the decoder readout)."""

    runs, skipped, record = _records(rows, label)
    out: dict = {"points": {}, "minus_first": {}, "minus_untrained": {}, "minus_shuffled": {}, "between": {},
                 "skipped": skipped}
    if not runs:
        return out
    order = list(runs)
    first = next((b for b in order if b not in CONTROLS), order[0])
    base = None
    if untrained and pairable(record, untrained):
        base = [model_pairs(untrained, next(iter(untrained["models"])))]
        out["untrained"] = seeded_interval(base, seed=seed).scaled(100).to_dict()
    for b in order:
        out["points"][b] = seeded_interval(list(runs[b].values()), seed=seed).scaled(100).to_dict()
        if b != first and (d := _paired(runs, b, first, seed)) is not None:
            out["minus_first"][f"{b} - {first}"] = d
        if SHUFFLED in runs and b != SHUFFLED and (d := _paired(runs, b, SHUFFLED, seed)) is not None:
            out["minus_shuffled"][f"{b} - {SHUFFLED}"] = d
        if base is not None:
            out["minus_untrained"][f"{b} - untrained"] = seeded_difference(list(runs[b].values()), base,
                                                                           seed=seed).scaled(100).to_dict()
    data = [b for b in order if b not in CONTROLS]
    for i, a in enumerate(data):  # every pair of data points, paired by seed (Table 2's order reads them)
        for b in data[i + 1:]:
            if (d := _paired(runs, a, b, seed)) is not None:
                out["between"][f"{a} - {b}"] = d
    sizes = {r["base"]: r["train_examples"] for r in rows if r["base"] in runs and r["base"] not in CONTROLS}
    seeds = [set(runs[b]) for b in sizes]
    if kind == "scaling" and len(set(sizes.values())) >= 2 and seeds and all(s == seeds[0] for s in seeds):
        common = sorted(seeds[0], key=lambda s: (s is None, s))
        out["slope_per_decade"] = seeded_slope(list(sizes.values()), [[runs[b][s] for s in common] for b in sizes],
                                               seed=seed).scaled(100).to_dict()
    return out


def sweep_intervals(kind: str, rows: list[dict], seed: int = 0, untrained: dict | None = None) -> dict:
    """Every readout's :func:`readout_intervals` under ``readouts``; the first readout's (the trained
    decoder, the paper's kind of embedder) also at the top level."""
    labels = list(dict.fromkeys(label for r in rows for label in r.get("readouts") or {r["label"]: None}))
    readouts = {label: readout_intervals(kind, rows, label, seed, untrained if i == 0 else None)
                for i, label in enumerate(labels)}
    primary = readouts[labels[0]] if labels else {"points": {}, "minus_first": {}, "minus_untrained": {},
                                                   "minus_shuffled": {}, "between": {}, "skipped": []}
    return {**primary, "readouts": readouts}


def size_warnings(kind: str, rows: list[dict]) -> list[str]:
    """What breaks a sweep's comparison: a point trained on fewer examples than it asked for (stage 06
    kept too few), ablation points of unequal size (Table 2 compares at equal size), scaling points that
    collapsed onto the same size, and points that trained for different numbers of steps (issue 31: a
    point differs in its data, not in its optimisation)."""
    notes = [f"{kind} point {r['point']!r} trained on {r['train_examples']} examples, not the {r['asked']} asked: "
             f"that is all its training data held ({r['synthetic_kept']} synthetic rows kept)" for r in rows
             if r.get("asked") and r["train_examples"] < r["asked"]]
    per_base = {r.get("base", r["point"]): r for r in rows}
    sizes = Counter(r["train_examples"] for r in per_base.values())
    if kind == "ablation" and len(sizes) > 1:
        notes.append("ablation points differ in size (" + ", ".join(f"{b}: {r['train_examples']}" for b, r in per_base.items())
                     + "): not the equal-size comparison of Table 2")
    if kind == "scaling":
        notes += [f"scaling points {', '.join(b for b, r in per_base.items() if r['train_examples'] == n)} all trained on "
                  f"{n} examples" for n, c in sizes.items() if c > 1]
    steps = {r.get("steps") for r in rows if r.get("steps") is not None}
    if len(steps) > 1:
        notes.append(f"{kind} points trained for different numbers of steps ({', '.join(map(str, sorted(steps)))}): "
                     "set embedder.max_steps in the sweep's `set`")
    return notes


def loglinear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b·log10(x)``; returns (a, b), b being the gain per tenfold data."""

    lx = [math.log10(x) for x in xs]
    mx, my = mean(lx), mean(ys)
    b = sum((u - mx) * (v - my) for u, v in zip(lx, ys)) / sum((u - mx) ** 2 for u in lx)
    return my - b * mx, b


__all__ = ["sweep_rows", "point_order", "sweep_intervals", "readout_intervals", "size_warnings", "loglinear_fit",
           "SHUFFLED", "TEACHER", "CONTROLS"]
