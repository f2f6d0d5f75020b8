"""Stage 06 on a Ray cluster: synthesis as a Ray Data pipeline over generator replicas (SPEED §3.3, App. A).

The paper made 1.15M raw examples with its aligned generators. Where the profile sets
``distributed.synthesis: ray`` (the ``paper`` profile does; install the ``.[scale]`` extra), each pass
of :func:`speed_utils.synthesis.make_chunks` (the writer's, then the revisor's) becomes a Ray Data
pipeline: the chunks still to make (:func:`speed_utils.synthesis.plan`, the one place that decides
which prompts a worker makes) are a dataset; :class:`ChunkMaker` actors, each one generator replica
(a vLLM engine serving the pass's LoRA adapter on ``generation.tensor_parallel_size`` GPUs, or a
llama.cpp server on ``generation.threads`` CPU cores), make whole chunks with
:func:`~speed_utils.synthesis.make_chunk`, the code the single process runs; the driver writes each
chunk file atomically as it arrives. Ray balances chunks over the replicas and restarts a replica
that dies (``distributed.ray.max_restarts``), retrying its chunk; a driver killed mid-run resumes from
the chunk files (nothing finished is made again). A chunk's rows depend only on its prompts, seeds
and engine settings, so on llama.cpp with one slot the pipeline writes the same chunk files as one
process with the same ``generation.threads`` (tested on a local Ray with 2 replicas); vLLM's batching
varies with load, so its texts may differ between any two runs.

Replicas read the run folder (adapters, ``tasks.jsonl``, the writer's chunks), so on a cluster of
several machines it must sit at the same path on each (a shared filesystem).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
import warnings
from pathlib import Path

from . import synthesis
from .files import atomic_write_text, jsonl_text
from .generate import base_model as profile_base
from .generate import generation_engine, open_generator
from .gguf_lora import adapter_to_gguf
from .profiles import Config
from .runs import RunPaths
from .synthesis import Progress, SynthesisError, chunk_path

PLACEMENT_TIMEOUT_S = 1800  # long enough for nodes to join and vLLM engines to load
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2  # a local Ray carries chunk rows only: keep its shared memory small
# what replicas inherit from the driver (no secret: a cluster's nodes hold their own HF_TOKEN)
WORKER_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "HF_ENDPOINT", "PYTHONHASHSEED", "SPEED_REPRO_CACHE",
              "SPEED_REPRO_DTYPE", "SPEED_REPRO_VLLM_PYTHON", "SPEED_REPRO_VLLM_EAGER")


def available() -> bool:
    """Whether Ray Data is installed here (``pip install -e '.[scale]'``)."""
    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pyarrow") is not None


def missing_ray_message(cfg: Config) -> str:
    return (f"profile {cfg.name} runs synthesis on Ray (distributed.synthesis: ray), but Ray is not installed: "
            "pip install -e '.[scale]' (or set distributed.synthesis: local)")


def connect(cfg: Config) -> bool:
    """Join the profile's Ray cluster, or start a local one; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    rc = cfg.distributed.ray
    # Ray's C++ core logs to stderr at "error" things it recovers from (a replica restarted); failures
    # that stop the run reach the driver as Python exceptions, and everything stays in /tmp/ray/session_*/logs
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    # "local" starts a Ray of our own even where RAY_ADDRESS is set or `ray start` ran on this machine
    local = {"num_cpus": os.cpu_count(), "object_store_memory": LOCAL_OBJECT_STORE_BYTES} if rc.address is None else {}
    ray.init(address=rc.address or "local", include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, runtime_env={"env_vars": env}, **local)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # stage 06 draws its own bar, one per pass
    ctx.print_on_execution_start = False
    ctx.wait_for_min_actors_s = PLACEMENT_TIMEOUT_S  # replicas a busy cluster cannot place: an error, not a hang
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return True


def replica_resources(cfg: Config, engine: str) -> tuple[int, float, float]:
    """(replicas, CPUs, GPUs per replica): one engine per GPU group on vLLM, one per ``generation.threads``
    cores elsewhere, unless ``distributed.ray.replicas`` says how many."""
    import ray

    have = ray.cluster_resources()
    g, asked = cfg.generation, cfg.distributed.ray.replicas
    if engine == "vllm":
        n = asked or int(have.get("GPU", 0) // g.tensor_parallel_size)
        if n < 1:
            raise RuntimeError(f"the Ray cluster has {have.get('GPU', 0):g} GPUs; a vLLM replica needs "
                               f"generation.tensor_parallel_size = {g.tensor_parallel_size}")
        return n, 1, g.tensor_parallel_size
    if have.get("GPU", 0) and cfg.generation.backend == "auto":
        raise RuntimeError(f"the Ray cluster has {have['GPU']:g} GPUs but this driver sees none, so generation.backend "
                           f"'auto' picks {engine}; set generation.backend: vllm in profile {cfg.name}")
    return asked or max(1, int(have.get("CPU", 1) // g.threads)), g.threads, 0


def check_placeable(n: int, cpus: float, gpus: float, nodes: list[dict]) -> None:
    """Raise if ``n`` replicas of ``cpus`` CPUs and ``gpus`` GPUs cannot all be placed on the cluster's live
    nodes (Ray would wait for them forever): each must fit one node, and all of them the cluster."""
    free = [(nd["Resources"].get("CPU", 0), nd["Resources"].get("GPU", 0)) for nd in nodes if nd.get("Alive", True)]
    what = f"{n} replica(s) of {cpus:g} CPU(s){f' and {gpus:g} GPU(s)' if gpus else ''}"
    placed = sum(min(c // cpus if cpus else n, g // gpus if gpus else n) for c, g in free)
    if placed < n:
        raise RuntimeError(f"the Ray cluster ({len(free)} node(s): {sum(c for c, _ in free):g} CPUs, "
                           f"{sum(g for _, g in free):g} GPUs) cannot place {what}: lower distributed.ray.replicas, "
                           "generation.threads or generation.tensor_parallel_size")


class ChunkMaker:
    """One generator replica (a Ray actor): the pass's adapter on its engine, making whole chunks.

    Called with a batch of chunk numbers, it returns each chunk's rows (as the chunk file's text), how
    many are valid and the tokens it generated; it writes nothing itself. It reads the run folder:
    the adapter, ``tasks.jsonl`` (a writer computes its chunk's prompts alone) and, for the revisor,
    the writer's chunk.
    """

    def __init__(self, cfg: Config, run_root: str, p, engine: str, base_model: str | None):
        self.cfg, self.run, self.p = cfg, RunPaths(Path(run_root)), p
        log = self.run.logs / "ray" / f"generator-{p.name}-{socket.gethostname()}-{os.getpid()}.log"
        self.gen = open_generator(cfg, p.adapter, log, base_override=base_model, backend=engine)

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"chunk": [], "rows": [], "valid": [], "tokens": []}
        for j in (int(x) for x in batch["chunk"]):
            before = self.gen.tokens_out
            given = synthesis.chunk_input(self.p, j, lambda k: synthesis.chunk_prompts(self.cfg, self.run, k))
            rows, valid = synthesis.make_chunk(self.cfg, self.p.name, j, given, self.gen)
            out["chunk"].append(j)
            out["rows"].append(jsonl_text(rows))  # the chunk file's text, as the single process writes it
            out["valid"].append(valid)
            out["tokens"].append(self.gen.tokens_out - before)
        return out

    def __del__(self):
        gen = getattr(self, "gen", None)
        if gen is not None:
            gen.close()


def executor_for(cfg: Config):
    """What makes stage 06's chunks for :func:`speed_utils.synthesis.make_chunks`: :func:`make_passes` where
    ``distributed.synthesis`` is "ray", else None (this process)."""
    return make_passes if cfg.distributed.synthesis == "ray" else None


def make_passes(cfg: Config, run: RunPaths, chunks: list, passes: list, shard, base_model: str | None = None,
                backend: str | None = None) -> dict:
    """Run each pass (:class:`speed_utils.synthesis.Pass`) as a Ray Data pipeline; write chunks as they arrive."""
    if not available():
        raise SynthesisError(missing_ray_message(cfg))
    import ray
    from ray.util.annotations import RayDeprecationWarning

    engine = backend or generation_engine(cfg, base_model)
    if engine == "llamacpp":  # convert each adapter once, here, rather than in every replica at once
        for p in passes:
            adapter_to_gguf(p.adapter, base_model or profile_base(cfg))
    # replicas resolve models as the driver does (a node that reaches the Hub must not load other weights)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"offline": "never" if cfg.use_hub() else "always"})})
    started = connect(cfg)
    tokens, t0 = 0, time.monotonic()
    try:
        try:
            n, cpus, gpus = replica_resources(cfg, engine)
            check_placeable(min(n, max(len(p.todo) for p in passes)), cpus, gpus, ray.nodes())
        except RuntimeError as e:
            raise SynthesisError(str(e)) from None
        retries = cfg.distributed.ray.max_restarts
        for p in passes:
            ds = ray.data.from_items([{"chunk": j} for j in p.todo], override_num_blocks=len(p.todo))
            with warnings.catch_warnings():  # Ray 2.60 names no parameter for bounded restarts (its default: forever)
                warnings.simplefilter("ignore", RayDeprecationWarning)
                # one chunk in flight per replica: a free replica takes the next chunk, none waits queued behind another
                pool = ray.data.ActorPoolStrategy(size=min(n, len(p.todo)), max_tasks_in_flight_per_actor=1)
                ds = ds.map_batches(ChunkMaker, batch_size=1, compute=pool,
                                    fn_constructor_kwargs={"cfg": cfg, "run_root": str(run.root), "p": p,
                                                           "engine": engine, "base_model": base_model},
                                    num_cpus=cpus, num_gpus=gpus, max_restarts=retries, max_task_retries=retries)
            bar = Progress(sum(len(chunks[j]) for j in p.todo), f"06 {p.name} {shard} (ray x{min(n, len(p.todo))})")
            for row in ds.iter_rows():
                text = row["rows"]
                atomic_write_text(chunk_path(p.folder, int(row["chunk"])), text)  # whole or not at all
                bar.update(text.count("\n"), int(row["valid"]), int(row["tokens"]))
                tokens += int(row["tokens"])
            bar.close()
    finally:
        if started:
            ray.shutdown()
    return {"executor": "ray", "replicas": n, "engine": engine, "tokens_out": tokens,
            "pipeline_seconds": round(time.monotonic() - t0, 1)}


__all__ = ["available", "connect", "replica_resources", "check_placeable", "ChunkMaker", "make_passes", "missing_ray_message"]
