"""The 4-bit QLoRA path, executed on the CPU (bitsandbytes 0.50 runs nf4 there).

Runs use QLoRA only where CUDA is (speed_utils.preflight); these tests take the same code path on the
CPU through ``quant_config(allow_cpu=True)``, so the GPU profiles' loading, training and merging code
runs in CI. What they cannot check: on this CPU a ``no_grad`` forward of the 4-bit model before
training makes every later LoRA gradient silently wrong (toolchain.md §c), so a gradient compared with
an fp32 reference would say nothing about the GPU. They check what holds: the weights are 4-bit, no
forward runs before training, every LoRA parameter moves, the losses are finite, and the 4-bit
embedder's LoRA weights merge into a full-precision copy that loads as a plain model.
"""
import functools
import math

import pytest
import torch
from conftest import Snapshot

from speed_utils import embed, train
from speed_utils.config import EmbedderCfg, JuniorCfg, LoraCfg

pytestmark = pytest.mark.slow
bnb = pytest.importorskip("bitsandbytes")  # in requirements.txt: this skip never happens in CI

ROWS = [{"prompt": f"Write JSON for item {i}.", "completion": '{"S1": "a cat", "S2": "a kitten"}'} for i in range(8)]
LORA = LoraCfg(r=4, alpha=8, dropout=0.0)


@pytest.fixture
def cpu_qlora(monkeypatch):
    monkeypatch.setattr(train, "quant_config", functools.partial(train.quant_config, allow_cpu=True))


def linear4bit_count(model) -> int:
    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_a_tiny_model_loads_in_nf4_and_a_qlora_sft_step_moves_every_lora_parameter(tiny_lm, tmp_path, cpu_qlora):
    model, _, used = train.load_causal_lm(tiny_lm, qlora=True)
    assert used and linear4bit_count(model) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert {p.quant_type for p in model.parameters() if isinstance(p, bnb.nn.Params4bit)} == {"nf4"}
    del model
    snap = Snapshot()
    res = train.sft(tiny_lm, ROWS, tmp_path / "junior", JuniorCfg(qlora=True, lr=5e-3, batch_size=4, epochs=1, lora=LORA),
                    max_length=64, callbacks=[snap])
    assert res.path == "qlora" and res.steps == 2 and all(math.isfinite(loss) for _, loss in res.losses)
    assert snap.before and all("lora_" in n for n in snap.before) and snap.unchanged == []


def test_a_4bit_embedder_trains_and_merges_into_a_full_precision_copy(tiny_lm, tmp_path, cpu_qlora):
    from sentence_transformers import SentenceTransformer

    rows = [{"instruction": "Find the capital", "query": f"capital of land {i}", "positive": f"city {i} is the capital",
             "negative": f"city {i + 1} is a village"} for i in range(8)]
    st = embed.decoder_embedder(tiny_lm, max_length=48, qlora=True)
    assert st.quantized and linear4bit_count(st[0].model) == 2 * 7
    snap = Snapshot()
    cfg = EmbedderCfg(qlora=True, lr=5e-3, batch_size=8, mini_batch_size=4, epochs=2, warmup_steps=0, max_length=48,
                      gradient_checkpointing=True, lora=LORA)
    res = embed.train(st, rows, tmp_path / "emb", cfg, name="tiny", callbacks=[snap],
                      rebuild=lambda: embed.decoder_embedder(tiny_lm, 48, qlora=False))
    assert res.steps == 2 and snap.unchanged == [] and all(math.isfinite(loss) for _, loss in res.losses)
    merged = SentenceTransformer(str(tmp_path / "emb"), local_files_only=True)
    assert linear4bit_count(merged) == 0 and not any("lora_" in n for n, _ in merged.named_parameters())
    untrained = embed.decoder_embedder(tiny_lm, max_length=48)
    texts = [r["query"] for r in rows[:2]]
    a, b = (torch.as_tensor(m.encode(texts)) for m in (merged, untrained))
    assert torch.isfinite(a).all() and not torch.allclose(a, b, atol=1e-4)  # the LoRA update is in the weights
