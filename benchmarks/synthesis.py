"""Batched generation (speed_utils.generate) against a plain one-prompt-at-a-time generate loop.

Same model, same prompts, same sampling (temperature 1.0, top_p 1.0, as synthesis), measured in one run.
Prints examples/s and generated tokens/s for both, their ratio (target on 2 cores: at least 3x), and the
peak RSS. Usage: python benchmarks/synthesis.py [--model smollm2-135m-instruct] [--n 16] [--batch 16] [--tokens 96]
"""
from __future__ import annotations

import argparse

from common import machine, peak_rss_mb, report, timer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=96)
    a = ap.parse_args()

    import torch

    from speed_utils import assets
    from speed_utils.generate import GenRequest, Generator
    from speed_utils.prompts import generation_prompt

    types = ["retrieval", "classification", "sts", "short_short", "long_long"]
    prompts = [generation_prompt(types[i % 5], i, 0, task="Retrieve news articles about a given company",
                                 topic="Top/Business/Companies").text for i in range(a.n)]
    path = assets.hf_folder(a.model, online=False)
    gen = Generator(path, batch_size=a.batch, backend="transformers")
    reqs = [GenRequest(p, temperature=1.0, top_p=1.0, max_new_tokens=a.tokens, seed=i) for i, p in enumerate(prompts)]

    # warm both paths up first (kernels, allocator), so neither pays for it inside its timer
    gen.generate(reqs[:2], desc="warm-up")
    gen.tokens_out = 0
    # naive: the same model object, one prompt at a time, a plain generate call each
    tok, model = gen.tok, gen.model
    naive_tokens = 0
    with timer() as naive:
        for i, p in enumerate(prompts):
            enc = tok(gen.chat_text(p), return_tensors="pt", add_special_tokens=False)
            torch.manual_seed(i)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=a.tokens, do_sample=True, temperature=1.0, top_p=1.0,
                                     top_k=0, pad_token_id=tok.pad_token_id)
            new = out[0, enc["input_ids"].shape[1]:]
            naive_tokens += int((new != tok.pad_token_id).sum())
    with timer() as batched:
        gen.generate(reqs, desc="batched")
    batched_tokens = gen.tokens_out
    naive_tps, batched_tps = naive_tokens / naive["s"], batched_tokens / batched["s"]
    report("synthesis: batched vs naive generate (tokens/s)", batched_tps / naive_tps, {
        "model": a.model, "prompts": a.n, "batch": a.batch, "max_new_tokens": a.tokens,
        "naive": {"s": round(naive["s"], 1), "ex_s": round(a.n / naive["s"], 3), "tok_s": round(naive_tps, 1)},
        "batched": {"s": round(batched["s"], 1), "ex_s": round(a.n / batched["s"], 3), "tok_s": round(batched_tps, 1)},
        "examples_per_s_ratio": round(naive["s"] / batched["s"], 2), "peak_rss_mb": round(peak_rss_mb()),
        "threads": torch.get_num_threads(), **machine()}, target=">= 3 on 2 cores")


if __name__ == "__main__":
    main()
