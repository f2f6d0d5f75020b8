"""The vLLM worker process (speed_utils.vllm_worker): requests built as the other engines build them, the
engine in its own process, and that process gone after close(). The engine itself needs a GPU; here a
stand-in (tests/fakes.py) answers in the worker, so the process, the pipe and the request are real."""
import os
from pathlib import Path

import pytest

from speed_utils.generate import GenRequest, Generator
from speed_utils.vllm_worker import VllmWorker, lora_request, vllm_inputs


def test_requests_are_token_ids_without_a_second_bos_and_carry_each_seed(tiny_lm):
    gen = Generator.__new__(Generator)  # only the tokenizer and the request builder, no engine
    from speed_utils.chat import load_tokenizer

    from tokenizers import processors

    gen.tok = load_tokenizer(tiny_lm)
    bos = gen.tok.bos_token  # make this tokenizer add a BOS to whatever it encodes, as LLaMA-3's does
    gen.tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, gen.tok.bos_token_id)])
    asked = gen.requests([GenRequest("one", n=1, seed=7, max_new_tokens=9), GenRequest("two", n=1, seed=8)])
    prompts, params = vllm_inputs(gen.tok, asked)
    for a, p in zip(asked, prompts):
        assert gen.tok(a["prompt"])["input_ids"][0] == gen.tok.bos_token_id  # the tokenizer would add one ...
        assert p["prompt_token_ids"] == gen.tok(a["prompt"], add_special_tokens=False)["input_ids"]  # ... not here
        assert gen.tok.decode(p["prompt_token_ids"]) == a["prompt"]  # the rendered template, nothing added
    assert [q["seed"] for q in params] == [7, 8] and params[0]["max_tokens"] == 9 and params[0]["n"] == 1
    assert lora_request("/a/b") == lora_request("/a/b") != lora_request("/a/c") and lora_request(None) is None


FAKE = {"make_engine": "fakes:echo_engine", "generate": "fakes:echo_generate"}


@pytest.fixture(autouse=True)
def fakes_importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the worker imports the stand-in by name


def test_the_engine_runs_in_its_own_process_and_is_gone_after_close(tmp_path):
    worker = VllmWorker("tiny", log_path=tmp_path / "worker.log", **FAKE)
    try:
        texts, tokens = worker.generate([{"prompt_token_ids": [1, 2, 3]}], [{"seed": 5}], lora_request("/ad"))
        model, n_ids, seed, lora_id, pid = texts[0][0].split("|")
        assert (model, n_ids, seed, tokens) == ("tiny", "3", "5", 1) and int(lora_id) == lora_request("/ad")[1]
        assert int(pid) == worker.proc.pid != os.getpid()
        with pytest.raises(RuntimeError, match="generation failed in its worker: KeyError"):
            worker.generate([{"no token ids": 1}], [{}], None)  # a bad request: the worker reports, and stays up
        assert worker.generate([{"prompt_token_ids": [1]}], [{"seed": 1}], None)[1] == 1
    finally:
        worker.close()
    assert worker.proc.poll() == 0  # the process ended: its GPU memory would be returned


def test_an_engine_that_cannot_start_raises_with_its_reason(tmp_path):
    with pytest.raises(RuntimeError, match="no-such-model is not a local folder"):
        VllmWorker("no-such-model", log_path=tmp_path / "worker.log", **FAKE)
    with pytest.raises(RuntimeError, match="exited .code 1. before it connected"):  # an environment without us
        VllmWorker("tiny", python="/bin/false", log_path=tmp_path / "worker.log", **FAKE)


def test_the_generator_asks_vllm_what_the_design_says_and_journals_its_answers(tiny_lm, tmp_path, monkeypatch):
    """The whole vLLM path but the engine: Generator -> requests -> token ids -> worker process -> vLLM's
    LLM / SamplingParams / LoRARequest (a recording stand-in, tests/fake_vllm) -> texts -> journal."""
    import json
    import sys

    from conftest import random_adapter

    from speed_utils.generate import row_seed

    record = tmp_path / "vllm.jsonl"
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent / "fake_vllm"))
    monkeypatch.setenv("SPEED_REPRO_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    adapter = random_adapter(tiny_lm, tmp_path / "senior")
    reqs = [GenRequest("Write one example.", n=2, temperature=0.7, top_p=0.9, max_new_tokens=11, seed=5),
            GenRequest("Write another.", seed=6)]
    journal = tmp_path / "journal.jsonl"
    with Generator(tiny_lm, adapter, backend="vllm", batch_size=2, max_lora_rank=16, log_path=tmp_path / "w.log") as gen:
        texts = gen.generate(reqs, journal=journal)
        rendered = [gen.chat_text(r.prompt) for r in reqs]
        transformers_ids = [gen.tok([t], add_special_tokens=False)["input_ids"][0] for t in rendered]  # as _batch feeds them
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    engine, call = rows[0], rows[1]
    assert (engine["kind"], engine["model"], engine["enable_lora"], engine["max_lora_rank"]) == ("engine", tiny_lm, True, 16)
    assert engine["max_model_len"] == 4096 and engine["gpu_memory_utilization"] == 0.85 and engine["dtype"] == "bfloat16"
    # one row per sample, each with its own seed, the request's sampler, the adapter as the LoRA request
    want_ids = [transformers_ids[0], transformers_ids[0], transformers_ids[1]]
    assert [p["prompt_token_ids"] for p in call["prompts"]] == want_ids  # the transformers path's tokens exactly
    for ids, text in zip(want_ids, [rendered[0], rendered[0], rendered[1]]):  # the rendered prompt, nothing added:
        assert gen.tok.decode(ids) == text and ids[:2] != [gen.tok.bos_token_id] * 2  # no second BOS
    assert [(p["seed"], p["n"], p["max_tokens"]) for p in call["params"]] == [
        (row_seed(5, 0), 1, 11), (row_seed(5, 1), 1, 11), (row_seed(6, 0), 1, 800)]
    assert call["params"][0]["temperature"] == 0.7 and call["params"][0]["top_p"] == 0.9
    assert call["lora"] == [adapter, lora_request(adapter)[1], adapter]
    assert texts == [[f"ids={want_ids[0][:3]} seed={row_seed(5, 0)}", f"ids={want_ids[0][:3]} seed={row_seed(5, 1)}"],
                     [f"ids={want_ids[2][:3]} seed={row_seed(6, 0)}"]]
    assert len(journal.read_text().splitlines()) == 2  # batches of 2 rows, journalled
    with Generator(tiny_lm, adapter, backend="vllm", batch_size=2, max_lora_rank=16, log_path=tmp_path / "w.log") as again:
        assert again.generate(reqs, journal=journal) == texts  # a rerun takes every batch from the journal
    assert sum(json.loads(line)["kind"] == "generate" for line in record.read_text().splitlines()) == 1
