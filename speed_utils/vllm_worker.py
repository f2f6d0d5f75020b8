"""vLLM in a child process, so its GPU memory is gone when the generator closes.

vLLM reserves ``gpu_memory_utilization`` of the card (0.9 by default) for as long as its engine
lives, and an engine kept in a stage's kernel would sit under the training that follows it: stage 04
samples the junior and then trains DPO, stage 05 trains the revisor and then samples three
generators (SPEED §3.2). Here the engine lives in a child process that :meth:`VllmWorker.close`
ends, and the operating system returns all of its GPU memory. The child may run another Python
environment's interpreter: vLLM 0.33 pins torch 2.14 and transformers <5.21, which do not install
beside this package's torch 2.13 and transformers 5.24 (``make vllm-env`` builds ``.venv-vllm``).
The two processes talk over an authenticated loopback connection (``multiprocessing.connection``).

:func:`vllm_inputs` builds what the engine is asked (prompt token ids, sampling settings with the
per-request seed, the LoRA request) from the same rendered prompts the other engines get. The
prompts are tokenized without special tokens, because the chat template already wrote any BOS:
vLLM would add a second one to a text prompt.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Callable, Sequence

from .paths import REPO_ROOT

MAX_MODEL_LEN = 4096  # tokens per sequence: the longest request (a revision prompt + its completion) fits
GPU_SHARE = 0.85  # gpu_memory_utilization: the share of the card the engine takes (speed_utils.plan)


def lora_request(adapter: str | None) -> tuple[str, int, str] | None:
    """(name, id, path) of an adapter's LoRA request; the id is stable for a path (vLLM caches by id)."""
    return (adapter, zlib.crc32(adapter.encode()) % 10**6 + 1, adapter) if adapter else None


def vllm_inputs(tok, asked: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Token-id prompts and SamplingParams keyword arguments for :meth:`Generator.requests` output."""
    prompts = [{"prompt_token_ids": tok(a["prompt"], add_special_tokens=False)["input_ids"]} for a in asked]
    params = [{"n": a["n"], "temperature": a["temperature"], "top_p": a["top_p"], "max_tokens": a["max_tokens"],
               "seed": a["seed"], **({"json_schema": a["json_schema"]} if a.get("json_schema") else {})} for a in asked]
    return prompts, params


def _vllm_engine(model_id: str, tensor_parallel: int, gpu_memory_utilization: float, max_lora_rank: int,
                 dtype: str = "bfloat16") -> object:  # pragma: no cover - needs a GPU and vLLM
    """The engine, built in the worker process (``dtype`` float16 on a card without bf16, a T4).
    ``SPEED_REPRO_VLLM_EAGER=1`` skips CUDA-graph capture (a quicker start for tiny models and checks)."""
    from vllm import LLM

    return LLM(model=model_id, enable_lora=True, max_lora_rank=max_lora_rank, max_loras=2, dtype=dtype,
               max_model_len=MAX_MODEL_LEN, tensor_parallel_size=tensor_parallel,
               gpu_memory_utilization=gpu_memory_utilization,
               enforce_eager=os.environ.get("SPEED_REPRO_VLLM_EAGER") == "1")


def _vllm_generate(llm, prompts: list[dict], params: list[dict],
                   lora: tuple | None) -> tuple[list[list[str]], int]:  # pragma: no cover - needs a GPU and vLLM
    """One call for the whole request list: vLLM schedules it with continuous batching."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    results = llm.generate(prompts, [SamplingParams(**_structured(p)) for p in params],
                           lora_request=LoRARequest(*lora) if lora else None)
    return [[o.text for o in r.outputs] for r in results], sum(len(o.token_ids) for r in results for o in r.outputs)


def _structured(params: dict) -> dict:  # pragma: no cover - needs vLLM
    """A JSON schema as vLLM's structured-output setting (``structured_outputs`` since vLLM 0.10, before it
    ``guided_decoding``)."""
    schema = params.pop("json_schema", None)
    if schema is None:
        return params
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {**params, "structured_outputs": StructuredOutputsParams(json=json.loads(schema))}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {**params, "guided_decoding": GuidedDecodingParams(json=json.loads(schema))}


def _serve(conn, make_engine: Callable, engine_args: tuple, generate: Callable) -> None:
    """The worker's loop: build the engine once, then answer ("generate", prompts, params, lora) until "stop"."""
    try:
        engine = make_engine(*engine_args)
        conn.send(("ready", None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return
        if msg[0] == "stop":
            return
        try:
            conn.send(("ok", generate(engine, *msg[1:])))
        except BaseException as e:  # noqa: BLE001
            conn.send(("error", f"{type(e).__name__}: {e}"))


def _load(ref: str) -> Callable:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def default_python() -> str:
    """The interpreter of the vLLM environment: ``$SPEED_REPRO_VLLM_PYTHON``, else ``.venv-vllm`` beside the
    repository (``make vllm-env``: vLLM pins its own torch and transformers), else this one."""
    env = os.environ.get("SPEED_REPRO_VLLM_PYTHON")
    if env:
        return env
    own = REPO_ROOT / ".venv-vllm"
    return str(own / "bin" / "python") if (own / ".installed").exists() else sys.executable


def available() -> bool:
    """Whether vLLM can be run: installed here, or in ``.venv-vllm`` (whose ``.installed`` stamp ``make
    vllm-env`` writes only after the install succeeded), or in ``$SPEED_REPRO_VLLM_PYTHON``'s environment."""
    return default_python() != sys.executable or importlib.util.find_spec("vllm") is not None


class VllmWorker:
    """A vLLM engine in a child process (its own interpreter, so its own torch); :meth:`generate` sends it a
    whole request list at once; :meth:`close` ends the process, and the GPU memory goes with it."""

    def __init__(self, model_id: str, tensor_parallel: int = 1, gpu_memory_utilization: float = GPU_SHARE,
                 max_lora_rank: int = 64, dtype: str = "bfloat16", python: str | None = None,
                 log_path: Path | None = None,
                 make_engine: str = f"{__name__}:_vllm_engine", generate: str = f"{__name__}:_vllm_generate",
                 start_timeout_s: float = 1800):

        key = secrets.token_bytes(16)
        listener = Listener(("127.0.0.1", 0), authkey=key)
        self.log_path = Path(log_path or Path(tempfile.gettempdir()) / "speed-vllm-worker.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SPEED_REPRO_WORKER_KEY": key.hex()}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                          env.get("PYTHONPATH")]))
        self.python, self.conn = python or default_python(), None
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(  # its own process group: close() can end vLLM's children too
                    [self.python, "-m", __name__, f"{listener.address[0]}:{listener.address[1]}", make_engine, generate,
                     json.dumps([model_id, tensor_parallel, gpu_memory_utilization, max_lora_rank, dtype])],
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError:
            listener.close()
            raise
        self.conn = self._accept(listener, start_timeout_s)
        status, detail = self._recv(time.monotonic() + start_timeout_s)
        if status != "ready":
            self.close()
            raise RuntimeError(f"the vLLM engine for {model_id} did not start: {detail} (log: {self.log_path})")

    def _accept(self, listener, timeout_s: float):
        got: list = []

        def accept():
            try:
                got.append(listener.accept())
            except OSError:  # closed below: the worker never connected
                pass

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        deadline = time.monotonic() + timeout_s
        while t.is_alive() and self.proc.poll() is None and time.monotonic() < deadline:
            t.join(0.5)
        listener.close()
        if not got:
            self.close()
            raise RuntimeError(f"the vLLM worker exited (code {self.proc.returncode}) before it connected; "
                               f"see {self.log_path}")
        return got[0]

    def _recv(self, deadline: float | None = None):
        while not self.conn.poll(5):
            if self.proc.poll() is not None:
                return "error", f"the worker process exited with code {self.proc.returncode}"
            if deadline is not None and time.monotonic() > deadline:
                return "error", "no answer in time"
        return self.conn.recv()

    def generate(self, prompts: list[dict], params: list[dict], lora: tuple | None) -> tuple[list[list[str]], int]:
        self.conn.send(("generate", prompts, params, lora))
        status, detail = self._recv()
        if status != "ok":
            raise RuntimeError(f"vLLM generation failed in its worker: {detail} (log: {self.log_path})")
        return detail

    def close(self, timeout: float = 60) -> None:
        """Stop the engine and wait for its process to end (its GPU memory goes with it)."""
        if self.proc.poll() is None and self.conn is not None:
            try:
                self.conn.send(("stop",))
            except OSError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and any engine process it started
            self.proc.wait()
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def main(argv: list[str]) -> None:
    """``python -m speed_utils.vllm_worker HOST:PORT ENGINE GENERATE ARGS``: connect back and serve."""

    host, port = argv[0].rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ.pop("SPEED_REPRO_WORKER_KEY")))
    _serve(conn, _load(argv[1]), tuple(json.loads(argv[3])), _load(argv[2]))


if __name__ == "__main__":
    main(sys.argv[1:])


__all__ = ["VllmWorker", "vllm_inputs", "lora_request", "default_python", "available"]
