"""Wall-time estimate of a run, stage by stage, from measured rates (``speed-repro estimate``).

Each stage's seconds are its work, counted from the profile (teacher calls and tokens, generated
tokens, training tokens, texts to encode), divided by a rate measured on the machine the profile is
meant for (``params/rates-<profile>.yaml``, each rate beside the benchmark that measured it), plus a
fixed start-up cost per stage. The estimate is what the one-hour default run was sized with; the
runner's closing table (``logs/timings.jsonl``) gives the measured side to compare against.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from . import mteb_tasks, precision
from .cost import estimate as teacher_plan
from .paths import PARAMS_DIR
from .profiles import Config, ConfigError, lineage, merge_dicts
from .sweep_spec import SWEEP_KINDS, load_sweep

# texts encoded per task at full size: per-task seconds of the reference cpu run's stage 08 at its
# measured 30 texts/s (STS12 162 s, STS13 70, STS14 185, STS15 222, SICK-R 202, Banking77 209;
# MSRP, LeeDocSTS and the polarity proxy together about 130 s)
FULL_TEXTS = {"STS12": 4860, "STS13": 2100, "STS14": 5550, "STS15": 6660, "SICK-R": 6060,
              "Banking77Classification": 6270, "MSRParaphraseCorpus": 3450, "LeeDocSTS": 100,
              "PangLeePolarityClassification": 400}


JUDGE_TEMPLATE = 300  # tokens of the judge prompt around the outputs it compares (prompts.judge_prompt)
REVISION_PROMPT = 580  # tokens of a revision request (the reference run's revisor inputs: ~480, plus the template)


@dataclass
class StageEstimate:
    stage: int
    name: str
    seconds: float
    work: str  # what was counted, in words


def rates_for(cfg: Config, gpu: str | None = None) -> dict:
    """The rates file of the profile or of the nearest profile it extends (``study`` runs on the cpu
    machine), else the cpu machine's, marked so: its times do not fit a GPU. A GPU profile's file holds
    rates per card (``gpus:``); ``gpu`` names one (default: the file's first)."""
    path = _rates_file(cfg)
    if path:
        return _same_models(cfg, _card(yaml.safe_load(path.read_text()), path, gpu))
    if gpu:
        raise ConfigError(f"--gpu {gpu}: no params/rates-*.yaml of profile {cfg.name} or those it extends "
                          "lists rates per GPU")
    rates = yaml.safe_load((PARAMS_DIR / "rates-cpu.yaml").read_text())
    return {**rates, "machine": f"{rates['machine']} (no params/rates-{cfg.name}.yaml: the cpu machine's rates, "
                                f"not this profile's hardware)"}


def _same_models(cfg: Config, rates: dict) -> dict:
    """The rates as they are if measured with the profile's models (``models:`` of the rates file), else
    marked: a profile that extends another with smaller models (smoke) runs at other speeds."""
    mine = dict(cfg.named_models())
    other = [f"{role} {mine.get(role)}" for role, name in (rates.get("models") or {}).items() if mine.get(role) != name]
    if not other:
        return rates
    return {**rates, "other_models": other,
            "machine": f"{rates['machine']} (measured with other models than this profile's {', '.join(other)})"}


def _rates_file(cfg: Config) -> Path | None:
    """``params/rates-<name>.yaml`` of the profile or of the nearest profile it extends."""
    return next((p for p in (PARAMS_DIR / f"rates-{name}.yaml" for name in lineage(cfg.name)) if p.is_file()), None)


def gpus_for(cfg: Config) -> list[str]:
    """The cards the profile's rates file has rates for (none for a CPU profile)."""
    path = _rates_file(cfg)
    return list(yaml.safe_load(path.read_text()).get("gpus") or ()) if path else []


def _card(rates: dict, path: Path, gpu: str | None) -> dict:
    """The rates of one card: the file's common rates, overlaid with that card's own."""
    cards = rates.get("gpus")
    if not cards:
        if gpu:
            raise ConfigError(f"--gpu {gpu}: {path} has no rates per GPU (no `gpus:` key)")
        return rates
    name = gpu or next(iter(cards))
    if name not in cards:
        raise ConfigError(f"--gpu {name}: {path} has rates for {', '.join(cards)} only")
    common = {k: v for k, v in rates.items() if k != "gpus"}
    return {**merge_dicts(common, cards[name]), "machine": f"one {name} ({rates['machine']})", "gpu": name}


def _teacher_s(r: dict, calls: int, prompt_tokens: float, kind: str, concurrency: int = 1) -> float:
    """Seconds for ``calls`` teacher calls. A local server's rates are its effective ones; an API's are
    per request (``per_request: true``), with ``concurrency`` requests in flight."""
    t = r["teacher"]
    per_call = prompt_tokens / t["prompt_tok_s"] + t["completion_tokens"][kind] / t["completion_tok_s"]
    return calls * (per_call + t.get("latency_s", 0.0)) / concurrency


def _gen_s(g: dict, n: float, kind: str) -> float:
    """Seconds for ``n`` generations of one kind ("sample", "writer" or "revisor"); the revisor's
    longer prompts (task, instructions and the original) make its tokens slower."""
    rate = g["revisor_tok_s"] if kind == "revisor" else g["tok_s"]
    return n * g[f"{kind}_tokens"] / rate


def _eval_texts(tasks, limit: int | None) -> int:
    return sum(min(FULL_TEXTS.get(t, 2000), 2 * limit) if limit else FULL_TEXTS.get(t, 2000) for t in tasks)


CHARS_PER_TOKEN = 4.0
# characters of the texts of this package's own tasks (mteb has no statistics for them), counted from their
# files on 2026-12-07: MSRP's test split, LeeDocSTS's 1,225 document pairs, PangLee's train and test sentences
OWN_TASK_CHARS = {"MSRParaphraseCorpus": 397_678, "LeeDocSTS": 1_205_841, "PangLeePolarityClassification": 23_115}
TRAIN_PER_LABEL = 80  # a classification task embeds at most 8 training texts per label in each of 10 experiments


@lru_cache(maxsize=64)
def task_tokens(task: str) -> float:
    """Tokens a model encodes to evaluate ``task`` in full: every text of its test split (documents and
    queries alike, from the characters counted in mteb's descriptive statistics, at about 4 characters a
    token), plus the training texts a classification task embeds. An upper bound where mteb samples
    (clustering embeds a fraction of large sets)."""
    if task in OWN_TASK_CHARS:
        return OWN_TASK_CHARS[task] / CHARS_PER_TOKEN
    import mteb

    found = sorted(Path(mteb.__file__).parent.glob(f"descriptive_stats/*/{task}.json"))
    if not found:
        raise ConfigError(f"evaluate.tasks: {task} has no descriptive statistics in mteb {mteb.__version__}, "
                          "so its size is unknown to the estimate")
    stats = json.loads(found[0].read_text())
    test = stats.get("test") or next(v for k, v in stats.items() if k != "train")
    chars = _total_text_length(test)
    if "train" in stats and "label_statistics" in stats["train"]:
        train = stats["train"]
        labels = train["label_statistics"].get("unique_labels") or 1
        share = min(1.0, TRAIN_PER_LABEL * labels / max(train["num_samples"], 1))
        chars += share * _total_text_length(train)
    return chars / CHARS_PER_TOKEN


def _total_text_length(split: dict) -> float:
    """Characters of every text field of a split (``text_statistics``, ``text1_statistics``,
    ``documents_text_statistics``, ``queries_text_statistics``, ...)."""
    return sum(v.get("total_text_length") or 0 for k, v in split.items() if k.endswith("_statistics") and isinstance(v, dict))


def _encode_s(r: dict, tasks, limit: int | None, models: float, decoder: bool = True) -> float:
    """Seconds to encode ``tasks`` with ``models`` models: in texts at the cpu rates (calibrated per
    task), in tokens where the rates are per token (a GPU's: ``decoder_tok_s``, ``encoder_tok_s``)."""
    e, kind = r["encode"], "decoder" if decoder else "encoder"
    if f"{kind}_tok_s" in e:
        share = (lambda t: min(1.0, 2 * limit / FULL_TEXTS.get(t, 2 * limit))) if limit else (lambda t: 1.0)
        return models * sum(task_tokens(t) * share(t) for t in tasks) / e[f"{kind}_tok_s"]
    return models * _eval_texts(tasks, limit) / e[f"{kind}_texts_s"]


def _embed_train_s(r: dict, rows: int, epochs: float, decoder: bool = True) -> float:
    tokens = rows * epochs * 3 * 45  # query (with its instruction), positive, negative
    rate = r["training"]["contrastive_tok_s"] if decoder else r["training"]["baseline_tok_s"]
    return tokens / rate + r["training"]["model_load_s"]


def estimate(cfg: Config, gpu: str | None = None) -> list[StageEstimate]:
    """Predicted seconds for stages 00-11 of ``cfg`` (stage 11 from its sweep specs), on ``gpu`` where the
    profile's rates are per card."""

    r = rates_for(cfg, gpu)
    in_flight = cfg.teacher.max_concurrency if r["teacher"].get("per_request") else 1

    def teacher_s(calls: int, prompt_tokens: float, kind: str) -> float:
        return _teacher_s(r, calls, prompt_tokens, kind, in_flight)

    g, tr, over = r["generator"], r["training"], r["stage_overhead_s"]
    plan = {row["kind"]: row for row in teacher_plan(cfg)}
    per_call = {k: row["prompt_tokens"] / max(row["calls"], 1) for k, row in plan.items()}
    s, sen, rev, q, syn, e, ev = (cfg.seed, cfg.senior, cfg.revisor, cfg.quality, cfg.synthesis,
                                     cfg.embedder, cfg.evaluate)
    seed_tokens = 208 + r["teacher"]["completion_tokens"]["seed"] + 30
    sample_prompt = 210
    kept = 0.93 * syn.n_examples  # the reference run kept 239 of 256 (93%)
    # the tasks as sourced where the run happens: this machine, or a GPU card's (assumed to reach the Hub)
    tasks = [t.name for t in mteb_tasks.plan(cfg, bool(r.get("gpu")) or cfg.use_hub()).tasks]
    rows = [
        StageEstimate(0, "environment", over, "versions, models checked"),
        StageEstimate(1, "brainstorm", over + teacher_s(plan["brainstorm"]["calls"], per_call["brainstorm"], "brainstorm"),
                      f"{plan['brainstorm']['calls']} teacher calls"),
        StageEstimate(2, "seed", over + teacher_s(s.n_examples, per_call["seed"], "seed"), f"{s.n_examples} teacher calls"),
        StageEstimate(3, "junior", over + tr["model_load_s"] + s.n_examples * cfg.junior.epochs * seed_tokens / tr["sft_tok_s"],
                      f"SFT on {s.n_examples} x {cfg.junior.epochs:g} epochs"),
        StageEstimate(4, "senior", over + 2 * tr["model_load_s"]
                      + _gen_s(g, sen.n_prompts * sen.k_samples, "sample")
                      + teacher_s(sen.n_prompts * sen.judgements_per_list, JUDGE_TEMPLATE + sen.k_samples * g["sample_tokens"], "judge")
                      + sen.n_prompts * sen.epochs * 2 * (sample_prompt + g["sample_tokens"]) * tr["dpo_factor"] / tr["sft_tok_s"],
                      f"{sen.n_prompts}x{sen.k_samples} samples, {sen.n_prompts * sen.judgements_per_list} judgements, DPO {sen.epochs:g} epochs"),
        StageEstimate(5, "revisor", over + 4 * tr["model_load_s"]
                      + teacher_s(rev.n_examples, REVISION_PROMPT, "revision")
                      + rev.n_examples * rev.epochs * (480 + 117 + 30) / tr["sft_tok_s"]
                      + _gen_s(g, q.n_prompts, "sample") + _gen_s(g, q.n_prompts, "writer") + _gen_s(g, q.n_prompts, "revisor")
                      + teacher_s(2 * q.n_prompts, JUDGE_TEMPLATE + 2 * g["sample_tokens"], "judge"),
                      f"{rev.n_examples} revisions, revisor SFT {rev.epochs:g} epochs, quality on {q.n_prompts} prompts"),
        StageEstimate(6, "synthesis", over + 2 * tr["model_load_s"]
                      + _gen_s(g, syn.n_examples, "writer") + (_gen_s(g, syn.n_examples, "revisor") if syn.revise else 0),
                      f"{syn.n_examples} written" + (" and revised" if syn.revise else "")),
        StageEstimate(7, "embedder", over + _embed_train_s(r, int(e.train_examples or kept), e.epochs)
                      + (_embed_train_s(r, int(e.train_examples or kept), e.epochs, decoder=False) if e.baseline_finetune else 0),
                      f"~{int(e.train_examples or kept)} rows x {e.epochs:g} epochs"),
        StageEstimate(8, "evaluate", over + _eval_s(r, tasks, ev.limit, ev.compare,
                                                     e.baseline_finetune if cfg.models.baseline_embedder else None),
                      f"{len(tasks)} tasks" + (f", limit {ev.limit}" if ev.limit else ", full test sets")),
        StageEstimate(9, "results", over, "tables"),
        StageEstimate(10, "cost", over, "ledger"),
        StageEstimate(11, "scaling", over + _sweeps_s(cfg, r), "ablation and scaling sweeps"),
    ]
    return rows


def _eval_s(r: dict, tasks, limit: int | None, compare: bool, baseline: bool | None) -> float:
    """The trained embedder; with ``compare`` also the untrained one and the baseline as released (and
    fine-tuned where ``baseline`` is true; None: the profile names no baseline)."""
    decoders = 2 if compare else 1
    encoders = ((2 if baseline else 1) if baseline is not None else 0) if compare else 0
    return _encode_s(r, tasks, limit, decoders) + (_encode_s(r, tasks, limit, encoders, decoder=False) if encoders else 0)


def _sweeps_s(cfg: Config, r: dict) -> float:
    """Each point: its own junior passes, one embedder training and one evaluation; points that only
    repeat the main run's settings (or another point's) are adopted and cost nothing; the untrained
    embedder is evaluated once on the sweeps' samples."""
    g, total = r["generator"], 0.0
    main = cfg.synthesis
    seen = {("senior", main.n_examples, "writer")} | ({("senior", main.n_examples, "revisor")} if main.revise else set())
    for key in SWEEP_KINDS:
        path = getattr(cfg.sweeps, key)
        if not path:
            continue
        spec = load_sweep(path)
        common = spec.get("set") or {}
        emb, ev = common.get("embedder", {}), common.get("evaluate", {})
        tasks = ev.get("local_tasks", cfg.evaluate.local_tasks)
        untrained = ("untrained", str(sorted(tasks)), ev.get("limit", cfg.evaluate.limit))
        if untrained not in seen:  # the untrained embedder on the sweep's samples, once per evaluation setting
            seen.add(untrained)
            total += _encode_s(r, tasks, ev.get("limit", cfg.evaluate.limit), 1)
        for point in spec["points"].values():
            syn = {**(common.get("synthesis") or {}), **(point.get("synthesis") or {})}
            who, n = syn.get("generator", main.generator), syn.get("n_examples", main.n_examples)
            passes = {(who, n, "writer")} | ({(who, n, "revisor")} if syn.get("revise", main.revise) else set())
            for p in passes - seen:  # a generation pass no run or earlier point made
                total += _gen_s(g, n, p[2])
            seen |= passes
            pe = {**emb, **(point.get("embedder") or {})}  # seeds and controls (issue 31) are points of their own
            rows = pe.get("train_examples") or int(0.93 * cfg.synthesis.n_examples)
            sig = ("point", str(sorted(pe.items())), str(sorted(syn.items())))
            if sig in seen:
                continue  # adopted from a point already counted
            seen.add(sig)
            steps = pe.get("max_steps")  # equal steps: the rows a training passes through, whatever it holds
            seen_rows, epochs = (steps * pe.get("batch_size", cfg.embedder.batch_size), 1) if steps else \
                (rows, pe.get("epochs", cfg.embedder.epochs))
            total += _embed_train_s(r, seen_rows, epochs)
            total += _encode_s(r, tasks, ev.get("limit", cfg.evaluate.limit), 1)
            if pe.get("baseline_finetune") and cfg.models.baseline_embedder:  # the second readout
                total += _embed_train_s(r, seen_rows, epochs, decoder=False)
                total += _encode_s(r, tasks, ev.get("limit", cfg.evaluate.limit), 1, decoder=False)
            total += r["stage_overhead_s"] * (3 if syn else 2)  # a notebook each for stages (06,) 07 and 08
    return total


def slower_here(r: dict) -> float | None:
    """How much longer a run should take on this CPU than the rates say, where this CPU lacks the bf16
    matrix units of the machine the rates were measured on (``without_bf16_units.factor``); None if alike."""
    if r.get("gpu") or not r.get("cpu_bf16_units"):
        return None

    return None if precision.cpu_bf16_flags() else float(r["without_bf16_units"]["factor"])


def hardware_line(r: dict, rows: list[StageEstimate]) -> str | None:
    factor = slower_here(r)
    if factor is None:
        return None
    total = sum(x.seconds for x in rows)
    return (f"this CPU has no bf16 matrix units (it trains and encodes in fp32), unlike the rates' machine: expect about "
            f"{in_words(factor * total)} ({factor:g}x, measured on a 2-core AVX2 CPU; params/rates-cpu.yaml)")


def table(rows: list[StageEstimate]) -> str:
    """Seconds per stage, and hours beside them where the run is long."""
    total = sum(x.seconds for x in rows)
    hours = total > 3 * 3600
    lines = ["stage                predicted s" + ("   hours" if hours else "") + "  work"]
    for x in rows:
        lines.append(f"{x.stage:02d} {x.name:<18s} {x.seconds:9.0f}" + (f" {x.seconds / 3600:7.2f}" if hours else "")
                     + f"  {x.work}")
    lines.append(f"{'total':21s} {total:9.0f}" + (f" {total / 3600:7.2f}" if hours else f"  ({total / 60:.1f} min)"))
    return "\n".join(lines)


def in_words(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 3 * 3600 else f"{seconds / 3600:.1f} h"


def colab_line(r: dict, rows: list[StageEstimate]) -> str | None:
    """Whether the run fits one Colab runtime (``colab_runtime_h`` of the rates file), and if not, the stage
    at which a new runtime takes over from the run folder on Google Drive."""
    limit = r.get("colab_runtime_h")
    if not limit:
        return None
    total, clock = sum(x.seconds for x in rows), 0.0
    if total <= 0.9 * limit * 3600:
        return f"Colab: fits one {limit} h runtime ({in_words(total)} on one {r.get('gpu', 'GPU')})"
    for x in rows:
        clock += x.seconds
        if clock > 0.9 * limit * 3600:
            return (f"Colab: more than one {limit} h runtime ({in_words(total)} on one {r.get('gpu', 'GPU')}); "
                    f"the first ends in stage {x.stage:02d} {x.name}, and rerunning the notebook resumes from the "
                    "run folder on Drive")
    return None
