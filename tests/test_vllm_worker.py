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

    gen.tok = load_tokenizer(tiny_lm)
    asked = gen.requests([GenRequest("one", n=1, seed=7, max_new_tokens=9), GenRequest("two", n=1, seed=8)])
    prompts, params = vllm_inputs(gen.tok, asked)
    for a, p in zip(asked, prompts):
        assert p["prompt_token_ids"] == gen.tok(a["prompt"], add_special_tokens=False)["input_ids"]
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
