"""The teacher's ledger and what it cost, per stage and at paper scale (SPEED §4.5, Table 5; stage 10).

The ledger has one row per teacher request (cache hits included, flagged), with its :data:`Kind`:
brainstorming, seed data, a DPO judgement, a revision or the quality check. This module owns its
totals (:class:`Usage`, :func:`usage`, :func:`total`). From the
measured tokens per call of each kind, :func:`extrapolate` projects SPEED at the paper's sizes
(25K seed, 10K judgements, 10K revisions; brainstorming not counted, as in the paper) and an
E5-style pipeline in which the teacher writes every example.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal, get_args

import yaml

from .config import resolve_path
from .files import salvage_jsonl
from .paths import PARAMS_DIR
from .profiles import Config
from .prompts import brainstorm_prompt, generation_prompt, judge_prompt, revision_prompt, sample_topics

PRICES = PARAMS_DIR / "prices.yaml"
# What the teacher is asked for: each request carries its kind (teacher.Request.kind) into the ledger.
Kind = Literal["brainstorm", "seed", "judge", "revision", "quality"]
KINDS: tuple[str, ...] = get_args(Kind)
PURPOSE = {"brainstorm": "task brainstorming (§3.2.1)", "seed": "seed data for junior SFT (§3.2.2)",
           "judge": "best/worst judgements for DPO (§3.2.3)", "revision": "revisions for the revisor (§3.2.4)",
           "quality": "quality check (ours, not in the paper)"}
# Paper sizes of what the teacher writes (SPEED §4.5) and what it writes in an E5-style pipeline.
PAPER_CALLS = {"seed": 25_000, "judge": 10_000, "revision": 10_000}
PAPER_SYNTHETIC = 920_415  # examples after dedup (Table 6); the E5-style pipeline writes each one
E5_EXAMPLES = 500_000


STAGE_OF = {"brainstorm": 1, "seed": 2, "judge": 4, "revision": 5, "quality": 5}  # the stage making each kind of call


def kind_of(row: dict) -> str:
    """What a ledger row's request was for: its ``kind``, or, in a ledger written before requests carried
    one (the reference runs), decoded from the prompt id in its ``tag``."""
    return row.get("kind") or _kind_of_tag(row.get("tag") or "")


def _kind_of_tag(tag: str) -> str:
    for prefix, kind in (("judge-", "judge"), ("rev-", "revision"), ("q-pair-", "quality"), ("q-rev-", "quality")):
        if tag.startswith(prefix):
            return kind
    if re.match(r"b\d", tag):
        return "brainstorm"
    if re.match(r"s\d", tag):
        return "seed"
    return "other"


@lru_cache(maxsize=4)
def prices(path: Path = PRICES) -> dict:
    return yaml.safe_load(Path(path).read_text())


def price_for(model: str, table: dict | None = None) -> tuple[str, dict]:
    """(model priced, its $/1M input and output): the model itself if listed, else the reference model."""
    table = table or prices()
    per = table["per_million_tokens"]
    priced = model if model in per else table["reference_model"]
    return priced, per[priced]


def dollars(prompt_tokens: float, completion_tokens: float, price: dict) -> float:
    return (prompt_tokens * price["input"] + completion_tokens * price["output"]) / 1e6


@dataclass
class Usage:
    """Teacher use summed over ledger rows: requests sent (failed ones too; cache hits apart) and tokens."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def per_call(self) -> tuple[float, float]:
        n = max(self.calls, 1)
        return self.prompt_tokens / n, self.completion_tokens / n

    def add(self, row: dict) -> None:
        """Count one ledger row (or a reply's usage in the same fields)."""
        if row.get("cache_hit"):
            self.cache_hits += 1
            return
        self.calls += 1
        self.prompt_tokens += row.get("prompt_tokens") or 0
        self.completion_tokens += row.get("completion_tokens") or 0


def usage(rows: Iterable[dict], by: str = "kind") -> dict[str, Usage]:
    """Totals per kind of call (``by="kind"``) or per stage (``by="stage"``)."""
    out: dict[str, Usage] = {}
    for r in rows:
        out.setdefault(kind_of(r) if by == "kind" else r.get("stage", "?"), Usage()).add(r)
    return out


def ledger_rows(ledger: Path) -> list[dict]:
    """A run's ledger rows; a damaged row is set aside with its line named (its call is not counted twice:
    the cache, not the ledger, decides what is asked again)."""
    return salvage_jsonl(ledger, ("stage",))


def total(ledger: Path | Iterable[dict]) -> Usage:
    """Totals over a whole ledger (its file, or rows already read): what the teacher's budget guard counts."""
    u = Usage()
    for r in ledger_rows(ledger) if isinstance(ledger, Path) else ledger:
        u.add(r)
    return u


def stage_table(ledger: Path, model: str, table: dict | None = None) -> list[dict]:
    """Calls, tokens and $ per stage, from a run's ledger."""
    priced, price = price_for(model, table)
    rows = []
    for stage, u in sorted(usage(ledger_rows(ledger), by="stage").items()):
        rows.append({"stage": stage, "calls": u.calls, "cache_hits": u.cache_hits, "prompt_tokens": u.prompt_tokens,
                     "completion_tokens": u.completion_tokens, "usd": round(dollars(u.prompt_tokens, u.completion_tokens, price), 4),
                     "priced_as": priced})
    return rows


def extrapolate(ledger: Path, model: str, table: dict | None = None) -> dict:
    """This run's tokens per call, projected to the paper's sizes for SPEED and for an E5-style pipeline."""
    priced, price = price_for(model, table)
    kinds = usage(ledger_rows(ledger))
    per_call = {k: kinds[k].per_call() for k in PAPER_CALLS if k in kinds and kinds[k].calls}
    missing = [k for k in PAPER_CALLS if k not in per_call]
    out: dict = {"priced_as": priced, "per_call_tokens": {k: [round(p, 1), round(c, 1)] for k, (p, c) in per_call.items()},
                 "missing": missing}
    if missing:
        return out
    speed_tokens = {k: PAPER_CALLS[k] * sum(per_call[k]) for k in PAPER_CALLS}
    speed_usd = sum(dollars(PAPER_CALLS[k] * per_call[k][0], PAPER_CALLS[k] * per_call[k][1], price) for k in PAPER_CALLS)
    p_seed, c_seed = per_call["seed"]
    out["rows"] = [
        {"pipeline": "SPEED (this run's tokens per call)", "calls": sum(PAPER_CALLS.values()),
         "tokens": round(sum(speed_tokens.values())), "usd": round(speed_usd, 2)},
        {"pipeline": f"E5-style, teacher writes all {PAPER_SYNTHETIC:,} examples", "calls": PAPER_SYNTHETIC,
         "tokens": round(PAPER_SYNTHETIC * (p_seed + c_seed)),
         "usd": round(dollars(PAPER_SYNTHETIC * p_seed, PAPER_SYNTHETIC * c_seed, price), 2)},
        {"pipeline": f"E5-style, {E5_EXAMPLES:,} examples (E5-mistral's size)", "calls": E5_EXAMPLES,
         "tokens": round(E5_EXAMPLES * (p_seed + c_seed)),
         "usd": round(dollars(E5_EXAMPLES * p_seed, E5_EXAMPLES * c_seed, price), 2)},
    ]
    out["speed_breakdown"] = {k: {"calls": PAPER_CALLS[k], "tokens": round(speed_tokens[k])} for k in PAPER_CALLS}
    return out


# ---------------------------------------------------------------- pre-flight estimate
CHARS_PER_TOKEN = 4.0  # a rough rule for English text with GPT-style tokenizers


def estimate(cfg: Config, table: dict | None = None) -> list[dict]:
    """Expected teacher calls and tokens for a profile, before anything runs.

    Prompt tokens come from rendering the real prompts (≈ 4 characters per token); completion
    tokens are given as the profile's ``max_tokens`` upper bound. Judgement and revision prompts
    embed generator outputs, counted at the generators' ``max_new_tokens``.
    """

    b, s = cfg.brainstorm, cfg.seed
    topics = sample_topics(min(b.n_topics, 50), cfg.run.seed, b.topic_max_depth,
                           resolve_path(b.topics_file) if b.topics_file else None)
    brain = [brainstorm_prompt(t, topic, i, cfg.run.seed, b.tasks_per_call).text
             for i, topic in enumerate(topics) for t in b.types]
    types = [t for t, w in s.type_weights.items() if w > 0]
    seeds = [generation_prompt(types[i % len(types)], i, cfg.run.seed, task="a brainstormed task of about ten words",
                               topic="Top/Example/Topic").text for i in range(50)]
    gen_out = "x" * int(cfg.generation.max_new_tokens * CHARS_PER_TOKEN)
    k = cfg.senior.k_samples
    judge = judge_prompt(seeds[0], [gen_out] * k)
    revise = revision_prompt(seeds[0], "a task", gen_out)

    def tok(texts: list[str]) -> float:
        return sum(len(t) for t in texts) / len(texts) / CHARS_PER_TOKEN

    plan = [("brainstorm", b.n_topics * len(b.types), tok(brain), b.max_tokens),
            ("seed", s.n_examples, tok(seeds), s.max_tokens),
            ("judge", cfg.senior.n_prompts * cfg.senior.judgements_per_list, tok([judge]), 400),
            ("revision", cfg.revisor.n_examples, tok([revise]), cfg.generation.max_new_tokens + 200),
            ("quality", 2 * cfg.quality.n_prompts, tok([judge_prompt(seeds[0], [gen_out] * 2)]), 400)]
    priced, price = price_for(cfg.teacher.model, table)
    rows = []
    for kind, calls, p_tok, c_max in plan:
        rows.append({"kind": kind, "purpose": PURPOSE[kind], "calls": calls, "prompt_tokens": round(calls * p_tok),
                     "completion_tokens_max": calls * c_max,
                     "usd_max": round(dollars(calls * p_tok, calls * c_max, price), 2), "priced_as": priced})
    return rows


__all__ = ["kind_of", "usage", "total", "Usage", "Kind", "stage_table", "extrapolate", "estimate", "price_for", "dollars", "prices", "KINDS"]
