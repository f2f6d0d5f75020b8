"""Stage 02 (§3.2.2): the teacher writes the seed examples the junior learns from."""
from __future__ import annotations

from ..registry import StageContext, StageResult
from ..teacher_data import seed_examples
from ..teacher_endpoint import open_teacher


def run(ctx: StageContext) -> StageResult:
    with open_teacher(ctx.cfg, ctx.run, ctx.name) as teacher:
        metrics = seed_examples(ctx.cfg, ctx.run, teacher)
        metrics["teacher"] = teacher.summary()
    return StageResult(metrics)
