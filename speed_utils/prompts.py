"""Prompts: topics, brainstorming, the five generation prompts, judge and revision (SPEED §3.2, App. C).

Templates live in ``data/prompts.yaml`` (our wording, SPEED's structure and keys); topics in
``data/topics.txt`` (our own ODP-style paths). Every random choice comes from an RNG seeded by
``(run seed, purpose, item index)``, so the same seed and params give the same prompts, and
item *i* does not change when the number of items changes.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from .paths import PACKAGE_DATA
from .schema import KEYS, STS_TASK

# Sampling weights from SPEED's prompts_synthesis.py (speed-method.md §3).
RETRIEVAL_ATTRS = {
    "query_type": (("extremely long-tail", "long-tail", "common"), (0.4, 0.5, 0.1)),
    "query_length": (("less than 5 words", "5 to 15 words", "at least 10 words"), (0.4, 0.4, 0.2)),
    "clarity": (("clear", "understandable with some effort", "ambiguous"), (0.6, 0.2, 0.2)),
    "num_words": ((50, 100, 200, 300, 400, 500), None),
}
CLASSIFICATION_ATTRS = {
    "num_words": (("less than 10", "at least 10", "at least 50", "at least 100", "at least 200"),
                  (0.1, 0.3, 0.2, 0.2, 0.2)),
    "clarity": (("clear", "understandable with some effort", "ambiguous"), None),
}
STS_ATTRS = {
    "unit": (("sentence", "phrase", "passage"), (0.9, 0.05, 0.05)),
    "high_score": (("4", "4.5", "5"), None),
    "low_score": (("2.5", "3", "3.5"), None),
}
DIFFICULTY = ("high school", "college", "PhD")
STS_DIFFICULTY = ("elementary school", "high school", "college")
LONG_LONG_WORDS = 300
LANGUAGE = "English"  # SPEED drops bitext and is English-only (§3.1)


@lru_cache(maxsize=1)
def templates() -> dict:
    return yaml.safe_load((PACKAGE_DATA / "prompts.yaml").read_text())


def rng_for(seed: int, purpose: str, index: int) -> random.Random:
    """An independent, reproducible RNG per (seed, purpose, item)."""
    return random.Random(f"{seed}:{purpose}:{index}")


# ---------------------------------------------------------------- topics
def truncate_topic(path: str, max_depth: int = 4) -> str:
    """Cut an ODP path deeper than ``max_depth`` by dropping middle segments (SPEED App. D.1).

    >>> truncate_topic("Arts/Movies/Titles/3/36_Hours_-_1964/Cast_and_Crew")
    'Arts/Movies/36_Hours_-_1964/Cast_and_Crew'
    """
    parts = path.strip("/").split("/")
    if len(parts) <= max_depth:
        return "/".join(parts)
    head = max_depth // 2
    return "/".join(parts[:head] + parts[len(parts) - (max_depth - head):])


@lru_cache(maxsize=4)
def all_topics(path: Path = PACKAGE_DATA / "topics.txt") -> tuple[str, ...]:
    return tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())


def sample_topics(n: int, seed: int, max_depth: int = 4, path: Path | None = None) -> list[str]:
    """``n`` topics (truncated), a seeded sample of the list; it repeats only if n exceeds the list."""
    pool = list(all_topics(path or PACKAGE_DATA / "topics.txt"))
    rng = rng_for(seed, "topics", 0)
    rng.shuffle(pool)
    out = [truncate_topic(pool[i % len(pool)], max_depth) for i in range(n)]
    return out


def topic_phrase(topic: str) -> str:
    """Render an ODP path for a prompt: ``Arts/Movies`` -> ``Arts > Movies``."""
    return " > ".join(seg.replace("_", " ") for seg in topic.split("/"))


# ---------------------------------------------------------------- prompts
@dataclass
class Prompt:
    """A rendered prompt with everything that went into it (for provenance and training)."""

    id: str
    kind: str  # "brainstorm" | "generate"
    task_type: str
    text: str
    task: str | None = None
    topic: str | None = None
    attributes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _pick(rng: random.Random, options, weights=None):
    return rng.choices(options, weights=weights, k=1)[0]


def _render(spec: dict, rng: random.Random, values: dict, guidelines_extra: tuple[str, ...] = ()) -> str:
    lines = list(spec["guidelines"]) + list(guidelines_extra)
    rng.shuffle(lines)
    body = "\n".join(f"  - {g}" for g in lines)
    text = f"{spec['intro']}\n\nFollow these guidelines:\n{body}\n\n{spec['outro']}"
    return text.format(**values)


def brainstorm_prompt(task_type: str, topic: str, index: int, seed: int, n_tasks: int = 5) -> Prompt:
    """'Brainstorm a list of ... tasks for the topic: {topic}' with shuffled example tasks."""
    spec = templates()["brainstorm"][task_type]
    rng = rng_for(seed, f"brainstorm:{task_type}", index)
    examples = list(spec["examples"])
    rng.shuffle(examples)
    example_block = "Here are a few examples of such tasks:\n" + "\n".join(f"  - {e}" for e in examples)
    lines = list(spec["guidelines"])
    rng.shuffle(lines)
    text = "\n\n".join([
        spec["intro"].format(topic=topic_phrase(topic)), example_block,
        "Follow these guidelines:\n" + "\n".join(f"  - {g}" for g in lines),
        spec["outro"].format(n=n_tasks)])
    return Prompt(id=f"b{index:05d}-{task_type}", kind="brainstorm", task_type=task_type, text=text, topic=topic)


def sample_attributes(task_type: str, rng: random.Random) -> dict:
    """Sample the prompt placeholders with SPEED's weights (speed-method.md §3)."""
    table = {"retrieval": RETRIEVAL_ATTRS, "classification": CLASSIFICATION_ATTRS, "sts": STS_ATTRS}.get(task_type, {})
    attrs = {name: _pick(rng, opts, w) for name, (opts, w) in table.items()}
    attrs["language"] = LANGUAGE
    if task_type == "long_long":
        attrs["num_words"] = LONG_LONG_WORDS
    if task_type in ("retrieval", "classification", "sts"):
        # the difficulty guideline appears in half of the prompts
        levels = STS_DIFFICULTY if task_type == "sts" else DIFFICULTY
        attrs["difficulty"] = _pick(rng, levels) if rng.random() < 0.5 else None
    return attrs


def generation_prompt(task_type: str, index: int, seed: int, task: str | None = None,
                      topic: str | None = None, purpose: str = "seed") -> Prompt:
    """One of the five data prompts, its placeholders sampled with a per-item seeded RNG."""
    spec = templates()["generate"][task_type]
    rng = rng_for(seed, f"{purpose}:{task_type}", index)
    attrs = sample_attributes(task_type, rng)
    extra = tuple(spec["optional"]) if attrs.get("difficulty") else ()
    values = {**attrs, "task": task, "topic": topic_phrase(topic) if topic else None}
    text = _render(spec, rng, values, extra)
    return Prompt(id=f"{_ID_PREFIX.get(purpose, purpose)}{index:05d}-{task_type}", kind="generate", task_type=task_type,
                  text=text, task=STS_TASK if task_type == "sts" else task, topic=topic, attributes=attrs)


_ID_PREFIX = {"seed": "s"}  # other purposes (e.g. "senior", "synthesis") use their full name


def judge_prompt(prompt_text: str, outputs: list[str]) -> str:
    """The DPO judge: the data prompt and numbered outputs; asks for best and worst (§3.2.3)."""
    listing = "\n\n".join(f"[{i}]\n{o}" for i, o in enumerate(outputs))
    return templates()["judge"].format(k=len(outputs), prompt=prompt_text, outputs=listing)


def revision_prompt(prompt_text: str, task: str, example: str) -> str:
    """The revision request on relevance, completeness and accuracy (§3.2.4)."""
    return templates()["revise"].format(prompt=prompt_text, task=task, example=example)


def allocate(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``n`` items over types by weight (largest remainder), so every weighted type appears."""
    total = sum(weights.values())
    raw = {t: n * w / total for t, w in weights.items() if w > 0}
    counts = {t: int(v) for t, v in raw.items()}
    for t in sorted(raw, key=lambda t: raw[t] - counts[t], reverse=True)[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


__all__ = ["KEYS", "Prompt", "truncate_topic", "sample_topics", "brainstorm_prompt", "generation_prompt",
           "judge_prompt", "revision_prompt", "allocate", "sample_attributes"]
