"""The teacher: an OpenAI-compatible endpoint with a cache, a ledger, retries and a budget.

SPEED calls GPT-4o for brainstorming, seed data, DPO judgements and revisions (§3.2; 45K calls in
all, §4.5). Here the teacher is always reached with the ``openai`` client at a configurable
``base_url``: OpenAI, Azure, vLLM, or a llama.cpp server that
:class:`speed_utils.llama_server.LlamaServer` starts on loopback for offline profiles
(:mod:`speed_utils.teacher_endpoint` opens the one a profile names).

* **Cache**: replies are stored by request hash (model, messages, sampling settings, response
  format) in ``teacher_cache/responses.jsonl``, append-only; a rerun makes zero calls.
* **Ledger**: ``ledger.jsonl`` gets one row per request: stage, model, tokens, latency, cache hit.
* **Retries**: 429 (honouring ``Retry-After``), 5xx, timeouts and refused connections are
  retried with exponential back-off, a bounded number of times; then the run stops with
  :class:`TeacherUnavailable`, keeping every reply already cached.
* **Budget**: ``max_calls`` / ``max_tokens`` per run; :class:`BudgetExceeded` stops cleanly.
* **Secrets**: the API key comes from the environment variable named in the profile. It is
  never written to the cache, the ledger, logs or notebooks.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from .config import TeacherCfg
from .cost import Kind, Usage
from .cost import total as ledger_total
from .files import append_jsonl, salvage_jsonl
from .runs import RunPaths


class TeacherError(RuntimeError):
    """The teacher cannot be used; the message says why and what to do."""


class TeacherUnavailable(TeacherError):
    """The endpoint did not answer after bounded retries."""


class BudgetExceeded(TeacherError):
    """The profile's call or token budget is spent; work done so far is cached."""


@dataclass(frozen=True)
class Request:
    """One chat completion. ``tag`` (the prompt id) and ``kind`` are bookkeeping, not part of the cache key."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 800
    seed: int | None = None
    response_format: str | None = None  # JSON text of an OpenAI response_format, if any
    top_logprobs: int | None = None  # ask for each generated token's most likely alternatives (the calibrated judge)
    tag: str = ""
    kind: Kind | None = None  # what the call is for, as the ledger counts it (not part of the cache key)

    @classmethod
    def chat(cls, user: str, system: str | None = None, **kw) -> "Request":
        msgs = ((("system", system),) if system else ()) + (("user", user),)
        return cls(messages=msgs, **kw)

    def body(self, model: str, cap: str = "max_tokens") -> dict:
        """The request's JSON; ``cap``: the field that caps the completion (TeacherCfg.cap_name)."""
        body = {"model": model, "messages": [{"role": r, "content": c} for r, c in self.messages],
                "temperature": self.temperature, "top_p": self.top_p, cap: self.max_tokens}
        if self.seed is not None:
            body["seed"] = self.seed
        if self.response_format:
            body["response_format"] = json.loads(self.response_format)
        if self.top_logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        return body

    def key(self, model: str, cap: str = "max_tokens") -> str:
        return hashlib.sha256(json.dumps(self.body(model, cap), sort_keys=True).encode()).hexdigest()


@dataclass
class Reply:
    key: str
    content: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    latency_s: float = 0.0
    attempts: int = 0
    error: str | None = None  # set when this request gave no usable completion (a reject)
    tag: str = ""
    kind: Kind | None = None
    # where asked for: per generated token, {"token", "top": [[alternative, logprob], ...]}
    logprobs: list[dict] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.content is not None


class ResponseCache:
    """Append-only reply cache keyed by request hash; loaded once, appended per reply."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / "responses.jsonl"
        self._rows = {r["key"]: r for r in salvage_jsonl(self.path, ("key", "content"))}

    def get(self, key: str) -> dict | None:
        return self._rows.get(key)

    def put(self, row: dict) -> None:
        append_jsonl(self.path, [row])
        self._rows[row["key"]] = row

    def __len__(self) -> int:
        return len(self._rows)


ClientFactory = Callable[[], object]  # returns an ``openai.OpenAI``; called on the first real call


class Teacher:
    """Cached, budgeted, retrying access to one OpenAI-compatible teacher for one stage."""

    def __init__(self, settings: TeacherCfg, run: RunPaths, stage: str, connect: ClientFactory,
                 describe: str = "teacher"):
        self.s = settings
        self.run = run
        self.stage = stage
        self.describe = describe
        self._connect = connect
        self._client = None
        self._lock = threading.Lock()
        self.cache = ResponseCache(run.teacher_cache)
        self.usage = ledger_total(run.ledger)  # budget counts the whole run, across reruns
        self.session = Usage()  # this object's own calls
        self.cache_hits = 0
        self._stop: TeacherError | None = None
        self._connect_error: TeacherError | None = None

    # -- one request --------------------------------------------------------------------
    def complete(self, req: Request) -> Reply:
        """Return a cached or fresh reply; raise only when the whole run must stop."""
        key = req.key(self.s.model, self.s.cap_name)
        hit = self.cache.get(key)
        if hit is not None:
            reply = Reply(key=key, content=hit["content"], finish_reason=hit.get("finish_reason"),
                          prompt_tokens=hit.get("prompt_tokens", 0),
                          completion_tokens=hit.get("completion_tokens", 0), cached=True, tag=req.tag, kind=req.kind,
                          logprobs=hit.get("logprobs"))
            with self._lock:
                self.cache_hits += 1
            self._log(reply)
            return reply
        self._reserve()
        reply = self._call(req, key)
        with self._lock:
            for u in (self.usage, self.session):
                u.prompt_tokens += reply.prompt_tokens
                u.completion_tokens += reply.completion_tokens
        if reply.ok:
            self.cache.put({"key": key, "model": self.s.model, "content": reply.content,
                            "finish_reason": reply.finish_reason, "prompt_tokens": reply.prompt_tokens,
                            "completion_tokens": reply.completion_tokens, "stage": self.stage,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            **({"logprobs": reply.logprobs} if reply.logprobs is not None else {})})
        self._log(reply)
        return reply

    def _reserve(self) -> None:
        """Budget guard: count the call before sending it, or refuse it."""
        with self._lock:
            if self._stop:
                raise self._stop
            s, u = self.s, self.usage
            limit = None
            if s.max_calls is not None and u.calls >= s.max_calls:
                limit = f"teacher.max_calls={s.max_calls} (used {u.calls})"
            elif s.max_tokens is not None and u.tokens >= s.max_tokens:
                limit = f"teacher.max_tokens={s.max_tokens} (used {u.tokens})"
            if limit:
                self._stop = BudgetExceeded(
                    f"teacher budget reached: {limit}. Everything done so far is cached in "
                    f"{self.run.teacher_cache}; raise the limit in the profile and rerun to continue.")
                raise self._stop
            u.calls += 1
            self.session.calls += 1

    def _client_once(self):
        with self._lock:
            if self._connect_error:
                raise self._connect_error
            if self._client is None:
                try:
                    self._client = self._connect()
                except Exception as e:  # e.g. the server cannot load: fail once, not per request
                    self._connect_error = e if isinstance(e, TeacherError) else TeacherError(
                        f"{self.describe}: could not connect: {type(e).__name__}: {e}")
                    raise self._connect_error from None
            return self._client

    def _call(self, req: Request, key: str) -> Reply:
        import openai
        from openai.types.chat import ChatCompletion

        client = self._client_once()
        last = ""
        for attempt in range(1, self.s.max_retries + 2):
            t0, malformed = time.monotonic(), False
            wait = self.s.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
            try:
                resp = client.chat.completions.create(**req.body(self.s.model, self.s.cap_name))
                if isinstance(resp, ChatCompletion):
                    return _reply(resp, key=key, attempts=attempt, latency_s=time.monotonic() - t0, tag=req.tag, kind=req.kind)
                last, malformed = "malformed response body (not JSON)", True  # openai 3.x returns a str
            except openai.RateLimitError as e:
                last = f"429 rate limited: {e.message}"
                wait = _retry_after(e) or wait
            except openai.InternalServerError as e:
                last = f"{e.status_code} server error: {e.message}"
            except openai.APITimeoutError:
                last = f"timed out after {self.s.timeout_s:.0f}s"
            except openai.APIConnectionError as e:
                last = f"connection failed: {e.__cause__ or e}"
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise TeacherError(f"{self.describe}: access refused ({e.status_code}: {e.message}); check the "
                                   "API key's environment variable (teacher.api_key_env)") from None
            except openai.NotFoundError as e:  # a wrong base_url or model name fails every request
                raise TeacherError(f"{self.describe}: 404 not found ({e.message}); check teacher.base_url "
                                   "and teacher.model") from None
            except openai.APIStatusError as e:
                if e.status_code in (408, 409):  # request timeout / conflict: transient
                    last = f"{e.status_code}: {e.message}"
                else:  # 400, 413, 422...: this request is bad, not the endpoint: a counted reject
                    return Reply(key=key, content=None, error=f"http {e.status_code}: {e.message}"[:300],
                                 attempts=attempt, latency_s=time.monotonic() - t0, tag=req.tag, kind=req.kind)
            except (ValueError, openai.APIResponseValidationError) as e:  # a 200 whose JSON is broken
                last, malformed = f"malformed response body ({type(e).__name__})", True
            if attempt <= self.s.max_retries:
                time.sleep(min(wait, 60.0))
        if malformed:  # the endpoint answers, but not with a completion: reject this request only
            return Reply(key=key, content=None, error=last, attempts=self.s.max_retries + 1, tag=req.tag, kind=req.kind)
        self._log(Reply(key=key, content=None, error=f"unavailable: {last}", attempts=self.s.max_retries + 1,
                        tag=req.tag, kind=req.kind))
        err = TeacherUnavailable(
            f"{self.describe} did not answer after {self.s.max_retries + 1} attempts (last: {last}). "
            f"Replies so far are cached in {self.run.teacher_cache}; rerun when the endpoint is back.")
        with self._lock:
            self._stop = self._stop or err
        raise err

    def _log(self, r: Reply) -> None:
        append_jsonl(self.run.ledger, [{
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": self.stage, "model": self.s.model,
            "key": r.key[:16], "tag": r.tag, **({"kind": r.kind} if r.kind else {}), "cache_hit": r.cached,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "latency_s": round(r.latency_s, 3), "attempts": r.attempts, "finish_reason": r.finish_reason,
            "status": "ok" if r.ok else "error", "error": r.error}])

    # -- many requests ------------------------------------------------------------------
    def map(self, reqs: Sequence[Request], desc: str = "teacher") -> list[Reply]:
        """Run requests with bounded concurrency; results in input order.

        The first :class:`TeacherError` (endpoint unavailable, budget spent, access refused,
        no connection) stops the batch: requests not yet sent are dropped, in-flight ones finish,
        then it is raised. Everything answered until then is cached, so a rerun resumes for free.
        """
        out: list[Reply | None] = [None] * len(reqs)
        t0, tokens0 = time.monotonic(), self.session.completion_tokens
        bar = tqdm(total=len(reqs), desc=desc, unit="req", mininterval=2.0, file=sys.stderr,
                   dynamic_ncols=True)
        with ThreadPoolExecutor(max_workers=self.s.max_concurrency) as pool:
            futures = {pool.submit(self._guarded, r): i for i, r in enumerate(reqs)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    out[i] = fut.result()
                except Exception:  # recorded in self._stop by _guarded; queued requests now bail out
                    continue
                bar.update(1)
                rate = (self.session.completion_tokens - tokens0) / max(time.monotonic() - t0, 1e-6)
                bar.set_postfix(calls=self.session.calls, cached=self.cache_hits, tok_s=f"{rate:.1f}",
                                refresh=False)
        bar.close()
        if self._stop:
            raise self._stop
        return out  # type: ignore[return-value]

    def _guarded(self, req: Request) -> Reply:
        if self._stop:
            raise self._stop
        try:
            return self.complete(req)
        except Exception as e:
            with self._lock:
                if self._stop is None and isinstance(e, TeacherError):
                    self._stop = e
                elif self._stop is None:  # e.g. a full disk while caching: stop, and say why
                    self._stop = TeacherError(f"{self.describe}: stopped by {type(e).__name__}: {e}")
                    self._stop.__cause__ = e
            raise

    def summary(self) -> dict:
        """This stage's teacher use, for its done marker (the cost notebook reads the ledger)."""
        return {"calls": self.session.calls, "cache_hits": self.cache_hits,
                "prompt_tokens": self.session.prompt_tokens, "completion_tokens": self.session.completion_tokens,
                "model": self.s.model}

    def close(self) -> None:
        self._client = None


def _reply(resp, **common) -> Reply:
    """A :class:`Reply` from a parsed ``ChatCompletion``; no choice or no content is a reject."""
    usage = resp.usage
    common.update(prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                  completion_tokens=getattr(usage, "completion_tokens", 0) or 0)
    if not resp.choices:
        return Reply(content=None, error="empty choice list", **common)
    choice = resp.choices[0]
    if choice.message is None or choice.message.content is None:
        return Reply(content=None, error="choice without content", **common)
    return Reply(content=choice.message.content, finish_reason=choice.finish_reason, logprobs=_token_logprobs(choice),
                 **common)


def _token_logprobs(choice) -> list[dict] | None:
    """The chosen tokens and their top alternatives, where the request asked for them (OpenAI's
    ``choices[0].logprobs.content``, which llama.cpp's server also returns)."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [{"token": t.token, "top": [[a.token, round(float(a.logprob), 5)] for a in (t.top_logprobs or [])]}
            for t in content]


def _retry_after(e) -> float | None:
    try:
        value = e.response.headers.get("retry-after")
        return min(float(value), 120.0) if value is not None else None
    except (AttributeError, ValueError):
        return None


__all__ = ["Request", "Reply", "Teacher", "TeacherError", "TeacherUnavailable", "BudgetExceeded"]
