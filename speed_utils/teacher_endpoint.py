"""Where a profile's teacher is (SPEED §3.2: the teacher of every stage 01-05), and how to reach it.

The ``openai`` client at ``teacher.base_url`` with its key read from the environment variable that
``teacher.api_key_env`` names (never from a file), or, for ``teacher.backend: llamacpp``, a loopback
llama.cpp server (:class:`speed_utils.llama_server.LlamaServer`) started at the first request the
cache cannot answer. :class:`open_teacher` hands a stage a :class:`~speed_utils.teacher.Teacher` on it.
"""
from __future__ import annotations

import os

from . import assets
from .llama_server import LlamaServer, ServerError
from .runs import RunPaths
from .teacher import Teacher, TeacherError


def openai_client(base_url: str, api_key: str, timeout_s: float):
    """An ``openai.OpenAI`` with its own retries off (ours are counted in the ledger)."""
    import openai

    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s)


def api_key_from_env(var: str) -> str:
    key = os.environ.get(var)
    if not key:
        raise TeacherError(f"the teacher needs an API key in the environment variable ${var} "
                           "(teacher.api_key_env); it is not set")
    return key


class open_teacher:
    """Context manager: the profile's teacher for one stage, with a lazily started server.

    ``with open_teacher(cfg, run, "02") as t: replies = t.map(requests)``. For the llamacpp
    backend the server starts only at the first request the cache cannot answer.
    """

    def __init__(self, cfg, run: RunPaths, stage: str):
        tc = cfg.teacher
        self.server: LlamaServer | None = None
        if tc.backend == "llamacpp":
            def connect():
                gguf = assets.gguf_path(tc.model, online=cfg.use_hub())
                try:
                    self.server = LlamaServer(gguf, run.logs / "llama-server.log", n_ctx=tc.n_ctx,
                                              n_parallel=tc.n_parallel, threads=tc.threads).start()
                except ServerError as e:
                    raise TeacherError(str(e)) from e
                return openai_client(self.server.base_url, "local-no-key", tc.timeout_s)
            where = f"local llama.cpp server ({tc.model})"
        else:
            def connect():
                return openai_client(tc.base_url, api_key_from_env(tc.api_key_env), tc.timeout_s)
            where = f"teacher at {tc.base_url} ({tc.model})"
        self.teacher = Teacher(tc, run, stage, connect, describe=where)

    def __enter__(self) -> Teacher:
        return self.teacher

    def __exit__(self, *exc) -> None:
        self.teacher.close()
        if self.server:
            self.server.stop()
