"""Stage 06 (§3.3): the senior writes an example per prompt, the revisor revises it; the valid ones are
kept and deduplicated into ``synthetic.jsonl``."""
from __future__ import annotations

from .. import scale, synthesis
from ..registry import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    made = synthesis.make_chunks(ctx.cfg, ctx.run, remote=scale.executor_for(ctx.cfg))
    return StageResult({"chunks": made, **synthesis.merge(ctx.cfg, ctx.run)})
