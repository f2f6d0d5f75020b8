"""The teacher client against a scripted loopback server: retries, rejects, clear errors, budget, cache."""
import json
import time

import pytest

from fakes import INJECTED, FakeTeacher
from speed_utils.files import read_jsonl
from speed_utils.cost import total as ledger_usage, usage
from speed_utils.config import TeacherCfg
from speed_utils.teacher import BudgetExceeded, Request, Teacher, TeacherError, TeacherUnavailable
from speed_utils.llama_server import free_port
from speed_utils.teacher_data import seed_examples

VALID_STS = json.dumps({"S1": "a cat sleeps", "S2": "a cat is asleep", "S3": "a dog barks"})


def req(i: int) -> Request:
    return Request.chat(f"prompt {i}", max_tokens=50, seed=i, tag=f"r{i}")


def test_429_then_success_honours_retry_after(make_teacher):
    with FakeTeacher() as fake:
        fake.script = [("status", 429, {"Retry-After": "0.3"}), ("status", 429, {}), ("ok", "hello")]
        t = make_teacher(fake.base_url)
        t0 = time.monotonic()
        reply = t.complete(req(0))
        assert reply.ok and reply.content == "hello" and reply.attempts == 3
        assert time.monotonic() - t0 >= 0.3  # waited as the server asked
        assert len(fake.requests) == 3


def test_5xx_and_timeouts_are_retried(make_teacher):
    with FakeTeacher() as fake:
        fake.script = [("status", 503), ("sleep", 1.5, ("ok", "late")), ("status", 500), ("ok", "finally")]
        t = make_teacher(fake.base_url, timeout_s=0.5, max_retries=3)
        reply = t.complete(req(0))
        assert reply.content == "finally" and reply.attempts == 4


def test_dead_endpoint_gives_clear_error_after_bounded_retries(make_teacher):
    port = free_port()  # nothing listens here
    t = make_teacher(f"http://127.0.0.1:{port}/v1", max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(TeacherUnavailable) as e:
        t.map([req(i) for i in range(4)])
    assert "did not answer after 3 attempts" in str(e.value) and "connection failed" in str(e.value)
    assert time.monotonic() - t0 < 10
    rows = list(read_jsonl(t.run.ledger))
    assert 1 <= len(rows) <= 2  # only the requests in flight were tried; the queued ones never went out
    assert all(r["status"] == "error" and r["error"].startswith("unavailable: connection failed") for r in rows)
    INJECTED["connection refused (nothing listening)"] += sum(r["attempts"] for r in rows)


@pytest.mark.parametrize("code,match", [(401, "access refused"), (403, "access refused"), (404, "404 not found")])
def test_endpoint_level_errors_stop_the_run(make_teacher, code, match):
    with FakeTeacher(default=lambda b: ("status", code)) as fake:
        t = make_teacher(fake.base_url, max_concurrency=1)
        with pytest.raises(TeacherError, match=match):
            t.map([req(i) for i in range(5)])
        assert len(fake.requests) == 1  # no retries, and the rest of the batch is not sent


def test_bad_request_is_a_reject_and_408_is_retried(make_teacher):
    with FakeTeacher() as fake:
        fake.script = [("status", 400), ("status", 408), ("ok", "fine")]
        t = make_teacher(fake.base_url, max_concurrency=1)
        first, second = t.map([req(0), req(1)])
        assert not first.ok and first.error.startswith("http 400") and second.content == "fine"


def test_failed_connect_is_reported_once_not_per_request(run_paths):
    attempts = []

    def connect():
        attempts.append(1)
        raise OSError("server binary missing")
    cfg = TeacherCfg(backend="openai", base_url="http://127.0.0.1:9/v1", model="m", max_concurrency=2)
    t = Teacher(cfg, run_paths, "test", connect)
    with pytest.raises(TeacherError, match="could not connect: OSError: server binary missing"):
        t.map([req(i) for i in range(6)])
    assert len(attempts) == 1


def test_missing_api_key_names_the_variable(smoke_cfg, run_paths, monkeypatch):
    from speed_utils.teacher_endpoint import open_teacher

    monkeypatch.delenv("SPEED_TEST_KEY", raising=False)
    tc = smoke_cfg.teacher.model_copy(update={"backend": "openai", "base_url": "http://127.0.0.1:9/v1",
                                              "api_key_env": "SPEED_TEST_KEY"})
    with open_teacher(smoke_cfg.model_copy(update={"teacher": tc}), run_paths, "test") as t:
        with pytest.raises(TeacherError, match=r"\$SPEED_TEST_KEY .* not set"):
            t.map([req(i) for i in range(3)])


def test_html_then_refused_is_unavailable_not_a_reject(make_teacher):
    with FakeTeacher() as fake:
        fake.script = [("raw", "<html>"), ("status", 503), ("status", 503)]
        with pytest.raises(TeacherUnavailable):
            make_teacher(fake.base_url, max_retries=2).complete(req(0))


@pytest.mark.parametrize("ctype", ["text/html", "application/json"])
def test_non_json_body_is_retried_then_rejected(make_teacher, ctype):
    with FakeTeacher(default=lambda b: ("raw", "<html>gateway hiccup</html>", ctype)) as fake:
        t = make_teacher(fake.base_url, max_retries=2)
        reply = t.complete(req(0))
        assert not reply.ok and "malformed response body" in reply.error and len(fake.requests) == 3
        assert len(t.cache) == 0  # a broken body is not cached: a later rerun may get a real answer


def test_non_json_body_then_success(make_teacher):
    with FakeTeacher() as fake:
        fake.script = [("raw", "oops"), ("ok", "good")]
        assert make_teacher(fake.base_url).complete(req(0)).content == "good"


def test_empty_choices_is_a_reject_not_a_crash(make_teacher):
    with FakeTeacher(default=lambda b: ("json", {"id": "x", "object": "chat.completion", "created": 0,
                                                 "model": "m", "choices": []})) as fake:
        reply = make_teacher(fake.base_url).complete(req(0))
        assert not reply.ok and reply.error == "empty choice list"


def test_cache_makes_a_rerun_free(make_teacher):
    with FakeTeacher(default=lambda b: ("ok", f"answer to {b['messages'][-1]['content']}")) as fake:
        t = make_teacher(fake.base_url)
        first = t.map([req(i) for i in range(5)])
        t2 = make_teacher(fake.base_url)  # a new process would reload the cache from disk
        second = t2.map([req(i) for i in range(5)])
        assert [r.content for r in first] == [r.content for r in second]
        assert len(fake.requests) == 5 and all(r.cached for r in second)
        assert ledger_usage(t.run.ledger).calls == 5


def test_the_ledger_counts_each_call_by_the_kind_its_request_named(make_teacher):
    with FakeTeacher(default=lambda b: ("ok", "fine")) as fake:
        t = make_teacher(fake.base_url)
        t.map([Request.chat(f"p{i}", seed=i, tag=f"s{i:05d}-sts", kind=k) for i, k in enumerate(("judge", "seed", "judge"))])
        rows = list(read_jsonl(t.run.ledger))
        assert sorted(r["kind"] for r in rows) == ["judge", "judge", "seed"]  # the kind, not the tag's prefix
        assert {k: u.calls for k, u in usage(rows).items()} == {"judge": 2, "seed": 1}
        assert Request.chat("p0", seed=0, kind="judge").key("m") == Request.chat("p0", seed=0).key("m")  # not cached apart


def test_budget_guard_stops_and_keeps_work(make_teacher):
    with FakeTeacher() as fake:
        t = make_teacher(fake.base_url, max_calls=3, max_concurrency=1)
        with pytest.raises(BudgetExceeded, match=r"teacher.max_calls=3"):
            t.map([req(i) for i in range(6)])
        assert len(fake.requests) == 3 and len(t.cache) == 3
        # raising the budget resumes without repeating the three calls
        t2 = make_teacher(fake.base_url, max_calls=10)
        t2.map([req(i) for i in range(6)])
        assert len(fake.requests) == 6


def test_malformed_teacher_json_becomes_counted_reject(smoke_cfg, run_paths, make_teacher):
    """Seed stage on scripted replies: broken JSON, truncation and wrong schema are counted rejects."""
    from speed_utils.files import write_jsonl
    write_jsonl(run_paths.data / "tasks.jsonl", [
        {"id": "s0", "task_type": "sts", "task": "Retrieve semantically similar text.", "topic": "Arts/Movies"}])
    cfg = smoke_cfg.model_copy(update={"seed": smoke_cfg.seed.model_copy(update={"n_examples": 4})})
    replies = iter([("ok", VALID_STS), ("ok", "{\"S1\": \"a\", \"S2\": "), ("ok", VALID_STS, "length"),
                    ("ok", json.dumps({"sentence": "wrong keys"}))])
    with FakeTeacher(default=lambda b: next(replies)) as fake:
        t = make_teacher(fake.base_url, max_concurrency=1)
        metrics = seed_examples(cfg, run_paths, t)
    assert metrics["valid"] == 1 and metrics["rejected"] == 3
    reasons = sorted(r["reason"] for r in read_jsonl(run_paths.data / "rejects.jsonl"))
    assert reasons == ["empty:S2", "missing:S1", "truncated"]
    assert metrics["reject_reasons"] == {"empty:S2": 1, "missing:S1": 1, "truncated": 1}
    assert [r["output"] for r in read_jsonl(run_paths.data / "seed.jsonl")] == [json.loads(VALID_STS)]


def test_api_key_is_sent_but_never_stored(monkeypatch, run_paths, make_teacher):
    canary = "sk-canary-" + "7" * 24
    with FakeTeacher() as fake:
        t = make_teacher(fake.base_url, key=canary)
        t.map([req(i) for i in range(3)])
        assert fake.headers[0]["authorization"] == f"Bearer {canary}"
    for f in run_paths.root.rglob("*"):
        if f.is_file():
            assert canary not in f.read_text(errors="ignore"), f


def test_damaged_cache_rows_cost_exactly_their_calls_again(make_teacher):
    """Issue 35: a middle row of the reply cache damaged, another with its content dropped: the stage goes on,
    and the rerun asks the teacher again for those two requests and no other."""
    import json

    with FakeTeacher(default=lambda b: ("ok", f"answer to {b['messages'][-1]['content']}")) as fake:
        t = make_teacher(fake.base_url)
        first = t.map([req(i) for i in range(6)])
        cache = t.cache.path
        lines = cache.read_text().splitlines(keepends=True)
        dropped = json.loads(lines[4])
        del dropped["content"]
        lines[1] = lines[1][: len(lines[1]) // 2] + "\n"  # torn in the middle of the file
        lines[4] = json.dumps(dropped) + "\n"
        cache.write_text("".join(lines))
        t2 = make_teacher(fake.base_url)
        second = t2.map([req(i) for i in range(6)])
        assert [r.content for r in first] == [r.content for r in second]
        assert len(fake.requests) == 6 + 2 and sum(not r.cached for r in second) == 2
        assert len(cache.read_text().splitlines()) == 6  # the two rows made again, once each
        assert len(cache.with_name("responses.jsonl.damaged.jsonl").read_text().splitlines()) == 2
