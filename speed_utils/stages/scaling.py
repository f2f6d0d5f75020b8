"""Stage 11: the ablation (Table 2) and scaling (Fig. 4) sweeps with their intervals, and the claims
table: one row per claim of the paper measured here. The sweeps' points run here, each a run of its
own through the runner (:func:`speed_utils.sweeps.run_sweeps`); a rerun adopts every finished point."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from .. import claims, evaluate, sweep_results, sweeps
from ..files import atomic_write_json
from ..profiles import load_run_config
from ..registry import StageContext, StageResult
from ..runs import RunPaths


def run(ctx: StageContext) -> StageResult:
    summaries = sweeps.run_sweeps(ctx.cfg, ctx.run, log=print)
    tables = {kind: sweep_results.sweep_rows(summary) for kind, summary in summaries.items()}
    # the untrained embedder on the sweeps' own samples (scored once, cached): every point's gain over it
    untrained = {}
    for kind, rows in tables.items():
        if rows:
            first = RunPaths(Path(rows[0]["run"]))
            untrained[kind] = evaluate.untrained_record(load_run_config(first.config), first,
                                                        ctx.path("sweeps/untrained-mteb"))
    intervals = {kind: sweep_results.sweep_intervals(kind, rows, seed=ctx.cfg.run.seed, untrained=untrained.get(kind))
                 for kind, rows in tables.items()}
    fit = scaling_fit(tables.get("scaling", []), intervals.get("scaling", {}))
    claim_rows = claims.claims(ctx.run, intervals)
    atomic_write_json(ctx.run.file("claims"), claim_rows)
    # a comparison is only as fair as its sizes: say so when a point trained on fewer rows than it asked for
    size_notes = {kind: sweep_results.size_warnings(kind, rows) for kind, rows in tables.items()}
    for note in sum(size_notes.values(), []):
        print("WARNING:", note, file=sys.stderr)
    atomic_write_json(ctx.run.file("sweeps"), {"sweeps": summaries, "tables": tables, "intervals": intervals,
                                              "loglinear_fit": fit, "size_warnings": size_notes})
    metrics = {kind: [{k: r[k] for k in ("point", "train_examples", "steps", "avg", "adopted_stages")} for r in rows]
               for kind, rows in tables.items()} | {
        "intervals": intervals, "loglinear_fit": fit, "size_warnings": size_notes,
        "claims": {" | ".join((r["claim"], r["readout"], r["measured as"][:40])): r["holds here"] for r in claim_rows}}
    return StageResult(metrics, {"sweeps": summaries, "tables": tables, "intervals": intervals, "fit": fit,
                                 "claims": claim_rows})


def scaling_fit(rows: list[dict], intervals: dict) -> dict | None:
    """The log-linear fit of the STS average on the training examples (Fig. 4), with the slope's interval;
    None with fewer than two sizes."""
    pts = sorted((r["train_examples"], r["avg"]) for r in rows if r["avg"] is not None and not r.get("control"))
    if len({x for x, _ in pts}) < 2:
        return None
    a, b = sweep_results.loglinear_fit(*zip(*pts))
    return {"a": round(a, 3), "b_per_decade": round(b, 3), "b_ci95": intervals.get("slope_per_decade")}


def fitted(fit: dict, xs) -> list[float]:
    """The fit's line at ``xs`` (for the plot)."""
    return [fit["a"] + fit["b_per_decade"] * math.log10(x) for x in xs]
