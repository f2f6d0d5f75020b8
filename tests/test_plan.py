"""The memory planner against known figures."""
import pytest

from speed_utils import plan
from speed_utils.profiles import load_profile

GB = 1e9


def test_known_parameter_counts():
    assert plan.ARCH["llama-3-8b"].params() == pytest.approx(8.03e9, rel=0.005)  # Meta-Llama-3-8B
    assert plan.ARCH["mistral-7b-v0.1"].params() == pytest.approx(7.24e9, rel=0.005)  # Mistral-7B-v0.1
    assert plan.ARCH["qwen2.5-coder-0.5b-instruct"].params() == pytest.approx(0.494e9, rel=0.01)
    assert plan.ARCH["smollm2-135m-instruct"].params() == pytest.approx(0.135e9, rel=0.01)
    # E5-mistral: LoRA r16 on all linear layers of Mistral-7B is 42M trainable parameters
    assert plan.ARCH["mistral-7b-v0.1"].lora_params(16) == pytest.approx(42e6, rel=0.01)


def test_weights_at_their_precision():
    llama = plan.ARCH["llama-3-8b"]
    assert 5 * GB <= plan.weights_bytes(llama, "nf4") <= 6 * GB  # 8B in nf4: about 5-6 GB
    assert plan.weights_bytes(llama, "bf16") == pytest.approx(16.06 * GB, rel=0.01)
    assert plan.kv_cache_bytes(llama, 1, 1) == 128 * 1024  # 32 layers x 8 kv heads x 128 dims x K,V x bf16


def test_checkpointing_cuts_activations():
    a = plan.ARCH["mistral-7b-v0.1"]
    assert plan.activation_bytes(a, 4, 512, True, False) < plan.activation_bytes(a, 4, 512, False, False) / 10


GIB = 1024 ** 3


def test_every_gpu_stage_is_planned_and_matches_arithmetic_done_by_hand():
    """The planner's totals against sums written out here from the models' configs, not from the planner."""
    cfg = load_profile("gpu-24gb")
    rows = {r["stage"]: r for r in plan.table(plan.plan(cfg))}
    assert [s[:2] for s in rows] == ["03", "04", "04", "05", "05", "06", "06", "07", "07", "08"]  # every GPU stage
    # LLaMA-3-8B: 32 layers; per layer q,o 4096x4096, k,v 4096x1024, gate,up,down 4096x14336
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    params = linear + 2 * 128256 * 4096 + 32 * 2 * 4096 + 4096  # untied embeddings and head, norms
    nf4 = linear * 4.127 / 8 + (params - linear) * 4  # the rest cast to fp32 by peft's prepare_model_for_kbit_training
    # LoRA r16 on the seven projections, fp32 weights + gradient + two AdamW moments (16 bytes)
    lora = 16 * 32 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3) * 16
    # micro-batch 2 x 2048 tokens, checkpointing: each layer's bf16 input, one layer recomputed, fp32 logits + grad
    s, b, h = 2048, 2, 4096
    acts = 32 * 2 * s * b * h + s * b * h * (34 + 5 * 32 * s / h) + b * s * 128256 * 8
    assert rows["03 junior SFT"]["total GiB"] == pytest.approx((nf4 + lora + acts) / GIB + 1, abs=0.06)
    # vLLM: bf16 weights, two LoRA slots of rank 16 in bf16, the KV cache of one 4,096-token sequence
    kv_per_token = 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 kv heads of 128 dims, bf16
    vllm = params * 2 + 2 * (16 * 32 * 81920) * 2 + kv_per_token * 4096
    assert rows["06 synthesis (vLLM)"]["total GiB"] == pytest.approx(vllm / GIB + 1, abs=0.06)
    # Mistral-7B merge: bf16 weights (32,000-token vocabulary) and the fp32 LoRA weights beside them
    m_params = linear + 2 * 32000 * 4096 + 32 * 2 * 4096 + 4096
    assert rows["07 merge (bf16 copy)"]["total GiB"] == pytest.approx((m_params * 2 + 42e6 * 4) / GIB + 1, abs=0.06)
    # a 24 GB card has 22.5 GiB (nvidia-smi); training may take 95%, vLLM its 85% share
    assert all(r["A10/L4 24GB"] == "yes" for r in rows.values())
    assert vllm / GIB + 1 > 15.0 * 0.85  # a T4 cannot hold the bf16 8B for vLLM
    assert (nf4 + lora + acts) / GIB + 1 > 15.0 * 0.95  # nor, with fp32 embeddings and head, QLoRA training
    assert rows["06 synthesis (vLLM)"]["T4 16GB"] == "no" and rows["03 junior SFT"]["T4 16GB"] == "no"
    whole = cfg.junior.model_copy(update={"micro_batch_size": None})  # the batch of 16 as one micro-batch
    assert plan._train("junior", "llama-3-8b", whole, 2048, True, 16).fits()["A10/L4 24GB"] is False


def test_paper_training_stages_fit_the_papers_a100_40gb():
    rows = plan.table(plan.plan(load_profile("paper")))
    assert len(rows) == 9 and all(r["A100 40GB"] == "yes" for r in rows)  # no 07 merge: the paper trains plain LoRA
