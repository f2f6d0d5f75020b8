"""Local generation from a base model plus an optional LoRA adapter (SPEED §3.2–3.3).

The junior samples candidate lists for DPO, the senior writes data at scale, and the revisor
rewrites it. Three engines take the same :class:`GenRequest` objects, honour each request's seed,
return texts in request order and write the same generation journal:

* ``llamacpp`` (the CPU default where the base has a GGUF): the GGUF base plus the adapter converted
  to a GGUF LoRA (:mod:`speed_utils.gguf_lora`), served by :class:`~speed_utils.llama_server.LlamaServer`
  with parallel slots and continuous batching;
* ``transformers`` (the fallback): batched ``generate`` with left padding, on any device;
* ``vllm`` (where vLLM and CUDA are present): the adapter as a LoRA request, the engine in its own
  process (:mod:`speed_utils.vllm_worker`), fed thousands of rows per call and journalled per batch.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tqdm import tqdm

from . import assets
from .chat import load_tokenizer, user_turn
from .files import append_jsonl, salvage_jsonl, sha256_path
from .gguf_lora import adapter_to_gguf
from .llama_server import LlamaServer
from .precision import compute_dtype, dtype_name
from .profiles import Config
from .vllm_worker import VllmWorker, available, lora_request, vllm_inputs

JOURNAL_VERSION = 1  # bump when the sampling code changes what a batch's seed produces
VLLM_CALL_ROWS = 4096  # rows per vLLM call: enough to keep a GPU's batch full, few enough to journal often


def _journal(path: Path | None) -> dict[str, list[str]]:
    """Finished batches from a generation journal; a damaged row is set aside (its batch is generated again)."""
    if path is None:
        return {}
    return {r["key"]: r["texts"] for r in salvage_jsonl(path, ("key", "texts")) if isinstance(r["texts"], list)}


def row_seed(seed: int, sample_id: int) -> int:
    """The seed of sample ``sample_id`` of a request with ``seed``."""
    return seed * 1000003 + sample_id


@dataclass(frozen=True)
class GenRequest:
    """One prompt, sampled ``n`` times. The prompt is one user turn of the model's chat template."""

    prompt: str
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 800
    seed: int = 0
    json_schema: str | None = None  # JSON Schema text the decoding is constrained to (llama.cpp, vLLM)


def backend_name(requested: str | None = None, has_gguf: bool = False) -> str:
    """The engine, resolved in this one place: ``requested`` unless it is None or "auto"; otherwise, on a
    GPU "vllm" where it is installed (here, or in ``.venv-vllm``: :mod:`speed_utils.vllm_worker`), else
    "transformers"; on a CPU "llamacpp" if the base has a GGUF, else "transformers"."""
    if requested not in (None, "auto"):
        return requested
    import torch

    if torch.cuda.is_available():
        return "vllm" if available() else "transformers"
    return "llamacpp" if has_gguf else "transformers"


def base_model(cfg: Config) -> str:
    """The generator base: a Hub id online, a folder converted from the GGUF offline."""
    return assets.hf_folder(cfg.models.generator, online=cfg.use_hub())


def generation_engine(cfg: Config, base_override: str | None = None) -> str:
    """The engine that samples a profile's generators (SPEED §3.2–3.3): ``generation.backend``, or for
    "auto" by hardware and whether the base has a GGUF (:func:`backend_name`)."""
    m = assets.spec(cfg.models.generator)
    # llama.cpp only offline, where the HF base is the GGUF dequantized, so adapters apply to what they trained on
    return backend_name(cfg.generation.backend, base_override is None and m.gguf is not None and not cfg.use_hub())


def open_generator(cfg: Config, adapter, log: Path | None = None, base_override: str | None = None,
                   backend: str | None = None) -> "Generator":
    """The one generator factory: the base generator plus ``adapter`` on the profile's engine, used by the
    junior's samples (stage 04), the quality look (05), synthesis (06, 11) and the Ray replicas. Close it,
    or use it in ``with``.

    On llama.cpp the base is the generator's GGUF (the file the offline HF folder was dequantized
    from) and the adapter its GGUF conversion; ``base_override`` (a test's tiny model) has no GGUF.
    """
    g = cfg.generation
    engine = backend or generation_engine(cfg, base_override)
    gguf = assets.gguf_path(cfg.models.generator, online=cfg.use_hub()) if engine == "llamacpp" else None
    return Generator(base_override or base_model(cfg), str(adapter) if adapter else None, batch_size=g.batch_size,
                     backend=engine, tensor_parallel=g.tensor_parallel_size, gguf=gguf, parallel=g.parallel,
                     slot_ctx=g.slot_ctx, threads=g.threads, log_path=log,
                     max_lora_rank=max(cfg.junior.lora.r, cfg.senior.lora.r, cfg.revisor.lora.r))


class Generator:
    """A causal LM (plus adapter) that turns prompts into sampled completions, in batches.

    ``backend``: "llamacpp" (``gguf`` is the base's GGUF; ``parallel`` slots, ``slot_ctx`` tokens
    each), "transformers" (batched ``generate``, left padding; any device) or "vllm" (``tensor_parallel``
    GPUs per engine); None picks by :func:`backend_name`. All render prompts with the same chat
    template (the one the adapter was trained with, :mod:`speed_utils.chat`), give every request the same seed and sampling settings
    (:meth:`requests`), and return texts in request order. The engines draw different random
    streams, so sampled texts differ between them, not their format. Use as a context manager,
    or call :meth:`close`, so a llama.cpp server stops with its generator.
    """

    def __init__(self, model_id: str, adapter: str | None = None, batch_size: int = 8, backend: str | None = None,
                 tensor_parallel: int = 1, gguf: Path | None = None, parallel: int = 1, slot_ctx: int = 2048,
                 threads: int = 2, log_path: Path | None = None, max_lora_rank: int = 64):
        self.model_id, self.adapter, self.batch_size = model_id, adapter, batch_size
        self.backend = backend_name(backend, gguf is not None)
        self.tokens_out = 0
        self._count = threading.Lock()  # llama.cpp rows finish on worker threads
        self.server = self.worker = None
        if adapter and not Path(adapter).is_dir():
            raise FileNotFoundError(f"adapter folder {adapter} does not exist")
        self.tok = load_tokenizer(model_id, adapter, padding_side="left")  # the adapter's training template
        if self.backend == "vllm":  # pragma: no cover - needs a GPU

            dtype = "float16" if dtype_name() == "fp16" else "bfloat16"  # a T4 has no bf16
            self.worker = VllmWorker(model_id, tensor_parallel, dtype=dtype, max_lora_rank=max_lora_rank,
                                     log_path=log_path)  # its own process: close() frees the GPU
            self.fingerprint = [JOURNAL_VERSION, "vllm", model_id, *self._adapter_id(), self.worker.python, dtype]
            return
        if self.backend == "llamacpp":
            self._start_server(gguf, parallel, slot_ctx, threads, log_path)
            return
        import torch
        from transformers import AutoModelForCausalLM

        self.dtype = compute_dtype()
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=self.dtype)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()  # faster sampling, same outputs
        self.model = model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
        self.fingerprint = [JOURNAL_VERSION, self.model_id, getattr(self.model.config, "_commit_hash", None),
                            *self._adapter_id(), str(self.model.dtype), self.model.device.type,
                            torch.__version__, importlib.metadata.version("transformers")]

    def _adapter_id(self) -> list:
        return [self.adapter, sha256_path(Path(self.adapter)) if self.adapter else None]

    def _start_server(self, gguf: Path | None, parallel: int, slot_ctx: int, threads: int, log_path: Path | None):
        """The GGUF base plus the adapter as a GGUF LoRA, on a loopback llama.cpp server."""

        if gguf is None:
            raise ValueError("the llamacpp generation backend needs the base model's GGUF file")
        lora = adapter_to_gguf(Path(self.adapter), self.model_id) if self.adapter else None
        log = log_path or Path(tempfile.gettempdir()) / f"speed-generator-{Path(gguf).parent.name}.log"
        self.parallel = parallel
        self.fingerprint = [JOURNAL_VERSION, "llamacpp", Path(gguf).name, Path(gguf).stat().st_size,
                            *self._adapter_id(), importlib.metadata.version("xllamacpp"), "no-prompt-cache"]
        self.server = LlamaServer(Path(gguf), log, n_ctx=slot_ctx, n_parallel=parallel, threads=threads,
                                  loras=(lora,) if lora else ()).start()

    def close(self) -> None:
        """Stop the llama.cpp server or the vLLM worker; a transformers model is freed with the generator."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chat_text(self, prompt: str) -> str:
        return user_turn(self.tok, prompt)

    def requests(self, reqs: Sequence[GenRequest]) -> list[dict]:
        """What every engine is asked, per request: the rendered prompt, n, sampling settings, seed."""
        return [{"prompt": self.chat_text(r.prompt), "n": r.n, "temperature": r.temperature, "top_p": r.top_p,
                 "max_tokens": r.max_new_tokens, "seed": r.seed, **({"json_schema": r.json_schema} if r.json_schema else {})}
                for r in reqs]

    def generate(self, reqs: Sequence[GenRequest], desc: str | None = "generate",
                 journal: Path | None = None) -> list[list[str]]:
        """``n`` completions per request, in request order.

        ``desc`` names the progress bar; ``None`` shows none (a caller with its own bar over many calls).

        ``journal`` (every engine; vLLM answers up to :data:`VLLM_CALL_ROWS` rows a call): a JSONL
        file where each finished batch of rows is appended, keyed by its requests and
        :attr:`fingerprint`. A rerun after a kill takes finished batches from it and generates only
        the rest; a row's seed does not depend on what was done before, so the texts are the same.
        """
        done = _journal(journal)
        out: list[list[tuple[int, str]]] = [[] for _ in reqs]
        # one row per (request, sample); only rows with the same sampling settings share a batch
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault((r.temperature, r.top_p, r.max_new_tokens), []).extend((i, k) for k in range(r.n))
        chunks = [rows[s:s + self.batch_size] for rows in groups.values() for s in range(0, len(rows), self.batch_size)]
        keys = [self._batch_key([reqs[i] for i, _ in c], [k for _, k in c]) for c in chunks]
        finished = {j for j, c in enumerate(chunks) if len(done.get(keys[j]) or []) == len(c)}
        for j in finished:
            for (i, k), text in zip(chunks[j], done[keys[j]]):
                out[i].append((k, text))
        bar = tqdm(total=sum(map(len, chunks)), initial=sum(len(chunks[j]) for j in finished),
                   desc=desc, unit="seq", mininterval=2.0, file=sys.stderr, disable=desc is None)
        t0 = time.monotonic()
        todo = [j for j in range(len(chunks)) if j not in finished]
        for j, texts in self._run(reqs, chunks, todo):
            if journal:
                append_jsonl(journal, [{"key": keys[j], "texts": texts}])
            for (i, k), text in zip(chunks[j], texts):
                out[i].append((k, text))
            bar.update(len(texts))
            bar.set_postfix(tok_s=f"{self.tokens_out / max(time.monotonic() - t0, 1e-6):.1f}", refresh=False)
        bar.close()
        return [[t for _, t in sorted(samples)] for samples in out]

    def _run(self, reqs: Sequence[GenRequest], chunks: list[list[tuple[int, int]]],
             todo: list[int]) -> Iterator[tuple[int, list[str]]]:
        """(chunk id, texts) for each chunk in ``todo``, in order, as it finishes."""
        if self.backend == "llamacpp":
            yield from self._run_llamacpp(reqs, chunks, todo)
            return
        if self.backend == "vllm":  # pragma: no cover - needs a GPU
            yield from self._run_vllm(reqs, chunks, todo)
            return
        for j in todo:
            yield j, self._batch([reqs[i] for i, _ in chunks[j]], [k for _, k in chunks[j]])

    def _run_llamacpp(self, reqs: Sequence[GenRequest], chunks: list[list[tuple[int, int]]],
                      todo: list[int]) -> Iterator[tuple[int, list[str]]]:
        """Every row as its own request to the server's slots, queued all at once so no slot idles
        between chunks (continuous batching); chunks are yielded in order as their rows finish."""
        pool = ThreadPoolExecutor(max_workers=self.parallel)
        try:
            futures = [[pool.submit(self._complete, reqs[i], k) for i, k in chunks[j]] for j in todo]
            for j, fs in zip(todo, futures):
                yield j, [f.result() for f in fs]
        finally:  # on an error or a kill, queued rows are dropped and close() stops the server
            pool.shutdown(wait=False, cancel_futures=True)

    def _complete(self, r: GenRequest, sample_id: int) -> str:
        """One sample from llama.cpp: the request's sampler exactly (no top-k, min-p or penalties added)."""
        sampling = r.temperature > 0
        body = {"prompt": self.chat_text(r.prompt), "n_predict": r.max_new_tokens, "seed": row_seed(r.seed, sample_id),
                "temperature": r.temperature if sampling else 0.0, "top_p": r.top_p if sampling else 1.0,
                "top_k": 0 if sampling else 1, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
                # no reuse of an earlier request's prompt cache: a row's text must not depend on what ran
                # before it (a resumed stage starts with an empty cache)
                "cache_prompt": False, "lora": [{"id": 0, "scale": 1.0}] if self.adapter else []}
        if r.json_schema:
            body["json_schema"] = json.loads(r.json_schema)
        res = self.server.complete(body)
        with self._count:
            self.tokens_out += int(res.get("tokens_predicted", 0))
        return res["content"]

    def _batch_key(self, reqs: list[GenRequest], sample_ids: list[int]) -> str:
        blob = json.dumps([self.fingerprint, self.requests(reqs), sample_ids], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _batch(self, reqs: list[GenRequest], sample_ids: list[int]) -> list[str]:
        import torch

        first = reqs[0]
        if any(r.json_schema for r in reqs):
            raise ValueError("constrained decoding (generation.structured_output) runs on llama.cpp or vLLM; "
                             "the transformers backend cannot constrain its sampling")
        enc = self.tok([self.chat_text(r.prompt) for r in reqs], return_tensors="pt", padding=True,
                       add_special_tokens=False).to(self.model.device)
        # a seed per batch from its first row: the same requests in the same order give the same texts
        torch.manual_seed(row_seed(first.seed, sample_ids[0]))
        sampling = first.temperature > 0
        with torch.no_grad():
            ids = self.model.generate(**enc, max_new_tokens=first.max_new_tokens, do_sample=sampling,
                                      temperature=first.temperature if sampling else None,
                                      top_p=first.top_p if sampling else None, top_k=0 if sampling else None,
                                      pad_token_id=self.tok.pad_token_id)
        new = ids[:, enc["input_ids"].shape[1]:]
        self.tokens_out += int((new != self.tok.pad_token_id).sum())
        return self.tok.batch_decode(new, skip_special_tokens=True)

    def _run_vllm(self, reqs: Sequence[GenRequest], chunks: list[list[tuple[int, int]]],
                  todo: list[int]) -> Iterator[tuple[int, list[str]]]:  # pragma: no cover - needs a GPU
        """Up to :data:`VLLM_CALL_ROWS` rows per engine call (vLLM batches them continuously); each row is
        one sample with its own seed, as on llama.cpp; the calls' chunks are yielded (and journalled) in order."""

        calls, rows = [[]], 0
        for j in todo:
            if rows + len(chunks[j]) > VLLM_CALL_ROWS and calls[-1]:
                calls.append([])
                rows = 0
            calls[-1].append(j)
            rows += len(chunks[j])
        for call in filter(None, calls):
            asked = [{**self.requests([reqs[i]])[0], "n": 1, "seed": row_seed(reqs[i].seed, k)}
                     for j in call for i, k in chunks[j]]
            texts, tokens = self.worker.generate(*vllm_inputs(self.tok, asked), lora_request(self.adapter))
            self.tokens_out += tokens
            flat = iter(t[0] for t in texts)
            for j in call:
                yield j, [next(flat) for _ in chunks[j]]
