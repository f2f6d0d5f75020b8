"""The GPU generator trainings (gpu-24gb, paper) as configs, built on the CPU: SPEED App. B's
learning rates and batches, LoRA r16/alpha 32 on all projections, paged AdamW, gradient
checkpointing and bf16, accepted by trl's SFTConfig/DPOConfig."""
import pytest
from trl import DPOConfig, SFTConfig

from speed_utils import train
from speed_utils.profiles import load_profile

PAPER_LR_BATCH = {"junior": (1e-4, 16), "senior": (1e-5, 16), "revisor": (5e-6, 24)}


@pytest.mark.parametrize("profile", ["gpu-24gb", "paper"])
@pytest.mark.parametrize("section", ["junior", "senior", "revisor"])
def test_gpu_training_config_builds_on_the_cpu(profile, section, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "has_bitsandbytes", lambda: True)  # as on a CUDA machine with bitsandbytes
    cfg = load_profile(profile)
    assert cfg.models.generator == "llama-3-8b"
    tc = getattr(cfg, section)
    lr, batch = PAPER_LR_BATCH[section]
    if (profile, section) == ("gpu-24gb", "revisor"):  # a tenth of the paper's revisions: lr x steps kept (issue 33)
        lr = 5e-5
    assert (tc.lr, tc.batch_size) == (lr, batch)

    lora = train.lora_config(tc.lora)
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (16, 32, "all-linear")

    args = train.trainer_args(tc, tmp_path, seed=0, on_gpu=True)
    assert args["bf16"] and args["gradient_checkpointing"] and not args["use_cpu"]
    assert args["optim"] == "paged_adamw_32bit"
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] >= tc.batch_size

    # This machine has no GPU, so trl refuses bf16 without use_cpu: that is the only setting changed.
    on_cpu = {**args, "use_cpu": True}
    built = (DPOConfig(**on_cpu, beta=tc.beta, max_length=tc.max_length) if section == "senior"
             else SFTConfig(**on_cpu, max_length=tc.max_length, completion_only_loss=True))
    assert built.learning_rate == tc.lr and built.bf16 and built.gradient_checkpointing
    assert built.optim.value == "paged_adamw_32bit"
    if section == "senior":
        assert built.beta == 0.1


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cpu_training_config_is_plain_adamw_in_the_cpu_dtype(tmp_path, monkeypatch, dtype):
    """bf16 autocast on a CPU only where precision.dtype_name says so (bf16 matrix units, or the override)."""
    monkeypatch.setenv("SPEED_REPRO_DTYPE", dtype)
    tc = load_profile("cpu").junior
    args = train.trainer_args(tc, tmp_path, seed=0, on_gpu=False)
    assert (args["optim"], args["bf16"], args["gradient_checkpointing"], args["use_cpu"]) == \
        ("adamw_torch", dtype == "bf16", False, True)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (4, 2)  # batch 8 on the CPU


def test_a_gpu_without_bitsandbytes_trains_with_plain_adamw_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(train, "has_bitsandbytes", lambda: False)
    assert train.optimizer(on_gpu=True) == "adamw_torch"
    assert "not paged AdamW" in caplog.text


def test_short_trainings_spend_no_step_at_learning_rate_zero(tmp_path):
    """3% warm-up rounded down: the cpu profile's 1-4 step trainings have none, the paper's 10K-row runs do."""
    cpu = load_profile("cpu")
    assert train.trainer_args(cpu.senior, tmp_path, seed=0, on_gpu=False, n_rows=8)["warmup_steps"] == 0
    assert train.trainer_args(cpu.junior, tmp_path, seed=0, on_gpu=False, n_rows=28)["warmup_steps"] == 0
    paper = load_profile("paper").junior  # batch 16
    steps = -(-10_000 // 16) * paper.epochs
    assert train.trainer_args(paper, tmp_path, seed=0, on_gpu=True, n_rows=10_000)["warmup_steps"] == int(0.03 * steps) > 0
