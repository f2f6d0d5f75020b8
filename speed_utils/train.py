"""Generator training on trl and peft: junior SFT, senior DPO, revisor SFT (SPEED §3.2).

LoRA everywhere. QLoRA (nf4, double quantization, bf16 compute) only where CUDA and
bitsandbytes are both present: on the CPU, bitsandbytes' 4-bit path gives silently wrong LoRA
gradients after any no-grad forward (toolchain.md §c), so a profile's ``qlora: true`` falls back
to plain LoRA there, and the result records which path ran. trl turns bf16 and gradient
checkpointing on by default; both are set explicitly here.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from . import chat
from .chat import load_tokenizer
from .config import LoraCfg, TrainCfg
from .files import atomic_write_json, sha256_path
from .precision import amp_flags, compute_dtype, dtype_name, release_memory, trained_in
from .runs import record_path

log = logging.getLogger(__name__)
MICRO_BATCH_CPU = 4  # per-device batch on the CPU; the rest of the batch is gradient accumulation


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def quant_config(want_qlora: bool, allow_cpu: bool = False):
    """A 4-bit nf4 config when QLoRA is asked for and possible, else None (plain LoRA).

    ``allow_cpu``: for tests only. bitsandbytes 0.50 runs nf4 on the CPU, but a ``no_grad`` forward
    before training makes every later LoRA gradient silently wrong there (toolchain.md §c)."""
    if not (want_qlora and (cuda_available() or allow_cpu) and has_bitsandbytes()):
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype())  # bf16, or fp16 on a card without bf16


def lora_config(c: LoraCfg, task_type: str = "CAUSAL_LM"):
    """LoRA on all projections (the released SPEED revisor: r16, alpha 32, dropout 0.1)."""
    from peft import LoraConfig

    targets = c.target_modules if c.target_modules == "all-linear" else list(c.target_modules)
    return LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=targets,
                      task_type=task_type, bias="none")


def devices() -> int:
    """Processes in this training run (``accelerate launch`` sets WORLD_SIZE), 1 otherwise."""

    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_plan(batch_size: int, devices: int = 1, micro: int | None = None,
               on_gpu: bool | None = None) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) so that their product times devices >= batch_size."""
    on_gpu = cuda_available() if on_gpu is None else on_gpu
    micro = min(batch_size, micro or (batch_size if on_gpu else MICRO_BATCH_CPU))
    return micro, max(1, math.ceil(batch_size / (micro * devices)))


@dataclass
class TrainResult:
    """What a training run reports: kept in done markers and plotted in the notebooks."""

    adapter: str
    path: str  # "lora" or "qlora": which one actually ran
    steps: int
    seconds: float
    trainable_params: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    optimizer: str = ""  # what trained: paged AdamW on a GPU with bitsandbytes, AdamW otherwise
    dtype: str = ""  # "bf16" (autocast over bf16 base weights) or "fp32" (precision.dtype_name)

    def to_dict(self) -> dict:
        return asdict(self)


def step_logger():
    """A callback printing one plain line per logged step (steps, loss, elapsed, ETA).

    In a notebook kernel the Trainer draws an HTML progress bar, which papermill's log and the
    executed notebook's text do not show; this keeps long trainings visible from the runner.
    """
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            el = time.monotonic() - self.t0
            eta = el / max(state.global_step, 1) * (state.max_steps - state.global_step)
            extra = "".join(f" {k}={logs[k]:.3f}" for k in ("rewards/margins", "rewards/accuracies") if k in logs)
            print(f"step {state.global_step}/{state.max_steps} loss={logs['loss']:.4f}{extra} "
                  f"elapsed={el:.0f}s eta={eta:.0f}s", flush=True)

    return StepLog()


def optimizer(on_gpu: bool) -> str:
    """Paged AdamW on a GPU, the recipe of the paper's generator trainings (optimizer state pages
    to host memory on spikes; bitsandbytes provides it); plain AdamW on the CPU, where paging means nothing."""
    paged = on_gpu and has_bitsandbytes()
    if on_gpu and not paged:
        log.warning("bitsandbytes is not installed: training with plain AdamW, not paged AdamW")
    return "paged_adamw_32bit" if paged else "adamw_torch"


WARMUP_RULE = "3% rounded down"  # part of the training keys: a change of rule trains again


def warmup_steps(steps: int) -> int:
    """Linear warm-up over 3% of the optimizer steps, rounded down. transformers rounds a 0.03 ratio up,
    so every short training spent its first step at learning rate 0: half of a 2-step DPO, a quarter
    of a 4-step SFT (cpu run of 2026-12-01). Trainings under 34 steps now have no warm-up."""
    return int(0.03 * steps)


def trainer_args(tc: TrainCfg, out_dir: Path, seed: int, on_gpu: bool | None = None, n_rows: int = 0,
                 **extra) -> dict:
    """Arguments shared by SFTConfig and DPOConfig, with bf16/checkpointing set explicitly.

    ``on_gpu`` defaults to what this machine has; tests pass True to build the GPU settings on the CPU.
    ``n_rows``: the training set's size, which sets the warm-up (:func:`warmup_steps`).
    """
    on_gpu = cuda_available() if on_gpu is None else on_gpu
    micro, accum = batch_plan(tc.batch_size, devices(), tc.micro_batch_size, on_gpu)
    steps = math.ceil(math.ceil(n_rows / (micro * accum * devices())) * tc.epochs)
    return dict(output_dir=str(out_dir), learning_rate=tc.lr, per_device_train_batch_size=micro,
                gradient_accumulation_steps=accum, num_train_epochs=tc.epochs, seed=seed,
                **amp_flags(on_gpu), gradient_checkpointing=on_gpu, use_cpu=not on_gpu,
                optim=optimizer(on_gpu), lr_scheduler_type="linear",
                warmup_steps=warmup_steps(steps), logging_steps=1, save_strategy="no", report_to="none",
                dataloader_num_workers=0, disable_tqdm=True, **extra)


def quant_device_map() -> dict:
    """Where a 4-bit model is loaded: the first GPU (bitsandbytes places it there), else the CPU."""
    return {"": 0} if cuda_available() else {"": "cpu"}


def load_causal_lm(model_id: str, qlora: bool, adapter: str | Path | None = None):
    """The base model (bf16 where the GPU or CPU computes in it, else fp32; 4-bit when QLoRA runs) and its
    tokenizer, with the chat template of ``adapter`` where training continues one (:mod:`speed_utils.chat`).
    The LoRA weights peft adds stay fp32, so the optimizer updates full-precision numbers."""
    from transformers import AutoModelForCausalLM

    q = quant_config(qlora)
    kw = {"quantization_config": q, "device_map": quant_device_map()} if q else {}
    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=compute_dtype(), **kw)
    tok = load_tokenizer(model_id, adapter)
    if q is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tok, q is not None


def _losses(trainer, key: str = "loss") -> list[tuple[int, float]]:
    return [(h["step"], float(h[key])) for h in trainer.state.log_history if key in h and "step" in h]


def training_key(**inputs) -> str:
    """A hash of everything a training depends on: base model, rows, settings, seed, starting adapter."""
    blob = json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def trained_before(out_dir: Path, key: str) -> dict | None:
    """The recorded result of an earlier training into ``out_dir`` with the same key, if its output is intact.

    A stage killed after a training (say, during stage 05's quality check) resumes without training
    again; any change of data, settings or output files means a fresh training.
    """
    rec = record_path(out_dir)
    try:
        r = json.loads(rec.read_text())
    except (OSError, ValueError):
        return None
    if r.get("key") != key or not Path(out_dir).is_dir() or r.get("output_sha256") != sha256_path(out_dir):
        return None
    print(f"{out_dir}: reusing what was trained at {r['finished']} from the same data and settings "
          f"(delete {rec.name} to train again)", flush=True)
    return r["result"]


def record_training(out_dir: Path, key: str, result: dict) -> None:
    """Record a finished training beside its output (after the output is saved whole)."""
    atomic_write_json(record_path(out_dir), {"key": key, "output_sha256": sha256_path(out_dir),
                                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "result": result})


def _reused(out_dir: Path, key: str) -> TrainResult | None:
    if (r := trained_before(out_dir, key)) is None:
        return None
    return TrainResult(**{**r, "losses": [tuple(x) for x in r["losses"]], "extra": {**r["extra"], "reused": True}})


def _finish(trainer, out_dir: Path, key: str, used_qlora: bool, t0: float, **extra) -> TrainResult:
    """Save the adapter (only "default", not DPO's frozen "ref" copy) from the main process, then
    record the training beside it; under ZeRO-3 the weights are gathered first, a collective call
    every process takes part in."""
    acc = trainer.accelerator
    state = acc.get_state_dict(trainer.model) if devices() > 1 else None
    if acc.is_main_process:
        trainer.model.save_pretrained(str(out_dir), selected_adapters=["default"], state_dict=state)
        chat.record(trainer.processing_class, out_dir)  # generators render prompts as this training did
    acc.wait_for_everyone()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result = TrainResult(adapter=str(out_dir), path="qlora" if used_qlora else "lora",
                         steps=trainer.state.global_step, seconds=round(time.monotonic() - t0, 1),
                         trainable_params=trainable, losses=_losses(trainer), extra=extra,
                         optimizer=str(getattr(trainer.args.optim, "value", trainer.args.optim)),
                         dtype=trained_in(trainer.args))
    if acc.is_main_process:
        record_training(out_dir, key, result.to_dict())
    return result


def sft(model_id: str, rows: Sequence[dict], out_dir: Path, tc: TrainCfg, max_length: int, seed: int = 0,
        callbacks: list | None = None) -> TrainResult:
    """SFT with the loss on the completion only (SPEED Eq. 1 for the junior, Eq. 3 for the revisor).

    ``rows`` hold ``prompt`` and ``completion`` strings; they are trained as one user turn and one
    assistant turn, so trl masks the prompt tokens out of the loss.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    key = training_key(kind="sft", model=model_id, rows=list(rows), settings=tc.model_dump(), max_length=max_length,
                       dtype=dtype_name(), warmup=WARMUP_RULE, seed=seed)
    if (done := _reused(out_dir, key)) is not None:
        return done
    t0 = time.monotonic()
    model, tok, used_qlora = load_causal_lm(model_id, tc.qlora)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    # micro-batches of similar lengths: a micro-batch is padded to its longest row. transformers sorts
    # each optimizer batch by length (for data this small its mega-batch is one batch), so on the cpu
    # run's 37 seed examples (206-510 tokens) micro-batches of 4 hold 16% padding instead of 25%
    args = SFTConfig(**trainer_args(tc, out_dir, seed, n_rows=len(rows)), max_length=max_length,
                     completion_only_loss=True, packing=False, train_sampling_strategy="group_by_length")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         peft_config=lora_config(tc.lora), callbacks=[*(callbacks or []), step_logger()])
    trainer.train()
    result = _finish(trainer, out_dir, key, used_qlora, t0, examples=len(rows))
    del trainer, model
    release_memory()  # the stage may sample next (stage 05's quality check): vLLM needs the card free
    return result


def dpo(model_id: str, junior_adapter: str | Path, pairs: Sequence[dict], out_dir: Path, tc, max_length: int,
        seed: int = 0, callbacks: list | None = None) -> TrainResult:
    """DPO from the junior (SPEED Eq. 2): the junior's adapter keeps training into the senior,
    and trl freezes a copy of it (adapter "ref") as the reference model, so the reference is
    exactly the junior, with no second copy of the base weights and no merge.

    ``pairs`` hold ``prompt``, ``chosen`` and ``rejected`` strings; ``tc`` is a ``SeniorCfg``.
    """
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    key = training_key(kind="dpo", model=model_id, start=sha256_path(junior_adapter), pairs=list(pairs), dtype=dtype_name(), warmup=WARMUP_RULE,
                       settings=tc.model_dump(), max_length=max_length, seed=seed)
    if (done := _reused(out_dir, key)) is not None:
        return done
    t0 = time.monotonic()
    base, tok, used_qlora = load_causal_lm(model_id, tc.qlora, adapter=junior_adapter)
    model = PeftModel.from_pretrained(base, str(junior_adapter), is_trainable=True)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}],
                               "chosen": [{"role": "assistant", "content": p["chosen"]}],
                               "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    args = DPOConfig(**trainer_args(tc, out_dir, seed, n_rows=len(pairs)), beta=tc.beta, max_length=max_length)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=data, processing_class=tok,
                         callbacks=[*(callbacks or []), step_logger()])
    trainer.train()
    hist = trainer.state.log_history
    margins = [(h["step"], float(h["rewards/margins"])) for h in hist if "rewards/margins" in h]
    accuracy = [(h["step"], float(h["rewards/accuracies"])) for h in hist if "rewards/accuracies" in h]
    result = _finish(trainer, out_dir, key, used_qlora, t0, pairs=len(pairs), reference="junior adapter (frozen copy)",
                     reward_margins=margins, reward_accuracies=accuracy)
    del trainer, model, base
    release_memory()
    return result
