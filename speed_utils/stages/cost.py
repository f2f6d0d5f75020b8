"""Stage 10 (§4.5, Table 5): the teacher's calls, tokens and dollars, per stage and projected to the
paper's sizes beside an E5-style pipeline."""
from __future__ import annotations

from .. import cost, results
from ..files import atomic_write_json
from ..registry import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    model = ctx.cfg.teacher.model
    per_stage = cost.stage_table(ctx.run.ledger, model)
    projected = cost.extrapolate(ctx.run.ledger, model)
    atomic_write_json(ctx.run.file("cost"), {"per_stage": per_stage, "extrapolation": projected,
                                            "paper": results.paper()["cost"]["rows"],
                                            "prices_as_of": cost.prices()["as_of"]})
    metrics = {"calls": sum(r["calls"] for r in per_stage),
               "tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in per_stage),
               "extrapolation": projected.get("rows"), "per_call_tokens": projected["per_call_tokens"]}
    return StageResult(metrics, {"per_stage": per_stage, "extrapolation": projected})
