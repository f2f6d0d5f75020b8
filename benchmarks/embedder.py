"""The cached (GradCache) contrastive loss against the plain one, at the same effective batch.

Each variant trains in its own process (so each peak RSS is its own) on the same synthetic rows, with the
same model, batch and steps. Prints training tokens/s and peak RSS of both, and their ratios.
Usage: python benchmarks/embedder.py [--model smollm2-135m-instruct] [--batch 32] [--mini 8] [--steps 4]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import RESULT_PREFIX, machine, peak_rss_mb, report


def rows(n: int) -> list[dict]:
    return [{"instruction": "Given a question, retrieve passages that answer it",
             "query": f"question number {i} about topic {i % 7}: how does process {i} work in practice?",
             "positive": f"Passage {i}. " + "Process {i} works by combining several steps in a fixed order. " * 6,
             "negative": f"Unrelated passage {i}. " + "This text talks about something else entirely. " * 6}
            for i in range(n)]


def one(variant: str, model: str, batch: int, mini: int, steps: int, max_length: int) -> dict:
    import tempfile
    from pathlib import Path

    from speed_utils import assets, embed
    from speed_utils.config import EmbedderCfg, LoraCfg

    ec = EmbedderCfg(lr=1e-4, batch_size=batch, mini_batch_size=mini if variant == "cached" else None,
                     max_length=max_length, epochs=1, warmup_steps=0, lora=LoraCfg(r=16, alpha=32, dropout=0.0))
    st = embed.decoder_embedder(assets.hf_folder(model, online=False), max_length)
    data = rows(batch * steps)
    tok = st[0].tokenizer
    n_tokens = sum(len(tok(r[k], truncation=True, max_length=max_length)["input_ids"])
                   for r in data for k in ("query", "positive", "negative"))
    with tempfile.TemporaryDirectory() as d:
        res = embed.train(st, data, Path(d) / "m", ec, name=model)
    # tokens/s over the optimisation steps only: merging and saving the model is the same for both variants
    return {"variant": variant, "s": res.train_seconds, "steps": res.steps, "tokens": n_tokens,
            "tok_s": round(n_tokens / max(res.train_seconds, 0.1), 1), "peak_rss_mb": round(peak_rss_mb()),
            "final_loss": res.losses[-1][1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mini", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--variant", choices=["cached", "plain"])
    a = ap.parse_args()
    if a.variant:
        print(RESULT_PREFIX + json.dumps(one(a.variant, a.model, a.batch, a.mini, a.steps, a.max_length)))
        return
    out = {}
    for variant in ("plain", "cached"):
        proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--model", a.model, "--batch", str(a.batch),
                               "--mini", str(a.mini), "--steps", str(a.steps), "--max-length", str(a.max_length)],
                              capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
        if proc.returncode or not line:
            raise SystemExit(proc.stderr[-3000:])
        out[variant] = json.loads(line[-1][len(RESULT_PREFIX):])
    detail = {"model": a.model, "batch": a.batch, "mini_batch": a.mini, "max_length": a.max_length, **out, **machine()}
    report("embedder: cached vs plain loss, peak RSS (cached / plain)",
           out["cached"]["peak_rss_mb"] / out["plain"]["peak_rss_mb"], detail, target="< 1 (less memory)")
    report("embedder: cached vs plain loss, training tokens/s (cached / plain)",
           out["cached"]["tok_s"] / out["plain"]["tok_s"], {"model": a.model, **machine()},
           target="reported as measured (GradCache embeds twice, but in small mini-batches)")

if __name__ == "__main__":
    main()
