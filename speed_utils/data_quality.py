"""The data's quality measured directly, per generator, where the embedder cannot see it (issue 31, item 3).

A 135M embedder trained on 16 rows says more about its optimiser than about the rows. These rules read
each generated output itself, for the checks SPEED's prompts ask for (§3.1, App. C) and the faults a read
of the default run found (non-English gibberish, prompt text leaked into a field, a positive that
repeats its query):

* ``valid``: JSON with the type's keys (:func:`speed_utils.schema.parse_example`);
* ``instructions``: the word counts the prompt asked for (a retrieval query's length, "at least N words"
  of a document, a classification text's length, short texts under about 20 words, one sentence per
  STS text); None where the prompt asked for none that can be counted;
* ``english``: every text reads as English prose: few letters outside ASCII, mostly letters, and in a
  text of six words or more at least 15% English function words (sklearn's stop-word list; running
  English has about 40%, gibberish and word salad almost none);
* ``not_a_copy``: the positive is not the query again (equal, or 90% alike character for character);
* ``ranks_positive``: a reference encoder puts the positive nearer the query than the hard negative
  (types with a negative; needs an ``encode`` function);
* ``distinct``: not a near-duplicate of an earlier output of the same generator (MinHash, as §3.3).

Content rules are None for an invalid output: rates count the valid ones (``n`` says how many).
``sound`` is an output that is valid and fails no rule that applies to it: a row one would train on.
Each rate gets a 95% Wilson interval; two generators on the same held-out prompts get a paired
bootstrap interval of their difference (:func:`paired_rate_difference`).
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from .dedup import dedup, normalize
from .prompts import LONG_LONG_WORDS
from .schema import KEYS, parse_example, to_training_example
from .stats import Interval, resamples, wilson

RULES = ("valid", "instructions", "english", "not_a_copy", "ranks_positive", "distinct")
Encode = Callable[[list[str]], np.ndarray]  # texts -> embeddings (rows), e.g. MiniLM's encode

SHORT_WORDS = 24  # "under about 20 words" (short_short), with the "about"
MIN_FUNCTION_WORDS = 0.15
MAX_NON_ASCII_LETTERS = 0.10
MIN_LETTERS = 0.60
COPY_RATIO = 0.90
_SENTENCE_END = re.compile(r"[.!?](?:\s+|$)")


def words(text: str) -> int:
    return len(text.split())


def _length_ok(n: int, asked: str | int) -> bool | None:
    """Whether ``n`` words satisfy the prompt's phrase ("less than 5 words", "5 to 15 words",
    "at least 10 words", "at least 50", "less than 10", or a bare number meaning "at least")."""
    if isinstance(asked, int):
        return n >= asked
    m = re.match(r"\s*(less than|at least)\s+(\d+)", asked)
    if m:
        return n < int(m.group(2)) if m.group(1) == "less than" else n >= int(m.group(2))
    m = re.match(r"\s*(\d+)\s+to\s+(\d+)", asked)
    if m:
        return int(m.group(1)) <= n <= int(m.group(2))
    return None


def follows_instructions(task_type: str, obj: Mapping, attributes: Mapping) -> bool | None:
    """The word counts (and STS's one sentence) that the prompt's attributes asked for; None if none."""
    checks: list[bool | None] = []
    if task_type == "retrieval":
        if attributes.get("query_length"):
            checks.append(_length_ok(words(obj["user_query"]), attributes["query_length"]))
        if attributes.get("num_words"):
            checks.append(_length_ok(words(obj["positive_document"]), int(attributes["num_words"])))
    elif task_type == "classification" and attributes.get("num_words"):
        checks.append(_length_ok(words(obj["input_text"]), attributes["num_words"]))
    elif task_type == "long_long":
        at_least = int(attributes.get("num_words") or LONG_LONG_WORDS)
        checks += [words(obj["input"]) >= at_least, words(obj["positive_document"]) >= at_least]
    elif task_type == "short_short":
        checks += [words(obj["input"]) <= SHORT_WORDS, words(obj["positive_document"]) <= SHORT_WORDS]
    elif task_type == "sts" and attributes.get("unit") == "sentence":
        checks += [len(_SENTENCE_END.findall(str(obj[k]).strip())) <= 1 for k in ("S1", "S2", "S3")]
    known = [c for c in checks if c is not None]
    return all(known) if known else None


def reads_as_english(text: str) -> bool:
    """Few non-ASCII letters, mostly letters, and (six words or more) enough English function words."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    letters = [c for c in text if c.isalpha()]
    visible = [c for c in text if not c.isspace()]
    if not letters or len(letters) < MIN_LETTERS * len(visible):
        return False
    if sum(not c.isascii() for c in letters) > MAX_NON_ASCII_LETTERS * len(letters):
        return False
    tokens = re.findall(r"[a-z']+", text.lower())
    if len(text.split()) < 6:
        return True
    return sum(t in ENGLISH_STOP_WORDS for t in tokens) >= MIN_FUNCTION_WORDS * max(len(tokens), 1)


def is_copy(query: str, positive: str) -> bool:
    """The positive repeats the query: equal after normalising, or at least 90% alike."""
    q, p = normalize(query), normalize(positive)
    return q == p or SequenceMatcher(None, q, p, autojunk=False).ratio() >= COPY_RATIO


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))


def _check(outputs: Sequence[Mapping], encode: Encode | None) -> tuple[list[dict], list[dict | None]]:
    """Every rule but ``distinct`` on each output (True, False, or None where it does not apply), and each
    valid output's training row (None for an invalid one). Each output is parsed once, and the reference
    encoder embeds every (query, positive, negative) in one call."""
    results, rows = [], []
    for o in outputs:
        task_type = o["task_type"]
        parsed = parse_example(task_type, o.get("raw"))
        out: dict = {rule: None for rule in RULES if rule != "distinct"}
        out["valid"] = parsed.ok
        row = to_training_example(task_type, o.get("task") or "", parsed.value) if parsed.ok else None
        if row is not None:
            obj = parsed.value
            out["instructions"] = follows_instructions(task_type, obj, o.get("attributes") or {})
            texts = [str(obj[k]) for k in KEYS[task_type] if task_type != "classification" or k == "input_text"]
            out["english"] = all(reads_as_english(t) for t in texts)
            out["not_a_copy"] = not is_copy(row["query"], row["positive"])
        results.append(out)
        rows.append(row)
    triples = [i for i, row in enumerate(rows) if row is not None and row["negative"]]
    if encode is not None and triples:
        emb = encode([t for i in triples for t in (rows[i]["query"], rows[i]["positive"], rows[i]["negative"])])
        for j, i in enumerate(triples):
            q, p, n = emb[3 * j:3 * j + 3]
            results[i]["ranks_positive"] = _cos(q, p) > _cos(q, n)
    return results, rows


def check_output(task_type: str, raw: str | None, attributes: Mapping | None = None, task: str = "",
                 encode: Encode | None = None) -> dict:
    """Every rule but ``distinct`` on one raw output (True, False, or None where it does not apply)."""
    return _check([{"task_type": task_type, "raw": raw, "attributes": attributes, "task": task}], encode)[0][0]


def check_generator(outputs: Sequence[Mapping], encode: Encode | None = None) -> list[dict]:
    """The rules on one generator's outputs, in order; each output a mapping with ``prompt_id``,
    ``task_type``, ``raw`` and optionally ``attributes`` and ``task``. ``distinct`` compares the valid
    outputs with the earlier ones of the same generator."""
    results, rows = _check(outputs, encode)
    valid = [{**row, "id": o["prompt_id"]} for o, row in zip(outputs, rows) if row is not None]
    dropped = {str(d["id"]) for d in dedup(valid).dropped}
    checked = []
    for o, r in zip(outputs, results):
        r["distinct"] = None if not r["valid"] else str(o["prompt_id"]) not in dropped
        r["sound"] = bool(r["valid"]) and all(r[rule] is not False for rule in RULES)
        checked.append({"prompt_id": o["prompt_id"], "task_type": o["task_type"], **r})
    return checked


def rate(rows: Iterable[Mapping], rule: str) -> dict:
    """Share of the outputs a rule applies to that pass it, with its 95% Wilson interval."""
    seen = [bool(r[rule]) for r in rows if r.get(rule) is not None]
    k, n = sum(seen), len(seen)
    lo, hi = wilson(k, n)
    return {"rate": round(k / n, 3) if n else None, "lo": round(lo, 3), "hi": round(hi, 3), "n": n}


def rate_table(by_generator: Mapping[str, Sequence[Mapping]]) -> dict:
    """{generator: {rule: rate}} for :func:`check_generator`'s rows of each generator (``sound`` included)."""
    return {g: {rule: rate(rows, rule) for rule in (*RULES, "sound")} for g, rows in by_generator.items()}


def compare(by_generator: Mapping[str, Sequence[Mapping]], pairs: Sequence[tuple[str, str]], seed: int = 0) -> dict:
    """For each (b, a): every rule's rate of b minus a's, paired by prompt (None with under 3 prompts)."""
    return {f"{b} - {a}": {rule: paired_rate_difference(by_generator[a], by_generator[b], rule, seed=seed)
                           for rule in (*RULES, "sound")}
            for b, a in pairs if a in by_generator and b in by_generator}


def paired_rate_difference(a: Sequence[Mapping], b: Sequence[Mapping], rule: str, n_boot: int = 2000,
                           seed: int = 0) -> dict | None:
    """Rate of ``b`` minus rate of ``a`` over the prompts where the rule applies to both, with a
    bootstrap interval over those prompts (paired: the same prompt's two outputs stay together)."""
    bb = {r["prompt_id"]: r[rule] for r in b}
    pairs = [(bool(r[rule]), bool(bb[r["prompt_id"]])) for r in a
             if r.get(rule) is not None and bb.get(r["prompt_id"]) is not None]
    if len(pairs) < 3:
        return None
    x = np.array([int(y) - int(x) for x, y in pairs], dtype=float)
    boots = x[resamples(len(x), n_boot, seed)].mean(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {**Interval(float(x.mean()), float(lo), float(hi)).to_dict(3), "n": len(pairs)}


__all__ = ["RULES", "check_output", "check_generator", "rate", "rate_table", "compare", "paired_rate_difference",
           "follows_instructions", "reads_as_english", "is_copy"]
