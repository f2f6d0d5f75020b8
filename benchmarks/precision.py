"""bf16 against fp32 on this CPU: a contrastive training step, an SFT step, and encoding.

Each side runs in its own process with ``SPEED_REPRO_DTYPE`` set (fp32 or bf16), so the package's
own dtype choice (speed_utils.precision) is what is measured, on the same rows, model and settings:

* contrastive: SmolLM2-135M, LoRA r16, cached InfoNCE (batch ``--batch``, mini-batch ``--mini``);
* sft: Qwen2.5-Coder-0.5B, LoRA r16, trl SFT with the loss on the completion (batch 8);
* encode: SmolLM2-135M as a last-token embedder, ``--texts`` texts;
* scores (only with ``--only scores --run RUN``): the run's SmolLM2 embedders, untrained and trained,
  scored by mteb on the profile's STS sets (STS12-15, SICK-R, the profile's row limit) in each dtype.

``--malloc`` compares instead glibc's malloc on 4 KiB pages and on transparent huge pages (the
runner's ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) for the SFT and contrastive steps.

Prints seconds per step (texts/s for encoding) of both sides and the ratio fp32 / bf16 (target
>= 2 for the steps on a CPU with bf16 matrix units); for scores, each task's score in both dtypes and
the difference. Usage: python benchmarks/precision.py [--steps 2] [--only scores --run results/runs/cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from common import RESULT_PREFIX, machine, peak_rss_mb, report

TASKS = ("contrastive", "sft", "encode")
STS = ("STS12", "STS13", "STS14", "STS15", "SICK-R")


def contrastive(a) -> dict:
    import tempfile
    from pathlib import Path

    from embedder import rows
    from speed_utils import assets, embed
    from speed_utils.config import EmbedderCfg, LoraCfg

    ec = EmbedderCfg(lr=1e-4, batch_size=a.batch, mini_batch_size=a.mini, max_length=128, epochs=1, warmup_steps=0,
                     lora=LoraCfg(r=16, alpha=32, dropout=0.0))
    st = embed.decoder_embedder(assets.hf_folder("smollm2-135m-instruct", online=False), 128)
    with tempfile.TemporaryDirectory() as d:
        res = embed.train(st, rows(a.batch * a.steps), Path(d) / "m", ec, name="smollm2")
    return {"s_per_step": round(res.train_seconds / res.steps, 2), "steps": res.steps, "dtype": res.dtype,
            "losses": [round(x, 4) for _, x in res.losses]}


def sft(a) -> dict:
    import tempfile
    from pathlib import Path

    from speed_utils import assets, train
    from speed_utils.config import JuniorCfg, LoraCfg

    data = [{"prompt": f"Write a retrieval example about topic {i}, as JSON.",
             "completion": json.dumps({"user_query": f"how does thing {i} work", "positive_document": "It works. " * 40,
                                       "hard_negative_document": "Something else. " * 40})} for i in range(8 * a.steps)]
    tc = JuniorCfg(lr=1e-4, batch_size=8, epochs=1, lora=LoraCfg(r=16, alpha=32, dropout=0.0))
    with tempfile.TemporaryDirectory() as d:
        res = train.sft(assets.hf_folder("qwen2.5-coder-0.5b-instruct", online=False), data, Path(d) / "a", tc, 512)
    return {"s_per_step": round(res.seconds / res.steps, 2), "steps": res.steps, "dtype": res.dtype,
            "losses": [round(x, 4) for _, x in res.losses], "note": "s_per_step includes loading the model"}


def encode(a) -> dict:
    from speed_utils import assets, embed

    st = embed.decoder_embedder(assets.hf_folder("smollm2-135m-instruct", online=False), 256)
    texts = [f"Sentence {i}: a person is walking a dog along the river bank on a sunny day." * (1 + i % 3)
             for i in range(a.texts)]
    st.encode(texts[:16], batch_size=32)
    t0 = time.perf_counter()
    st.encode(texts, batch_size=32)
    s = time.perf_counter() - t0
    return {"texts_s": round(len(texts) / s, 1), "s": round(s, 1), "dtype": str(next(st.parameters()).dtype)}


def scores(a) -> dict:
    """mteb scores of the run's decoder embedders in this process's dtype (mteb cache in a temporary folder)."""
    import tempfile
    from pathlib import Path

    from speed_utils import evaluate, mteb_tasks
    from speed_utils.profiles import load_profile
    from speed_utils.mteb_encoder import InstructedEncoder
    from speed_utils.precision import dtype_name
    from speed_utils.runs import RunPaths

    import yaml

    run = RunPaths(Path(a.run).resolve())
    cfg = load_profile(yaml.safe_load(run.config.read_text())["name"])  # the profile the run was made with
    tasks = [t for t in mteb_tasks.tasks_for(cfg, use_hub=False)[0] if t.metadata.name in STS]
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for c in evaluate.candidates(cfg, run):
            if not c.label.startswith(cfg.models.embedder):
                continue
            enc = InstructedEncoder(evaluate.load_candidate(c, cfg.embedder.max_length), c.mteb_name,
                                             dtype_name(), c.use_instructions, cfg.evaluate.batch_size)
            out[c.label] = {r["task"]: r["score"] for r in evaluate.evaluate_model(enc, tasks, Path(d), cfg.evaluate.batch_size)}
    return {"scores": out, "dtype": dtype_name(), "limit": cfg.evaluate.limit}


def side(a, task: str, env: dict) -> dict:
    """One side: ``task`` in a process of its own with ``env`` set; its result and its system CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, __file__, "--task", task, "--steps", str(a.steps), "--batch", str(a.batch),
                           "--mini", str(a.mini), "--texts", str(a.texts), "--run", a.run], capture_output=True, text=True,
                          env={**os.environ, **env})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if proc.returncode or not line:
        raise SystemExit(proc.stderr[-3000:])
    out = {**json.loads(line[-1][len(RESULT_PREFIX):]), "user_s": round(after.ru_utime - before.ru_utime, 1),
           "system_s": round(after.ru_stime - before.ru_stime, 1)}
    print(f"  {task} {env}: {out}", flush=True)
    return out


def malloc(a) -> None:
    """Training steps in the package's dtype with glibc's malloc on 4 KiB pages and on transparent huge pages
    (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, which the runner gives every stage kernel)."""
    for task in a.only or ("sft", "contrastive"):
        sides = {name: side(a, task, {"GLIBC_TUNABLES": tunables})
                 for name, tunables in (("4k", ""), ("huge", "glibc.malloc.hugetlb=1"))}
        report(f"malloc: {task} step time (4 KiB pages / huge pages)", sides["4k"]["s_per_step"] / sides["huge"]["s_per_step"],
               {**sides, "steps": a.steps, **machine()}, target="> 1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mini", type=int, default=8)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--only", choices=(*TASKS, "scores"), action="append")
    ap.add_argument("--task", choices=(*TASKS, "scores"))
    ap.add_argument("--run", default="results/runs/cpu", help="the run whose embedders --only scores evaluates")
    ap.add_argument("--malloc", action="store_true", help="instead of the dtypes, compare glibc's malloc on 4 KiB pages "
                                                          "and on huge pages, in the package's dtype")
    a = ap.parse_args()
    if a.task:
        out = globals()[a.task](a)
        print(RESULT_PREFIX + json.dumps({**out, "peak_rss_mb": round(peak_rss_mb())}))
        return
    if a.malloc:
        return malloc(a)
    for task in a.only or TASKS:
        sides = {dtype: side(a, task, {"SPEED_REPRO_DTYPE": dtype}) for dtype in ("fp32", "bf16")}
        if task == "scores":
            diffs = {label: {t: round(sides["bf16"]["scores"][label][t] - v, 2) for t, v in per_task.items()}
                     for label, per_task in sides["fp32"]["scores"].items()}
            for label, d in diffs.items():
                avg = {dt: sum(sides[dt]["scores"][label].values()) / len(d) for dt in ("fp32", "bf16")}
                print(f"  {label}: average fp32 {avg['fp32']:.2f}, bf16 {avg['bf16']:.2f}; bf16 - fp32 per task {d}")
            report("precision: STS scores bf16 - fp32", None, {**sides, "bf16_minus_fp32": diffs, **machine()},
                   target="reported as measured")
            continue
        if task == "encode":
            ratio, what = sides["bf16"]["texts_s"] / sides["fp32"]["texts_s"], "texts/s (bf16 / fp32)"
        else:
            ratio, what = sides["fp32"]["s_per_step"] / sides["bf16"]["s_per_step"], "step time (fp32 / bf16)"
        report(f"precision: {task} {what}", ratio, {**sides, "steps": a.steps, **machine()},
               target=">= 2" if task != "encode" else "reported as measured")


if __name__ == "__main__":
    main()
