"""Stage 05 (§3.2.4): the teacher revises the generators' outputs, the revisor learns to revise, and a
quality check compares junior, senior and revisor on held-out prompts."""
from __future__ import annotations

from .. import align, launch
from ..registry import StageContext, StageResult
from ..teacher_endpoint import open_teacher


def run(ctx: StageContext) -> StageResult:
    with open_teacher(ctx.cfg, ctx.run, ctx.name) as teacher:
        revised = align.revise_root(ctx.cfg, ctx.run, teacher)
        revised["teacher"] = teacher.summary()
    print(launch.batch_arithmetic(ctx.cfg)["revisor"])
    result = launch.train("revisor", ctx.cfg, ctx.run)  # in this process, or accelerate launch
    with open_teacher(ctx.cfg, ctx.run, ctx.name) as teacher:
        quality = align.quality_check(ctx.cfg, ctx.run, teacher)
    return StageResult({"revisions": revised, **result, "quality": quality, "base": ctx.cfg.models.generator},
                       {"revisions": revised, "training": result, "quality": quality})
