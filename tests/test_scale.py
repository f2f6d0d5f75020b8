"""Stage 06 as a Ray Data pipeline (issue 19), on a local Ray with 2 replicas against real llama.cpp servers.

Real parts: SmolLM2-135M's GGUF with random LoRA adapters converted by llama.cpp's own converter, a
llama.cpp server per replica, Ray Data's actor pool. Checks: the pipeline writes the rows one process
writes; a replica SIGKILLed mid-run is restarted by Ray and its chunk retried; a driver SIGKILLed
mid-run leaves no replica behind and resumes without making a finished chunk again.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import random_adapter

from speed_utils import assets, scale, synthesis
from speed_utils.profiles import load_profile
from speed_utils.gguf_lora import adapter_to_gguf
from speed_utils.runs import RunPaths
from speed_utils.files import write_jsonl

pytestmark = pytest.mark.skipif(not scale.available(), reason="Ray is not installed (.[scale])")

TASKS = [{"id": f"t{i}", "task_type": t, "task": f"Find documents about topic {i} for {t}.", "topic": f"Top/T{i}"}
         for i, t in enumerate(["retrieval", "classification", "sts", "short_short", "long_long"] * 2)]
CHUNKS = 4
GENERATOR = "smollm2-135m-instruct"  # the smoke profile's generator: a GGUF from PyPI, served by llama.cpp


def profile(tmp_path: Path, executor: str) -> Path:
    """The smoke profile shrunk to 4 one-prompt chunks of 8 tokens, with one llama.cpp thread and one slot
    per replica, so two replicas fit two cores."""
    p = tmp_path / f"{executor}.yaml"
    p.write_text(yaml.safe_dump({
        "extends": "smoke", "generation": {"backend": "llamacpp", "parallel": 1, "threads": 1, "structured_output": False},
        "synthesis": {"n_examples": CHUNKS, "chunk_size": 1, "max_new_tokens": 8, "revisor_max_new_tokens": 8},
        "distributed": {"synthesis": executor, "ray": {"replicas": 2}}}))
    return p


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Random adapters over the generator, converted to GGUF once (each run links the conversions)."""
    base = assets.hf_folder(GENERATOR, online=False)
    folder = tmp_path_factory.mktemp("adapters")
    made = {name: Path(random_adapter(base, folder / name, seed=i)) for i, name in enumerate(("junior", "senior", "revisor"))}
    for name in ("senior", "revisor"):
        adapter_to_gguf(made[name], base)
    return made


def new_run(root: Path, adapters: dict) -> RunPaths:
    run = RunPaths(root).make()
    write_jsonl(run.data / "tasks.jsonl", TASKS)
    run.adapters.mkdir()
    for name, path in adapters.items():
        for f in (path, path.with_name(f"{name}.gguf"), path.with_name(f"{name}.gguf.json")):
            if f.exists():
                os.symlink(f, run.adapters / f.name)
    return run


@pytest.mark.parametrize("engine, have, threads, tp, asked, want", [
    ("vllm", {"CPU": 64, "GPU": 8}, 2, 1, None, (8, 1, 1)),   # one replica per GPU
    ("vllm", {"CPU": 64, "GPU": 8}, 2, 2, None, (4, 1, 2)),   # or per tensor-parallel group
    ("vllm", {"CPU": 64, "GPU": 8}, 2, 2, 3, (3, 1, 2)),      # unless distributed.ray.replicas says
    ("llamacpp", {"CPU": 16}, 2, 1, None, (8, 2, 0)),         # on CPUs: one per generation.threads cores
    ("llamacpp", {"CPU": 2}, 4, 1, None, (1, 4, 0)),          # at least one
])
def test_replicas_follow_the_clusters_gpus_or_cores(monkeypatch, engine, have, threads, tp, asked, want):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: have)
    cfg = load_profile("smoke")
    cfg = cfg.model_copy(update={
        "generation": cfg.generation.model_copy(update={"threads": threads, "tensor_parallel_size": tp}),
        "distributed": cfg.distributed.model_copy(update={"ray": cfg.distributed.ray.model_copy(update={"replicas": asked})})})
    assert scale.replica_resources(cfg, engine) == want


def test_a_gpu_cluster_is_not_served_with_llamacpp_by_a_driver_without_gpus(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64, "GPU": 8})
    with pytest.raises(RuntimeError, match="set generation.backend: vllm"):
        scale.replica_resources(load_profile("smoke"), "llamacpp")
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64})
    with pytest.raises(RuntimeError, match="a vLLM replica needs"):
        scale.replica_resources(load_profile("smoke"), "vllm")


def test_replicas_that_cannot_be_placed_are_an_error_not_a_wait():
    eight_gpus = [{"Alive": True, "Resources": {"CPU": 32, "GPU": 4}}, {"Alive": True, "Resources": {"CPU": 32, "GPU": 4}},
                  {"Alive": False, "Resources": {"CPU": 32, "GPU": 8}}]
    scale.check_placeable(8, 1, 1, eight_gpus)
    scale.check_placeable(4, 1, 2, eight_gpus)
    with pytest.raises(RuntimeError, match="cannot place 3 replica"):
        scale.check_placeable(3, 1, 4, eight_gpus[:1] + eight_gpus[2:])  # the dead node does not count
    with pytest.raises(RuntimeError, match="cannot place 1 replica.*lower distributed.ray.replicas"):
        scale.check_placeable(1, 1, 8, eight_gpus)  # a tensor-parallel group must fit one node
    scale.check_placeable(2, 1, 0, [{"Alive": True, "Resources": {"CPU": 2}}])  # this machine: 2 x 1 thread
    with pytest.raises(RuntimeError, match="of 4 CPU"):
        scale.check_placeable(1, 4, 0, [{"Alive": True, "Resources": {"CPU": 2}}])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, adapters):
    """The single-process run: its chunk rows and merged files."""
    tmp = tmp_path_factory.mktemp("local")
    cfg = load_profile(profile(tmp, "local"))
    run = new_run(tmp / "run", adapters)
    made = synthesis.make_chunks(cfg, run, remote=scale.executor_for(cfg))
    assert made["executor"] == "local" and made["made"] == CHUNKS
    merged = synthesis.merge(cfg, run)
    files = {f: (run.data / f).read_bytes() for f in ("synthetic.jsonl", "synthesis_rejects.jsonl")}
    return synthesis.read_chunks(cfg, run), merged, {**files, **chunk_files(cfg, run)}


def chunk_files(cfg, run: RunPaths) -> dict[str, bytes]:
    """Every chunk file of both passes, by its path under data/, as bytes."""
    return {str(f.relative_to(run.data)): f.read_bytes() for d in synthesis.pass_dirs(cfg, run)
            for f in sorted(d.glob("chunk-*.jsonl"))}


def driver_cmd(tmp_path: Path) -> list[str]:
    """`speed-repro synthesize`, the thin front: the one-process profile, run on Ray by --executor."""
    return [sys.executable, "-m", "speed_utils.cli", "synthesize", "--profile", str(profile(tmp_path, "local")),
            "--run-id", "run", "--runs-dir", str(tmp_path), "--executor", "ray"]


def _chunks(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk-*.jsonl")} if folder.exists() else {}


def _replicas(run: RunPaths, name: str = "writer") -> set[int]:
    return {int(p.stem.rsplit("-", 1)[1]) for p in (run.logs / "ray").glob(f"generator-{name}-*.log")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def _wait(until, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.05)


def _servers_of(pid: int) -> list[int]:
    """llama.cpp servers started by process ``pid`` (each watches its parent through ``--parent-pid``)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"speed_utils.llama_server" in cmd and b"--parent-pid" in cmd and \
                cmd[cmd.index(b"--parent-pid") + 1:][:1] == [str(pid).encode()]:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_a_killed_replica_is_restarted_and_a_killed_driver_resumes(tmp_path, adapters, reference):
    """One run, two kills: a replica SIGKILLed mid-pass is restarted by Ray and its chunk retried; then the
    driver is SIGKILLed in the revisor's pass, its replicas and servers go with it, and a rerun makes only
    the chunks that were missing, leaving every finished chunk file untouched. Its files then equal, byte for
    byte, those one process writes (2 replicas of 1 llama.cpp thread each; the process, 1 thread)."""
    rows, merged, files = reference
    prof = profile(tmp_path, "ray")
    cfg = load_profile(prof)
    run = new_run(tmp_path / "run", adapters)
    wdir, rdir = synthesis.pass_dirs(cfg, run)
    err = tmp_path / "driver.stderr"
    driver = subprocess.Popen(driver_cmd(tmp_path), stdout=subprocess.DEVNULL, stderr=err.open("w"))
    _wait(lambda: (_chunks(wdir) and len(_replicas(run)) == 2) or driver.poll() is not None, 180,
          "the writer's first chunk")
    assert driver.poll() is None, err.read_text()[-3000:]
    victim = min(_replicas(run))
    try:
        os.kill(victim, signal.SIGKILL)  # a replica dies in the middle of a chunk (or between two)
    except ProcessLookupError:
        pytest.fail("the writer's pass ended before a replica could be killed")
    _wait(lambda: len(_replicas(run)) >= 3 or driver.poll() is not None, 120, "Ray to restart the replica")
    _wait(lambda: not _servers_of(victim), 30, "the killed replica's llama.cpp server to exit")

    _wait(lambda: _chunks(rdir) or driver.poll() is not None, 240, "the revisor's first chunk")
    assert driver.poll() is None, "the run finished before the driver could be killed"
    driver.kill()  # SIGKILL: no cleanup code runs
    driver.wait()
    revisors = _replicas(run, "revisor")
    _wait(lambda: not any(map(_alive, revisors)) and not any(map(_servers_of, revisors)), 60,
          "the dead driver's replicas and servers to exit")
    assert len(_chunks(wdir)) == CHUNKS and 1 <= len(_chunks(rdir)) < CHUNKS
    before = {**_chunks(wdir), **{f"revised/{k}": v for k, v in _chunks(rdir).items()}}

    made = synthesis.make_chunks(cfg, run, remote=scale.executor_for(cfg))  # the rerun, in this process, on a Ray of its own
    assert (made["executor"], made["replicas"], made["engine"]) == ("ray", 2, "llamacpp") and made["tokens_out"] > 0
    assert (made["writer_made"], made["revisor_made"]) == (0, 2 * CHUNKS - len(before))
    after = {**_chunks(wdir), **{f"revised/{k}": v for k, v in _chunks(rdir).items()}}
    assert {k: after[k] for k in before} == before  # no finished chunk made (or written) again
    assert synthesis.read_chunks(cfg, run) == rows and any(r["revisor_raw"] for r in rows)
    assert synthesis.merge(cfg, run) == merged
    assert {**{f: (run.data / f).read_bytes() for f in ("synthetic.jsonl", "synthesis_rejects.jsonl")},
            **chunk_files(cfg, run)} == files  # byte for byte: 2 x CHUNKS chunk files and the merged ones
    assert len(files) == 2 + 2 * CHUNKS
    assert synthesis.make_chunks(cfg, run, remote=scale.executor_for(cfg))["made"] == 0  # everything there: a rerun starts no Ray at all
