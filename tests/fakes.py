"""A scripted OpenAI-compatible server on loopback, for injecting faults (never for real work).

Each request pops the next scripted step; when the script is empty, ``default`` answers.
Steps: ``("status", code, headers)``, ``("raw", body)``, ``("ok", content, finish_reason[, logprobs])``,
``("json", dict)``, ``("sleep", seconds, step)``.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(content: str, finish_reason: str = "stop", prompt_tokens: int = 11, completion_tokens: int = 7,
               logprobs: list | None = None) -> dict:
    """A chat completion; ``logprobs``: [(token, [(alternative, logprob), ...]), ...] whose tokens make ``content``."""
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = {"content": [
            {"token": tok, "logprob": next((lp for a, lp in top if a == tok), -1.0), "bytes": None,
             "top_logprobs": [{"token": a, "logprob": lp, "bytes": None} for a, lp in top]} for tok, top in logprobs]}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": "fake",
            "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


from tally import TALLIES

INJECTED = TALLIES["teacher faults injected"]  # faults served in this test session, by kind


def fault_kind(step) -> str | None:
    """What fault a scripted step injects, or None for a well-formed reply."""
    kind = step[0]
    if kind == "sleep":
        return "delayed reply (read timeout)"
    if kind == "status":
        return f"HTTP {step[1]}" + (" with Retry-After" if "Retry-After" in (step[2] if len(step) > 2 else {}) else "")
    if kind == "raw":
        return "200 with a non-JSON body"
    if kind == "json":
        return "empty choice list" if step[1].get("choices") == [] else "non-standard completion body"
    if len(step) > 2 and step[2] == "length":
        return "truncated completion (finish_reason length)"
    if step[1].lstrip().startswith(("{", "[")):
        try:
            json.loads(step[1])
        except ValueError:
            return "malformed JSON content"
    return None


class FakeTeacher:
    def __init__(self, default=None, models: list[str] | None = None):
        self.models = models  # GET /models lists these (None: 404, as a server without a model list)
        self.script: list = []
        self.default = default or (lambda body: ("ok", '{"answer": "fine"}', "stop"))
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if fake.models is None or not self.path.endswith("/models"):
                    self.send_response(404)
                    payload = json.dumps({"error": {"message": "not found", "type": "fake"}}).encode()
                else:
                    self.send_response(200)
                    payload = json.dumps({"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                                       "owned_by": "fake"} for m in fake.models]}).encode()
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                    step = fake.script.pop(0) if fake.script else fake.default(body)
                    if (fault := fault_kind(step)) is not None:
                        INJECTED[fault] += 1
                self._answer(step)

            def _answer(self, step):
                kind = step[0]
                if kind == "sleep":
                    time.sleep(step[1])
                    return self._answer(step[2])
                if kind == "status":
                    payload = json.dumps({"error": {"message": f"scripted {step[1]}", "type": "fake"}}).encode()
                    self.send_response(step[1])
                    for k, v in (step[2] if len(step) > 2 else {}).items():
                        self.send_header(k, v)
                else:
                    ctype = "application/json"
                    if kind == "raw":
                        payload, ctype = step[1].encode(), step[2] if len(step) > 2 else "text/html"
                    elif kind == "json":
                        payload = json.dumps(step[1]).encode()
                    else:
                        payload = json.dumps(completion(step[1], step[2] if len(step) > 2 else "stop",
                                                        logprobs=step[3] if len(step) > 3 else None)).encode()
                    self.send_response(200)
                    self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- a stand-in vLLM engine for the worker process
def echo_engine(model_id, tensor_parallel, gpu_memory_utilization, max_lora_rank, dtype):
    """Builds in the worker like vLLM's LLM would; fails like it does for a model it cannot load."""
    if model_id == "no-such-model":
        raise OSError("no-such-model is not a local folder or a Hub id")
    return {"model": model_id}


def echo_generate(engine, prompts, params, lora):
    """One text per row: what the engine was asked, so the test sees the request the parent built."""
    import os

    texts = [[f"{engine['model']}|{len(p['prompt_token_ids'])}|{q['seed']}|{lora[1] if lora else 0}|{os.getpid()}"]
             for p, q in zip(prompts, params)]
    return texts, len(texts)
