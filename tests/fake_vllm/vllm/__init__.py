"""A recording stand-in for vLLM (tests/test_vllm_worker.py): the real worker process imports it in
place of vLLM, so everything up to the engine is the package's own code. ``LLM`` writes what it was
built with and every ``generate`` call to ``$FAKE_VLLM_RECORD`` (JSON lines) and answers each prompt
with a text naming its first token ids and seed, so the test can follow a row from request to journal."""
import json
import os

from .sampling_params import SamplingParams  # noqa: F401

__version__ = "0.0-fake"


def _record(kind: str, **data) -> None:
    with open(os.environ["FAKE_VLLM_RECORD"], "a") as f:
        f.write(json.dumps({"kind": kind, **data}, default=str) + "\n")


class _Out:
    def __init__(self, text: str, n_tokens: int):
        self.text, self.token_ids = text, list(range(n_tokens))


class _Result:
    def __init__(self, outputs):
        self.outputs = outputs


class LLM:
    def __init__(self, **kwargs):
        _record("engine", **kwargs)

    def generate(self, prompts, sampling_params, lora_request=None):
        _record("generate", prompts=prompts, params=[p.kwargs for p in sampling_params],
                lora=None if lora_request is None else [lora_request.name, lora_request.id, lora_request.path])
        return [_Result([_Out(f"ids={p['prompt_token_ids'][:3]} seed={s.kwargs['seed']}", 4)])
                for p, s in zip(prompts, sampling_params)]
