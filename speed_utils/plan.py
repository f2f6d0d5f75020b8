"""Memory planner: estimated peak GPU memory per stage, and which GPUs it fits (``speed-repro plan``).

Estimates, not measurements. They add up:

* **weights** at their precision: bf16 (2 bytes/parameter) or nf4 with double quantization
  (about 4.13 bits/parameter for the quantized linear layers; embeddings, LM head and norms stay bf16,
  as bitsandbytes leaves them), and for QLoRA training the 2 more bytes each of those take when peft's
  ``prepare_model_for_kbit_training`` casts them to fp32;
* **LoRA** parameters in fp32 with their gradients and AdamW's two moments (16 bytes each);
* **activations** of the micro-batch: with gradient checkpointing, each layer's input (bf16) plus
  one layer recomputed at a time; without it, every layer's (Korthikanti et al. 2022, per layer
  ``s·b·h·(34 + 5·a·s/h)`` bytes), plus the fp32 logits the loss needs;
* for inference, the KV cache; and 1 GiB of CUDA context and allocator slack.

Every stage that puts a model on the GPU has a row, one model at a time (the package frees each before
the next: vLLM in its own process, stage 08 one candidate after another, stage 07's merge after the
trained model left the GPU):

* **03-05 training** (LoRA or QLoRA, gradient checkpointing);
* **04, 05, 06 sampling on vLLM**: the bf16 weights and the KV cache of at least one longest sequence
  must fit in vLLM's share of the card (``gpu_memory_utilization``, 0.85 here), which vLLM fills
  with more KV cache for throughput; the transformers fallback of 06 holds the KV cache of its batch;
* **07 embedder training** on its GradCache mini-batch, and **07's merge** into a full-precision copy
  (QLoRA: the LoRA weights go into bf16 weights, not into 4-bit ones);
* **08 evaluation**: one bf16 model, no gradients, one layer's activations of an encoding batch.

The numbers are meant to say "this fits on a 24 GB card with micro-batch 2" before renting one.
"""
from __future__ import annotations

from dataclasses import dataclass

from .train import batch_plan

GIB = 1024 ** 3
NF4_BITS = 4.127  # nf4 (4 bits) + fp8 block scales per 64 + fp32 scales per 256 blocks (double quantization)
OVERHEAD_GIB = 1.0  # CUDA context, allocator fragmentation
# memory in GiB as nvidia-smi reports it (MiB / 1024): a "24 GB" card has 22.5 GiB, not 24
GPUS = {"T4 16GB": 15.0, "A10/L4 24GB": 22.5, "A100 40GB": 40.0, "A100 80GB": 80.0, "H100 80GB": 79.6}
USABLE = 0.95  # of a card, for a process that allocates as it goes
VLLM_SHARE = 0.85  # vLLM's gpu_memory_utilization (speed_utils.vllm_worker.GPU_SHARE): what its engine may take
VLLM_MAX_LEN = 4096  # vLLM's max_model_len (speed_utils.vllm_worker.MAX_MODEL_LEN): the KV cache it must hold at least


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
    """bf16, or nf4 for the linear layers with the rest in bf16 (as loaded)."""
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
    usable: float = USABLE  # the share of the card this stage may use

    @property
    def total_gib(self) -> float:
        return sum(self.parts.values()) / GIB + OVERHEAD_GIB

    def fits_gib(self, card_gib: float) -> bool:
        return self.total_gib <= card_gib * self.usable

    def fits(self) -> dict[str, bool]:
        return {g: self.fits_gib(cap) for g, cap in GPUS.items()}


def _train(stage: str, model: str, tc, seq: int, checkpointing: bool, micro: int, pairs: int = 1,
           logits: bool = True) -> StagePlan:
    a = ARCH[model]
    quant = "nf4" if tc.qlora else "bf16"
    rows = micro * pairs  # DPO: chosen and rejected in one forward
    parts = {"weights": weights_bytes(a, quant)}
    if tc.qlora:  # prepare_model_for_kbit_training: the unquantized parameters in fp32
        parts["fp32 casts"] = (a.params() - a.layers * a.linear_params_per_layer()) * 2
    return StagePlan(stage, model, quant, micro, seq, {
        **parts, "lora + optimizer": lora_bytes(a, tc.lora.r), "activations": activation_bytes(a, rows, seq, checkpointing, logits)})


def _vllm(stage: str, model: str, lora_rank: int) -> StagePlan:
    """vLLM: bf16 weights, its two LoRA slots at the adapters' rank, and the KV cache of one sequence of
    its maximum length, within its share of the card (it fills the rest with more KV cache)."""
    a = ARCH[model]
    return StagePlan(stage, model, "bf16", 1, VLLM_MAX_LEN,
                     {"weights": weights_bytes(a, "bf16"), "lora": 2 * a.lora_params(lora_rank) * 2,
                      "kv cache": kv_cache_bytes(a, 1, VLLM_MAX_LEN)}, usable=VLLM_SHARE)


def plan(cfg) -> list[StagePlan]:
    """Every GPU stage of a profile, in order. Generators train with gradient checkpointing (on GPU, as
    ``train.trainer_args`` sets it); the embedder as its profile says, on its GradCache mini-batch."""
    gen, emb = cfg.models.generator, cfg.models.embedder
    out = []
    if gen in ARCH:
        a = ARCH[gen]
        sample = 1024 + max(cfg.generation.max_new_tokens, cfg.synthesis.max_new_tokens)  # prompt + completion
        r = max(cfg.junior.lora.r, cfg.senior.lora.r, cfg.revisor.lora.r)
        b = cfg.generation.batch_size
        out += [_train("03 junior SFT", gen, cfg.junior, cfg.junior.max_length, True, micro_batch(cfg.junior)),
                _vllm("04 junior sampling (vLLM)", gen, r),
                _train("04 senior DPO", gen, cfg.senior, cfg.senior.max_length, True, micro_batch(cfg.senior), pairs=2),
                _train("05 revisor SFT", gen, cfg.revisor, cfg.revisor.max_length, True, micro_batch(cfg.revisor)),
                _vllm("05 quality sampling (vLLM)", gen, r),
                _vllm("06 synthesis (vLLM)", gen, r),
                StagePlan("06 synthesis (transformers fallback)", gen, "bf16", b, sample,
                          {"weights": weights_bytes(a, "bf16"), "kv cache": kv_cache_bytes(a, b, sample),
                           "activations": b * a.vocab * 4})]
    if emb in ARCH:
        ec, a = cfg.embedder, ARCH[emb]
        mini = ec.mini_batch_size or ec.batch_size
        # GradCache embeds each column (queries, positives, negatives) in mini-batches of this size
        out.append(_train("07 embedder", emb, ec, ec.max_length, ec.gradient_checkpointing, mini, logits=False))
        if ec.qlora:  # the LoRA weights merged into a fresh bf16 copy (embed.save_trained), fp32 LoRA beside it
            out.append(StagePlan("07 merge (bf16 copy)", emb, "bf16", 0, 0,
                                 {"weights": weights_bytes(a, "bf16"), "lora": a.lora_params(ec.lora.r) * 4}))
        batch, seq = cfg.evaluate.batch_size, ec.max_length
        out.append(StagePlan("08 evaluate (one model)", emb, "bf16", batch, seq,
                             {"weights": weights_bytes(a, "bf16"),
                              "activations": seq * batch * a.hidden * (34 + 5 * a.heads * seq / a.hidden)}))
    return out


def micro_batch(tc) -> int:
    """The per-device micro-batch a training section uses on a GPU: :func:`speed_utils.train.batch_plan`'s."""

    return batch_plan(tc.batch_size, micro=tc.micro_batch_size, on_gpu=True)[0]


def table(plans: list[StagePlan]) -> list[dict]:
    rows = []
    for p in plans:
        rows.append({"stage": p.stage, "model": p.model, "precision": p.quant, "micro-batch x seq": f"{p.micro_batch} x {p.seq}",
                     **{k: round(v / GIB, 2) for k, v in p.parts.items()}, "total GiB": round(p.total_gib, 1),
                     **{g: "yes" if ok else "no" for g, ok in p.fits().items()}})
    return rows


__all__ = ["ARCH", "Arch", "plan", "table", "weights_bytes", "lora_bytes", "activation_bytes", "kv_cache_bytes", "GPUS",
           "USABLE", "VLLM_SHARE"]
