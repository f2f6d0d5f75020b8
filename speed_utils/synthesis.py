"""Stage 06: large-scale synthesis. The senior writes, the revisor revises once, MinHash dedup (SPEED §3.3).

The work is cut into **chunks** of ``synthesis.chunk_size`` prompts. A chunk is generated whole
(senior, then revisor) and written as one file with an atomic rename, so a process killed at any
moment loses at most the chunk in flight and never leaves a partial or duplicated row. A rerun
skips the chunk files that exist. ``--shard i/n`` makes the chunks whose number is ``i`` modulo
``n``; because a chunk's prompts, batches and seeds do not depend on who makes it, shards merged
together equal one unsharded run. Chunks live in a folder named by the hash of everything that
shapes them (config and adapters), so stale chunks are never reused.

:func:`merge` then parses and validates every example, keeps rejects with their reasons, maps
examples to the training format (§3.3: classification -> query = input, positive = label,
negative = misleading label; STS -> S1/S2/S3 with "Retrieve semantically similar text"),
removes exact and MinHash near-duplicates, and writes ``synthetic.jsonl``.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .config import TASK_TYPES
from .dedup import dedup
from .files import read_jsonl, sha256_path, write_jsonl
from .generate import Generator, GenRequest, generation_engine, open_generator
from .profiles import Config
from .prompts import Prompt, revision_prompt
from .runs import RunPaths, stale_temp
from .schema import KEYS, generator_schema, parse_example, parse_revision, to_training_example
from .teacher_data import request_seed, seed_prompts

REVISION_EXTRA_TOKENS = 200  # default room for the reason the revisor writes before its revision


class SynthesisError(RuntimeError):
    """Synthesis cannot proceed; the message names what is missing."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the chunks whose number is ``index`` modulo ``count``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"i/n"`` with 0 <= i < n."""
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
        if not 0 <= i < n:
            raise ValueError(f"--shard {text!r}: need 0 <= i < n")
        return cls(i, n)

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# ---------------------------------------------------------------- what to make
def prompts(cfg: Config, run: RunPaths, items: range | None = None) -> list[Prompt]:
    """The synthesis prompts: types in the profile's mix (7:7:7:2 in the paper), seeded per item
    (``items``: those of a range alone)."""
    s = cfg.synthesis
    return seed_prompts(cfg, read_jsonl(run.file("tasks")), s.n_examples, purpose="synthesis",
                        type_weights=s.type_weights, items=items)


def chunk_prompts(cfg: Config, run: RunPaths, j: int) -> list[Prompt]:
    """Chunk ``j``'s prompts alone (what a replica needs): ``chunked(prompts(cfg, run), chunk_size)[j]``."""
    s = cfg.synthesis
    return prompts(cfg, run, items=range(j * s.chunk_size, min((j + 1) * s.chunk_size, s.n_examples)))


def adapters(cfg: Config, run: RunPaths) -> tuple[Path, Path | None]:
    """The writing generator's adapter (senior by default) and the revisor's (or None)."""
    writer = run.adapters / cfg.synthesis.generator
    return writer, (run.file("revisor") if cfg.synthesis.revise else None)


def _key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def pass_dirs(cfg: Config, run: RunPaths) -> tuple[Path, Path | None]:
    """Folders of the writer's chunks and of the revisor's, named by what shapes them.

    ``data/synthesis/<writer key>/`` holds what the writer made; ``…/revised-<revisor key>/`` what
    the revisor made of it. The keys hash the settings and adapters involved, so variants that
    share a pass (senior with and without the revisor, say) share its chunks, and stale chunks are
    never reused.
    """
    writer, revisor = adapters(cfg, run)
    for a in (writer, revisor):
        if a is not None and not (a / "adapter_config.json").exists():
            raise SynthesisError(f"synthesis needs the adapter {a}; run stages 03-05 first")
    s = cfg.synthesis

    engine = generation_engine(cfg)  # engines sample differently
    wkey = _key({"seed": cfg.run.seed, "generator": cfg.models.generator, "batch": cfg.generation.batch_size, "engine": engine,
                 "sampling": [s.n_examples, s.type_weights, s.chunk_size, s.temperature, s.top_p, s.max_new_tokens],
                 "adapter": sha256_path(writer), "tasks": sha256_path(run.file("tasks"))})
    wdir = run.synthesis_chunks / wkey
    if revisor is None:
        return wdir, None
    rkey = _key({"adapter": sha256_path(revisor), "sampling": [s.revisor_temperature, s.top_p, s.revisor_max_new_tokens]})
    return wdir, wdir / f"revised-{rkey}"


def chunked(items: list, size: int) -> list[list]:
    return [items[s:s + size] for s in range(0, len(items), size)]


def chunk_path(folder: Path, j: int) -> Path:
    return folder / f"chunk-{j:05d}.jsonl"


def _clear_stale(folder: Path, shard: Shard) -> None:
    """Remove temporary files of this shard's chunk writes that a kill cut short (never a live writer's)."""
    for tmp in folder.glob(".chunk-*.tmp") if folder.exists() else ():
        if shard.owns(int(tmp.name[len(".chunk-"):][:5])) and stale_temp(tmp):
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- making chunks
@dataclass
class Pass:
    """One generator's pass over the chunks it still has to make: the writer's, then the revisor's."""

    name: str  # "writer" | "revisor"
    todo: list[int]
    adapter: Path
    folder: Path  # where its chunks go
    source: Path | None = None  # the revisor's: the writer's chunks it revises


def plan(cfg: Config, run: RunPaths, shard: Shard = Shard()) -> tuple[list[list[Prompt]], list[Pass], dict]:
    """Which prompts this worker makes: the chunks ``shard`` owns, less those already written.

    The one place that decides it, for every way synthesis runs (one process, ``--shard i/n``, or
    the Ray pipeline of :mod:`speed_utils.scale`). Returns the chunks, the passes with work left,
    and the counts stage 06 reports.
    """
    s = cfg.synthesis
    chunks = chunked(prompts(cfg, run), s.chunk_size)
    wdir, rdir = pass_dirs(cfg, run)
    mine = [j for j in range(len(chunks)) if shard.owns(j)]
    for d in (wdir, rdir):
        if d is not None:
            _clear_stale(d, shard)
    todo_w = [j for j in mine if not chunk_path(wdir, j).exists()]
    todo_r = [j for j in mine if rdir is not None and not chunk_path(rdir, j).exists()]
    writer_adapter, revisor_adapter = adapters(cfg, run)
    passes = [Pass(n, todo, a, d, src) for n, todo, a, d, src in (("writer", todo_w, writer_adapter, wdir, None),
                                                                  ("revisor", todo_r, revisor_adapter, rdir, wdir)) if todo]
    made = set(todo_w) | set(todo_r)
    stats = {"shard": str(shard), "chunks": len(chunks), "owned": len(mine), "writer_made": len(todo_w),
             "revisor_made": len(todo_r), "made": len(made), "skipped": len(mine) - len(made),
             "folder": str(wdir.relative_to(run.root)), "structured_output": cfg.generation.structured_output}
    return chunks, passes, stats


def chunk_input(p: Pass, j: int, prompts_of: Callable[[int], list[Prompt]]) -> list:
    """What pass ``p`` makes chunk ``j`` from: its prompts (writer), or the writer's rows (revisor)."""
    if p.name == "writer":
        return prompts_of(j)
    return list(read_jsonl(chunk_path(p.source, j)))


def make_chunk(cfg: Config, name: str, j: int, given: list, gen: Generator) -> tuple[list[dict], int]:
    """Chunk ``j`` of pass ``name`` from its input (:func:`chunk_input`): its rows and how many are valid.
    Every executor calls this, so a chunk's rows do not depend on where it was made."""
    if name == "writer":
        rows = write_chunk(cfg, given, j * cfg.synthesis.chunk_size, gen)
        return rows, sum(parse_example(r["task_type"], r["raw"]).ok for r in rows)
    rows = revise_chunk(cfg, given, gen)
    return rows, sum(parse_revision(r["task_type"], r["revisor_raw"]).ok for r in rows)


class Progress:
    """Stage 06's bar for one pass: examples, examples/s, share valid, generator tokens/s."""

    def __init__(self, total: int, desc: str):
        self.bar = tqdm(total=total, desc=desc, unit="ex", mininterval=2.0, file=sys.stderr)
        self.t0, self.done, self.valid, self.tokens = time.monotonic(), 0, 0, 0

    def update(self, rows: int, valid: int, tokens: int) -> None:
        self.done, self.valid, self.tokens = self.done + rows, self.valid + valid, self.tokens + tokens
        dt = max(time.monotonic() - self.t0, 1e-6)
        self.bar.update(rows)
        self.bar.set_postfix(ex_s=f"{self.done / dt:.2f}", valid=f"{self.valid / max(self.done, 1):.0%}",
                             tok_s=f"{self.tokens / dt:.1f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def make_chunks(cfg: Config, run: RunPaths, shard: Shard = Shard(), base_model: str | None = None,
                backend: str | None = None, remote: Callable | None = None) -> dict:
    """Make every missing chunk this shard owns, first the writer's, then the revisor's: in this
    process, or through ``remote`` (:func:`speed_utils.scale.executor_for`: a Ray Data pipeline where
    ``distributed.synthesis`` is "ray"). Either way each chunk is written whole (atomically) as it
    arrives, so a kill loses only chunks in flight."""
    chunks, passes, stats = plan(cfg, run, shard)
    t0, tokens = time.monotonic(), 0
    if cfg.distributed.synthesis == "ray" and remote is None and passes:
        raise SynthesisError("distributed.synthesis is 'ray': pass remote=speed_utils.scale.executor_for(cfg)")
    if remote is not None and passes:
        return {**stats, **remote(cfg, run, chunks, passes, shard, base_model, backend),
                "seconds": round(time.monotonic() - t0, 1)}
    for p in passes:
        with open_generator(cfg, p.adapter, run.logs / "llama-generator.log", base_override=base_model,
                            backend=backend) as gen:
            bar = Progress(sum(len(chunks[j]) for j in p.todo), f"06 {p.name} {shard}")
            pool = ThreadPoolExecutor(max_workers=chunks_in_flight(gen, cfg.synthesis.chunk_size))
            try:
                made = {pool.submit(make_chunk, cfg, p.name, j, chunk_input(p, j, chunks.__getitem__), gen): j
                        for j in p.todo}
                seen = gen.tokens_out
                for done in as_completed(made):
                    rows, valid = done.result()
                    write_jsonl(chunk_path(p.folder, made[done]), rows)  # atomic: the chunk exists whole or not at all
                    bar.update(len(rows), valid, gen.tokens_out - seen)
                    seen = gen.tokens_out
            finally:  # on an error or a kill, chunks not started are dropped; finished ones are on disk
                pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
            tokens += gen.tokens_out
    return {**stats, "executor": "local", "seconds": round(time.monotonic() - t0, 1), "tokens_out": tokens}


def chunks_in_flight(gen: Generator, chunk_size: int) -> int:
    """How many chunks one process generates at once: on llama.cpp with several slots, enough that the next
    chunk's rows fill the slots while a chunk's longest rows finish (a chunk alone left most slots idle
    for its tail: 1.1x one slot's rows a minute in stage 06, against 2.1x in benchmarks/slots.py);
    elsewhere one (a transformers model generates one batch at a time; vLLM takes each chunk whole)."""
    if gen.backend != "llamacpp" or getattr(gen, "parallel", 1) <= 1:
        return 1
    return 1 + -(-gen.parallel // chunk_size)


def write_chunk(cfg: Config, chunk: list[Prompt], first_index: int, writer: Generator) -> list[dict]:
    """The writer (the senior by default) samples one example per prompt (§3.3)."""
    s = cfg.synthesis
    structured = cfg.generation.structured_output
    reqs = [GenRequest(p.text, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                       seed=request_seed(cfg.run.seed, p.id),
                       json_schema=generator_schema(p.task_type) if structured else None) for p in chunk]
    raw = [o[0] for o in writer.generate(reqs, desc=None)]
    return [{"index": first_index + i, "prompt_id": p.id, "prompt": p.text, "task_type": p.task_type, "task": p.task,
             "topic": p.topic, "attributes": p.attributes, "generator": s.generator, "raw": text}
            for i, (p, text) in enumerate(zip(chunk, raw))]


def revise_chunk(cfg: Config, written: list[dict], revisor: Generator) -> list[dict]:
    """The revisor revises each written example once (§3.3), from the same input it was trained on."""
    s = cfg.synthesis
    reqs = [GenRequest(revision_prompt(r["prompt"], r["task"], r["raw"]), temperature=s.revisor_temperature,
                       top_p=s.top_p, max_new_tokens=s.revisor_max_new_tokens or s.max_new_tokens + REVISION_EXTRA_TOKENS,
                       seed=request_seed(cfg.run.seed, f"rev-{r['prompt_id']}"),
                       json_schema=generator_schema(r["task_type"], revise=True) if cfg.generation.structured_output
                       else None) for r in written]
    out = [o[0] for o in revisor.generate(reqs, desc=None)]
    return [{"index": r["index"], "task_type": r["task_type"], "revisor_raw": text} for r, text in zip(written, out)]


# ---------------------------------------------------------------- merge
def _final(row: dict) -> tuple[dict | None, dict]:
    """The example a raw row yields (the revision if valid, else the original if valid) and why."""
    t = row["task_type"]
    orig = parse_example(t, row["raw"])
    info = {"original_valid": orig.ok, "original_reason": orig.reason, "revised_valid": None}
    if row.get("revisor_raw") is not None:
        rev = parse_revision(t, row["revisor_raw"])
        info.update(revised_valid=rev.ok, revised_reason=rev.reason)
        if rev.ok:
            return rev.value["revision"], {**info, "revised": True, "original": orig.value}
    if orig.ok:
        return orig.value, {**info, "revised": False, "original": orig.value}
    return None, {**info, "revised": False, "original": None}


def read_chunks(cfg: Config, run: RunPaths) -> list[dict]:
    """Every example's writer and revisor output, in prompt order; a missing chunk is an error."""
    wdir, rdir = pass_dirs(cfg, run)
    n = len(chunked(list(range(cfg.synthesis.n_examples)), cfg.synthesis.chunk_size))
    for folder in (wdir, rdir):
        missing = [j for j in range(n) if folder is not None and not chunk_path(folder, j).exists()]
        if missing:
            raise SynthesisError(f"{len(missing)} of {n} chunks are missing in {folder} (first: {missing[0]}); "
                                 "make them with `speed-repro synthesize --shard i/n` or rerun stage 06")
    rows = [row for j in range(n) for row in read_jsonl(chunk_path(wdir, j))]
    revised = {r["index"]: r["revisor_raw"] for j in range(n) for r in read_jsonl(chunk_path(rdir, j))} if rdir else {}
    return [{**r, "revisor_raw": revised.get(r["index"])} for r in rows]


def merge(cfg: Config, run: RunPaths) -> dict:
    """Parse, validate, map, dedup; write ``synthetic.jsonl`` and ``synthesis_rejects.jsonl``."""
    s = cfg.synthesis
    raw = read_chunks(cfg, run)
    examples, rejects, edits, infos = [], [], [], []
    for row in raw:
        output, info = _final(row)
        infos.append(info)
        if output is None:
            rejects.append({"id": row["prompt_id"], "task_type": row["task_type"], "stage": "validate",
                            "reason": info["original_reason"], "revised_reason": info.get("revised_reason"),
                            "raw": row["raw"][:4000], "revisor_raw": (row["revisor_raw"] or "")[:4000] or None})
            continue
        if info["revised"] and info["original"] is not None:
            edits.append({"task_type": row["task_type"], "distance": edit_distance(info["original"], output)})
        ex = to_training_example(row["task_type"], row["task"], output)
        examples.append({"id": f"syn-{row['index']:07d}", **ex, "prompt_id": row["prompt_id"],
                         "topic": row["topic"], "provenance": {"generator": row["generator"],
                                                               "revised": info["revised"]},
                         "original_valid": info["original_valid"], "revised_valid": info["revised_valid"]})
    d = dedup(examples, threshold=s.minhash_threshold, num_perm=s.minhash_num_perm, shingle=s.shingle_chars)
    rejects += [{"id": r["id"], "task_type": r["task_type"], "stage": "dedup", "reason": f"{r['dedup']}_duplicate",
                 "duplicate_of": r["duplicate_of"], "query": r["query"][:400]} for r in d.dropped]
    write_jsonl(run.file("synthetic"), d.kept)
    write_jsonl(run.file("synthesis_rejects"), rejects)
    return stats(raw, infos, examples, d, edits)


def stats(raw: list[dict], infos: list[dict], examples: list[dict], d, edits: list[dict]) -> dict:
    """The numbers stage 06 reports: per type, validity before/after revision, edits, dedup."""
    n = len(raw)
    asked = Counter(r["task_type"] for r in raw)
    valid = Counter(e["task_type"] for e in examples)
    kept = Counter(e["task_type"] for e in d.kept)
    revised_rows = [i for i in infos if i["revised_valid"] is not None]
    return {
        "requested": n, "valid": len(examples), "kept": len(d.kept),
        "per_type": {t: {"requested": asked[t], "valid": valid[t], "kept": kept[t]} for t in TASK_TYPES if asked[t]},
        "valid_rate_before_revision": round(sum(i["original_valid"] for i in infos) / max(n, 1), 3),
        "valid_rate_of_revisions": round(sum(bool(i["revised_valid"]) for i in revised_rows) / len(revised_rows), 3)
        if revised_rows else None,
        "valid_rate_after_revision": round(len(examples) / max(n, 1), 3),
        "from_revision": sum(e["provenance"]["revised"] for e in examples),
        "edit_distance_mean": round(sum(e["distance"] for e in edits) / len(edits), 3) if edits else None,
        "dedup": {"exact": sum(r["dedup"] == "exact" for r in d.dropped),
                  "near": sum(r["dedup"] == "near" for r in d.dropped), "drop_rate": round(d.drop_rate, 3)},
        "with_negative": sum(e["negative"] is not None for e in d.kept),
    }


def edit_distance(a: dict, b: dict) -> float:
    """Word-level Levenshtein distance between two examples' texts, over the longer length (0..1)."""
    wa = " ".join(str(v) for v in a.values()).split()
    wb = " ".join(str(v) for v in b.values()).split()
    if not wa and not wb:
        return 0.0
    prev = list(range(len(wb) + 1))
    for i, x in enumerate(wa, 1):
        cur = [i]
        for j, y in enumerate(wb, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1] / max(len(wa), len(wb))


def lengths(rows: list[dict]) -> list[dict]:
    """Word counts of query, positive and negative per example, for the length histograms
    (None where an example has no hard negative, so it does not count as a 0-word one)."""
    return [{"task_type": r["task_type"], **{k: None if r.get(k) is None else len(r[k].split())
                                             for k in ("query", "positive", "negative")}} for r in rows]


__all__ = ["Shard", "Pass", "plan", "make_chunk", "prompts", "chunk_prompts", "make_chunks", "merge", "read_chunks", "edit_distance", "lengths", "KEYS"]
