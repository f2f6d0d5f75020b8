"""Generator engines side by side: llama.cpp serving the adapter, transformers batched, a naive loop.

Same base model, same adapter, same prompts, same sampling (temperature 1.0, top_p 1.0, as synthesis)
and token cap, measured in one run. Sides:

* ``llamacpp-lora``: the GGUF base (Q4_K_M, the file the HF folder was dequantized from) plus the
  adapter converted by llama.cpp's ``convert_lora_to_gguf.py``, ``--parallel`` slots (the pipeline's way);
* ``llamacpp-merged``: the adapter merged into the base and written whole by ``convert_hf_to_gguf.py``
  (``--merged-type``), the alternative the pipeline did not take;
* ``transformers``: :class:`speed_utils.generate.Generator`'s batched ``generate`` (``--batch`` rows), in
  fp32 and in the dtype the package picks here (bf16 on a CPU with bf16 matrix units);
* ``naive``: the last transformers model, one prompt at a time (``--naive-n`` prompts).

Prints tokens/s and valid examples/s per side and the ratio llama.cpp-lora / transformers (target
>= 2.5 on 2 cores). The adapter is a random rank-16 LoRA (speed does not depend on its values) unless
``--adapter`` names a trained one, e.g. ``results/runs/cpu/adapters/senior``.
Usage: python benchmarks/generation.py [--model qwen2.5-coder-0.5b-instruct] [--n 16] [--tokens 192]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import machine, peak_rss_mb, report, timer


def random_adapter(base: str, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.002)
    model.save_pretrained(str(out))
    return out


def side(name: str, run, n: int, texts_of) -> dict:
    from speed_utils.schema import parse_example

    t0 = time.perf_counter()
    texts, tokens = run()
    s = time.perf_counter() - t0
    valid = sum(parse_example(t, x).ok for t, x in texts_of(texts))
    return {"side": name, "s": round(s, 1), "n": n, "tokens": tokens, "tok_s": round(tokens / s, 2),
            "ex_s": round(n / s, 3), "valid": valid, "valid_ex_s": round(valid / s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--naive-n", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--merged-type", default="q8_0", help="GGUF type of the merged model (f16, bf16, q8_0)")
    a = ap.parse_args()

    import torch

    from speed_utils import assets
    from speed_utils.generate import GenRequest, Generator
    from speed_utils.gguf_lora import merged_to_gguf
    from speed_utils.prompts import generation_prompt

    types = ["retrieval", "classification", "sts", "short_short", "long_long"]
    prompts = [generation_prompt(types[i % 5], i, 0, task="Retrieve news articles about a given company",
                                 topic="Top/Business/Companies") for i in range(a.n)]
    reqs = [GenRequest(p.text, temperature=1.0, top_p=1.0, max_new_tokens=a.tokens, seed=i) for i, p in enumerate(prompts)]
    base, gguf = assets.hf_folder(a.model, online=False), assets.gguf_path(a.model, online=False)
    work = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    adapter = Path(a.adapter) if a.adapter else random_adapter(base, work / "adapter")
    texts_of = lambda outs: zip((p.task_type for p in prompts), (o[0] for o in outs))  # noqa: E731
    sides = []

    with timer() as conv:
        lora_gen = Generator(base, str(adapter), batch_size=a.batch, backend="llamacpp", gguf=gguf,
                             parallel=a.parallel, log_path=work / "lora.log")
    lora_gen.generate(reqs[:2], desc="warm-up")
    lora_gen.tokens_out = 0
    sides.append(side("llamacpp-lora", lambda: (lora_gen.generate(reqs, desc="llamacpp-lora"), lora_gen.tokens_out),
                      a.n, texts_of))
    lora_gen.close()

    merged = merged_to_gguf(base, adapter, work / f"merged-{a.merged_type}.gguf", a.merged_type)
    merged_gen = Generator(base, None, batch_size=a.batch, backend="llamacpp", gguf=merged, parallel=a.parallel,
                           log_path=work / "merged.log")
    merged_gen.generate(reqs[:2], desc="warm-up")
    merged_gen.tokens_out = 0
    sides.append(side(f"llamacpp-merged-{a.merged_type}",
                      lambda: (merged_gen.generate(reqs, desc="llamacpp-merged"), merged_gen.tokens_out), a.n, texts_of))
    merged_gen.close()

    for dtype in ("fp32", "auto"):  # fp32 (the engine before this benchmark's change) and the package's choice
        os.environ["SPEED_REPRO_DTYPE"] = dtype
        hf = Generator(base, str(adapter), batch_size=a.batch, backend="transformers")
        hf.generate(reqs[:2], desc="warm-up")
        hf.tokens_out = 0
        sides.append(side(f"transformers-batched-{hf.dtype}".replace("torch.", ""),
                          lambda: (hf.generate(reqs, desc="transformers"), hf.tokens_out), a.n, texts_of))

    def naive():
        outs, tokens = [], 0
        for r in reqs[:a.naive_n]:
            enc = hf.tok(hf.chat_text(r.prompt), return_tensors="pt", add_special_tokens=False)
            torch.manual_seed(r.seed)
            with torch.no_grad():
                ids = hf.model.generate(**enc, max_new_tokens=a.tokens, do_sample=True, temperature=1.0, top_p=1.0,
                                        top_k=0, pad_token_id=hf.tok.pad_token_id)
            new = ids[0, enc["input_ids"].shape[1]:]
            tokens += int((new != hf.tok.pad_token_id).sum())
            outs.append([hf.tok.decode(new, skip_special_tokens=True)])
        return outs, tokens

    sides.append(side("naive-loop", naive, a.naive_n, lambda outs: zip((p.task_type for p in prompts), (o[0] for o in outs))))
    by = {s["side"]: s for s in sides}
    tf = [s for s in sides if s["side"].startswith("transformers")][-1]  # the package's own dtype
    for s in sides:
        print(f"  {s['side']:<28} {s['s']:>7.1f} s  {s['tok_s']:>7.2f} tok/s  {s['ex_s']:.3f} ex/s  "
              f"valid {s['valid']}/{s['n']} ({s['valid_ex_s']:.3f} valid ex/s)")
    report("generation: llama.cpp-served adapter vs transformers batched (tokens/s)", by["llamacpp-lora"]["tok_s"] / tf["tok_s"], {
        "model": a.model, "adapter": str(a.adapter or "random r16"), "prompts": a.n, "max_new_tokens": a.tokens,
        "parallel": a.parallel, "batch": a.batch, "sides": sides, "adapter_conversion_and_server_start_s": round(conv["s"], 1),
        "valid_ex_s_ratio": round(by["llamacpp-lora"]["valid_ex_s"] / max(tf["valid_ex_s"], 1e-9), 2),
        "vs_naive_tok_s": round(by["llamacpp-lora"]["tok_s"] / by["naive-loop"]["tok_s"], 2),
        "vs_transformers_fp32_tok_s": round(by["llamacpp-lora"]["tok_s"] / by["transformers-batched-float32"]["tok_s"], 2),
        "peak_rss_mb": round(peak_rss_mb()), "threads": torch.get_num_threads(), **machine()}, target=">= 2.5 on 2 cores")


if __name__ == "__main__":
    main()
