"""Teacher-written data: brainstormed tasks (stage 01) and seed examples (stage 02).

SPEED §3.2.1: the teacher brainstorms short task descriptions per task type, each call
conditioned on one ODP topic. §3.2.2: it then writes seed examples for sampled (task, prompt
attributes), which train the junior generator. Both stages recompute everything from the
teacher cache on a rerun, so a run killed mid-stage resumes with no repeated call, and their
outputs are replaced atomically, so no row is ever lost or duplicated.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from typing import Callable, Iterable

from .config import TASK_TYPES, resolve_path
from .cost import Kind
from .files import read_jsonl, write_jsonl
from .profiles import Config
from .prompts import Prompt, allocate, brainstorm_prompt, generation_prompt, rng_for, sample_topics, templates
from .runs import RunPaths
from .schema import STS_TASK, TASK_LIST_SCHEMA, Parsed, json_schema, parse_example, parse_task_list, response_format
from .teacher import Reply, Request, Teacher

RAW_KEEP = 4000  # characters of a rejected reply kept for inspection


class Deterministic:
    """Teacher sampling for judgements and revisions: deterministic (SPEED App. B: judge at 0.0)."""

    temperature, top_p = 0.0, 1.0

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens


def request_seed(run_seed: int, prompt_id: str) -> int:
    """A per-request sampling seed, so a teacher that honours ``seed`` is reproducible."""
    return int(hashlib.sha256(f"{run_seed}:{prompt_id}".encode()).hexdigest()[:8], 16)


def _reject(p: Prompt, reason: str, reply: Reply) -> dict:
    return {"id": p.id, "task_type": p.task_type, "task": p.task, "topic": p.topic, "reason": reason,
            "finish_reason": reply.finish_reason, "raw": (reply.content or "")[:RAW_KEEP]}


def ask_teacher(teacher: Teacher, kind: Kind, prompts: list[Prompt], sampling, run_seed: int, desc: str,
                parse: Callable[[Prompt, Reply], Parsed], schema: Callable[[Prompt], str | None] = lambda p: None,
                top_logprobs: int | None = None) -> tuple[list[tuple[Prompt, Reply, Parsed]], list[dict]]:
    """Send one request per prompt (``sampling`` has temperature, top_p, max_tokens), parse each
    reply, and split the results into kept ``(prompt, reply, parsed)`` and reject rows. ``kind`` is what
    the ledger counts the calls as (:data:`speed_utils.cost.Kind`); ``top_logprobs`` asks for each token's
    most likely alternatives."""
    reqs = [Request.chat(p.text, temperature=sampling.temperature, top_p=sampling.top_p,
                         max_tokens=sampling.max_tokens, seed=request_seed(run_seed, p.id),
                         response_format=schema(p), tag=p.id, kind=kind, top_logprobs=top_logprobs) for p in prompts]
    kept, rejects = [], []
    for p, r in zip(prompts, teacher.map(reqs, desc=desc)):
        parsed = parse(p, r) if r.ok else None
        if parsed is None or not parsed.ok:
            rejects.append(_reject(p, r.error or parsed.reason, r))
        else:
            kept.append((p, r, parsed))
    return kept, rejects


# ---------------------------------------------------------------- stage 01
def brainstorm_tasks(cfg: Config, run: RunPaths, teacher: Teacher) -> dict:
    """Brainstorm tasks for each (topic, type); write ``tasks.jsonl`` and the rejects.

    STS needs no brainstorm (E5/SPEED): each topic gets one STS row with the fixed task
    "Retrieve semantically similar text.", and the STS prompt is conditioned on the topic.
    """
    b = cfg.brainstorm
    topics = sample_topics(b.n_topics, cfg.run.seed, b.topic_max_depth,
                           resolve_path(b.topics_file) if b.topics_file else None)
    prompts = [brainstorm_prompt(t, topic, i, cfg.run.seed, b.tasks_per_call)
               for i, topic in enumerate(topics) for t in b.types]
    fmt = response_format("task_list", TASK_LIST_SCHEMA) if cfg.teacher.structured_output else None
    kept, rejects = ask_teacher(
        teacher, "brainstorm", prompts, b, cfg.run.seed, "01 brainstorm", schema=lambda p: fmt,
        parse=lambda p, r: parse_task_list(r.content, r.finish_reason,
                                           exclude=tuple(templates()["brainstorm"][p.task_type]["examples"])))
    rows, seen, duplicates = [], set(), 0
    for p, _, parsed in kept:
        for j, task in enumerate(parsed.value[: b.keep_per_call]):
            if (p.task_type, task.lower()) in seen:
                duplicates += 1
                continue
            seen.add((p.task_type, task.lower()))
            rows.append({"id": f"{p.id}-{j}", "task_type": p.task_type, "task": task, "topic": p.topic,
                         "source": "teacher", "prompt_id": p.id})
    for i, topic in enumerate(topics):
        rows.append({"id": f"s{i:05d}-sts", "task_type": "sts", "task": STS_TASK, "topic": topic,
                     "source": "fixed", "prompt_id": None})
    write_jsonl(run.file("tasks"), rows)
    write_jsonl(run.file("brainstorm_rejects"), rejects)
    per_type = Counter(r["task_type"] for r in rows)
    calls_per_type = Counter(p.task_type for p in prompts)
    rejected_per_type = Counter(r["task_type"] for r in rejects)
    return {
        "topics": len(topics), "calls": len(prompts), "tasks": len(rows),
        "distinct_tasks": len({(r["task_type"], r["task"].lower(), r["topic"] if r["task_type"] == "sts" else "")
                               for r in rows}),
        "tasks_per_type": dict(per_type), "duplicates_dropped": duplicates,
        "rejected_calls": len(rejects), "reject_reasons": dict(Counter(r["reason"] for r in rejects)),
        "valid_call_rate_per_type": {t: round(1 - rejected_per_type[t] / n, 3) for t, n in calls_per_type.items()},
    }


# ---------------------------------------------------------------- stage 02
def seed_prompts(cfg: Config, tasks: Iterable[dict], n: int, purpose: str = "seed",
                 type_weights: dict[str, float] | None = None, items: range | None = None) -> list[Prompt]:
    """Sample ``n`` generation prompts: types by weight (default ``seed.type_weights``), then a
    task (and topic) per item. Each purpose draws from its own seeded RNG streams, and each item
    from its own, so ``items`` (a range of indices) gives those prompts of the ``n`` alone."""
    by_type: dict[str, list[dict]] = defaultdict(list)
    for t in tasks:
        by_type[t["task_type"]].append(t)
    weights = {t: w for t, w in (type_weights or cfg.seed.type_weights).items() if by_type.get(t)}
    if not weights:
        raise ValueError("tasks.jsonl holds no task of any weighted type; rerun stage 01")
    counts = allocate(n, weights)
    kinds = [t for t in TASK_TYPES for _ in range(counts.get(t, 0))]
    rng_for(cfg.run.seed, f"{purpose}:order", 0).shuffle(kinds)
    prompts = []
    for i in items if items is not None else range(len(kinds)):
        kind = kinds[i]
        pool = by_type[kind]
        row = pool[rng_for(cfg.run.seed, f"{purpose}:task", i).randrange(len(pool))]
        prompts.append(generation_prompt(kind, i, cfg.run.seed, task=row["task"], topic=row["topic"],
                                         purpose=purpose))
    return prompts


def seed_examples(cfg: Config, run: RunPaths, teacher: Teacher) -> dict:
    """Have the teacher write one example per sampled prompt; write ``seed.jsonl`` and ``rejects.jsonl``."""
    s = cfg.seed
    prompts = seed_prompts(cfg, read_jsonl(run.file("tasks")), s.n_examples)
    structured = cfg.teacher.structured_output
    kept, rejects = ask_teacher(
        teacher, "seed", prompts, s, cfg.run.seed, "02 seed",
        parse=lambda p, r: parse_example(p.task_type, r.content, r.finish_reason),
        schema=lambda p: response_format(p.task_type, json_schema(p.task_type)) if structured else None)
    rows = []
    for p, r, parsed in kept:
        rows.append({"id": p.id, "task_type": p.task_type, "task": p.task, "topic": p.topic,
                     "attributes": p.attributes, "prompt": p.text, "output": parsed.value,
                     "repaired": parsed.repaired, "teacher_key": r.key[:16]})
    write_jsonl(run.file("seed"), rows)
    write_jsonl(run.file("seed_rejects"), rejects)
    asked = Counter(p.task_type for p in prompts)
    valid = Counter(r["task_type"] for r in rows)
    return {
        "requested": len(prompts), "valid": len(rows), "rejected": len(rejects),
        "valid_rate": round(len(rows) / max(len(prompts), 1), 3),
        "per_type": {t: {"requested": asked[t], "valid": valid[t], "valid_rate": round(valid[t] / asked[t], 3)}
                     for t in TASK_TYPES if asked[t]},
        "reject_reasons": dict(Counter(r["reason"] for r in rejects)),
        "repaired": sum(r["repaired"] for r in rows), "structured_output": structured,
    }
