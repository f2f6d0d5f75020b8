"""Stage 08: MTEB evaluation with E5-style instructions (SPEED §4.1, Table 1; E5-mistral §4).

Every candidate model (:func:`candidates`) on every task of the profile; where each task's data come
from (the Hub, local copies, or proxy tasks from PyPI wheels) is :mod:`speed_utils.mteb_tasks`'s
choice. Results are mteb's own JSON files under ``mteb/``, one folder per model, with
``settings.json`` (versions, dtype, batch size, instructions) beside them. mteb's cache makes a rerun
skip every (model, task) already evaluated.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import assets
from .embed import decoder_embedder, encoder_embedder
from .files import atomic_write_json, sha256_path, write_jsonl
from .mteb_tasks import NOTES, task_source, tasks_for
from .precision import compute_dtype, dtype_name, release_memory
from .profiles import Config
from .runs import RunPaths, versions
from .stats import average_interval, paired_interval, spearman_interval

if TYPE_CHECKING:
    from .mteb_encoder import InstructedEncoder


# ---------------------------------------------------------------- running
def evaluate_model(encoder: InstructedEncoder, tasks: list, out_dir: Path, batch_size: int,
                   predictions: Path | None = None) -> list[dict]:
    """Run mteb task by task, caching results as mteb JSON under ``out_dir``; one score row per task,
    and one printed line per task (score and seconds), so a long evaluation shows where it is.

    With ``predictions``, mteb also saves each task's per-pair similarities there (what the intervals of
    :func:`sts_intervals` resample); an STS task cached without them is evaluated again."""

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
    and, when the profile names one, the off-the-shelf baseline as released and fine-tuned. With
    ``evaluate.compare`` off, the trained ones alone (the embedder, and the baseline where it was fine-tuned)."""

    online = cfg.use_hub()
    emb, base = cfg.models.embedder, cfg.models.baseline_embedder
    trained = Candidate(trained_label(emb), f"speed-repro/{emb}-speed", str(run.file("embedder")), "encoder", True)
    trained_base = Candidate(trained_label(base), f"speed-repro/{base}-speed", str(run.file("baseline")), "encoder",
                             True) if base and run.file("baseline").exists() else None
    if not cfg.evaluate.compare:  # the models trained on this run's rows only (a sweep point's two readouts)
        return [c for c in (trained, trained_base) if c is not None]
    out = [c for c in (untrained_candidate(cfg),) if c is not None] + [trained]
    if base:
        out.append(Candidate(released_label(base), assets.spec(base).hf_id, assets.st_folder(base, online=online),
                             "encoder", False))
        if trained_base is not None:
            out.append(trained_base)
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
        raise ValueError("no evaluation task: " + "; ".join(skipped) + " (evaluate.fallback_tasks and "
                         "evaluate.proxy_tasks name none)")
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
    reference = models[0].label if cfg.evaluate.compare and len(models) > 1 else None  # the untrained embedder
    intervals = sts_intervals(record, reference=reference, seed=cfg.run.seed)
    write_jsonl(run.file("score_intervals"), intervals)
    return {"tasks": [t.metadata.name for t in tasks], "models": [c.label for c in models],
            "sources": {t.metadata.name: task_source(t) for t in tasks},
            "skipped": skipped, "scores": {f"{r['label']} | {r['task']}": r["score"] for r in rows},
            "sts_average": {r["label"]: [r["value"], r["lo"], r["hi"]] for r in intervals if r["task"] == STS_AVERAGE},
            f"sts_average_minus_{models[0].label}": {r["label"]: [r["value"], r["lo"], r["hi"]] for r in intervals
                                                     if r["task"].startswith(f"{STS_AVERAGE} - ")}}
