"""A real llama.cpp server (the ``xllamacpp`` wheel) on loopback, for the teacher and the generators.

The offline teacher (SPEED §3.2, standing in for GPT-4o) and the local generators (§3.2–3.3: the
junior, senior and revisor, each a LoRA adapter over one base) are both served by
:class:`LlamaServer`: a child process that loads one GGUF model, optionally with LoRA adapters in
GGUF form (:mod:`speed_utils.gguf_lora`), and answers the OpenAI-compatible routes plus
llama.cpp's own ``/completion``, with ``n_parallel`` slots batched continuously.

Run as a module it is that child: ``python -m speed_utils.llama_server --model FILE --port 8080``
(``--lora FILE`` repeatable) works for debugging.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .paths import REPO_ROOT


class ServerError(RuntimeError):
    """The llama.cpp server could not start, died, or answered a request with an error."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LlamaServer:
    """One GGUF model (plus LoRA adapters) served by llama.cpp in a child process on loopback.

    The child watches the pid of the process that started it and exits when that process is
    gone, so a killed kernel leaves no server behind. Its request log goes to ``log_path``.
    ``loras``: GGUF LoRA adapters, loaded at start with scale 0; a request picks its adapter
    with the ``lora`` field (:meth:`complete`), so one server can serve several adapters.
    """

    gguf: Path
    log_path: Path
    n_ctx: int = 4096  # per slot
    n_parallel: int = 2
    threads: int = 2
    loras: tuple[Path, ...] = ()
    port: int = 0
    startup_timeout_s: float = 180.0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LlamaServer":
        self.port = self.port or free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "speed_utils.llama_server", "--model", str(self.gguf),
               "--port", str(self.port), "--n-ctx", str(self.n_ctx * self.n_parallel),
               "--parallel", str(self.n_parallel), "--threads", str(self.threads),
               "--parent-pid", str(os.getpid())]
        for lora in self.loras:
            cmd += ["--lora", str(lora)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        log.close()
        try:
            self._wait_ready()
        except BaseException:  # not ready, or interrupted while waiting: leave no child behind
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"llama.cpp server exited with code {self.proc.returncode} while "
                                  f"loading {self.gguf.name}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise ServerError(f"llama.cpp server not ready after {self.startup_timeout_s:.0f}s; see {self.log_path}")

    def complete(self, body: dict, timeout_s: float = 1800.0) -> dict:
        """POST llama.cpp's native ``/completion`` (raw prompt, per-request seed, sampler and ``lora``)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise ServerError(f"llama.cpp /completion answered {e.code}: {e.read()[:500]!r}; see {self.log_path}") from e
        except OSError as e:
            dead = self.proc is not None and self.proc.poll() is not None
            why = f"the server exited with code {self.proc.returncode}" if dead else f"{type(e).__name__}: {e}"
            raise ServerError(f"llama.cpp /completion failed ({why}); see {self.log_path}") from e

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n-ctx", type=int, default=8192, help="total context, shared by the slots")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora", action="append", default=[], help="a GGUF LoRA adapter (repeatable)")
    ap.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    a = ap.parse_args()

    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = a.model
    p.n_ctx = a.n_ctx
    p.n_parallel = a.parallel
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    p.port = a.port
    p.hostnames = ["127.0.0.1"]
    if a.lora:
        p.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(path, 1.0) for path in a.lora]
        p.lora_init_without_apply = True  # each request names its adapter and scale
    server = xllamacpp.Server(p)
    print(f"speed_utils.llama_server: listening at {server.listening_address}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if a.parent_pid and os.getppid() != a.parent_pid:  # reparented: whoever started us is gone
            print("speed_utils.llama_server: parent exited, stopping", flush=True)
            break
    # exit now: a clean shutdown (``del server``) first finishes the slots' requests in flight, and a
    # killed stage's orphaned server went on decoding for minutes on cores the next run needs
    os._exit(0)


if __name__ == "__main__":
    main()
