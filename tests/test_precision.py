"""bf16 where the CPU has bf16 matrix units: the choice, and that it trains like fp32 (tiny models)."""
import math

import pytest
import torch

from speed_utils import embed, precision
from speed_utils.config import EmbedderCfg, JuniorCfg, LoraCfg
from speed_utils.train import sft

ROWS = [{"prompt": f"Write JSON for item {i}.", "completion": '{"S1": "a cat", "S2": "a kitten", "S3": "a car"}'}
        for i in range(8)]
PAIRS = [{"instruction": "Given a question, retrieve passages that answer it", "query": f"capital of land number {i}",
          "positive": f"city {i} is the capital of land {i}", "negative": f"land {i + 1} grows wheat"}
         for i in range(8)]


def test_the_dtype_follows_the_hardware_unless_overridden(monkeypatch):
    monkeypatch.delenv("SPEED_REPRO_DTYPE", raising=False)
    if torch.cuda.is_available():  # a T4 has no bf16 units: fp16 there
        expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    else:
        expected = "bf16" if precision.cpu_bf16_flags() else "fp32"
    assert precision.dtype_name() == expected
    monkeypatch.setenv("SPEED_REPRO_DTYPE", "fp32")
    assert precision.compute_dtype() == torch.float32 and precision.amp_flags(on_gpu=True) == {"bf16": False, "fp16": False}
    assert precision.compute_dtype("bf16") == torch.bfloat16 and precision.compute_dtype("fp16") == torch.float16
    with pytest.raises(ValueError, match="SPEED_REPRO_DTYPE"):
        precision.dtype_name("fp8")


def test_a_gpu_without_bf16_trains_in_fp16(monkeypatch):
    """A T4 (compute capability 7.5): torch reports bf16 "supported" by emulation; the trainer gets fp16."""
    monkeypatch.delenv("SPEED_REPRO_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert precision.dtype_name() == "fp16" and precision.compute_dtype() == torch.float16
    assert precision.amp_flags(on_gpu=True) == {"bf16": False, "fp16": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100, L4
    assert precision.amp_flags(on_gpu=True) == {"bf16": True, "fp16": False}


def _in(dtype: str, monkeypatch, fn):
    monkeypatch.setenv("SPEED_REPRO_DTYPE", dtype)
    return fn()


@pytest.mark.slow
def test_sft_losses_agree_in_bf16_and_fp32(tiny_lm, tmp_path, monkeypatch):
    tc = JuniorCfg(lr=5e-3, batch_size=4, epochs=1, lora=LoraCfg(r=4, alpha=8, dropout=0.0))
    runs = {d: _in(d, monkeypatch, lambda: sft(tiny_lm, ROWS, tmp_path / d, tc, max_length=64)) for d in ("fp32", "bf16")}
    assert (runs["fp32"].dtype, runs["bf16"].dtype) == ("fp32", "bf16")
    for (_, a), (_, b) in zip(runs["fp32"].losses, runs["bf16"].losses, strict=True):
        assert math.isfinite(b) and abs(a - b) <= 0.02 * abs(a) + 0.02, (runs["fp32"].losses, runs["bf16"].losses)


@pytest.mark.slow
def test_contrastive_losses_agree_in_bf16_and_fp32(tiny_lm, tmp_path, monkeypatch):
    ec = EmbedderCfg(lr=1e-3, batch_size=4, mini_batch_size=2, max_length=48, epochs=1, warmup_steps=0,
                     lora=LoraCfg(r=4, alpha=8, dropout=0.0))

    def train(d):
        return embed.train(embed.decoder_embedder(tiny_lm, 48), PAIRS, tmp_path / d, ec, name="tiny", seed=0)

    runs = {d: _in(d, monkeypatch, lambda: train(d)) for d in ("fp32", "bf16")}
    assert (runs["fp32"].dtype, runs["bf16"].dtype) == ("fp32", "bf16")
    for (_, a), (_, b) in zip(runs["fp32"].losses, runs["bf16"].losses, strict=True):
        assert math.isfinite(b) and abs(a - b) <= 0.02 * abs(a) + 0.02, (runs["fp32"].losses, runs["bf16"].losses)
