"""Stage 07: the embedding model, trained the E5-mistral way (SPEED §3.3; speed-method.md §1.7, §4).

* A decoder LLM reads the text with ``[EOS]`` appended; the last layer's state at that EOS is the
  embedding (last-token pooling, left padding, so the EOS is always the last real position).
* Queries carry ``Instruct: {task}\\nQuery: {query}``; documents carry no instruction, so an index
  can be built once.
* InfoNCE over cosine similarity with temperature τ (0.02 in E5), against in-batch positives and
  the hard negatives; a batch never holds the same text twice (no false in-batch negatives).
* LoRA (QLoRA on GPU), gradient checkpointing, and sentence-transformers' cached (GradCache) loss,
  so the contrastive batch can be larger than what fits in memory at once.

The result is a plain sentence-transformers folder: ``SentenceTransformer(path)`` loads it with
the pooling, the appended EOS and a default query prompt inside. The LoRA weights are merged.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tokenizers.processors import TemplateProcessing

from . import assets, disk
from .config import EmbedderCfg, LoraCfg
from .files import read_jsonl, remove
from .precision import amp_flags, compute_dtype, dtype_name, release_memory, trained_in
from .profiles import Config
from .runs import RunPaths, record_path
from .schema import to_training_example
from .train import (
    cuda_available,
    devices,
    lora_config,
    quant_device_map,
    record_training,
    step_logger,
    trained_before,
    training_key,
)

# E5-mistral's instruction for MS MARCO-style search, the default query prompt of a saved model.
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
TEXT_ONLY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}


def query_text(instruction: str, query: str) -> str:
    """The E5/SPEED query format (§3.3)."""
    return f"Instruct: {instruction}\nQuery: {query}"


# ---------------------------------------------------------------- models
def append_eos(tokenizer) -> None:
    """Make the tokenizer append its EOS token to every text (saved with the tokenizer), keeping the
    BOS token where the tokenizer already adds one (Mistral, LLaMA-3: E5 feeds BOS + text + EOS)."""
    eos, bos = tokenizer.eos_token, tokenizer.bos_token
    ids = tokenizer("a")["input_ids"]
    keep_bos = bos is not None and tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    head = f"{bos} " if keep_bos else ""
    specials = [(eos, tokenizer.eos_token_id)] + ([(bos, tokenizer.bos_token_id)] if keep_bos and bos != eos else [])
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{head}$A {eos}", pair=f"{head}$A {eos} $B {eos}", special_tokens=specials)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = eos


def decoder_embedder(model_path: str, max_length: int, qlora: bool = False):
    """A causal LM as a bi-encoder: raw text + EOS, left padding, last-token pooling, cosine."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from .train import quant_config  # looked up when called: tests let it build 4-bit weights on the CPU

    q = quant_config(qlora)
    model_kwargs = {"dtype": compute_dtype()}  # bf16 where the GPU or CPU computes in it
    if q is not None:
        model_kwargs.update(quantization_config=q, device_map=quant_device_map())
    # text only: sentence-transformers would otherwise wrap each text in the model's chat template
    t = Transformer(model_path, max_seq_length=max_length, processor_kwargs={"padding_side": "left"},
                    model_kwargs=model_kwargs, modality_config=TEXT_ONLY, module_output_name="token_embeddings")
    append_eos(t.tokenizer)
    pool = Pooling(t.get_embedding_dimension(), pooling_mode="lasttoken")
    st = SentenceTransformer(modules=[t, pool], similarity_fn_name="cosine",
                             prompts={"query": query_text(DEFAULT_INSTRUCTION, ""), "document": ""},
                             device="cuda" if cuda_available() else "cpu")
    st.quantized = q is not None
    return st


def encoder_embedder(path: str):
    """An off-the-shelf sentence-transformers model (all-MiniLM-L6-v2), as released."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cuda" if cuda_available() else "cpu", local_files_only=os.path.isdir(path))


def add_lora(st, c: LoraCfg) -> int:
    """Wrap the backbone with LoRA adapters; returns the number of trainable parameters."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    backbone = st[0].model
    if getattr(st, "quantized", False):
        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=True,
                                                   gradient_checkpointing_kwargs={"use_reentrant": False})
    st[0].model = get_peft_model(backbone, lora_config(c, task_type="FEATURE_EXTRACTION"))
    return sum(p.numel() for p in st.parameters() if p.requires_grad)


def merge_lora(st) -> None:
    """Fold the LoRA weights into the backbone, so the saved folder is a plain model."""
    from peft import PeftModel

    if isinstance(st[0].model, PeftModel):
        st[0].model = st[0].model.merge_and_unload()


# ---------------------------------------------------------------- data
def training_data(rows: Sequence[dict]):
    """Two datasets: triplets (with a hard negative) and pairs (text matching has none, §3.1).

    Each batch comes from one of them; a single pair beside triplets is left out, since its batch would
    contrast it with nothing (loss 0: the smoke run's stage 07 spent its first step so).

    The anchor is the instructed query; positives and negatives carry no instruction.
    """
    from datasets import Dataset, DatasetDict

    triplets = [{"anchor": query_text(r["instruction"], r["query"]), "positive": r["positive"],
                 "negative": r["negative"]} for r in rows if r.get("negative")]
    pairs = [{"anchor": query_text(r["instruction"], r["query"]), "positive": r["positive"]}
             for r in rows if not r.get("negative")]
    if len(pairs) == 1 and triplets:  # its batch would hold no negative at all: loss 0, a wasted step
        print("note: the one text-matching example (no hard negative) is left out of training: alone in its "
              "batch it has nothing to be contrasted with", file=sys.stderr, flush=True)
        pairs = []
    parts = {name: Dataset.from_list(data) for name, data in (("triplets", triplets), ("pairs", pairs)) if data}
    if not parts:
        raise ValueError("no training examples")
    return DatasetDict(parts)


def card_widget(rows: Sequence[dict]) -> list[dict]:
    """The saved model card's example: the shortest training row, query first.

    Set before the trainer starts, so sentence-transformers neither samples its own examples (with
    the global ``random`` state) nor draws a "Computing widget examples" bar in the terminal.
    """
    r = min(rows, key=lambda r: len(r["query"]) + len(r["positive"]) + len(r.get("negative") or ""))
    return [{"source_sentence": query_text(r["instruction"], r["query"]),
             "sentences": [t for t in (r["positive"], r.get("negative")) if t]}]


# ---------------------------------------------------------------- training
@dataclass
class EmbedResult:
    """What a contrastive training run reports (kept in stage 07's marker)."""

    path: str
    model: str
    steps: int
    seconds: float  # the whole call: LoRA set-up, training, merging and saving
    train_seconds: float  # the optimisation steps alone (trl/transformers' train_runtime)
    examples: int
    trainable_params: int
    loss: str  # "cached-infonce" (GradCache) or "infonce"
    batch_size: int
    mini_batch_size: int | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    dtype: str = ""  # "bf16" (autocast; bf16 frozen base under LoRA) or "fp32"
    left_out: int = 0  # of ``examples``: a lone text-matching pair (:func:`training_data`)

    def to_dict(self) -> dict:
        return asdict(self)


def contrastive_loss(st, ec: EmbedderCfg):
    """InfoNCE over cosine / τ with in-batch and hard negatives; GradCache when mini-batched."""
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    scale, gather = 1.0 / ec.temperature, devices() > 1  # several devices: every query sees every device's texts
    if ec.mini_batch_size:
        return CachedMultipleNegativesRankingLoss(st, scale=scale, mini_batch_size=ec.mini_batch_size,
                                                  gather_across_devices=gather), "cached-infonce"
    return MultipleNegativesRankingLoss(st, scale=scale, gather_across_devices=gather), "infonce"


def per_device_batch(ec: EmbedderCfg, devices: int) -> int:
    """Each device's share of the contrastive batch (no accumulation: it would shrink the negatives)."""
    return math.ceil(ec.batch_size / devices)


def warmup_steps(ec: EmbedderCfg, n_rows: int, devices: int = 1) -> int:
    """The profile's warm-up, but at most a third of the run's optimizer steps.

    A short training (a small point of the scaling sweep: 48 rows are 2 steps) would otherwise spend
    every step ramping up from a learning rate of 0, and the curve would measure the warm-up, not the
    data. The paper's long trainings are untouched.
    """
    steps = ec.max_steps or math.ceil(n_rows / (per_device_batch(ec, devices) * devices)) * math.ceil(ec.epochs)
    return min(ec.warmup_steps, steps // 3)


def train(st, rows: Sequence[dict], out_dir: Path, ec: EmbedderCfg, name: str, seed: int = 0,
          lora: bool = True, callbacks: list | None = None, rebuild: Callable | None = None) -> EmbedResult:
    """Train ``st`` on (instruction, query, positive, negative) rows and save it to ``out_dir``, with the
    settings of ``ec`` (SPEED §3.3: InfoNCE with in-batch and hard negatives), its ``lr`` included.

    ``rebuild`` makes a fresh full-precision copy of the untrained model; it is needed where the LoRA
    weights cannot be merged in place (several processes with sharded weights, or a 4-bit base)."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers, MultiDatasetBatchSamplers
    from transformers import set_seed

    t0 = time.monotonic()
    set_seed(seed)  # the LoRA weights are drawn here, before the trainer seeds: same rows and seed, same model
    trainable = add_lora(st, ec.lora) if lora else sum(p.numel() for p in st.parameters() if p.requires_grad)
    loss, loss_name = contrastive_loss(st, ec)
    on_gpu = cuda_available()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir.with_name(out_dir.name + ".trainer")),
        per_device_train_batch_size=per_device_batch(ec, devices()),
        num_train_epochs=ec.epochs, max_steps=ec.max_steps or -1, learning_rate=ec.lr, warmup_steps=warmup_steps(ec, len(rows), devices()),
        weight_decay=ec.weight_decay, lr_scheduler_type="linear", seed=seed, data_seed=seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES, multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL,
        **amp_flags(on_gpu), use_cpu=not on_gpu, gradient_checkpointing=ec.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1, save_strategy="no",
        report_to="none", dataloader_num_workers=0, disable_tqdm=True)
    st.model_card_data.widget = card_widget(rows)
    data = training_data(rows)
    trainer = SentenceTransformerTrainer(model=st, args=args, train_dataset=data, loss=loss,
                                         callbacks=[*(callbacks or []), step_logger()])
    train_seconds = trainer.train().metrics["train_runtime"]
    save_trained(st, trainer.accelerator, out_dir, lora, ec.lora, rebuild)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    losses = [(h["step"], float(h["loss"])) for h in trainer.state.log_history if "loss" in h and "step" in h]
    return EmbedResult(path=str(out_dir), model=name, steps=trainer.state.global_step,
                       seconds=round(time.monotonic() - t0, 1), train_seconds=round(train_seconds, 1),
                       examples=len(rows), left_out=len(rows) - sum(len(part) for part in data.values()),
                       trainable_params=trainable,
                       loss=loss_name, batch_size=ec.batch_size, mini_batch_size=ec.mini_batch_size, losses=losses,
                       dtype=trained_in(args))


def load_for_training(name: str, max_length: int, qlora: bool, online: bool):
    """A named model ready for contrastive training, whether it trains with LoRA, and how to rebuild it.

    Causal LMs (the paper's Mistral-7B; SmolLM2 on the CPU) become last-token decoder embedders
    trained with LoRA; sentence-transformers models (MiniLM) are fully fine-tuned as released.
    """

    m = assets.spec(name)
    if m.kind == "sentence-transformer":
        st = encoder_embedder(assets.st_folder(name, online=online))
        st.max_seq_length = min(st.max_seq_length or max_length, max_length)
        return st, False, None
    path = assets.hf_folder(name, online=online)
    return decoder_embedder(path, max_length, qlora), True, lambda: decoder_embedder(path, max_length, qlora=False)


def training_rows(run: RunPaths, sources: Sequence[str]) -> list[dict]:
    """Training rows from the synthetic data and, when asked, the teacher's seed data (same mapping, §3.3)."""

    rows = list(read_jsonl(run.file("synthetic"))) if "synthetic" in sources else []
    if "seed" in sources:
        rows += [{"id": r["id"], **to_training_example(r["task_type"], r["task"], r["output"])}
                 for r in read_jsonl(run.file("seed"))]
    return rows


def subset(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded subset of ``n`` rows; smaller sizes are prefixes of larger ones (nested, for scaling)."""

    if n is None or n >= len(rows):
        return rows
    order = list(range(len(rows)))
    random.Random(f"{seed}:train-subset").shuffle(order)
    return [rows[i] for i in sorted(order[:n])]


def shuffled_positives(rows: list[dict], seed: int) -> list[dict]:
    """The floor control of issue 31: every row keeps its query and negative, and takes the positive of
    another row (a seeded cycle through the rows), so what the embedder can learn from the pairs is gone."""

    if len(rows) < 2:
        return rows
    order = list(range(len(rows)))
    random.Random(f"{seed}:shuffled-positives").shuffle(order)
    moved = {order[i]: rows[order[(i + 1) % len(order)]]["positive"] for i in range(len(order))}
    return [{**r, "positive": moved[i]} for i, r in enumerate(rows)]


def training_seed(cfg: Config) -> int:
    """The seed of stage 07's training: ``embedder.seed`` where set (a sweep's seeds), else ``run.seed``."""
    return cfg.embedder.seed if cfg.embedder.seed is not None else cfg.run.seed


def train_stage(cfg: Config, run: RunPaths) -> dict:
    """Stage 07: train the embedder (and fine-tune the baseline) on ``synthetic.jsonl`` (and the seed data
    when ``embedder.train_on`` says so)."""

    ec, online, seed = cfg.embedder, cfg.use_hub(), training_seed(cfg)
    rows = subset(training_rows(run, ec.train_on), ec.train_examples, seed)
    if ec.shuffle_positives:
        rows = shuffled_positives(rows, seed)
    if not rows:
        raise ValueError(f"no training example in {', '.join(ec.train_on)} data ({run.data}); "
                         "stage 06 produced no valid example")
    if ec.train_examples and len(rows) < ec.train_examples:
        print(f"WARNING: embedder.train_examples asks for {ec.train_examples} examples, but the "
              f"{' + '.join(ec.train_on)} data holds {len(rows)}: training on all {len(rows)}", file=sys.stderr, flush=True)
    out = {}
    jobs = [("embedder", cfg.models.embedder, ec.lr)]
    if cfg.models.baseline_embedder and ec.baseline_finetune:
        jobs.append(("baseline", cfg.models.baseline_embedder, ec.baseline_lr))
    disk.check_free_space(run.models, [name for _, name, _ in jobs])
    if len(jobs) == 1:  # the baseline is not trained this time: never evaluate a stale one
        remove(run.file("baseline"))
        remove(record_path(run.file("baseline")))
    for folder, name, lr in jobs:
        key = training_key(kind="embedder", model=name, rows=rows, settings=ec.model_dump(), lr=lr, seed=seed,
                           dtype=dtype_name())
        if (done := trained_before(run.models / folder, key)) is not None:
            out[folder] = {**done, "reused": True}
            continue
        print(f"training {name} on {len(rows)} examples -> models/{folder}", flush=True)
        st, lora, rebuild = load_for_training(name, ec.max_length, ec.qlora, online)
        job = ec if lr == ec.lr else ec.model_copy(update={"lr": lr})  # the baseline trains at baseline_lr
        out[folder] = {**train(st, rows, run.models / folder, job, name=name, seed=seed, lora=lora,
                               rebuild=rebuild).to_dict(), "lora": lora}
        record_training(run.models / folder, key, out[folder])
        del st
        release_memory()
    return out


def save_trained(st, accelerator, out_dir: Path, lora: bool, lora_cfg: LoraCfg, rebuild: Callable | None) -> None:
    """Save the trained model as a plain sentence-transformers folder, LoRA merged, from one process.

    One process with full-precision weights merges in place. Otherwise the LoRA weights are gathered
    (a collective call under ZeRO-3: every process takes part) and the main process merges them into a
    fresh full-precision copy: merging into 4-bit or sharded weights would lose precision or weights.
    """

    several = devices() > 1
    if not lora or (not several and not getattr(st, "quantized", False)):
        if lora:
            merge_lora(st)
        if accelerator.is_main_process:
            save(st, out_dir)
        accelerator.wait_for_everyone()
        return
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    full = accelerator.get_state_dict(st[0].model) if several else None
    lora_state = {k: v.to("cpu") for k, v in get_peft_model_state_dict(st[0].model, state_dict=full).items()}
    if accelerator.is_main_process:
        if rebuild is None:
            raise ValueError("a sharded or 4-bit embedder needs `rebuild` to merge its LoRA weights")
        if not several and cuda_available():  # one copy on the GPU at a time: the trained one moves out first
            st.to("cpu")
            release_memory()
        fresh = rebuild()
        add_lora(fresh, lora_cfg)
        set_peft_model_state_dict(fresh[0].model, lora_state)
        merge_lora(fresh)
        save(fresh, out_dir)
    accelerator.wait_for_everyone()


def save(st, out_dir: Path) -> None:
    """Save a sentence-transformers folder atomically (a sibling ``.part`` folder, then a rename)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    st.save(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


__all__ = ["query_text", "decoder_embedder", "encoder_embedder", "training_data", "train", "EmbedResult",
           "DEFAULT_INSTRUCTION"]
