"""The claims table (issue 31): each claim of the paper this run measures, with a verdict a reader can trust.

A verdict says *holds* or *fails* only where its interval excludes the null and covers what varies:
for a claim about data or generators, several trainings (seeds) as well as the test pairs
(:func:`speed_utils.stats.decide`); otherwise *undecided at this scale*, with the smallest effect the
design could have detected. An embedder readout that does not beat its shuffled-positives control
cannot see the data: its rows say so instead of giving a verdict. The generators' claims also get
rows measured on the data itself (stage 05's quality rules, :mod:`speed_utils.data_quality`).
"""
from __future__ import annotations

import json

from .evaluate import STS_AVERAGE, trained_label, untrained_label
from .files import read_jsonl
from .profiles import load_run_config
from .results import paper
from .runs import RunPaths
from .stats import Interval, SeededInterval, decide
from .sweep_results import SHUFFLED, TEACHER

BLIND = "readout blind: it does not beat the shuffled-positives control"


def as_interval(d: dict | None, sign: int = 1) -> Interval | None:
    """An interval dict (``to_dict``) as an Interval, negated with ``sign=-1`` (the difference the other way)."""
    if not d:
        return None
    v, lo, hi = sign * d["value"], sign * d["lo"], sign * d["hi"]
    lo, hi = min(lo, hi), max(lo, hi)
    if "seeds" in d:
        return SeededInterval(v, lo, hi, seeds=d["seeds"], se=d.get("se", 0.0))
    return Interval(v, lo, hi)


class Table:
    """The rows being built, each with the same columns."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, claim: str, paper_says: str, measure: str, ci: Interval | None, readout: str = "",
            null: float = 0.0, holds: str | None = None, value: float | None = None) -> None:
        d = decide(ci, null) if holds is None else {"verdict": holds, "detectable": None}
        self.rows.append({"claim": claim, "paper": paper_says, "measured as": measure, "readout": readout,
                          "value": round(ci.value, 3) if ci is not None else value,
                          "ci95": [round(ci.lo, 3), round(ci.hi, 3)] if ci is not None else None,
                          "seeds": getattr(ci, "seeds", None), "detectable": d["detectable"],
                          "holds here": d["verdict"]})


def sees_the_data(readout: dict) -> str:
    """Whether a readout separates the first point's rows from the same rows with shuffled positives:
    "holds" (it sees them), "fails"/"undecided" (it does not), or "not measured" (no control)."""
    first = next((k for k in readout.get("minus_shuffled", {}) if not k.startswith(TEACHER)), None)
    return decide(as_interval(readout["minus_shuffled"][first]))["verdict"] if first else "not measured"


def claims(run: RunPaths, sweeps_intervals: dict | None = None) -> list[dict]:
    """One row per claim of the paper measured by this run and readout (the module's docstring). Reads stage
    05's quality check, stage 08's intervals, stage 10's cost and stage 11's sweep intervals."""

    t, sw = Table(), sweeps_intervals or {}
    _quality_rows(t, _marker(run, 5).get("quality", {}))
    ablation = sw.get("ablation", {}).get("readouts") or {"": sw.get("ablation", {})} if sw.get("ablation") else {}
    for label, ro in ablation.items():
        seeing = sees_the_data(ro)
        blind = seeing not in ("holds", "not measured")
        t.add("The readout sees the data", "(a control of this package: the first point against the same rows "
              "with each positive taken from another row)", f"stage 11: senior+revisor minus {SHUFFLED} (paired by seed)",
              as_interval(next(iter(ro.get("minus_shuffled", {}).values()), None)), label)
        mf = ro.get("minus_first", {})
        for claim, paper_says, key, what in (
                ("DPO improves the generator", "Table 2: senior+revisor 63.2 vs junior+revisor 62.8",
                 "junior+revisor - senior+revisor", "senior+revisor minus junior+revisor"),
                ("The revisor improves the data", "Table 2: senior+revisor 63.2 vs senior 62.9",
                 "senior - senior+revisor", "senior+revisor minus senior"),
                ("Our generators' rows against the teacher's", "§4.2: the small generators' data serves as well as "
                 "the teacher's at a tenth of the calls", f"{TEACHER} - senior+revisor",
                 "senior+revisor minus the teacher's rows (same count)")):
            ci = as_interval(mf.get(key), -1)
            t.add(claim, paper_says, f"stage 11: STS avg, {what} (paired by seed)", ci, label,
                  holds=BLIND if blind and ci is not None else None)
        claim, paper_says, measure, holds = _order_claim(ro, paper(), blind)
        t.add(claim, paper_says, measure, None, label, holds=holds)
    if not (sw.get("scaling", {}).get("readouts")):
        t.add("Log-linear scaling with data", "§4.4, Fig. 4: the score grows log-linearly", "stage 11 scaling sweep", None)
    for label, ro in (sw.get("scaling", {}).get("readouts") or {}).items():
        if not ablation and ro.get("minus_shuffled"):  # the scaling sweep's own control, where no ablation ran
            t.add("The readout sees the data", "(a control of this package)", f"stage 11: the largest size minus "
                  f"{SHUFFLED} (paired by seed)", as_interval(list(ro["minus_shuffled"].values())[-1]), label)
        t.add("Log-linear scaling with data", "§4.4, Fig. 4: the score grows log-linearly",
              "stage 11: slope of STS avg per tenfold data, every size at the same steps", as_interval(ro.get("slope_per_decade")),
              label)
    _trains_rows(t, run, sw, STS_AVERAGE, trained_label, untrained_label)
    _cost_row(t, run)
    for row in t.rows:  # say where a claim this run could not afford is measured (issue 31, item 6)
        if row["holds here"] == "not measured" and row["measured as"].startswith("stage 11"):
            row["measured as"] += f" — {ELSEWHERE}"
    return t.rows


ELSEWHERE = "not in this run's sweeps: `make study` measures it (results/reference/study/claims.json)"


def _quality_rows(t: Table, quality: dict) -> None:
    """The generators' claims measured on their outputs (stage 05, held-out prompts, paired by prompt)."""
    paired = quality.get("rules", {}).get("paired", {})
    for claim, paper_says, key in (("DPO improves the generator", "§4.3: the senior writes better data than the junior",
                                    "senior - junior"),
                                   ("The revisor improves the data", "§3.2.4: revised data is better",
                                    "junior_revised - junior")):
        d = paired.get(key, {}).get("sound")
        t.add(claim, paper_says, f"stage 05: share of outputs passing every data-quality rule, {key} (paired by "
                                 f"prompt, {d['n'] if d else 0} prompts)", as_interval(d), "data-quality rules")


def _order_claim(ro: dict, paper: dict, blind: bool) -> tuple[str, str, str, str]:
    """Table 2's order: holds where each step of the paper's order is a decided gain (paired by seed), fails
    where one is a decided loss, else undecided."""
    order = [r["variant"] for r in paper["table2_ablation"]["rows"]]
    points = ro.get("points", {})
    if not all(p in points for p in order):
        return "The ablation order of Table 2", " > ".join(order), "stage 11 ablation", "not measured"
    ours = sorted(order, key=lambda p: -points[p]["value"])
    steps = [decide(as_interval(ro.get("between", {}).get(f"{a} - {b}")))["verdict"] for a, b in zip(order, order[1:])]
    holds = BLIND if blind else "holds" if all(s == "holds" for s in steps) else \
        "fails" if "fails" in steps else "undecided at this scale"
    return ("The ablation order of Table 2", " > ".join(order),
            "stage 11: points by mean STS avg: " + " > ".join(ours) + " (each step of the paper's order a paired difference)",
            holds)


def _trains_rows(t: Table, run: RunPaths, sw: dict, sts_average: str, trained_label, untrained_label) -> None:
    """Synthetic data trains the embedder: the ablation's first point over its seeds where there is one,
    and stage 08's single training (which no verdict can rest on) in any case."""
    ro = next(iter((sw.get("ablation", {}).get("readouts") or {}).values()), {})
    seeded = next(iter(ro.get("minus_untrained", {}).values()), None)
    if seeded:
        t.add("Synthetic data trains the embedder", "Table 1: 63.4 after training on SPEED data",
              "stage 11: STS avg, senior+revisor minus untrained (paired)", as_interval(seeded),
              next(iter(sw["ablation"]["readouts"])))
    emb = load_run_config(run.config).models.embedder if run.config.exists() else None
    intervals = run.file("score_intervals")
    gain = [r for r in (read_jsonl(intervals) if intervals.exists() else [])
            if r["label"] == trained_label(emb) and r["task"] == f"{sts_average} - {untrained_label(emb)}"]
    ci = as_interval(gain[0]) if gain else None
    t.add("Synthetic data trains the embedder", "Table 1: 63.4 after training on SPEED data",
          "stage 08: STS avg, trained minus untrained (paired test pairs, one training)",
          SeededInterval(ci.value, ci.lo, ci.hi, seeds=1) if ci else None, trained_label(emb) if emb else "")


def _cost_row(t: Table, run: RunPaths) -> None:
    cost = json.loads(run.file("cost").read_text()) if run.file("cost").exists() else {}
    ex = {r["pipeline"]: r for r in cost.get("extrapolation", {}).get("rows", [])}
    speed = next((r for k, r in ex.items() if k.startswith("SPEED")), None)
    e5 = next((r for k, r in ex.items() if "500,000" in k), None)
    if speed and e5:
        t.add("Under a tenth of the teacher calls of E5", "§4.5: 45K calls against 500K",
              f"stage 10: calls at the paper's sizes ({speed['calls']:,} vs {e5['calls']:,}); dollars at this run's "
              f"tokens per call: ${speed['usd']:,.0f} vs ${e5['usd']:,.0f} ({speed['usd'] / e5['usd']:.1%})",
              None, holds="holds" if speed["calls"] / e5["calls"] < 0.1 else "fails",
              value=round(speed["calls"] / e5["calls"], 3))


def _marker(run: RunPaths, stage: int) -> dict:
    return run.read_marker(stage).get("metrics", {})


__all__ = ["claims", "sees_the_data", "as_interval", "BLIND", "ELSEWHERE"]
