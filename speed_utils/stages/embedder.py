"""Stage 07 (§4.1): the embedder (and the baseline, where the profile names one) trained contrastively
on the synthetic data."""
from __future__ import annotations

from .. import launch
from ..registry import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    ec = ctx.cfg.embedder
    print(launch.batch_arithmetic(ctx.cfg)["embedder"] + f"; tau {ec.temperature}, lr {ec.lr}, epochs {ec.epochs}")
    trained = launch.train("embedder", ctx.cfg, ctx.run)  # in this process, or accelerate launch
    return StageResult({k: {f: v[f] for f in v if f != "path"} for k, v in trained.items()}, {"trained": trained})
