"""Which tasks stage 08 evaluates, and where each one's data comes from (SPEED §4.1 evaluates on MTEB).

A profile names MTEB tasks (``evaluate.local_tasks``; STS12–15, SICK-R, Banking77, MSRP in ``cpu``).
Each gets the first source that is at hand, so that a clone of the project alone still runs:

1. **MTEB on the Hub** (``mteb``), where the Hub is in use (``run.offline``, ``HF_HUB_OFFLINE``).
2. **Local copies** of MTEB's test sets in a folder the user names: ``evaluate.local_tasks_dir`` in the
   profile, else the environment variable ``$SPEED_REPRO_MTEB_LOCAL`` (CI names ``../shared/data/mteb_local``).
   Each is the real mteb task class reading local files; its dataset revision reads ``local-<hash>``
   so its results can never pass for the Hub's. Where the data differ from MTEB's, the task's note says so.
3. **Proxy tasks** from data that PyPI wheels ship (gensim's Lee document-similarity set and Pang & Lee
   polarity), when no named task found a source (``evaluate.fallback_tasks``) or where a profile asks
   for them (``evaluate.proxy_tasks``). Their scores are not MTEB's, and every table says so.

:func:`plan` decides, :func:`describe` says it in the line before a run, :func:`build` makes the mteb
task objects. A ``limit`` draws the same seeded sample of test rows from every source.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from . import assets
from .config import MTEB_LOCAL_ENV, resolve_path
from .paths import PACKAGE_DATA

if TYPE_CHECKING:
    from .profiles import Config

PROXY_ASSET = "gensim-test-data"
ASYMMETRIC = ("Retrieval", "Reranking", "InstructionRetrieval")  # instruction on queries only


@lru_cache(maxsize=1)
def instructions() -> dict:
    return yaml.safe_load((PACKAGE_DATA / "instructions.yaml").read_text())


def instruction_for(task_name: str, task_type: str) -> str:
    """E5's instruction for a task, or the default of its type."""
    table = instructions()
    return table["tasks"].get(task_name) or table["types"].get(task_type) or table["types"]["STS"]


# ---------------------------------------------------------------- readers of local files
def _sts_tsv(folder: Path) -> list[dict]:
    """SemEval STS files: ``score<TAB>s1<TAB>s2``; unscored lines (STS15) are skipped."""
    rows = []
    for f in sorted(folder.glob("*.tsv")):
        for line in f.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[0].strip():
                rows.append({"sentence1": parts[1], "sentence2": parts[2], "score": float(parts[0])})
    return rows


def _sick(folder: Path) -> list[dict]:
    with open(folder / "SICK_test_annotated.txt", encoding="utf-8") as f:
        return [{"sentence1": r["sentence_A"], "sentence2": r["sentence_B"], "score": float(r["relatedness_score"])}
                for r in csv.DictReader(f, delimiter="\t")]


def _banking(folder: Path) -> dict[str, list[dict]]:
    labels = {c: i for i, c in enumerate(json.loads((folder / "categories.json").read_text()))}
    out = {}
    for split in ("train", "test"):
        with open(folder / f"{split}.csv", encoding="utf-8") as f:
            out[split] = [{"text": r["text"], "label": labels[r["category"]]} for r in csv.DictReader(f)]
    return out


def _msrp(folder: Path) -> list[dict]:
    with open(folder / "msr-para-test.tsv", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [{"sentence1": r[3], "sentence2": r[4], "labels": int(r[0])} for r in rows[1:] if len(r) >= 5]


def _lee(folder: Path) -> list[dict]:
    docs = [d.strip() for d in (folder / "lee.cor").read_text(encoding="latin-1").splitlines() if d.strip()]
    sims = [[float(x) for x in line.split()] for line in (folder / "similarities0-1.txt").read_text().splitlines()]
    return [{"sentence1": docs[i], "sentence2": docs[j], "score": sims[i][j]}
            for i in range(len(docs)) for j in range(i + 1, len(docs))]


def _polarity(folder: Path) -> dict[str, list[dict]]:
    """Pang & Lee sentences, alternately to train and test within each class."""
    rows = []
    for line in (folder / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines():
        label, _, text = line.partition(" ")
        rows.append({"text": text.strip(), "label": int(label == "__label__pos")})
    split: dict[str, list[dict]] = {"train": [], "test": []}
    for c in (0, 1):
        for i, r in enumerate(r for r in rows if r["label"] == c):
            split["train" if i % 2 == 0 else "test"].append(r)
    return split


# ---------------------------------------------------------------- the tasks this package reads from files
@dataclass(frozen=True)
class FileTask:
    """One task this package can read from files: where, how, and how its data differ from MTEB's."""

    name: str
    folder: str  # subfolder of the local copies, or "" for the proxy asset's folder
    read: Callable[[Path], Any]
    kind: str  # "local" (a copy of an MTEB test set) or "proxy" (not in MTEB)
    note: str = ""  # how the data differ from what MTEB evaluates ("": the same data)
    own: tuple[str, str, str] | None = None  # (type, main score, reference) of a task mteb does not have


FILE_TASKS = {t.name: t for t in (
    FileTask("STS12", "sts12", _sts_tsv, "local",
             "local copy lacks MSRvid: 2,358 of MTEB's 3,108 pairs; not comparable with published STS12"),
    FileTask("STS13", "sts13", _sts_tsv, "local"),
    FileTask("STS14", "sts14", _sts_tsv, "local"),
    FileTask("STS15", "sts15", _sts_tsv, "local"),
    FileTask("SICK-R", "sickr", _sick, "local", "local copy is the 4,927-pair SICK test part; MTEB uses all 9,927 pairs"),
    FileTask("Banking77Classification", "banking77", _banking, "local"),
    FileTask("MSRParaphraseCorpus", "msrp", _msrp, "local",
             "not an MTEB task: the MSR paraphrase corpus test set, MTEB's PairClassification metric",
             ("PairClassification", "max_ap", "https://www.microsoft.com/en-us/download/details.aspx?id=52398")),
    FileTask("LeeDocSTS", "", _lee, "proxy",
             "proxy task from gensim's test data (50 news documents, 1,225 human-scored pairs); not in MTEB",
             ("STS", "cosine_spearman", "https://www.michaeldlee.com/publications")),
    FileTask("PangLeePolarityClassification", "", _polarity, "proxy",
             "proxy task from gensim's test data (200 sentences, 2 classes); not in MTEB",
             ("Classification", "accuracy", "https://www.cs.cornell.edu/people/pabo/movie-review-data/")),
)}
LOCAL = {n: t for n, t in FILE_TASKS.items() if t.kind == "local"}
PROXY = {n: t for n, t in FILE_TASKS.items() if t.kind == "proxy"}
NOTES = {n: t.note for n, t in FILE_TASKS.items() if t.note}


# ---------------------------------------------------------------- where each task comes from
@dataclass(frozen=True)
class Planned:
    """One task of a run and its source: ``mteb`` (the Hub), ``local`` (copies in ``folder``) or ``proxy``."""

    name: str
    source: str
    folder: Path | None = None
    task: Any = field(default=None, compare=False)  # a benchmark's own task object (its splits as configured)


@dataclass(frozen=True)
class TaskPlan:
    tasks: tuple[Planned, ...]
    skipped: tuple[str, ...]  # what was left out, and why
    local_dir: Path | None  # the folder of local copies in use, if any
    local_from: str  # where that folder was named: "evaluate.local_tasks_dir", "$SPEED_REPRO_MTEB_LOCAL" or ""


def local_dir(cfg: Config) -> tuple[Path | None, str]:
    """The folder of local copies, and where it was named (the profile, or the environment)."""
    if not cfg.evaluate.local_tasks_dir:
        return None, ""
    folder = resolve_path(cfg.evaluate.local_tasks_dir)
    named = os.environ.get(MTEB_LOCAL_ENV, "").strip()
    by_env = bool(named) and Path(named).expanduser().resolve() == folder.resolve()
    return folder, f"${MTEB_LOCAL_ENV}" if by_env else "evaluate.local_tasks_dir"


@lru_cache(maxsize=None)
def in_mteb(name: str) -> bool:
    import mteb

    try:
        mteb.get_task(name)
        return True
    except KeyError:
        return False


def plan(cfg: Config, use_hub: bool) -> TaskPlan:
    """Each task of the profile with the first source at hand (the module's docstring)."""
    e, tasks, skipped = cfg.evaluate, [], []
    if e.benchmark or e.tasks:
        if use_hub:
            import mteb

            tasks += [Planned(t.metadata.name, "mteb", task=t) for t in mteb.get_benchmark(e.benchmark).tasks] \
                if e.benchmark else []
            tasks += [Planned(n, "mteb") for n in e.tasks]
        else:
            skipped.append(f"{e.benchmark or ', '.join(e.tasks)}: needs the Hugging Face Hub, which is not in use")
    folder, named_in = local_dir(cfg)
    missing = []
    for name in [n for n in e.local_tasks if n not in {t.name for t in tasks}]:  # each task once
        if use_hub and in_mteb(name):
            tasks.append(Planned(name, "mteb"))
        elif folder is not None and name in LOCAL and (folder / LOCAL[name].folder).is_dir():
            tasks.append(Planned(name, "local", folder))
        else:
            missing.append(name)
    if missing:
        where = f"not in {folder}" if folder else \
            f"no local copies named (evaluate.local_tasks_dir or ${MTEB_LOCAL_ENV})"
        skipped.append(f"{', '.join(missing)}: {'not on the Hub, and ' if use_hub else 'the Hub is not in use, and '}"
                       f"{where}")
    proxies = list(e.proxy_tasks)
    if not any(t.source in ("mteb", "local") for t in tasks):  # nothing of MTEB's: evaluate what the wheels ship
        proxies += [n for n in e.fallback_tasks if n not in proxies]
    tasks += [Planned(n, "proxy") for n in proxies]  # the wheel's folder is fetched when the tasks are built
    return TaskPlan(tuple(tasks), tuple(skipped), folder, named_in)


def describe(p: TaskPlan) -> str:
    """One line: which source each task has (printed before a run and by ``speed-repro validate``)."""
    parts = []
    for source, words in (("mteb", "from MTEB on the Hugging Face Hub"),
                          ("local", f"from local copies in {p.local_dir} ({p.local_from})"),
                          ("proxy", "proxy tasks from PyPI wheels (gensim's test data): not MTEB tasks, "
                                    "their scores are not comparable with MTEB's")):
        names = [t.name for t in p.tasks if t.source == source]
        if names:
            parts.append(f"{', '.join(names)} {words}")
    line = "evaluation tasks: " + ("; ".join(parts) or "none")
    return line + "".join(f"\n  left out: {s}" for s in p.skipped)


# ---------------------------------------------------------------- the mteb task objects
def _base_class(name: str):
    """The mteb task class of ``name`` and its metadata (this package's own for tasks mteb lacks)."""
    import mteb
    from mteb import TaskMetadata
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.pair_classification import AbsTaskPairClassification
    from mteb.abstasks.sts import AbsTaskSTS

    spec = FILE_TASKS.get(name)
    if spec is not None and spec.own is not None:
        ttype, score, ref = spec.own
        base = {"PairClassification": AbsTaskPairClassification, "STS": AbsTaskSTS,
                "Classification": AbsTaskClassification}[ttype]
        return base, TaskMetadata(name=name, description=spec.note, reference=ref, type=ttype, category="t2t",
                                  modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
                                  main_score=score, dataset={"path": f"speed-repro/{name}", "revision": "local"})
    cls = type(mteb.get_task(name))
    return cls, cls.metadata


def sample_rows(n: int, limit: int | None, seed: int, name: str) -> list[int] | None:
    """The seeded sample of ``limit`` test rows out of ``n`` (None: all), the same for every source."""
    if not limit or n <= limit:
        return None
    return sorted(random.Random(f"{seed}:{name}").sample(range(n), limit))


def file_task(name: str, folder: Path, limit: int | None = None, seed: int = 0):
    """The mteb task ``name`` reading its data from ``folder`` (a :class:`FileTask`)."""
    from datasets import Dataset, DatasetDict

    spec = FILE_TASKS[name]
    path = folder / spec.folder if spec.folder else folder
    if not path.is_dir():
        raise FileNotFoundError(f"task {name}: no data folder {path}")
    base, meta = _base_class(name)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()
                                     and p.suffix in (".tsv", ".txt", ".csv", ".json", ".cor"))).hexdigest()[:12]
    meta = meta.model_copy(update={"dataset": {"path": f"local:{path}", "revision": f"local-{digest}"},
                                   "description": f"{meta.description} [{spec.kind} copy: {spec.note or 'same data as MTEB'}]"})

    def load_data(self, **_):
        data = spec.read(path)
        splits = data if isinstance(data, dict) else {"test": data}
        picked = sample_rows(len(splits["test"]), limit, seed, name)
        if picked is not None:
            splits["test"] = [splits["test"][i] for i in picked]
        self.dataset = DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()})
        self.data_loaded = True

    attrs: dict[str, Any] = {"metadata": meta, "load_data": load_data, "source_kind": spec.kind}
    if name == "LeeDocSTS":
        attrs.update(min_score=0, max_score=1)
    return type(f"File{base.__name__}_{name.replace('-', '_')}", (base,), attrs)()


def hub_task(name: str, limit: int | None = None, seed: int = 0):
    """The mteb task ``name`` from the Hub; with ``limit``, its test split cut to the seeded sample that a
    local copy of the same size would draw (mteb's own ``dataset_transform`` runs first)."""
    import mteb

    task = mteb.get_task(name)
    if not limit:
        return task
    base = type(task)

    def dataset_transform(self, *args, **kwargs):
        base.dataset_transform(self, *args, **kwargs)
        test = self.dataset.get("test") if hasattr(self.dataset, "get") else None
        picked = sample_rows(len(test), limit, seed, name) if hasattr(test, "select") else None
        if picked is not None:  # a multilingual task's subsets are left whole
            self.dataset["test"] = test.select(picked)

    meta = base.metadata.model_copy(update={"description": f"{base.metadata.description} [a seeded {limit}-row "
                                                           "sample of the test split]"})
    return type(f"Sampled{base.__name__}", (base,), {"metadata": meta, "dataset_transform": dataset_transform,
                                                       "source_kind": "mteb-sample"})()


def build(cfg: Config, p: TaskPlan) -> list:
    """The mteb task objects of a :class:`TaskPlan`, each drawing the profile's seeded sample."""
    e = cfg.evaluate
    return [t.task if t.task is not None else hub_task(t.name, e.limit, cfg.run.seed) if t.source == "mteb"
            else file_task(t.name, t.folder or assets.data_folder(PROXY_ASSET), e.limit, cfg.run.seed) for t in p.tasks]


def tasks_for(cfg: Config, use_hub: bool) -> tuple[list, list[str]]:
    """The profile's mteb tasks and notes on what was left out (and why)."""
    p = plan(cfg, use_hub)
    return build(cfg, p), list(p.skipped)


def task_source(task) -> str:
    """"mteb" (the Hub's test set whole), "mteb-sample" (a seeded sample of it), "local" or "proxy"."""
    return getattr(task, "source_kind", "mteb")
