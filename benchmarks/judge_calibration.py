"""Issue 31, item 4: the two-order judge against the calibrated one on the same lists, with the cpu profile's
teacher (Qwen2.5-Coder-1.5B on llama.cpp).

The lists are the junior samples that stage 04 of the committed reference runs judged
(``results/reference/*/root.jsonl``: 3 outputs a list). Each judge sees every list: the two-order
judge twice (as sampled, reversed), the calibrated judge three times (every rotation), its preference
read from the "best" token's probabilities. Printed per judge: pairs kept (share of lists), the
judge's agreement with itself, its position bias, and how often the chosen output passes at least as
many data-quality rules (speed_utils.data_quality) as the rejected one. Replies are cached in
``results/bench/judge/``: a rerun asks the teacher nothing.

    .venv/bin/python benchmarks/judge_calibration.py [--runs results/reference/cpu ...] [--margin 0.15]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import machine, report

ROOT = Path(__file__).resolve().parents[1]


def lists(runs: list[Path]) -> list[dict]:
    from speed_utils.files import read_jsonl

    out = []
    for run in runs:
        for row in read_jsonl(run / "root.jsonl"):
            out.append({**row, "id": f"{run.name}/{row['id']}"})
    return out


def passes(row: dict, text: str) -> int:
    from speed_utils import data_quality

    return sum(bool(v) for v in data_quality.check_output(row["task_type"], text, {}, row.get("task") or "").values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="*", type=Path,
                    default=sorted(p.parent for p in (ROOT / "results/reference").glob("*/root.jsonl")))
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--margin", type=float, default=0.15)
    a = ap.parse_args()

    from speed_utils import align
    from speed_utils.profiles import load_profile
    from speed_utils.runs import RunPaths
    from speed_utils.files import read_jsonl
    from speed_utils.teacher_endpoint import open_teacher

    base = load_profile(a.profile)
    root = lists(a.runs)
    by_id = {r["id"]: r for r in root}
    out = {}
    for name, over in (("orders", {"judge": "orders", "judge_orders": 2}),
                       ("calibrated", {"judge": "calibrated", "judge_margin": a.margin})):
        cfg = base.model_copy(update={"senior": base.senior.model_copy(update=over)})
        run = RunPaths(ROOT / "results/bench/judge" / name).make()
        t0 = time.monotonic()
        with open_teacher(cfg, run, "bench") as teacher:
            metrics = align.judge_root(cfg, run, teacher, root)
        prefs = list(read_jsonl(run.file("prefs")))
        agree = [passes(by_id[p["id"]], p["chosen"]) >= passes(by_id[p["id"]], p["rejected"]) for p in prefs]
        out[name] = {**{k: metrics.get(k) for k in ("lists", "judgements", "pairs", "pairs_share", "self_agreement",
                                                    "self_agreement_ci95", "shown_first_named_best", "first_shown_mass",
                                                    "mean_margin", "rejected", "no_token_probabilities")},
                     "chosen_passes_at_least_as_many_rules": f"{sum(agree)}/{len(agree)}",
                     "best": {p["id"]: p["best"] for p in prefs}, "seconds": round(time.monotonic() - t0, 1)}
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "best"}), flush=True)
    both = set(out["orders"]["best"]) & set(out["calibrated"]["best"])
    same = sum(out["orders"]["best"][i] == out["calibrated"]["best"][i] for i in both)
    report("judge calibration: pairs kept, calibrated / two orders",
           (out["calibrated"]["pairs"] / out["orders"]["pairs"]) if out["orders"]["pairs"] else None,
           {**machine(), "runs": [p.name for p in a.runs], "lists": len(root), "margin": a.margin,
            "orders": {k: v for k, v in out["orders"].items() if k != "best"},
            "calibrated": {k: v for k, v in out["calibrated"].items() if k != "best"},
            "same_best_where_both_keep": f"{same}/{len(both)}"},
           target="pairs from at least half of the lists")


if __name__ == "__main__":
    main()
