"""Stage 09: this run's scores in the paper's tables (Table 1 categories) and the local table."""
from __future__ import annotations

from .. import results
from ..files import atomic_write_json
from ..registry import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    summary = results.run_summary(ctx.run)
    atomic_write_json(ctx.run.file("results"), summary)
    metrics = {"mteb_models": len(summary["mteb"]), "local_models": len(summary["local"]),
               "checks": summary["checks"], "local": {k: v["row"] for k, v in summary["local"].items()}}
    return StageResult(metrics, {"summary": summary})
