"""Stage 01 (§3.2.1): the teacher brainstorms tasks of every type."""
from __future__ import annotations

from ..registry import StageContext, StageResult
from ..teacher_data import brainstorm_tasks
from ..teacher_endpoint import open_teacher


def run(ctx: StageContext) -> StageResult:
    with open_teacher(ctx.cfg, ctx.run, ctx.name) as teacher:
        metrics = brainstorm_tasks(ctx.cfg, ctx.run, teacher)
        metrics["teacher"] = teacher.summary()
    return StageResult(metrics)
