"""The memory planner against known figures."""
import pytest

from speed_utils import plan
from speed_utils.config import load_profile

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


def test_gpu_profile_fits_a_24gb_card_and_the_naive_batch_does_not():
    cfg = load_profile("gpu-24gb")
    rows = {r["stage"]: r for r in plan.table(plan.plan(cfg))}
    assert all(r["A10/L4 24GB"] == "yes" for r in rows.values())
    whole = cfg.junior.model_copy(update={"micro_batch_size": None})
    assert plan._train("junior", "llama-3-8b", whole, 2048, True, plan.micro_batch(whole)).fits()["A10/L4 24GB"] is False


def test_paper_training_stages_fit_the_papers_a100_40gb():
    rows = plan.table(plan.plan(load_profile("paper")))
    assert [r["A100 40GB"] for r in rows if r["stage"][:2] in ("03", "04", "05", "07")] == ["yes"] * 4
