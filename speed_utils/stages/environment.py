"""Stage 00: what would stop the run (pre-flight), the versions, the hardware and the named models."""
from __future__ import annotations

from .. import environment, preflight
from ..profiles import profile_path
from ..registry import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    """Check before any teacher call is paid for; a failed check stops the run here."""
    checks = preflight.check(ctx.cfg, profile_path(ctx.profile))
    preflight.require(checks)
    env = environment.report(ctx.cfg, ctx.run, checks)
    metrics = {"models": len(env["models"]), "use_hub": env["use_hub"], "gpus": len(env["hardware"]["gpus"]),
               "cpu_count": env["hardware"]["cpu_count"], "preflight": [f"{c.status} {c.name}" for c in checks]}
    return StageResult(metrics, {"checks": checks, "env": env})
