"""Stage 04 (§3.2.3): the junior samples several outputs per prompt, the teacher judges each list,
and DPO on the (best, worst) pairs turns the junior into the senior."""
from __future__ import annotations

from .. import align, launch
from ..registry import StageContext, StageResult
from ..teacher_endpoint import open_teacher


def run(ctx: StageContext) -> StageResult:
    root = align.root_data(ctx.cfg, ctx.run)
    with open_teacher(ctx.cfg, ctx.run, ctx.name) as teacher:
        judged = align.judge_root(ctx.cfg, ctx.run, teacher, root)
        judged["teacher"] = teacher.summary()
    print(launch.batch_arithmetic(ctx.cfg)["senior"])
    result = launch.train("senior", ctx.cfg, ctx.run)  # in this process, or accelerate launch
    return StageResult({"judgements": judged, **result, "base": ctx.cfg.models.generator},
                       {"judgements": judged, "training": result})
