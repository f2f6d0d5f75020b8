"""Local generation from a base model plus an optional LoRA adapter (SPEED §3.2–3.3).

The junior samples candidate lists for DPO, the senior writes data at scale, and the revisor
rewrites it. On the CPU this is batched ``transformers.generate`` with left padding; where vLLM
is installed and CUDA is present, vLLM serves the same requests with the adapter as a LoRA
request. Both take the same :class:`GenRequest` objects and return texts in the same order.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .runs import append_jsonl, read_jsonl, sha256_path


JOURNAL_VERSION = 1  # bump when the sampling code changes what a batch's seed produces


def _journal(path: Path | None) -> dict[str, list[str]]:
    """Finished batches from a generation journal; a damaged journal is only a cache, so it is set aside."""
    if path is None:
        return {}
    try:
        return {r["key"]: r["texts"] for r in read_jsonl(path)}
    except (ValueError, KeyError) as e:
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        path.rename(aside)
        print(f"generation journal {path} is damaged ({e}); moved to {aside}, regenerating", file=sys.stderr)
        return {}


@dataclass(frozen=True)
class GenRequest:
    """One prompt, sampled ``n`` times. The prompt is one user turn of the model's chat template."""

    prompt: str
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 800
    seed: int = 0


def backend_name() -> str:
    """"vllm" where vLLM and CUDA are both available, else "transformers"."""
    if importlib.util.find_spec("vllm"):
        import torch

        if torch.cuda.is_available():
            return "vllm"
    return "transformers"


@functools.lru_cache(maxsize=2)
def _vllm_engine(model_id: str, tensor_parallel: int):  # pragma: no cover - needs a GPU
    """One vLLM engine per base model, shared by the generators that put different adapters on it."""
    from vllm import LLM

    return LLM(model=model_id, enable_lora=True, max_lora_rank=64, max_loras=2, tensor_parallel_size=tensor_parallel)


class Generator:
    """A causal LM (plus adapter) that turns prompts into sampled completions, in batches.

    ``backend``: "transformers" (batched ``generate``, left padding; any device) or "vllm" (the
    adapter served as a LoRA request, ``tensor_parallel`` GPUs per engine); None picks vLLM where it
    and CUDA are present. Both render prompts with the same chat template, give every request the
    same seed and sampling settings (:meth:`requests`), and return texts in request order. The two
    engines draw different random streams, so sampled texts differ between them, not their format.
    """

    def __init__(self, model_id: str, adapter: str | None = None, batch_size: int = 8, backend: str | None = None,
                 tensor_parallel: int = 1):
        from transformers import AutoTokenizer

        self.model_id, self.adapter, self.batch_size = model_id, adapter, batch_size
        self.backend = backend if backend not in (None, "auto") else backend_name()
        self.tokens_out = 0
        self.tok = AutoTokenizer.from_pretrained(model_id, padding_side="left")
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        if self.backend == "vllm":  # pragma: no cover - needs a GPU
            self.llm = _vllm_engine(model_id, tensor_parallel)
            return
        import torch
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()  # faster sampling, same outputs
        self.model = model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> list:
        """What shapes a batch's texts besides its requests: weights, adapter, dtype, device, libraries."""
        import torch
        import transformers

        if self.adapter and not Path(self.adapter).is_dir():
            raise FileNotFoundError(f"adapter folder {self.adapter} does not exist")
        return [JOURNAL_VERSION, self.model_id, getattr(self.model.config, "_commit_hash", None), self.adapter,
                sha256_path(Path(self.adapter)) if self.adapter else None, str(self.model.dtype),
                self.model.device.type, torch.__version__, transformers.__version__]

    def chat_text(self, prompt: str) -> str:
        return self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)

    def requests(self, reqs: Sequence[GenRequest]) -> list[dict]:
        """What either engine is asked, per request: the rendered prompt, n, sampling settings, seed."""
        return [{"prompt": self.chat_text(r.prompt), "n": r.n, "temperature": r.temperature, "top_p": r.top_p,
                 "max_tokens": r.max_new_tokens, "seed": r.seed} for r in reqs]

    def generate(self, reqs: Sequence[GenRequest], desc: str = "generate",
                 journal: Path | None = None) -> list[list[str]]:
        """``n`` completions per request, in request order.

        ``journal`` (transformers backend; vLLM runs a stage's requests as one call): a JSONL file where
        each finished batch is appended, keyed by its requests and :attr:`fingerprint`. A rerun after a
        kill takes finished batches from it and generates only the rest; batches and their seeds do not
        depend on what was done before, so the texts are the same.
        """
        if self.backend == "vllm":  # pragma: no cover - needs a GPU
            return self._generate_vllm(reqs)
        done = _journal(journal)
        out: list[list[str]] = [[] for _ in reqs]
        # one row per (request, sample); only rows with the same sampling settings share a batch
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault((r.temperature, r.top_p, r.max_new_tokens), []).extend((i, k) for k in range(r.n))
        chunks = [rows[s:s + self.batch_size] for rows in groups.values() for s in range(0, len(rows), self.batch_size)]
        bar = tqdm(total=sum(map(len, chunks)), desc=desc, unit="seq", mininterval=2.0, file=sys.stderr)
        t0 = time.monotonic()
        for chunk in chunks:
            batch, sample_ids = [reqs[i] for i, _ in chunk], [k for _, k in chunk]
            key = self._batch_key(batch, sample_ids)
            texts = done.get(key)
            if texts is None or len(texts) != len(chunk):
                texts = self._batch(batch, sample_ids)
                if journal:
                    append_jsonl(journal, [{"key": key, "texts": texts}])
            for (i, k), text in zip(chunk, texts):
                out[i].append((k, text))
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{self.tokens_out / max(time.monotonic() - t0, 1e-6):.1f}", refresh=False)
        bar.close()
        return [[t for _, t in sorted(samples)] for samples in out]

    def _batch_key(self, reqs: list[GenRequest], sample_ids: list[int]) -> str:
        blob = json.dumps([self.fingerprint, self.requests(reqs), sample_ids], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _batch(self, reqs: list[GenRequest], sample_ids: list[int]) -> list[str]:
        import torch

        first = reqs[0]
        enc = self.tok([self.chat_text(r.prompt) for r in reqs], return_tensors="pt", padding=True,
                       add_special_tokens=False).to(self.model.device)
        # a seed per batch from its first row: the same requests in the same order give the same texts
        torch.manual_seed(first.seed * 1000003 + sample_ids[0])
        sampling = first.temperature > 0
        with torch.no_grad():
            ids = self.model.generate(**enc, max_new_tokens=first.max_new_tokens, do_sample=sampling,
                                      temperature=first.temperature if sampling else None,
                                      top_p=first.top_p if sampling else None, top_k=0 if sampling else None,
                                      pad_token_id=self.tok.pad_token_id)
        new = ids[:, enc["input_ids"].shape[1]:]
        self.tokens_out += int((new != self.tok.pad_token_id).sum())
        return self.tok.batch_decode(new, skip_special_tokens=True)

    def _generate_vllm(self, reqs: Sequence[GenRequest]) -> list[list[str]]:  # pragma: no cover - needs a GPU
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(self.adapter, zlib.crc32(self.adapter.encode()) % 10**6 + 1, self.adapter) if self.adapter else None
        asked = self.requests(reqs)
        params = [SamplingParams(**{k: v for k, v in a.items() if k != "prompt"}) for a in asked]
        results = self.llm.generate([a["prompt"] for a in asked], params, lora_request=lora)
        self.tokens_out += sum(len(o.token_ids) for res in results for o in res.outputs)
        return [[o.text for o in res.outputs] for res in results]
