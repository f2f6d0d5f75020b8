"""Stage 03 (§3.2.2): the junior generator, the base model fine-tuned (LoRA) on the seed data."""
from __future__ import annotations

from .. import launch
from ..registry import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    print(launch.batch_arithmetic(ctx.cfg)["junior"])
    result = launch.train("junior", ctx.cfg, ctx.run)  # in this process, or accelerate launch
    return StageResult({**result, "base": ctx.cfg.models.generator}, {"training": result})
