"""llama.cpp slots on this CPU: aggregate tokens/s with 1, 4, 8 and 16 slots, requests sent concurrently.

Two servers, the pipeline's own way (issue "The hour with the data back"):

* the **generators**: Qwen2.5-Coder-0.5B GGUF plus a rank-16 GGUF LoRA, driven by
  :class:`speed_utils.generate.Generator` (every row queued at once to the slots), on synthesis prompts;
* the **teacher**: Qwen2.5-Coder-1.5B through :class:`speed_utils.teacher.Teacher` with
  ``max_concurrency`` equal to the slots, as stages 01-05 call it.

Each setting gets twice as many requests as it has slots (so every slot is busy and a queue waits), the same
token cap, and a fresh server. Prints a table and the best/one-slot ratio; the ``cpu`` profile's
``generation.parallel`` and ``teacher.n_parallel`` are set from it.
Usage: python benchmarks/slots.py [--tokens 128] [--gen-slots 1 4 8 16] [--teacher-slots 2 4 8]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import machine, report
from generation import random_adapter


def generator_rates(model: str, slots_list: list[int], tokens: int, work: Path) -> dict[int, dict]:
    from speed_utils import assets
    from speed_utils.generate import GenRequest, Generator
    from speed_utils.prompts import generation_prompt

    base, gguf = assets.hf_folder(model, online=False), assets.gguf_path(model, online=False)
    adapter = random_adapter(base, work / "adapter")
    types = ["retrieval", "classification", "sts", "short_short", "long_long"]
    out = {}
    for slots in slots_list:
        n = 2 * slots
        prompts = [generation_prompt(types[i % 5], i, 0, task="Retrieve news articles about a given company",
                                     topic="Top/Business/Companies") for i in range(n)]
        reqs = [GenRequest(p.text, max_new_tokens=tokens, seed=i) for i, p in enumerate(prompts)]
        with Generator(base, str(adapter), batch_size=n, backend="llamacpp", gguf=gguf, parallel=slots,
                       log_path=work / f"gen-{slots}.log") as gen:
            gen.generate(reqs[:1], desc=None)  # warm-up: the first request maps the weights
            gen.tokens_out = 0
            t0 = time.perf_counter()
            gen.generate(reqs, desc=f"generator, {slots} slot(s)")
            s = time.perf_counter() - t0
            out[slots] = {"requests": n, "s": round(s, 1), "tokens": gen.tokens_out,
                          "tok_s": round(gen.tokens_out / s, 1), "rows_per_min": round(60 * n / s, 1)}
        print(f"  generator {slots:>2} slot(s): {out[slots]}", flush=True)
    return out


def teacher_rates(model: str, slots_list: list[int], tokens: int, work: Path) -> dict[int, dict]:
    from speed_utils import assets
    from speed_utils.runs import RunPaths
    from speed_utils.config import TeacherCfg
    from speed_utils.teacher import Request, Teacher
    from speed_utils.teacher_endpoint import openai_client
    from speed_utils.llama_server import LlamaServer

    gguf = assets.gguf_path(model, online=False)
    out = {}
    for slots in slots_list:
        n = 2 * slots
        with tempfile.TemporaryDirectory(dir=work) as d, LlamaServer(gguf, Path(d) / "server.log", n_ctx=1024,
                                                                      n_parallel=slots, threads=2) as server:
            s = TeacherCfg(backend="llamacpp", model=model, max_concurrency=slots, max_retries=0, timeout_s=1200)
            t = Teacher(s, RunPaths(Path(d)).make(), "bench", lambda: openai_client(server.base_url, "k", 1200))
            reqs = [Request.chat(f"Write a paragraph about the history of topic number {i}.", max_tokens=tokens,
                                 seed=i, temperature=1.0) for i in range(n)]
            t0 = time.perf_counter()
            t.map(reqs, desc=f"teacher, {slots} slot(s)")
            sec = time.perf_counter() - t0
            toks = t.session.completion_tokens
            out[slots] = {"requests": n, "s": round(sec, 1), "tokens": toks, "tok_s": round(toks / sec, 1),
                          "calls_per_min": round(60 * n / sec, 1)}
        print(f"  teacher {slots:>2} slot(s): {out[slots]}", flush=True)
    return out


def table(title: str, rates: dict[int, dict]) -> None:
    print(f"\n{title}\n| slots | requests | s | tokens | tokens/s |\n|---|---|---|---|---|")
    for k, r in rates.items():
        print(f"| {k} | {r['requests']} | {r['s']} | {r['tokens']} | {r['tok_s']} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--teacher-model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--teacher-tokens", type=int, default=64)
    ap.add_argument("--gen-slots", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--teacher-slots", type=int, nargs="+", default=[2, 4, 8])
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-slots-"))
    gen = generator_rates(a.model, a.gen_slots, a.tokens, work)
    teach = teacher_rates(a.teacher_model, a.teacher_slots, a.teacher_tokens, work) if a.teacher_slots else {}
    table(f"generator {a.model} + rank-16 LoRA, {a.tokens} new tokens a row", gen)
    if teach:
        table(f"teacher {a.teacher_model}, {a.teacher_tokens} new tokens a call", teach)
    first, best = gen[a.gen_slots[0]], max(gen.values(), key=lambda r: r["tok_s"])
    report(f"generation: llama.cpp slots, best vs {a.gen_slots[0]} (tokens/s)", best["tok_s"] / first["tok_s"],
           {"generator": gen, "teacher": teach, "model": a.model, "teacher_model": a.teacher_model, **machine()},
           target="reported as measured; sets generation.parallel")


if __name__ == "__main__":
    main()
