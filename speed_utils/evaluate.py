"""Stage 08: MTEB evaluation with E5-style instructions (SPEED §4.1, Table 1; E5-mistral §4).

Three task sources, chosen per profile:

1. **Real MTEB tasks** by name or benchmark (``MTEB(eng, v1)``: 56 tasks), when the Hub is reachable.
2. **Local copies** of real MTEB test sets (``evaluate.local_tasks_dir``; CI and this machine use
   ``../shared/data/mteb_local``). Each is the real mteb task class, with its name, metric and
   protocol, reading local files instead of the Hub; its dataset revision reads ``local-<hash>`` so
   its results can never pass for the Hub's. Where the data differ from MTEB's, :data:`NOTES` says so.
3. **Proxy tasks** built from data shipped in PyPI wheels (gensim's Lee document-similarity set and
   Pang & Lee polarity), so that an offline machine still evaluates something real.

Results are mteb's own JSON files under ``mteb/``, one folder per model, with ``settings.json``
(versions, dtype, batch size, instructions) beside them. mteb's cache makes a rerun skip every
(model, task) already evaluated.
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import assets
from .config import Config, resolve_path
from .embed import decoder_embedder, encoder_embedder
from .paths import PACKAGE_DATA
from .precision import compute_dtype, dtype_name, release_memory
from .runs import RunPaths, atomic_write_json, sha256_path, versions, write_jsonl
from .stats import average_interval, paired_interval, spearman_interval

if TYPE_CHECKING:
    from .mteb_encoder import InstructedEncoder

ASYMMETRIC = ("Retrieval", "Reranking", "InstructionRetrieval")  # instruction on queries only

# How the local copies differ from the data MTEB evaluates (../shared/data/mteb_local/README.md).
NOTES = {
    "STS12": "local copy lacks MSRvid: 2,358 of MTEB's 3,108 pairs; not comparable with published STS12",
    "SICK-R": "local copy is the 4,927-pair SICK test part; MTEB uses all 9,927 pairs",
    "MSRParaphraseCorpus": "not an MTEB task: the MSR paraphrase corpus test set, MTEB's PairClassification metric",
    "LeeDocSTS": "proxy task from gensim's test data (50 news documents, 1,225 human-scored pairs); not in MTEB",
    "PangLeePolarityClassification": "proxy task from gensim's test data (200 sentences, 2 classes); not in MTEB",
}


@lru_cache(maxsize=1)
def instructions() -> dict:
    return yaml.safe_load((PACKAGE_DATA / "instructions.yaml").read_text())


def instruction_for(task_name: str, task_type: str) -> str:
    """E5's instruction for a task, or the default of its type."""
    table = instructions()
    return table["tasks"].get(task_name) or table["types"].get(task_type) or table["types"]["STS"]


# ---------------------------------------------------------------- the model wrapper
def __getattr__(name: str):
    """``InstructedEncoder`` lives in :mod:`speed_utils.mteb_encoder`: importing mteb takes seconds, and the
    run's summary, the results and the report read this module's labels and intervals without it."""
    if name == "InstructedEncoder":
        from .mteb_encoder import InstructedEncoder

        return InstructedEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- local files
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


@dataclass(frozen=True)
class Source:
    """Where a local or proxy task's files live and how to read them."""

    folder: str  # subfolder of the local tasks dir, or of the data asset
    read: Any
    kind: str  # "local" or "proxy"


LOCAL = {
    "STS12": Source("sts12", _sts_tsv, "local"), "STS13": Source("sts13", _sts_tsv, "local"),
    "STS14": Source("sts14", _sts_tsv, "local"), "STS15": Source("sts15", _sts_tsv, "local"),
    "SICK-R": Source("sickr", _sick, "local"), "Banking77Classification": Source("banking77", _banking, "local"),
    "MSRParaphraseCorpus": Source("msrp", _msrp, "local"),
}
PROXY = {"LeeDocSTS": Source("", _lee, "proxy"), "PangLeePolarityClassification": Source("", _polarity, "proxy")}
PROXY_ASSET = "gensim-test-data"


def _own_metadata(name: str):
    """Metadata for this package's tasks that are not in MTEB (same fields mteb requires)."""
    from mteb import TaskMetadata

    kinds = {"MSRParaphraseCorpus": ("PairClassification", "max_ap", "https://www.microsoft.com/en-us/download/details.aspx?id=52398"),
             "LeeDocSTS": ("STS", "cosine_spearman", "https://www.michaeldlee.com/publications"),
             "PangLeePolarityClassification": ("Classification", "accuracy", "https://www.cs.cornell.edu/people/pabo/movie-review-data/")}
    ttype, score, ref = kinds[name]
    return TaskMetadata(name=name, description=NOTES[name], reference=ref, type=ttype, category="t2t",
                        modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"], main_score=score,
                        dataset={"path": f"speed-repro/{name}", "revision": "local"})


def _base_class(name: str):
    import mteb
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.pair_classification import AbsTaskPairClassification
    from mteb.abstasks.sts import AbsTaskSTS

    own = {"MSRParaphraseCorpus": AbsTaskPairClassification, "LeeDocSTS": AbsTaskSTS,
           "PangLeePolarityClassification": AbsTaskClassification}
    if name in own:
        return own[name], _own_metadata(name)
    cls = type(mteb.get_task(name))
    return cls, cls.metadata


def file_task(name: str, folder: Path, limit: int | None = None, seed: int = 0):
    """The mteb task ``name`` reading its data from ``folder`` (a local or proxy :class:`Source`)."""
    from datasets import Dataset, DatasetDict

    source = (LOCAL | PROXY)[name]
    path = folder / source.folder if source.folder else folder
    if not path.is_dir():
        raise FileNotFoundError(f"task {name}: no data folder {path}")
    base, meta = _base_class(name)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()
                                     and p.suffix in (".tsv", ".txt", ".csv", ".json", ".cor"))).hexdigest()[:12]
    meta = meta.model_copy(update={"dataset": {"path": f"local:{path}", "revision": f"local-{digest}"},
                                   "description": f"{meta.description} [{source.kind} copy: {NOTES.get(name, 'same data as MTEB')}]"})

    def load_data(self, **_):
        data = source.read(path)
        splits = data if isinstance(data, dict) else {"test": data}
        if limit and len(splits["test"]) > limit:
            rng = random.Random(f"{seed}:{name}")
            splits["test"] = [splits["test"][i] for i in sorted(rng.sample(range(len(splits["test"])), limit))]
        self.dataset = DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()})
        self.data_loaded = True

    attrs: dict[str, Any] = {"metadata": meta, "load_data": load_data, "source_kind": source.kind}
    if name == "LeeDocSTS":
        attrs.update(min_score=0, max_score=1)
    return type(f"File{base.__name__}_{name.replace('-', '_')}", (base,), attrs)()


def tasks_for(cfg: Config, use_hub: bool) -> tuple[list, list[str]]:
    """The profile's tasks and notes on what was left out (and why)."""
    import mteb

    e, tasks, skipped = cfg.evaluate, [], []
    if e.benchmark or e.tasks:
        if use_hub:
            tasks += list(mteb.get_benchmark(e.benchmark).tasks) if e.benchmark else []
            tasks += list(mteb.get_tasks(tasks=list(e.tasks))) if e.tasks else []
        else:
            skipped.append(f"{e.benchmark or ', '.join(e.tasks)}: needs the Hugging Face Hub, which is unreachable")
    if e.local_tasks_dir:
        tasks += [file_task(n, resolve_path(e.local_tasks_dir), e.limit, cfg.run.seed) for n in e.local_tasks]
    if e.proxy_tasks:
        folder = assets.data_folder(PROXY_ASSET)
        tasks += [file_task(n, folder, e.limit, cfg.run.seed) for n in e.proxy_tasks]
    return tasks, skipped


def task_source(task) -> str:
    return getattr(task, "source_kind", "mteb")


# ---------------------------------------------------------------- running
def evaluate_model(encoder: InstructedEncoder, tasks: list, out_dir: Path, batch_size: int,
                   predictions: Path | None = None) -> list[dict]:
    """Run mteb task by task, caching results as mteb JSON under ``out_dir``; one score row per task,
    and one printed line per task (score and seconds), so a long evaluation shows where it is.

    With ``predictions``, mteb also saves each task's per-pair similarities there (what the intervals of
    :func:`sts_intervals` resample); an STS task cached without them is evaluated again."""
    import time

    import mteb

    cache, rows = mteb.ResultCache(str(out_dir)), []
    for task in tasks:
        t0 = time.monotonic()
        missing = predictions is not None and is_sts(task) and not prediction_file(predictions, task).exists()
        res = mteb.evaluate(encoder, tasks=[task], cache=cache, prediction_folder=predictions,
                            overwrite_strategy="always" if missing else "only-missing",
                            encode_kwargs={"batch_size": batch_size}, show_progress_bar=False)
        for tr in res.task_results:
            rows.append({"model": encoder.mteb_model_meta.name, "task": tr.task_name, "type": task.metadata.type,
                         "main_score": task.metadata.main_score, "score": round(100 * float(tr.get_score()), 2),
                         "source": task_source(task), "note": NOTES.get(tr.task_name, "")})
            print(f"  {tr.task_name}: {rows[-1]['score']:.2f} ({time.monotonic() - t0:.0f} s)", flush=True)
    return rows


# ---------------------------------------------------------------- intervals (issue 16)
def is_sts(task) -> bool:
    return task.metadata.type == "STS" and task.metadata.main_score == "cosine_spearman"


def prediction_file(folder: Path, task) -> Path:
    return Path(folder) / task.prediction_file_name


def sts_pairs(task, predictions: Path) -> tuple[list[float], list[float]]:
    """(gold scores, cosine similarities) of an STS task's test pairs, in mteb's order."""
    saved = json.loads(prediction_file(predictions, task).read_text())
    cosine = saved["default"]["test"]["cosine_scores"]
    if not getattr(task, "data_loaded", False):
        task.load_data()
    gold = list(task.dataset["test"]["score"])
    if len(gold) != len(cosine):
        raise ValueError(f"{prediction_file(predictions, task)}: {len(cosine)} similarities for {len(gold)} pairs")
    return gold, cosine


def sts_pair_record(tasks: list, predictions: dict[str, Path]) -> dict:
    """Every model's per-pair cosine on every STS task, beside the gold scores: ``data/sts_pairs.json``.

    Self-contained, so that stage 11 and the claims table can pair models of different run folders
    (the same seeded samples give the same gold lists, which :func:`pairable` checks)."""
    sts = [t for t in tasks if is_sts(t)]
    record: dict = {"tasks": {}, "models": {}}
    for label, folder in predictions.items():
        for t in sts:
            gold, cosine = sts_pairs(t, folder)
            record["tasks"][t.metadata.name] = {"gold": gold, "revision": t.metadata.dataset["revision"]}
            record["models"].setdefault(label, {})[t.metadata.name] = [round(float(c), 7) for c in cosine]
    return record


def model_pairs(record: dict, label: str) -> dict[str, tuple[list[float], list[float]]]:
    """{task: (gold, cosine)} of one model of a :func:`sts_pair_record`."""
    return {t: (record["tasks"][t]["gold"], cos) for t, cos in record["models"][label].items()}


def pairable(a: dict, b: dict) -> bool:
    """Whether two records scored the same pairs (same tasks, data revisions and gold lists)."""
    return a["tasks"] == b["tasks"]


def sts_intervals(record: dict, reference: str | None, seed: int = 0) -> list[dict]:
    """Bootstrap intervals (speed_utils.stats) of every model's STS scores, per task and for the
    average over the STS tasks, and of each model's average minus the ``reference`` model's on the
    same resampled pairs (the paired bootstrap)."""

    rows = []
    for label in record["models"]:
        by_task = model_pairs(record, label)
        for name, (gold, cos) in by_task.items():
            rows.append({"label": label, "task": name, **spearman_interval(gold, cos, seed=seed).scaled(100).to_dict()})
        rows.append({"label": label, "task": STS_AVERAGE, **average_interval(by_task, seed=seed).scaled(100).to_dict()})
        if reference in record["models"] and label != reference:
            rows.append({"label": label, "task": f"{STS_AVERAGE} - {reference}",
                         **paired_difference(by_task, model_pairs(record, reference), seed)})
    return rows


def paired_difference(pairs: dict, reference: dict, seed: int = 0) -> dict:
    """The STS average of ``pairs`` minus that of ``reference`` ({task: (gold, cosine)} on the same pairs),
    ×100, with its paired bootstrap interval."""

    both = {t: (g, reference[t][1], cos) for t, (g, cos) in pairs.items()}
    return paired_interval(both, seed=seed).scaled(100).to_dict()


STS_AVERAGE = "STS average"


def settings(encoder: InstructedEncoder, path: str, batch_size: int, extra: dict | None = None) -> dict:
    """What goes beside a model's results: versions, dtype, batch size, instructions, pooling."""

    st = encoder.model
    pooling = getattr(st[1], "pooling_mode", None) if len(st) > 1 else None
    return {"model": encoder.mteb_model_meta.name, "path": path, "versions": versions(),
            "dtype": str(next(st.parameters()).dtype), "batch_size": batch_size,
            "instructions": encoder.use_instructions, "pooling": pooling,
            "max_seq_length": st.max_seq_length, **(extra or {})}


@dataclass(frozen=True)
class Candidate:
    """One model of the comparison: how to load it, and whether it gets instructions."""

    label: str  # short name in tables
    mteb_name: str  # "org/name" in mteb's results
    path: str  # a folder or a Hub id
    kind: str  # "decoder" (last-token, EOS appended) or "encoder" (as saved)
    use_instructions: bool


def trained_label(model: str) -> str:
    """The table label of ``model`` trained on the run's synthetic data (stage 07)."""
    return f"{model} + our data"


def untrained_label(model: str) -> str:
    return f"{model} untrained"


def released_label(model: str) -> str:
    """The table label of an off-the-shelf embedder as published."""
    return f"{model} (released)"


def untrained_candidate(cfg) -> Candidate | None:
    """The embedder base as it comes, with the trained model's last-token pooling; None unless a causal LM."""

    emb = cfg.models.embedder
    if assets.spec(emb).kind != "causal-lm":
        return None
    return Candidate(untrained_label(emb), f"speed-repro/{emb}-untrained", assets.hf_folder(emb, online=cfg.use_hub()),
                     "decoder", True)


def candidates(cfg: Config, run: RunPaths) -> list[Candidate]:
    """The comparison of SPEED §4.2 in miniature: the embedder untrained and trained on our data,
    and, when the profile names one, the off-the-shelf baseline as released and fine-tuned."""

    online = cfg.use_hub()
    emb, base = cfg.models.embedder, cfg.models.baseline_embedder
    trained = Candidate(trained_label(emb), f"speed-repro/{emb}-speed", str(run.file("embedder")), "encoder", True)
    if not cfg.evaluate.compare:
        return [trained]
    out = [c for c in (untrained_candidate(cfg),) if c is not None] + [trained]
    if base:
        out.append(Candidate(released_label(base), assets.spec(base).hf_id, assets.st_folder(base, online=online),
                             "encoder", False))
        if (run.file("baseline")).exists():
            out.append(Candidate(trained_label(base), f"speed-repro/{base}-speed", str(run.file("baseline")),
                                 "encoder", True))
    return out


def load_candidate(c: Candidate, max_length: int):
    """A candidate ready to encode, in the dtype the hardware computes in (precision.py)."""

    if c.kind == "decoder":
        return decoder_embedder(c.path, max_length)
    return encoder_embedder(c.path).to(compute_dtype())  # fp32 on disk; cast for encoding only


def revision(cfg: Config, c: Candidate, run: RunPaths) -> str:
    """mteb's revision for a candidate: the hash of its weights (when the run made them) and of the
    evaluation settings, so mteb's cache can never hand back scores of other weights or other tasks."""

    inside = Path(c.path).resolve().is_relative_to(run.root.resolve()) if Path(c.path).exists() else False
    digest = hashlib.sha256(json.dumps({"weights": sha256_path(Path(c.path)) if inside else c.path,
                                        "evaluate": cfg.section_hash("evaluate", "embedder.max_length", "run.seed"),
                                        "dtype": dtype_name()},
                                       sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.name}-{digest}"


def untrained_record(cfg: Config, run: RunPaths, out_dir: Path) -> dict | None:
    """The untrained embedder's :func:`sts_pair_record` on the samples of ``cfg`` (a sweep point's
    settings), its mteb results cached in ``out_dir``: the untrained row of stage 11's sweeps, scored
    once for every sweep that shares the evaluation settings. None where the embedder is no causal LM."""
    c = untrained_candidate(cfg)
    if c is None:
        return None
    tasks = [t for t in tasks_for(cfg, cfg.use_hub())[0] if is_sts(t)]
    rev = revision(cfg, c, run)
    predictions = Path(out_dir) / "results" / c.mteb_name.replace("/", "__") / rev / "predictions"
    from .mteb_encoder import InstructedEncoder

    enc = InstructedEncoder(load_candidate(c, cfg.embedder.max_length), c.mteb_name, rev, c.use_instructions,
                            cfg.evaluate.batch_size)
    evaluate_model(enc, tasks, Path(out_dir), cfg.evaluate.batch_size, predictions)
    return sts_pair_record(tasks, {c.label: predictions})


def evaluate_stage(cfg: Config, run: RunPaths) -> dict:
    """Stage 08: every candidate on every task; mteb JSON under ``mteb/``, a score table in
    ``data/scores.jsonl`` whose rows name the mteb folder they came from, every model's per-pair STS
    similarities in ``data/sts_pairs.json``, and their bootstrap intervals in ``data/score_intervals.jsonl``."""

    from .mteb_encoder import InstructedEncoder

    e = cfg.evaluate
    tasks, skipped = tasks_for(cfg, cfg.use_hub())
    if not tasks:
        raise ValueError("no evaluation task: set evaluate.local_tasks_dir, evaluate.proxy_tasks, or "
                         "evaluate.tasks/benchmark with the Hub reachable")
    rows, predictions, models = [], {}, candidates(cfg, run)
    for c in models:
        print(f"evaluating {c.label} on {len(tasks)} tasks", flush=True)
        rev = revision(cfg, c, run)
        folder = run.mteb / "results" / c.mteb_name.replace("/", "__") / rev
        enc = InstructedEncoder(load_candidate(c, cfg.embedder.max_length), c.mteb_name, rev,
                                c.use_instructions, e.batch_size)
        predictions[c.label] = folder / "predictions"
        scores = evaluate_model(enc, tasks, run.mteb, e.batch_size, predictions[c.label])
        atomic_write_json(folder / "settings.json", settings(enc, c.path, e.batch_size, {"label": c.label}))
        rows += [{**r, "label": c.label, "instructions": c.use_instructions,
                  "results": str(folder.relative_to(run.root))} for r in scores]
        del enc
        release_memory()  # one model on the device at a time: two 7B models in bf16 do not fit 24 GB
    write_jsonl(run.file("scores"), rows)
    record = sts_pair_record(tasks, predictions)
    atomic_write_json(run.file("sts_pairs"), record)
    intervals = sts_intervals(record, reference=models[0].label if len(models) > 1 else None, seed=cfg.run.seed)
    write_jsonl(run.file("score_intervals"), intervals)
    return {"tasks": [t.metadata.name for t in tasks], "models": [c.label for c in models],
            "skipped": skipped, "scores": {f"{r['label']} | {r['task']}": r["score"] for r in rows},
            "sts_average": {r["label"]: [r["value"], r["lo"], r["hi"]] for r in intervals if r["task"] == STS_AVERAGE},
            f"sts_average_minus_{models[0].label}": {r["label"]: [r["value"], r["lo"], r["hi"]] for r in intervals
                                                     if r["task"].startswith(f"{STS_AVERAGE} - ")}}


__all__ = ["InstructedEncoder", "file_task", "tasks_for", "evaluate_model", "sts_intervals", "sts_pair_record", "instruction_for", "NOTES", "LOCAL",
           "PROXY"]
