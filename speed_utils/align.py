"""Generator alignment: junior SFT, senior DPO from teacher judgements, the data revisor (SPEED §3.2).

* 03 junior: SFT of the base generator on the seed data (prompt -> JSON), loss on the completion.
* 04 senior: the junior samples K outputs per held prompt (the "root data"); the teacher names
  the best and worst (temperature 0); DPO with the junior as reference.
* 05 revisor: the teacher revises root data on relevance, completeness and accuracy; the revisor
  is trained by SFT from the **base** model on (prompt + task + original) -> revision. Then a
  quality check on prompts held out from all training compares junior, senior and junior+revisor.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from . import assets
from .config import Config
from .generate import GenRequest, Generator
from .prompts import Prompt, judge_prompt, revision_prompt
from .runs import RunPaths, read_jsonl, write_jsonl
from .schema import json_schema, parse_example, parse_json, parse_judgement, parse_revision, response_format
from .teacher import Teacher
from .teacher_data import ask_teacher, seed_prompts
from .train import TrainResult, dpo, sft

JUDGE_MAX_TOKENS = 400
JUDGE_REASON_CHARS = 300  # a token holds at least one character, so a reason that loops (the smoke
                          # teacher's did) cannot run the judgement into its token cap before "best"
                          # and "worst" are written


def judge_schema(k: int) -> dict:
    """Constrained-decoding schema for a judgement over ``k`` outputs (indices 0..k-1), its reason bounded."""
    index = {"type": "integer", "enum": list(range(k))}
    return {"type": "object", "required": ["reason", "best", "worst"], "additionalProperties": False,
            "properties": {"reason": {"type": "string", "maxLength": JUDGE_REASON_CHARS}, "best": index, "worst": index}}


def revision_schema(task_type: str) -> dict:
    return {"type": "object", "required": ["reason", "revision"], "additionalProperties": False,
            "properties": {"reason": {"type": "string"}, "revision": json_schema(task_type)}}


def base_model(cfg: Config) -> str:
    """The generator base: a Hub id online, a folder converted from the GGUF offline."""
    return assets.hf_folder(cfg.models.generator, online=cfg.use_hub())


def as_completion(output: dict) -> str:
    """The SFT target for one example: its JSON, as the generators should write it."""
    return json.dumps(output, ensure_ascii=False)


class _Sampling:
    """Teacher sampling for judgements and revisions: deterministic (SPEED App. B: judge at 0.0)."""

    temperature, top_p = 0.0, 1.0

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens


# ---------------------------------------------------------------- 03 junior
def train_junior(cfg: Config, run: RunPaths) -> TrainResult:
    rows = [{"prompt": r["prompt"], "completion": as_completion(r["output"])} for r in read_jsonl(run.data / "seed.jsonl")]
    if not rows:
        raise ValueError(f"{run.data / 'seed.jsonl'} holds no valid example; stage 02 must produce some")
    return sft(base_model(cfg), rows, run.adapters / "junior", cfg.junior, cfg.junior.max_length, cfg.run.seed)


# ---------------------------------------------------------------- generators
def generation_engine(cfg: Config, base_override: str | None = None) -> str:
    """The engine that samples the generators: the profile's, or by hardware and whether the base has a GGUF."""
    from .generate import backend_name

    if cfg.generation.backend != "auto":
        return cfg.generation.backend
    m = assets.spec(cfg.models.generator)
    # llama.cpp only offline, where the HF base is the GGUF dequantized, so adapters apply to what they trained on
    return backend_name(base_override is None and m.gguf is not None and not cfg.use_hub())


def open_generator(cfg: Config, adapter, log: Path | None = None, base_override: str | None = None,
                   backend: str | None = None) -> Generator:
    """The base generator plus ``adapter`` on the profile's engine (close it, or use it in ``with``).

    On llama.cpp the base is the generator's GGUF (the file the offline HF folder was dequantized
    from) and the adapter its GGUF conversion; ``base_override`` (a test's tiny model) has no GGUF.
    """
    g = cfg.generation
    engine = backend or generation_engine(cfg, base_override)
    gguf = assets.gguf_path(cfg.models.generator, online=cfg.use_hub()) if engine == "llamacpp" else None
    return Generator(base_override or base_model(cfg), str(adapter) if adapter else None, batch_size=g.batch_size,
                     backend=engine, tensor_parallel=g.tensor_parallel_size, gguf=gguf, parallel=g.parallel,
                     slot_ctx=g.slot_ctx, threads=g.threads, log_path=log)


# ---------------------------------------------------------------- 04 senior
def sample(cfg: Config, adapter, prompts: list[Prompt], n: int, temperature: float, desc: str,
           journal: Path | None = None) -> list[list[str]]:
    """``n`` samples per prompt from the base plus ``adapter``; finished batches go to ``journal``."""
    g = cfg.generation
    reqs = [GenRequest(p.text, n=n, temperature=temperature, top_p=cfg.senior.top_p, max_new_tokens=g.max_new_tokens,
                       seed=cfg.run.seed + i) for i, p in enumerate(prompts)]
    log = journal.parent.parent / "logs" / "llama-generator.log" if journal else None
    with open_generator(cfg, adapter, log) as gen:
        return gen.generate(reqs, desc=desc, journal=journal)


def root_data(cfg: Config, run: RunPaths) -> list[dict]:
    """The junior's K samples for each held prompt (SPEED §3.2.3), written to ``root.jsonl``."""
    s = cfg.senior
    prompts = seed_prompts(cfg, read_jsonl(run.data / "tasks.jsonl"), s.n_prompts, purpose="senior")
    outs = sample(cfg, run.adapters / "junior", prompts, s.k_samples, s.temperature, "04 junior samples",
                  run.generation_journal)
    rows = [{"id": p.id, "task_type": p.task_type, "task": p.task, "topic": p.topic, "prompt": p.text, "outputs": o}
            for p, o in zip(prompts, outs)]
    write_jsonl(run.data / "root.jsonl", rows)
    return rows


def judge_root(cfg: Config, run: RunPaths, teacher: Teacher, root: list[dict]) -> dict:
    """The teacher picks best and worst of each list; invalid or tied picks are rejected and counted."""
    fmt = response_format("judgement", judge_schema(cfg.senior.k_samples)) if cfg.teacher.structured_output else None
    prompts = [Prompt(id=f"judge-{r['id']}", kind="judge", task_type=r["task_type"],
                      text=judge_prompt(r["prompt"], r["outputs"]), task=r["task"], topic=r["topic"]) for r in root]
    by_id = {f"judge-{r['id']}": r for r in root}
    kept, rejects = ask_teacher(teacher, prompts, _Sampling(JUDGE_MAX_TOKENS), cfg.run.seed, "04 teacher judges",
                                parse=lambda p, r: parse_judgement(r.content, cfg.senior.k_samples),
                                schema=lambda p: fmt)
    prefs = []
    for p, _, parsed in kept:
        row, j = by_id[p.id], parsed.value
        prefs.append({"id": row["id"], "task_type": row["task_type"], "prompt": row["prompt"],
                      "chosen": row["outputs"][j["best"]], "rejected": row["outputs"][j["worst"]],
                      "best": j["best"], "worst": j["worst"], "reason": j["reason"]})
    write_jsonl(run.data / "prefs.jsonl", prefs)
    write_jsonl(run.data / "prefs_rejects.jsonl", rejects)
    return {"lists": len(root), "pairs": len(prefs), "rejected": len(rejects),
            "reject_reasons": dict(Counter(r["reason"] for r in rejects)),
            "best_index_counts": dict(Counter(p["best"] for p in prefs))}


def train_senior(cfg: Config, run: RunPaths) -> TrainResult:
    pairs = list(read_jsonl(run.data / "prefs.jsonl"))
    if not pairs:
        raise ValueError(f"{run.data / 'prefs.jsonl'} holds no preference pair: every judgement was rejected")
    return dpo(base_model(cfg), run.adapters / "junior", pairs, run.adapters / "senior", cfg.senior,
               cfg.senior.max_length, cfg.run.seed)


# ---------------------------------------------------------------- 05 revisor
def revise_root(cfg: Config, run: RunPaths, teacher: Teacher) -> dict:
    """The teacher revises junior root data (SPEED §3.2.4): one output per (prompt, sample index)."""
    root = list(read_jsonl(run.data / "root.jsonl"))
    picks = [(r, j) for j in range(cfg.senior.k_samples) for r in root][: cfg.revisor.n_examples]
    prompts = [Prompt(id=f"rev-{r['id']}-{j}", kind="revise", task_type=r["task_type"], task=r["task"], topic=r["topic"],
                      text=revision_prompt(r["prompt"], r["task"], r["outputs"][j])) for r, j in picks]
    structured = cfg.teacher.structured_output
    kept, rejects = ask_teacher(
        teacher, prompts, _Sampling(cfg.generation.max_new_tokens + 200), cfg.run.seed, "05 teacher revises",
        parse=lambda p, r: parse_revision(p.task_type, r.content, r.finish_reason),
        schema=lambda p: response_format("revision", revision_schema(p.task_type)) if structured else None)
    source = {f"rev-{r['id']}-{j}": (r, j) for r, j in picks}
    rows = []
    for p, _, parsed in kept:
        r, j = source[p.id]
        rows.append({"id": p.id, "task_type": p.task_type, "task": p.task, "prompt": r["prompt"],
                     "original": r["outputs"][j], "revisor_input": p.text,
                     "reason": parsed.value["reason"], "revision": parsed.value["revision"]})
    write_jsonl(run.data / "revisions.jsonl", rows)
    write_jsonl(run.data / "revision_rejects.jsonl", rejects)
    return {"asked": len(prompts), "revisions": len(rows), "rejected": len(rejects),
            "reject_reasons": dict(Counter(r["reason"] for r in rejects))}


def train_revisor(cfg: Config, run: RunPaths) -> TrainResult:
    """SFT from the base model, not the junior; target = {"reason", "revision"} as the teacher gave."""
    rows = [{"prompt": r["revisor_input"], "completion": json.dumps({"reason": r["reason"], "revision": r["revision"]},
                                                                    ensure_ascii=False)}
            for r in read_jsonl(run.data / "revisions.jsonl")]
    if not rows:
        raise ValueError(f"{run.data / 'revisions.jsonl'} holds no revision: every teacher revision was rejected")
    return sft(base_model(cfg), rows, run.adapters / "revisor", cfg.revisor, cfg.revisor.max_length, cfg.run.seed)


# ---------------------------------------------------------------- quality check
def validity(task_type: str, text: str | None) -> dict:
    return {"valid_json": parse_json(text).ok, "schema_valid": parse_example(task_type, text).ok}


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def quality_check(cfg: Config, run: RunPaths, teacher: Teacher) -> dict:
    """Junior vs senior vs junior+revisor on held-out prompts: validity and a position-swapped judge."""
    q = cfg.quality
    prompts = seed_prompts(cfg, read_jsonl(run.data / "tasks.jsonl"), q.n_prompts, purpose="heldout")
    junior = [o[0] for o in sample(cfg, run.adapters / "junior", prompts, 1, q.temperature, "05 junior",
                                   run.generation_journal)]
    senior = [o[0] for o in sample(cfg, run.adapters / "senior", prompts, 1, q.temperature, "05 senior",
                                   run.generation_journal)]
    rev_prompts = [Prompt(id=f"q-rev-{p.id}", kind="revise", task_type=p.task_type, task=p.task, topic=p.topic,
                          text=revision_prompt(p.text, p.task, o)) for p, o in zip(prompts, junior)]
    revised_raw = [o[0] for o in sample(cfg, run.adapters / "revisor", rev_prompts, 1, 0.0, "05 revisor",
                                        run.generation_journal)]
    revised = [json.dumps(r.value["revision"]) if (r := parse_revision(p.task_type, t)).ok else t
               for p, t in zip(prompts, revised_raw)]

    # pairwise: the judge sees (junior, senior) and (senior, junior); senior wins a trial if picked best
    pair_prompts, order = [], []
    for p, j, s in zip(prompts, junior, senior):
        for first_is_senior in (False, True):
            outs = [s, j] if first_is_senior else [j, s]
            pair_prompts.append(Prompt(id=f"q-pair-{p.id}-{int(first_is_senior)}", kind="judge", task_type=p.task_type,
                                       text=judge_prompt(p.text, outs), task=p.task, topic=p.topic))
            order.append(first_is_senior)
    fmt = response_format("judgement", judge_schema(2)) if cfg.teacher.structured_output else None
    kept, rejects = ask_teacher(teacher, pair_prompts, _Sampling(JUDGE_MAX_TOKENS), cfg.run.seed, "05 teacher compares",
                                parse=lambda p, r: parse_judgement(r.content, 2), schema=lambda p: fmt)
    senior_first = dict(zip((p.id for p in pair_prompts), order))
    verdict = pairwise_tally([(p.id.rsplit("-", 1)[0], senior_first[p.id], parsed.value["best"]) for p, _, parsed in kept])

    rows = []
    for p, j, s, r in zip(prompts, junior, senior, revised):
        rows.append({"id": p.id, "task_type": p.task_type, "prompt": p.text, "junior": j, "senior": s,
                     "junior_revised": r, **{f"{name}_{k}": v for name, text in
                                             (("junior", j), ("senior", s), ("revised", r))
                                             for k, v in validity(p.task_type, text).items()}})
    write_jsonl(run.data / "quality.jsonl", rows)
    table = {name: {k: round(sum(row[f"{name}_{k}"] for row in rows) / max(len(rows), 1), 3)
                    for k in ("valid_json", "schema_valid")} for name in ("junior", "senior", "revised")}
    return {"prompts": len(prompts), "validity": table, "senior_vs_junior": {**verdict, "judge_rejects": len(rejects)}}


def pairwise_tally(trials: list[tuple[str, bool, int]]) -> dict:
    """Senior vs junior from (prompt id, senior shown first, index the judge named best) trials.

    Every order is one trial: ``win_rate`` with its 95% Wilson interval. Because each prompt is asked in
    both orders, the judge's position bias shows too: how often it named the first output best, and per
    prompt whether it preferred the same model in both orders or flipped with the order."""
    wins = sum((best == 0) == first for _, first, best in trials)
    lo, hi = wilson(wins, len(trials))
    senior_won: dict[str, dict[bool, bool]] = {}
    for pid, first, best in trials:
        senior_won.setdefault(pid, {})[first] = (best == 0) == first
    both = [v for v in senior_won.values() if len(v) == 2]
    return {"wins": wins, "trials": len(trials), "win_rate": round(wins / len(trials), 3) if trials else None,
            "ci95": [round(lo, 3), round(hi, 3)],
            "first_named_best": round(sum(best == 0 for _, _, best in trials) / len(trials), 3) if trials else None,
            "prompts_senior_both_orders": sum(all(v.values()) for v in both),
            "prompts_junior_both_orders": sum(not any(v.values()) for v in both),
            "prompts_split_by_order": sum(v[True] != v[False] for v in both)}


__all__ = ["train_junior", "root_data", "judge_root", "train_senior", "revise_root", "train_revisor",
           "quality_check", "pairwise_tally", "wilson"]
