"""Stage 09: mteb JSON -> MTEB(eng, v1) category tables, beside the paper's numbers (SPEED Table 1).

* Reads mteb result files in both layouts: the current one (``scores: {split: [{hf_subset,
  main_score, ...}]}``, mteb >= 1.11) and the older one (``{split: {metric: ...}}`` or
  ``{split: {subset: {metric: ...}}}``, whose main score is derived per task type).
* Applies the MTEB(eng, v1) rules (``data/mteb_eng_v1.yaml``): MSMARCO on dev, the English subset
  of multilingual sets, STS17 en-en, and CQADupstack as the mean of its 12 forums.
* Category means and the overall mean (over the 56 datasets, as the paper's "Avg"), counting what
  was evaluated: a category or an average over missing tasks is reported as missing, never as if
  the missing tasks were there.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from statistics import mean

import yaml

from .config import load_run_config
from .paths import PACKAGE_DATA, REFERENCE_DIR
from .runs import RunPaths, read_jsonl
from .stats import average_interval, slope_interval
from .sweeps import load_sweep

REFERENCE = REFERENCE_DIR / "paper.json"
CATEGORIES = ("Classification", "Clustering", "PairClassification", "Reranking", "Retrieval", "STS", "Summarization")
SHORT = {"Classification": "Class.", "Clustering": "Clust.", "PairClassification": "PairCl.", "Reranking": "Rerank",
         "Retrieval": "Retr.", "STS": "STS", "Summarization": "Summ."}
CQA_FORUMS = ("Android", "English", "Gaming", "Gis", "Mathematica", "Physics", "Programmers", "Stats", "Tex",
              "Unix", "Webmasters", "Wordpress")
# Main score of the older layout, per task type: a path into the split's metrics.
OLD_MAIN = {"STS": ("cos_sim", "spearman"), "Summarization": ("cos_sim", "spearman"), "Classification": ("accuracy",),
            "Clustering": ("v_measure",), "PairClassification": ("max", "ap"), "Reranking": ("map",),
            "Retrieval": ("ndcg_at_10",)}


@lru_cache(maxsize=1)
def mteb_eng_v1() -> dict[str, list[dict]]:
    """Category -> [{task, split, subset, main_score}] for the 56 datasets."""
    return yaml.safe_load((PACKAGE_DATA / "mteb_eng_v1.yaml").read_text())


def task_rules() -> dict[str, dict]:
    return {r["task"]: {**r, "category": c} for c, rows in mteb_eng_v1().items() for r in rows}


def paper() -> dict:
    return json.loads(REFERENCE.read_text())


# ---------------------------------------------------------------- reading mteb JSON
@dataclass(frozen=True)
class TaskScore:
    """One result file: the main score of every (split, subset) it holds, in [0, 1]."""

    task: str
    schema: str  # "current" or "pre-1.11"
    scores: dict[tuple[str, str], float]
    revision: str | None = None

    def get(self, split: str, subset: str) -> float | None:
        return self.scores.get((split, subset))

    @property
    def local(self) -> bool:
        """True when made from local copies (speed_utils.evaluate), not from the Hub's data."""
        return bool(self.revision and str(self.revision).startswith("local"))


def _old_main(metrics: dict, task_type: str | None) -> float | None:
    paths = [OLD_MAIN[task_type]] if task_type in OLD_MAIN else list(OLD_MAIN.values())
    if task_type == "PairClassification":
        paths.append(("cos_sim", "ap"))  # files from before "max" existed
    for path in paths:
        node = metrics
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float)):
            return float(node)
    return None


def read_result(path: Path, task_type: str | None = None) -> TaskScore:
    """Parse one mteb result file, current or pre-1.11 layout."""
    d = json.loads(Path(path).read_text())
    if "scores" in d and isinstance(d["scores"], dict):
        scores = {(split, e.get("hf_subset", "default")): float(e["main_score"])
                  for split, entries in d["scores"].items() for e in entries}
        return TaskScore(d.get("task_name") or Path(path).stem, "current", scores, d.get("dataset_revision"))
    name = d.get("mteb_dataset_name") or Path(path).stem
    task_type = task_type or task_rules().get(name, {}).get("category") or _cqa_type(name)
    scores = {}
    for split, block in d.items():
        if not isinstance(block, dict) or split in ("dataset_revision",):
            continue
        direct = _old_main(block, task_type)
        if direct is not None:
            scores[(split, "default")] = direct
        for subset, metrics in block.items():  # multilingual: {split: {subset: metrics}}
            if isinstance(metrics, dict) and (value := _old_main(metrics, task_type)) is not None:
                scores[(split, subset)] = value
    return TaskScore(name, "pre-1.11", scores, d.get("dataset_revision"))


def _cqa_type(name: str) -> str | None:
    return "Retrieval" if name.startswith("CQADupstack") else None


def load_folder(folder: Path) -> dict[str, TaskScore]:
    """Every result file in a folder (mteb's ``model_meta.json`` and our ``settings.json`` skipped)."""
    out = {}
    for f in sorted(Path(folder).glob("*.json")):
        if f.name in ("model_meta.json", "settings.json"):
            continue
        ts = read_result(f)
        out[ts.task] = ts
    return out


# ---------------------------------------------------------------- MTEB(eng, v1) rules
def eng_v1_scores(results: dict[str, TaskScore], include_local: bool = False) -> dict[str, float]:
    """Task -> main score ×100 under the MTEB(eng, v1) rules; only tasks that are there.

    Local copies count only with ``include_local`` (their data may differ from MTEB's)."""
    out = {}
    for task, rule in task_rules().items():
        ts = results.get(task)
        if ts is not None and (include_local or not ts.local):
            value = ts.get(rule["split"], rule["subset"])
            if value is None and rule["subset"] != "default":
                value = ts.get(rule["split"], "default")
            if value is not None:
                out[task] = 100 * value
    forums = [results.get(f"CQADupstack{f}Retrieval") for f in CQA_FORUMS]
    if "CQADupstackRetrieval" not in out and all(forums):
        values = [f.get("test", "default") for f in forums]
        if all(v is not None for v in values):
            out["CQADupstackRetrieval"] = 100 * mean(values)
    return out


def category_table(scores: dict[str, float], groups: dict[str, list[str]] | None = None) -> dict:
    """Category means and the overall mean, with counts.

    ``groups`` maps category -> its tasks (default: MTEB(eng, v1)). A category is averaged only
    when complete; the overall mean only when every task is there. Partial means are given apart,
    labelled with how many tasks they cover.
    """
    groups = groups or {c: [r["task"] for r in rows] for c, rows in mteb_eng_v1().items()}
    table = {"categories": {}, "evaluated": 0, "total": sum(len(t) for t in groups.values())}
    for cat, tasks in groups.items():
        have = [scores[t] for t in tasks if t in scores]
        table["categories"][cat] = {"evaluated": len(have), "total": len(tasks),
                                    "mean": round(mean(have), 2) if have and len(have) == len(tasks) else None,
                                    "partial_mean": round(mean(have), 2) if have else None,
                                    "missing": [t for t in tasks if t not in scores]}
        table["evaluated"] += len(have)
    every = [scores[t] for tasks in groups.values() for t in tasks if t in scores]
    table["avg"] = round(mean(every), 2) if every and table["evaluated"] == table["total"] else None
    table["partial_avg"] = round(mean(every), 2) if every else None
    return table


def describe_coverage(table: dict) -> str:
    """'k of n tasks evaluated' plus which categories are incomplete."""
    incomplete = [f"{SHORT.get(c, c)} {v['evaluated']}/{v['total']}" for c, v in table["categories"].items()
                  if v["evaluated"] < v["total"]]
    text = f"{table['evaluated']} of {table['total']} tasks evaluated"
    return text + (f"; incomplete: {', '.join(incomplete)}" if incomplete else "")


def table_row(label: str, table: dict) -> dict:
    """One printable row: category means (partial ones marked with their coverage) and the average."""
    row = {"model": label}
    for cat, v in table["categories"].items():
        if v["mean"] is not None:
            row[SHORT.get(cat, cat)] = v["mean"]
        elif v["partial_mean"] is not None:
            row[SHORT.get(cat, cat)] = f"{v['partial_mean']:.2f} ({v['evaluated']}/{v['total']})"
        else:
            row[SHORT.get(cat, cat)] = "—"
    row["Avg"] = table["avg"] if table["avg"] is not None else f"— ({table['evaluated']}/{table['total']})"
    return row


def paper_rows(block: str = "table1_zero_shot") -> list[dict]:
    """The paper's rows in the same layout as :func:`table_row`."""
    return [{"model": f"{r['model']} [paper]", **{SHORT[c]: r[c] for c in CATEGORIES}, "Avg": r["avg"]}
            for r in paper()[block]["rows"]]


def deltas(ours: dict, reference: dict) -> dict:
    """Ours minus the reference, per category and for the average, where both are complete numbers."""
    return {k: round(ours[k] - reference[k], 2) for k in reference
            if k != "model" and isinstance(ours.get(k), (int, float)) and isinstance(reference[k], (int, float))}


# ---------------------------------------------------------------- local and proxy tasks
def local_groups(rows: list[dict]) -> dict[str, list[str]]:
    """Category -> tasks for the local/proxy table (categories from the tasks' mteb types)."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r["type"], [])
        if r["task"] not in groups[r["type"]]:
            groups[r["type"]].append(r["task"])
    return {c: groups[c] for c in CATEGORIES if c in groups}


def run_summary(run: RunPaths) -> dict:
    """Stage 09: this run's tables. ``mteb`` holds MTEB(eng, v1) rows from Hub-data results only;
    ``local`` the same layout over local and proxy tasks; ``checks`` compares the released baseline
    with its published MTEB scores where the local data are MTEB's own."""

    rows = list(read_jsonl(run.file("scores")))
    out: dict = {"mteb": {}, "local": {}, "checks": []}
    folders = {r["label"]: run.root / r["results"] for r in rows}  # the folders stage 08 wrote this time
    not_whole = {r["task"] for r in rows if r["source"] != "mteb"}  # a sample of the Hub's data is not MTEB's score
    for label, folder in folders.items():
        table = category_table(eng_v1_scores({t: s for t, s in load_folder(folder).items() if t not in not_whole}))
        if table["evaluated"]:
            out["mteb"][label] = {"row": table_row(label, table), "coverage": describe_coverage(table)}
    local_rows = [r for r in rows if r["source"] != "mteb"]  # local copies, proxies, samples of Hub tasks
    groups = local_groups(local_rows)
    for label in dict.fromkeys(r["label"] for r in local_rows):
        scores = {r["task"]: r["score"] for r in local_rows if r["label"] == label}
        table = category_table(scores, groups)
        out["local"][label] = {"row": table_row(label, table), "coverage": describe_coverage(table),
                               "tasks": scores}
    published = json.loads((REFERENCE.parent / "mteb_published.json").read_text())
    limited = load_run_config(run.config).evaluate.limit
    for r in rows if not limited else ():  # a subsample cannot match a score published on the whole set
        if r["model"] == published["model"] and r["task"] in published["scores"] and r["source"] == "local":
            out["checks"].append({"task": r["task"], "ours": r["score"], "published": published["scores"][r["task"]],
                                  "delta": round(r["score"] - published["scores"][r["task"]], 2)})
    return out


# ---------------------------------------------------------------- sweeps (stage 11)
def sweep_rows(summary: dict) -> list[dict]:
    """One row per sweep point: what it trained on and the trained embedder's scores.

    ``avg`` is the mean main score over the point's tasks (the same tasks for every point)."""
    from .evaluate import trained_label  # mteb takes seconds to import

    out = []
    for name in point_order(summary):
        point = summary["points"][name]
        run = RunPaths(Path(point["run"]))
        cfg = load_run_config(run.config)
        trained = run.read_marker(7)["metrics"]["embedder"]
        synth = run.read_marker(6)["metrics"]
        label = trained_label(cfg.models.embedder)
        scores = {r["task"]: r["score"] for r in read_jsonl(run.file("scores")) if r["label"] == label}
        out.append({"point": name, "run": str(run.root), "label": label,
                    "generator": cfg.synthesis.generator, "revised": cfg.synthesis.revise,
                    "synthetic_kept": synth["kept"], "asked": cfg.embedder.train_examples,
                    "train_examples": trained["examples"],
                    "avg": round(mean(scores.values()), 2) if scores else None, "tasks": scores,
                    "adopted_stages": point["adopted"]})
    return out


def point_order(summary: dict) -> list[str]:
    """A sweep's points in its spec's order: the summary's ``order``, or, in a summary written before it
    recorded one, the spec's own (``sweep.json`` sorts its keys, so ``points`` is alphabetical)."""
    names = summary.get("order")
    if not names:
        try:
            names = list(load_sweep(summary["spec"])["points"])
        except (OSError, KeyError, ValueError):
            names = []
    return [n for n in names if n in summary["points"]] + sorted(set(summary["points"]) - set(names))


def sweep_intervals(kind: str, rows: list[dict], seed: int = 0, untrained: dict | None = None) -> dict:
    """Intervals of a sweep (issue 16): each point's STS average with its 95% bootstrap interval; each
    point minus the first point (the ablation's senior+revisor) on the same resampled pairs; and for
    the scaling sweep, the slope of the log-linear fit with its interval. ``untrained`` (a stage 08 pair
    record of the untrained embedder on the same samples) adds its row and each point's gain over it.
    Points whose stage 08 saved no per-pair record, or scored other pairs than the first, are ``skipped``."""
    from .evaluate import model_pairs, pairable, paired_difference

    records, skipped = {}, []
    for r in rows:
        f = RunPaths(Path(r["run"])).file("sts_pairs")
        rec = json.loads(f.read_text()) if f.exists() else None
        if rec is None or r["label"] not in rec["models"] or (records and not pairable(next(iter(records.values()))[0], rec)):
            skipped.append(r["point"])
            continue
        records[r["point"]] = (rec, model_pairs(rec, r["label"]))
    out: dict = {"points": {}, "minus_first": {}, "minus_untrained": {}, "skipped": skipped}
    if not records:
        return out
    first = next(iter(records))
    base = None
    if untrained and pairable(records[first][0], untrained):
        base = model_pairs(untrained, next(iter(untrained["models"])))
        out["untrained"] = average_interval(base, seed=seed).scaled(100).to_dict()

    for point, (_, pairs) in records.items():
        out["points"][point] = average_interval(pairs, seed=seed).scaled(100).to_dict()
        if point != first:
            out["minus_first"][f"{point} - {first}"] = paired_difference(pairs, records[first][1], seed)
        if base is not None:
            out["minus_untrained"][f"{point} - untrained"] = paired_difference(pairs, base, seed)
    sizes = {r["point"]: r["train_examples"] for r in rows if r["point"] in records}
    if kind == "scaling" and len(set(sizes.values())) >= 2:
        out["slope_per_decade"] = slope_interval(list(sizes.values()), [records[p][1] for p in sizes],
                                                 seed=seed).scaled(100).to_dict()
    return out


def size_warnings(kind: str, rows: list[dict]) -> list[str]:
    """What breaks a sweep's comparison: a point trained on fewer examples than it asked for (stage 06
    kept too few), ablation points of unequal size (Table 2 compares at equal size), or scaling points
    that collapsed onto the same size."""
    notes = [f"{kind} point {r['point']!r} trained on {r['train_examples']} examples, not the {r['asked']} asked: "
             f"that is all its training data held ({r['synthetic_kept']} synthetic rows kept)" for r in rows
             if r.get("asked") and r["train_examples"] < r["asked"]]
    sizes = Counter(r["train_examples"] for r in rows)
    if kind == "ablation" and len(sizes) > 1:
        notes.append("ablation points differ in size (" + ", ".join(f"{r['point']}: {r['train_examples']}" for r in rows)
                     + "): not the equal-size comparison of Table 2")
    if kind == "scaling":
        notes += [f"scaling points {', '.join(r['point'] for r in rows if r['train_examples'] == n)} all trained on {n} examples"
                  for n, c in sizes.items() if c > 1]
    return notes


def loglinear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b·log10(x)``; returns (a, b), b being the gain per tenfold data."""
    import math

    lx = [math.log10(x) for x in xs]
    mx, my = mean(lx), mean(ys)
    b = sum((u - mx) * (v - my) for u, v in zip(lx, ys)) / sum((u - mx) ** 2 for u in lx)
    return my - b * mx, b



# ---------------------------------------------------------------- the claims table (issue 16)
def verdict(lo: float | None, hi: float | None, null: float = 0.0) -> str:
    """"holds" where the whole interval lies above ``null``, "fails" where below, else "undecided"."""
    if lo is None or hi is None:
        return "not measured"
    return "holds" if lo > null else "fails" if hi < null else "undecided"


def _ci(d: dict | None, sign: int = 1) -> tuple[float | None, float | None, float | None]:
    if not d:
        return None, None, None
    v, lo, hi = sign * d["value"], sign * d["lo"], sign * d["hi"]
    return v, min(lo, hi), max(lo, hi)


def claims(run: RunPaths, sweeps_intervals: dict | None = None) -> list[dict]:
    """One row per claim of the paper measured by this run: its number, its 95% interval, and whether
    it holds at this scale. Reads stage 05's quality check, stage 08's intervals, stage 10's cost and
    stage 11's sweep intervals (``sweeps_intervals``, as ``sweep_intervals`` gives them per kind)."""
    from .evaluate import STS_AVERAGE, trained_label, untrained_label

    rows: list[dict] = []

    def add(claim: str, paper_says: str, measure: str, value, lo=None, hi=None, holds: str | None = None, null=0.0):
        rows.append({"claim": claim, "paper": paper_says, "measured as": measure,
                     "value": None if value is None else round(value, 3),
                     "ci95": None if lo is None else [round(lo, 3), round(hi, 3)],
                     "holds here": holds or verdict(lo, hi, null)})

    q = _marker(run, 5).get("quality", {}).get("senior_vs_junior", {})
    lo, hi = (q.get("consistent_ci95") or [None, None]) if q.get("consistent_win_rate") is not None else (None, None)
    add("DPO improves the generator", "§4.3: senior beats junior (Table 2: 63.2 vs 62.8 with the revisor)",
        f"stage 05: teacher prefers the senior in both orders, share of {q.get('prompts_senior_both_orders', 0) + q.get('prompts_junior_both_orders', 0)} consistent prompts",
        q.get("consistent_win_rate"), lo, hi, null=0.5)
    ab = (sweeps_intervals or {}).get("ablation", {}).get("minus_first", {})
    v, lo, hi = _ci(ab.get("junior+revisor - senior+revisor"), -1)
    add("DPO improves the generator", "Table 2: senior+revisor 63.2 vs junior+revisor 62.8",
        "stage 11: STS avg, senior+revisor minus junior+revisor (paired)", v, lo, hi)
    v, lo, hi = _ci(ab.get("senior - senior+revisor"), -1)
    add("The revisor improves the data", "Table 2: senior+revisor 63.2 vs senior 62.9",
        "stage 11: STS avg, senior+revisor minus senior (paired)", v, lo, hi)
    points = (sweeps_intervals or {}).get("ablation", {}).get("points", {})
    order = [r["variant"] for r in paper()["table2_ablation"]["rows"]]
    if all(p in points for p in order):
        ours = sorted(order, key=lambda p: -points[p]["value"])
        add("The ablation order of Table 2", " > ".join(order), "stage 11: points sorted by STS avg: " + " > ".join(ours),
            None, holds="holds" if ours == order else "fails")
    else:
        add("The ablation order of Table 2", " > ".join(order), "stage 11 ablation", None)
    v, lo, hi = _ci((sweeps_intervals or {}).get("scaling", {}).get("slope_per_decade"))
    add("Log-linear scaling with data", "§4.4, Fig. 4: the score grows log-linearly",
        "stage 11: slope of STS avg per tenfold data", v, lo, hi)
    emb = load_run_config(run.config).models.embedder if run.config.exists() else None
    intervals = run.file("score_intervals")
    gain = [r for r in (read_jsonl(intervals) if intervals.exists() else [])
            if r["label"] == trained_label(emb) and r["task"] == f"{STS_AVERAGE} - {untrained_label(emb)}"]
    v, lo, hi = _ci(gain[0] if gain else None)
    add("Synthetic data trains the embedder", "Table 1: 63.4 after training on SPEED data",
        "stage 08: STS avg, trained minus untrained (paired)", v, lo, hi)
    cost = json.loads(run.file("cost").read_text()) if run.file("cost").exists() else {}
    ex = {r["pipeline"]: r for r in cost.get("extrapolation", {}).get("rows", [])}
    speed = next((r for k, r in ex.items() if k.startswith("SPEED")), None)
    e5 = next((r for k, r in ex.items() if "500,000" in k), None)
    if speed and e5:
        add("Under a tenth of the teacher calls of E5", "§4.5: 45K calls against 500K",
            f"stage 10: calls at the paper's sizes ({speed['calls']:,} vs {e5['calls']:,}); dollars at this run's "
            f"tokens per call: ${speed['usd']:,.0f} vs ${e5['usd']:,.0f} ({speed['usd'] / e5['usd']:.1%})",
            speed["calls"] / e5["calls"], holds="holds" if speed["calls"] / e5["calls"] < 0.1 else "fails")
    return rows


def _marker(run, stage: int) -> dict:
    return run.read_marker(stage).get("metrics", {})


__all__ = ["claims", "verdict", "sweep_rows", "sweep_intervals", "size_warnings", "loglinear_fit", "run_summary", "read_result", "load_folder", "eng_v1_scores", "category_table", "table_row", "paper_rows", "deltas",
           "describe_coverage", "local_groups", "paper", "TaskScore", "CATEGORIES"]
