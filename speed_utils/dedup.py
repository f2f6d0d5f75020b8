"""Exact and MinHash near-duplicate removal (SPEED §3.3, App. A: 1.15M raw -> 920K after MinHash).

The paper names MinHash but not its settings (speed-method.md §6 q5). Here an example's text is
its query, positive and negative, lower-cased with punctuation and runs of spaces removed;
shingles are character n-grams of that text; signatures come from ``datasketch``. Rows are
visited in a fixed order and a row is dropped when it matches one **kept** earlier row, so the
result depends only on the row order, never on hash-table iteration.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Sequence

_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def example_text(row: dict) -> str:
    """The text that identifies a training example: query, positive and negative."""
    return " \n ".join(normalize(row.get(k) or "") for k in ("query", "positive", "negative"))


def shingles(text: str, n: int) -> set[bytes]:
    """Character ``n``-grams (the whole text when it is shorter than ``n``)."""
    if len(text) <= n:
        return {text.encode()}
    return {text[i:i + n].encode() for i in range(len(text) - n + 1)}


@dataclass
class DedupResult:
    kept: list[dict]
    dropped: list[dict] = field(default_factory=list)  # each with "duplicate_of" and "dedup" ("exact"|"near")

    @property
    def drop_rate(self) -> float:
        total = len(self.kept) + len(self.dropped)
        return len(self.dropped) / total if total else 0.0


def dedup(rows: Sequence[dict], threshold: float = 0.8, num_perm: int = 128, shingle: int = 5,
          key=example_text, id_key: str = "id") -> DedupResult:
    """Drop exact duplicates, then near-duplicates whose estimated Jaccard similarity to a kept row
    is at least ``threshold``. Rows keep their order; each dropped row names the row it duplicates."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    exact: dict[str, str] = {}
    signatures: dict[str, MinHash] = {}
    order: dict[str, int] = {}  # kept row id -> position, to name the earliest match
    out = DedupResult(kept=[])
    for row in rows:
        text = key(row)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in exact:
            out.dropped.append({**row, "dedup": "exact", "duplicate_of": exact[digest]})
            continue
        sig = MinHash(num_perm=num_perm, seed=1)
        sig.update_batch(sorted(shingles(text, shingle)))
        # LSH gives candidates; confirm with the estimated Jaccard, and pick the earliest kept match
        matches = [c for c in lsh.query(sig) if signatures[c].jaccard(sig) >= threshold]
        if matches:
            first = min(matches, key=lambda c: order[c])
            out.dropped.append({**row, "dedup": "near", "duplicate_of": first})
            continue
        rid = str(row[id_key])
        order[rid] = len(order)
        exact[digest] = rid
        signatures[rid] = sig
        lsh.insert(rid, sig)
        out.kept.append(row)
    return out
