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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from statistics import mean

import yaml

from .files import read_jsonl
from .paths import PACKAGE_DATA, REFERENCE_DIR
from .profiles import load_run_config
from .runs import RunPaths

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


__all__ = ["run_summary", "read_result", "load_folder", "eng_v1_scores", "category_table", "table_row", "paper_rows", "deltas",
           "describe_coverage", "local_groups", "paper", "TaskScore", "CATEGORIES"]
