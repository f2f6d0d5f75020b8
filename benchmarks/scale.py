"""Stage 06 in one process against the Ray Data pipeline (issue 19), on the same tiny run, in one run.

Both sides make the same chunks (senior, then revisor; SmolLM2-135M's GGUF with two random rank-16 LoRA
adapters, served by llama.cpp) from the same tasks and seeds:

* ``local``: one process, one llama.cpp server with 2 threads (both cores), the package's default path;
* ``local-1t``: one process, one server with 1 thread: each replica's setting, hence the replicas' rows;
* ``ray``: a local Ray with ``--replicas`` 2, each a llama.cpp server with one thread (one core each).

Prints examples/s per side (start-up included: Ray's start, its replicas' servers), the ratios ray / local
and ray / local-1t, and whether the sides wrote the same rows (llama.cpp's sums depend on its thread count,
so only sides with the same ``generation.threads`` can). Adapters are converted to GGUF before any side is timed.
Usage: python benchmarks/scale.py [--n 16] [--tokens 32] [--replicas 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml
from common import machine, report
from generation import random_adapter

GENERATOR = "smollm2-135m-instruct"
TASKS = [{"id": f"t{i}", "task_type": t, "task": f"Find documents about topic {i} for {t}.", "topic": f"Top/T{i}"}
         for i, t in enumerate(["retrieval", "classification", "sts", "short_short", "long_long"] * 2)]


def side(tmp: Path, adapters: dict[str, Path], name: str, n: int, tokens: int, threads: int, replicas: int) -> dict:
    from speed_utils import synthesis
    from speed_utils.profiles import load_profile
    from speed_utils.runs import RunPaths
    from speed_utils.files import write_jsonl

    prof = tmp / f"{name}.yaml"
    prof.write_text(yaml.safe_dump({
        "extends": "smoke", "generation": {"backend": "llamacpp", "parallel": 1, "threads": threads,
                                           "structured_output": False},
        "synthesis": {"n_examples": n, "chunk_size": 2, "max_new_tokens": tokens, "revisor_max_new_tokens": tokens},
        "distributed": {"synthesis": "ray" if name == "ray" else "local", "ray": {"replicas": replicas}}}))
    cfg = load_profile(prof)
    run = RunPaths(tmp / name).make()
    write_jsonl(run.data / "tasks.jsonl", TASKS)
    run.adapters.mkdir()
    for role, path in adapters.items():
        for f in (path, path.with_name(f"{role}.gguf"), path.with_name(f"{role}.gguf.json")):
            os.symlink(f, run.adapters / f.name)
    t0 = time.perf_counter()
    made = synthesis.make_chunks(cfg, run)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 1), "examples_s": round(n / seconds, 3), "tokens_out": made["tokens_out"],
            "tok_s": round(made["tokens_out"] / seconds, 1), "rows": synthesis.read_chunks(cfg, run)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="prompts (examples asked for)")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per pass and example")
    ap.add_argument("--replicas", type=int, default=2)
    a = ap.parse_args()

    from speed_utils import assets
    from speed_utils.gguf_lora import adapter_to_gguf

    base = assets.hf_folder(GENERATOR, online=False)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        adapters = {"junior": random_adapter(base, tmp / "junior")}
        for role in ("senior", "revisor"):
            adapters[role] = random_adapter(base, tmp / role)
            adapter_to_gguf(adapters[role], base)
        local = side(tmp, adapters, "local", a.n, a.tokens, threads=2, replicas=1)
        local1 = side(tmp, adapters, "local-1t", a.n, a.tokens, threads=1, replicas=1)
        ray = side(tmp, adapters, "ray", a.n, a.tokens, threads=1, replicas=a.replicas)
    rows = {name: s.pop("rows") for name, s in (("local", local), ("local-1t", local1), ("ray", ray))}
    detail = {"local": local, "local-1t": local1, "ray": ray, "same_rows_ray_local": rows["ray"] == rows["local"],
              "same_rows_ray_local_1t": rows["ray"] == rows["local-1t"], "n": a.n, "tokens": a.tokens,
              "replicas": a.replicas, "model": GENERATOR, **machine()}
    report("synthesis_ray_over_local", ray["examples_s"] / local["examples_s"], detail,
           target="informational: the same work spread over replicas")
    report("synthesis_ray_over_local_1thread", ray["examples_s"] / local1["examples_s"], {},
           target="informational: replicas against one replica's setting")


if __name__ == "__main__":
    main()
