"""Stage 08 (§4.2): the trained embedder, the untrained one and the baselines on the MTEB-format tasks,
each score with its bootstrap interval."""
from __future__ import annotations

from .. import evaluate
from ..registry import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    return StageResult(evaluate.evaluate_stage(ctx.cfg, ctx.run))
