"""The teacher client with concurrency against sequential, in two places, measured side by side.

1. A scripted loopback server that answers every request after a fixed 1 s delay, as a remote API
   does: concurrency should approach the number of parallel requests (target: at least 0.8x of it).
2. The local llama.cpp server (a real model): on 2 cores it is bound by compute, so more slots need
   not help. Reported as it comes out (generated tokens/s with 1 slot vs 4 slots).
Usage: python benchmarks/teacher.py [--requests 16] [--parallel 8] [--llama-model qwen2.5-coder-1.5b-instruct]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import machine, report, timer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def fake_api(n: int, parallel: int) -> None:
    from fakes import FakeTeacher

    from speed_utils.runs import RunPaths
    from speed_utils.config import TeacherCfg
    from speed_utils.teacher import Request, Teacher
    from speed_utils.teacher_endpoint import openai_client

    times = {}
    with FakeTeacher(default=lambda body: ("sleep", 1.0, ("ok", '{"answer": "ok"}', "stop"))) as fake:
        for conc in (1, parallel):
            with tempfile.TemporaryDirectory() as d:
                s = TeacherCfg(backend="openai", base_url=fake.base_url, model="fake", max_concurrency=conc, max_retries=0, timeout_s=30)
                t = Teacher(s, RunPaths(Path(d)).make(), "bench", lambda: openai_client(fake.base_url, "k", 30))
                reqs = [Request.chat(f"question {conc}-{i}") for i in range(n)]
                with timer() as tm:
                    t.map(reqs, desc=f"{conc} at a time")
                times[conc] = tm["s"]
    ratio = times[1] / times[parallel]
    report(f"teacher: {parallel} concurrent vs sequential, 1 s remote API (speed-up)", ratio,
           {"requests": n, "sequential_s": round(times[1], 2), "concurrent_s": round(times[parallel], 2),
            "ideal": parallel, **machine()}, target=f">= {0.8 * parallel:.1f} (0.8 x {parallel})")


def local_llama(model: str, n: int, tokens: int) -> None:
    from speed_utils import assets
    from speed_utils.runs import RunPaths
    from speed_utils.config import TeacherCfg
    from speed_utils.teacher import Request, Teacher
    from speed_utils.teacher_endpoint import openai_client
    from speed_utils.llama_server import LlamaServer

    gguf = assets.gguf_path(model, online=False)
    rates = {}
    for slots in (1, 4):
        with tempfile.TemporaryDirectory() as d, LlamaServer(gguf, Path(d) / "server.log", n_ctx=1024,
                                                             n_parallel=slots, threads=2) as server:
            s = TeacherCfg(backend="llamacpp", model=model, max_concurrency=slots, max_retries=0, timeout_s=600)
            t = Teacher(s, RunPaths(Path(d)).make(), "bench", lambda: openai_client(server.base_url, "k", 600))
            reqs = [Request.chat(f"Write two sentences about topic number {i}.", max_tokens=tokens, seed=i,
                                 temperature=1.0) for i in range(n)]
            with timer() as tm:
                t.map(reqs, desc=f"{slots} slot(s)")
            rates[slots] = t.session.completion_tokens / tm["s"]
    report(f"teacher: local llama.cpp {model}, 4 slots vs 1 (tokens/s)", rates[4] / rates[1],
           {"requests": n, "max_tokens": tokens, "tok_s_1_slot": round(rates[1], 1), "tok_s_4_slots": round(rates[4], 1),
            **machine()}, target="reported as measured (compute-bound on 2 cores)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--llama-model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--llama-requests", type=int, default=8)
    ap.add_argument("--llama-tokens", type=int, default=64)
    ap.add_argument("--skip-llama", action="store_true")
    a = ap.parse_args()
    fake_api(a.requests, a.parallel)
    if not a.skip_llama:
        local_llama(a.llama_model, a.llama_requests, a.llama_tokens)


if __name__ == "__main__":
    main()
