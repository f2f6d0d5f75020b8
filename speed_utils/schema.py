"""Per-type output schemas, JSON repair and validation with reject reasons.

The JSON keys follow SPEED's released prompts (speed-method.md §3). Teacher and generator output
is repaired the way SPEED's ``utils.py`` does it (strip code fences, take the first ``{...}``
block, parse again) and, failing that, with ``json_repair``. Every rejected output keeps its
reason so the notebooks can count them.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

import json_repair

KEYS: dict[str, tuple[str, ...]] = {
    "retrieval": ("user_query", "positive_document", "hard_negative_document"),
    "classification": ("input_text", "label", "misleading_label"),
    "short_short": ("input", "positive_document"),
    "long_long": ("input", "positive_document"),
    "sts": ("S1", "S2", "S3"),
}
STS_TASK = "Retrieve semantically similar text."  # SPEED Fig. 9: the task attached to STS triples

_FENCE = re.compile(r"```(?:json|python|JSON)?\s*(.*?)```", re.S)
_ITEM = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022])\s+(.+?)\s*$")


@dataclass
class Parsed:
    value: Any | None
    reason: str | None = None  # None when ``value`` is usable
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None


def _first_block(text: str, open_ch: str, close_ch: str) -> str | None:
    """The first balanced ``open_ch ... close_ch`` block, respecting JSON strings."""
    start = text.find(open_ch)
    while start >= 0:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            c = text[i]
            if in_str:
                esc = (c == "\\") and not esc
                if c == '"' and not esc:
                    in_str = False
                continue
            if c == '"':
                in_str = True
            elif c == open_ch:
                depth += 1
            elif c == close_ch:
                depth -= 1
                if depth == 0:
                    return text[start:i + 1]
        start = text.find(open_ch, start + 1) if depth else -1
    return None


def parse_json(text: str | None, want: type = dict) -> Parsed:
    """Parse a JSON object (or list) from model output, repairing common damage."""
    if text is None or not text.strip():
        return Parsed(None, "empty_output")
    candidates = [text.strip()]
    fenced = _FENCE.search(text)
    if fenced:
        candidates.append(fenced.group(1).strip())
    opener, closer = ("{", "}") if want is dict else ("[", "]")
    block = _first_block(text, opener, closer)
    if block:
        candidates.append(block)
    for i, cand in enumerate(candidates):
        for loader in (json.loads, ast.literal_eval) if want is list else (json.loads,):
            try:
                value = loader(cand)
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                continue
            if isinstance(value, want):
                return Parsed(value, repaired=i > 0)
    try:
        value = json_repair.loads(block or text)
    except Exception:  # json_repair raises assorted errors on hostile input
        value = None
    if isinstance(value, want) and value:
        return Parsed(value, repaired=True)
    return Parsed(None, "no_json_object" if want is dict else "no_list")


def validate(task_type: str, obj: Any) -> list[str]:
    """Problems with one example of ``task_type``; an empty list means schema-valid."""
    if not isinstance(obj, dict):
        return ["not_an_object"]
    problems = []
    for key in KEYS[task_type]:
        if key not in obj:
            problems.append(f"missing:{key}")
        elif not isinstance(obj[key], str):
            problems.append(f"not_a_string:{key}")
        elif not obj[key].strip():
            problems.append(f"empty:{key}")
    if task_type == "classification" and not problems:
        if obj["label"].strip().lower() == obj["misleading_label"].strip().lower():
            problems.append("labels_equal")
    if not problems:
        texts = [obj[k].strip() for k in KEYS[task_type]]
        if len(set(texts)) < len(texts):
            problems.append("duplicate_fields")
    return problems


def parse_example(task_type: str, text: str | None, finish_reason: str | None = None) -> Parsed:
    """Parse and validate one generated example; the value keeps only the schema's keys."""
    if finish_reason == "length":
        return Parsed(None, "truncated")
    p = parse_json(text, dict)
    if not p.ok:
        return p
    problems = validate(task_type, p.value)
    if problems:
        return Parsed(None, problems[0], p.repaired)
    return Parsed({k: p.value[k].strip() for k in KEYS[task_type]}, repaired=p.repaired)


def _bullets(text: str) -> list[str]:
    """Items of a numbered or bulleted list ("1. ...", "- ..."), quotes stripped."""
    return [m.group(1).strip().strip('",\'') for line in text.splitlines() if (m := _ITEM.match(line))]


def parse_task_list(text: str | None, finish_reason: str | None = None, exclude: tuple[str, ...] = ()) -> Parsed:
    """Brainstorm output: a list of task descriptions (strings), cleaned and de-duplicated.

    A Python/JSON list is expected; a numbered or bulleted list (what small teachers often write
    instead) is accepted as a repair. Tasks equal to ``exclude`` (the prompt's own examples) are
    dropped, so a teacher that copies its examples does not inflate the task pool.
    """
    p = parse_json(text, list)
    if not p.ok and text and len(items := _bullets(text)) >= 2:
        p = Parsed(items, repaired=True)
    if not p.ok:
        return Parsed(None, "truncated" if finish_reason == "length" else p.reason)
    seen = {e.lower().rstrip(".") for e in exclude}
    tasks = []
    for item in p.value:
        if not isinstance(item, str):
            continue
        task = " ".join(item.split()).strip(" -*\u2022")
        words = len(task.split())
        if 3 <= words <= 40 and task.lower().rstrip(".") not in seen:
            seen.add(task.lower().rstrip("."))
            tasks.append(task)
    if not tasks:
        return Parsed(None, "no_usable_tasks", p.repaired)
    return Parsed(tasks, repaired=p.repaired)


def parse_judgement(text: str | None, k: int) -> Parsed:
    """DPO judge output ``{"reason", "best", "worst"}`` (SPEED §3.2.3); indices from 0."""
    p = parse_json(text, dict)
    if not p.ok:
        return p
    v = p.value
    try:
        best, worst = int(v["best"]), int(v["worst"])
    except (KeyError, TypeError, ValueError):
        return Parsed(None, "missing_or_bad_index", p.repaired)
    if not (0 <= best < k and 0 <= worst < k):
        return Parsed(None, "index_out_of_range", p.repaired)
    if best == worst:
        return Parsed(None, "best_equals_worst", p.repaired)
    return Parsed({"reason": str(v.get("reason", "")), "best": best, "worst": worst}, repaired=p.repaired)


def parse_revision(task_type: str, text: str | None, finish_reason: str | None = None) -> Parsed:
    """Revision output ``{"reason", "revision"}`` whose revision is a valid example (§3.2.4)."""
    if finish_reason == "length":
        return Parsed(None, "truncated")
    p = parse_json(text, dict)
    if not p.ok:
        return p
    rev = p.value.get("revision")
    if isinstance(rev, str):
        rev = parse_json(rev, dict).value
    problems = validate(task_type, rev) if rev is not None else ["missing:revision"]
    if problems:
        return Parsed(None, f"revision_{problems[0]}", p.repaired)
    return Parsed({"reason": str(p.value.get("reason", "")),
                   "revision": {k: rev[k].strip() for k in KEYS[task_type]}}, repaired=p.repaired)


def json_schema(task_type: str, max_chars: int | None = None) -> dict:
    """JSON Schema for constrained decoding (``response_format``) of one task type; ``max_chars`` bounds
    each field (a small model under a schema can otherwise write one string until its token cap)."""
    keys = KEYS[task_type]
    field = {"type": "string"} if max_chars is None else {"type": "string", "minLength": 1, "maxLength": max_chars}
    return {"type": "object", "properties": {k: dict(field) for k in keys},
            "required": list(keys), "additionalProperties": False}


def revision_schema(task_type: str, max_chars: int | None = None) -> dict:
    """JSON Schema of a revision ``{"reason", "revision"}`` whose revision is one example (§3.2.4)."""
    reason = {"type": "string"} if max_chars is None else {"type": "string", "maxLength": max_chars}
    return {"type": "object", "required": ["reason", "revision"], "additionalProperties": False,
            "properties": {"reason": reason, "revision": json_schema(task_type, max_chars)}}


GENERATOR_FIELD_CHARS = 80  # per field under constrained generation: three fields of words, keys and braces fit 128 tokens
# per field of a teacher's constrained revision (the smoke profile's 135M teacher): unbounded, it wrote one "reason"
# until its token cap; on one smoke run's 8 revisions, 0 valid unbounded, 2 at 200 chars, 5 at 120 (and at 80)
REVISION_FIELD_CHARS = 120


def generator_schema(task_type: str, revise: bool = False) -> str:
    """The schema a generator's decoding is constrained to (``generation.structured_output``), as JSON
    text, every field bounded to :data:`GENERATOR_FIELD_CHARS` so a row always closes within its tokens."""
    schema = revision_schema(task_type, GENERATOR_FIELD_CHARS) if revise else json_schema(task_type, GENERATOR_FIELD_CHARS)
    return json.dumps(schema, sort_keys=True)


def response_format(name: str, schema: dict) -> str:
    """An OpenAI ``response_format`` as JSON text (hashable, so it can sit in a cache key)."""
    return json.dumps({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
                      sort_keys=True)


TASK_LIST_SCHEMA = {"type": "array", "items": {"type": "string"}, "minItems": 1}


def to_training_example(task_type: str, task: str, output: dict) -> dict:
    """Map one example to (instruction, query, positive, negative), as SPEED trains on it (§3.3).

    Classification: query = input text, positive = label, negative = misleading label.
    STS: S1/S2/S3 with the task "Retrieve semantically similar text". Matching: no negative.
    """
    if task_type == "retrieval":
        q, pos, neg = output["user_query"], output["positive_document"], output["hard_negative_document"]
    elif task_type == "classification":
        q, pos, neg = output["input_text"], output["label"], output["misleading_label"]
    elif task_type == "sts":
        q, pos, neg = output["S1"], output["S2"], output["S3"]
        task = STS_TASK
    else:
        q, pos, neg = output["input"], output["positive_document"], None
    return {"instruction": task, "query": q, "positive": pos, "negative": neg, "task_type": task_type}
