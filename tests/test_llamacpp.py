"""The openai path against a real llama.cpp server on loopback (SmolLM2-135M from PyPI wheels)."""
import time

import psutil
import pytest

from speed_utils import assets
from speed_utils.schema import json_schema, parse_json, response_format
from speed_utils.teacher import Request
from speed_utils.llama_server import LlamaServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf():
    return assets.gguf_path("smollm2-135m-instruct", online=False)


def test_real_server_chat_completions_with_usage(gguf, run_paths, make_teacher):
    with LlamaServer(gguf, run_paths.logs / "server.log", n_ctx=1024, n_parallel=2) as srv:
        pid = srv.proc.pid
        t = make_teacher(srv.base_url, key="local-no-key", timeout_s=120)
        replies = t.map([Request.chat(f"Name one colour. ({i})", max_tokens=12, seed=i) for i in range(4)])
        assert all(r.ok and r.content and r.prompt_tokens > 0 and 0 < r.completion_tokens <= 12 for r in replies)
        assert t.summary()["calls"] == 4
        # JSON-schema constrained decoding (structured_output) yields schema-valid STS triples
        fmt = response_format("sts", json_schema("sts"))
        r = t.complete(Request.chat("Write a sentence triple about cats as JSON with keys S1, S2, S3.",
                                    max_tokens=200, seed=1, response_format=fmt))
        obj = parse_json(r.content).value
        assert r.ok and r.finish_reason == "stop" and sorted(obj) == ["S1", "S2", "S3"], r.content
        assert all(isinstance(v, str) for v in obj.values())
    time.sleep(0.2)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "listening" in (run_paths.logs / "server.log").read_text()


def test_server_that_cannot_load_says_so(tmp_path, run_paths):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(Exception, match="llama.cpp server exited"):
        LlamaServer(bad, run_paths.logs / "bad.log", startup_timeout_s=60).start()


def test_open_teacher_server_survives_between_batches(smoke_cfg, run_paths):
    """The lazily started server (started from a worker thread) serves a second map() too."""
    from speed_utils.teacher_endpoint import open_teacher

    with open_teacher(smoke_cfg, run_paths, "test") as t:
        first = t.map([Request.chat(f"Say a number. ({i})", max_tokens=8, seed=i) for i in range(2)])
        time.sleep(1.0)
        second = t.map([Request.chat(f"Say a word. ({i})", max_tokens=8, seed=i) for i in range(2)])
        assert all(r.ok and not r.cached for r in first + second)
    assert (run_paths.logs / "llama-server.log").exists()


def test_real_server_gives_the_calibrated_judge_its_token_probabilities(gguf, run_paths, make_teacher):
    """issue 31: llama.cpp's chat endpoint returns top_logprobs, and the judge finds the "best" index in them."""
    from speed_utils import judge
    from speed_utils.prompts import judge_prompt

    with LlamaServer(gguf, run_paths.logs / "server.log", n_ctx=2048, n_parallel=1) as srv:
        t = make_teacher(srv.base_url, key="local-no-key", timeout_s=120)
        fmt = response_format("judgement", judge.calibrated_schema(3))
        text = judge_prompt("Write one sentence about the sea.",
                            ["The sea is wide and blue.", "sea sea sea", "Cats sleep on warm windows."])
        r = t.complete(Request.chat(text, temperature=0.0, max_tokens=80, seed=1, response_format=fmt,
                                    top_logprobs=judge.TOP_LOGPROBS))
        assert r.ok and r.logprobs and all("top" in tok for tok in r.logprobs), r
        dist = judge.best_distribution(r, 3)
        assert dist is not None and len(dist) == 3 and sum(dist) == pytest.approx(1.0)
        assert max(range(3), key=lambda i: dist[i]) == parse_json(r.content).value["best"]  # greedy: the likeliest
        cached = t.complete(Request.chat(text, temperature=0.0, max_tokens=80, seed=1, response_format=fmt,
                                         top_logprobs=judge.TOP_LOGPROBS))
        assert cached.cached and cached.logprobs == r.logprobs  # the cache keeps them: a rerun asks nothing
