"""Memory planner: estimated peak GPU memory per stage, and which GPUs it fits (``speed-repro plan``).

Estimates, not measurements. They add up:

* **weights** at their precision: bf16 (2 bytes/parameter) or nf4 with double quantization
  (about 4.13 bits/parameter for the quantized linear layers; embeddings, LM head and norms stay
  bf16, as bitsandbytes leaves them);
* **LoRA** parameters in fp32 with their gradients and AdamW's two moments (16 bytes each);
* **activations** of the micro-batch: with gradient checkpointing, each layer's input (bf16) plus
  one layer recomputed at a time; without it, every layer's (Korthikanti et al. 2022, per layer
  ``s·b·h·(34 + 5·a·s/h)`` bytes), plus the fp32 logits the loss needs;
* for inference (synthesis), the KV cache of the batch; and 1 GiB of CUDA context and allocator slack.

The numbers are meant to say "this fits on a 24 GB card with micro-batch 2" before renting one.
"""
from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3
NF4_BITS = 4.127  # nf4 (4 bits) + fp8 block scales per 64 + fp32 scales per 256 blocks (double quantization)
OVERHEAD_GIB = 1.0  # CUDA context, allocator fragmentation
GPUS = {"T4 16GB": 16, "A10/L4 24GB": 24, "A100 40GB": 40, "A100 80GB": 80, "H100 80GB": 80}


@dataclass(frozen=True)
class Arch:
    """What a decoder's memory depends on (from each model's config.json)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_params_per_layer(self) -> int:
        kv = self.kv_heads * self.head_dim
        return self.hidden * (2 * self.hidden + 2 * kv) + 3 * self.hidden * self.intermediate

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def params(self) -> int:
        return self.embedding_params() + self.layers * (self.linear_params_per_layer() + 2 * self.hidden) + self.hidden

    def lora_params(self, r: int) -> int:
        """LoRA of rank r on all seven projections of every layer."""
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        per = r * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
        return per * self.layers


ARCH = {
    "llama-3-8b": Arch(4096, 32, 32, 8, 14336, 128256, tied=False),
    "mistral-7b-v0.1": Arch(4096, 32, 32, 8, 14336, 32000, tied=False),
    "qwen2.5-coder-0.5b-instruct": Arch(896, 24, 14, 2, 4864, 151936, tied=True),
    "qwen2.5-coder-1.5b-instruct": Arch(1536, 28, 12, 2, 8960, 151936, tied=True),
    "smollm2-135m-instruct": Arch(576, 30, 9, 3, 1536, 49152, tied=True),
}


def weights_bytes(a: Arch, quant: str) -> float:
    """bf16, or nf4 for the linear layers with the rest in bf16."""
    if quant == "nf4":
        linear = a.layers * a.linear_params_per_layer()
        return linear * NF4_BITS / 8 + (a.params() - linear) * 2
    return a.params() * 2


def lora_bytes(a: Arch, r: int) -> float:
    """fp32 LoRA weights + gradients + AdamW's two moments."""
    return a.lora_params(r) * 16


def activation_bytes(a: Arch, batch: int, seq: int, checkpointing: bool, logits: bool = True) -> float:
    per_layer_full = seq * batch * a.hidden * (34 + 5 * a.heads * seq / a.hidden)
    acts = (a.layers * 2 * seq * batch * a.hidden + per_layer_full) if checkpointing else a.layers * per_layer_full
    if logits:
        acts += batch * seq * a.vocab * 4 * 2  # fp32 logits and their gradient
    return acts


def kv_cache_bytes(a: Arch, batch: int, seq: int) -> float:
    return 2 * a.layers * a.kv_heads * a.head_dim * seq * batch * 2


@dataclass
class StagePlan:
    stage: str
    model: str
    quant: str
    micro_batch: int
    seq: int
    parts: dict  # name -> bytes

    @property
    def total_gib(self) -> float:
        return sum(self.parts.values()) / GIB + OVERHEAD_GIB

    def fits(self) -> dict[str, bool]:
        return {g: self.total_gib <= cap * 0.95 for g, cap in GPUS.items()}


def _train(stage: str, model: str, tc, seq: int, checkpointing: bool, micro: int, pairs: int = 1,
           logits: bool = True) -> StagePlan:
    a = ARCH[model]
    quant = "nf4" if tc.qlora else "bf16"
    rows = micro * pairs  # DPO: chosen and rejected in one forward
    return StagePlan(stage, model, quant, micro, seq, {
        "weights": weights_bytes(a, quant), "lora + optimizer": lora_bytes(a, tc.lora.r),
        "activations": activation_bytes(a, rows, seq, checkpointing, logits)})


def plan(cfg) -> list[StagePlan]:
    """The GPU stages of a profile. Generators train with gradient checkpointing (on GPU, as
    ``train.trainer_args`` sets it); the embedder as its profile says, on its GradCache mini-batch."""
    gen, emb = cfg.models.generator, cfg.models.embedder
    out = []
    if gen in ARCH:
        out += [_train("03 junior SFT", gen, cfg.junior, cfg.junior.max_length, True, micro_batch(cfg.junior)),
                _train("04 senior DPO", gen, cfg.senior, cfg.senior.max_length, True, micro_batch(cfg.senior), pairs=2),
                _train("05 revisor SFT", gen, cfg.revisor, cfg.revisor.max_length, True, micro_batch(cfg.revisor))]
        a = ARCH[gen]
        seq = cfg.synthesis.max_new_tokens + 1024  # prompt + completion
        b = cfg.generation.batch_size
        out.append(StagePlan("06 synthesis (HF generate)", gen, "bf16", b, seq,
                             {"weights": weights_bytes(a, "bf16"), "kv cache": kv_cache_bytes(a, b, seq),
                              "activations": b * a.vocab * 4}))
    if emb in ARCH:
        ec = cfg.embedder
        mini = ec.mini_batch_size or ec.batch_size
        # GradCache embeds each column (queries, positives, negatives) in mini-batches of this size
        out.append(_train("07 embedder", emb, ec, ec.max_length, ec.gradient_checkpointing, mini, logits=False))
    return out


def micro_batch(tc) -> int:
    """The per-device micro-batch a training section uses on a GPU: :func:`speed_utils.train.batch_plan`'s."""
    from .train import batch_plan

    return batch_plan(tc.batch_size, micro=tc.micro_batch_size, on_gpu=True)[0]


def table(plans: list[StagePlan]) -> list[dict]:
    rows = []
    for p in plans:
        rows.append({"stage": p.stage, "model": p.model, "precision": p.quant, "micro-batch x seq": f"{p.micro_batch} x {p.seq}",
                     **{k: round(v / GIB, 2) for k, v in p.parts.items()}, "total GiB": round(p.total_gib, 1),
                     **{g: "yes" if ok else "no" for g, ok in p.fits().items()}})
    return rows


__all__ = ["ARCH", "Arch", "plan", "table", "weights_bytes", "lora_bytes", "activation_bytes", "kv_cache_bytes", "GPUS"]
