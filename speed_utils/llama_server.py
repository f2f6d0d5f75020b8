"""Child process that serves one GGUF model with llama.cpp's own OpenAI-compatible server.

Started by :class:`speed_utils.teacher.LlamaServer`; not meant to be run by hand, though
``python -m speed_utils.llama_server --model FILE --port 8080`` works for debugging.
"""
from __future__ import annotations

import argparse
import os
import signal
import threading


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n-ctx", type=int, default=8192, help="total context, shared by the slots")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
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
    server = xllamacpp.Server(p)
    print(f"speed_utils.llama_server: listening at {server.listening_address}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if a.parent_pid and os.getppid() != a.parent_pid:  # reparented: whoever started us is gone
            print("speed_utils.llama_server: parent exited, stopping", flush=True)
            break
    del server


if __name__ == "__main__":
    main()
