"""Run folders: layout, manifests, stage done markers, one writer per folder, verification.

Every file here is written through :mod:`speed_utils.files` (atomic replacement or append-only JSONL),
so a process killed at any moment leaves a run folder that a rerun can trust.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

from .files import atomic_write_json, count_lines, sha256_path
from .paths import RESULTS_DIR

# ---------------------------------------------------------------- run folder
# What the stages hand on, by name: the one place each path is written. The stage registry
# (speed_utils.registry.STAGES) declares every stage's inputs and outputs by these names, and the services
# read and write them through RunPaths.file, so a stage cannot write where its contract does not say.
FILES = {
    "env": "env.json",
    "tasks": "data/tasks.jsonl", "brainstorm_rejects": "data/brainstorm_rejects.jsonl",   # 01
    "seed": "data/seed.jsonl", "seed_rejects": "data/rejects.jsonl",                       # 02
    "junior": "adapters/junior",                                                           # 03
    "root": "data/root.jsonl", "prefs": "data/prefs.jsonl", "prefs_rejects": "data/prefs_rejects.jsonl",
    "senior": "adapters/senior",                                                           # 04
    "revisions": "data/revisions.jsonl", "revision_rejects": "data/revision_rejects.jsonl",
    "revisor": "adapters/revisor", "quality": "data/quality.jsonl",                        # 05
    "synthetic": "data/synthetic.jsonl", "synthesis_rejects": "data/synthesis_rejects.jsonl",  # 06
    "embedder": "models/embedder", "baseline": "models/baseline",                          # 07
    "mteb": "mteb", "scores": "data/scores.jsonl", "sts_pairs": "data/sts_pairs.json",
    "score_intervals": "data/score_intervals.jsonl",                                       # 08
    "results": "data/results.json",                                                        # 09
    "ledger": "ledger.jsonl", "cost": "data/cost.json",                                    # 10
    "sweeps": "data/sweeps.json", "claims": "data/claims.json",                            # 11
}


@dataclass(frozen=True)
class RunPaths:
    """The layout of ``results/runs/<run_id>/`` (design.md, "Run folder")."""

    root: Path

    @classmethod
    def for_run(cls, run_id: str, base: Path | None = None) -> "RunPaths":
        return cls(Path(base or RESULTS_DIR) / run_id)

    config = property(lambda s: s.root / "config.yaml")
    manifest = property(lambda s: s.root / "manifest.json")
    ledger = property(lambda s: s.file("ledger"))
    teacher_cache = property(lambda s: s.root / "teacher_cache")
    # finished generation batches of stages 04-05, so a killed stage resumes without regenerating
    generation_journal = property(lambda s: s.root / "generation_cache" / "batches.jsonl")
    # stage 06's chunk files, under a folder per generator setting (content-addressed: sweep points share it)
    synthesis_chunks = property(lambda s: s.root / "data" / "synthesis")
    notebooks = property(lambda s: s.root / "notebooks")
    data = property(lambda s: s.root / "data")
    adapters = property(lambda s: s.root / "adapters")
    models = property(lambda s: s.root / "models")
    mteb = property(lambda s: s.root / "mteb")
    figures = property(lambda s: s.root / "figures")
    stages = property(lambda s: s.root / "stages")
    logs = property(lambda s: s.root / "logs")

    def file(self, name: str) -> Path:
        """A file or folder that stages hand on, by its name in :data:`FILES`."""
        try:
            return self.root / FILES[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a run file; known: {', '.join(FILES)}") from None

    def marker(self, stage: int) -> Path:
        return self.stages / f"{stage:02d}.done.json"

    def read_marker(self, stage: int) -> dict:
        """A stage's done marker ({} while the stage has not finished)."""
        path = self.marker(stage)
        return json.loads(path.read_text()) if path.exists() else {}

    def make(self) -> "RunPaths":
        for d in (self.root, self.notebooks, self.data, self.figures, self.stages, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        return self


def record_path(out_dir: Path) -> Path:
    """Where a finished training is recorded: beside its output (an adapter, a model), so that output's own
    hash is unchanged. ``run --force`` removes it with the output, so the stage trains anew."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.train.json")


def versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour shapes the numbers."""

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "trl", "sentence-transformers", "mteb", "openai",
                "papermill", "xllamacpp", "datasets", "accelerate", "bitsandbytes", "vllm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def file_summary(path: Path) -> dict:
    """What the manifest records for one output: hash, size and, for JSONL, the row count."""
    path = Path(path)
    info: dict[str, Any] = {"sha256": sha256_path(path)}
    if path.is_file():
        info["bytes"] = path.stat().st_size
        if path.suffix == ".jsonl":
            info["rows"] = count_lines(path)
    return info


def read_manifest(run: RunPaths) -> dict:
    return json.loads(run.manifest.read_text()) if run.manifest.exists() else {"files": {}}


def update_manifest(run: RunPaths, stage: int, outputs: Iterable[Path]) -> dict:
    """Record the stage's outputs in ``manifest.json`` (atomic replace)."""
    manifest = read_manifest(run)
    for p in outputs:
        rel = str(Path(p).resolve().relative_to(run.root.resolve()))
        manifest["files"][rel] = {"stage": stage, **file_summary(p)}
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(run.manifest, manifest)
    return manifest


# ---------------------------------------------------------------- one writer per run folder
LOCK_ENV = "SPEED_REPRO_LOCKED_RUN"  # set by the runner for its stage kernels: the lock is already held


def unwritable(root: Path) -> str | None:
    """The first folder of a run that this process cannot create a file in, and why; None when all can be.
    Checked before a run starts, so a read-only folder stops it before any teacher call or training."""
    root = Path(root)
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())] if root.is_dir() else [root]
    for folder in folders:
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            return f"{folder}: {e.strerror}"
    return None


def runner_holds(root: Path) -> bool:
    """Whether this process runs under a runner that holds ``root``'s lock (and wrote its ``config.yaml``)."""
    return os.environ.get(LOCK_ENV) == str(Path(root).resolve())


class RunLocked(RuntimeError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder (``<run>/.lock``): two runners never write to one run.

    The lock is an ``flock`` on the file, so it dies with its process (a SIGKILL frees it); the file
    names the holder's pid and start time for the error message.
    """

    _held: dict[str, "RunLock"] = {}  # locks this process holds, by run folder: acquiring again reuses them

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / ".lock"
        self._fh = None

    def acquire(self) -> "RunLock":
        key = str(self.root.resolve())
        if runner_holds(self.root):
            return self  # our runner holds it for us
        if key in RunLock._held:  # e.g. a notebook's first cell run again after an error
            return RunLock._held[key]
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            fh.close()
            raise RunLocked(f"{self.root} is being written by another runner ({holder}); wait for it to finish, "
                            "or give this run another --run-id") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%dT%H:%M:%S')}")
        fh.flush()
        self._fh = fh
        RunLock._held[key] = self
        return self

    def release(self) -> None:
        RunLock._held.pop(str(self.root.resolve()), None)
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------- verification
def partial_jsonl(path: Path) -> str | None:
    """Why a JSONL file is damaged (a cut last line, a row that is not JSON), or None."""
    data = Path(path).read_bytes()
    if data and not data.endswith(b"\n"):
        return "ends in a partial line"
    for number, line in enumerate(data.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError:
                return f"line {number} is not JSON"
    return None


def verify_files(run: RunPaths) -> list[str]:
    """Problems with a run folder's files against its manifest: missing, changed, wrong row count, damaged."""
    problems = []
    for rel, info in sorted(read_manifest(run)["files"].items()):
        path = run.root / rel
        if not path.exists():
            problems.append(f"{rel}: missing (stage {info.get('stage')} wrote it)")
            continue
        if sha256_path(path) != info["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest (modified or damaged after stage {info.get('stage')})")
        if "rows" in info and path.is_file() and count_lines(path) != info["rows"]:
            problems.append(f"{rel}: {count_lines(path)} rows, the manifest says {info['rows']}")
    for f in sorted(run.root.rglob("*.jsonl")):
        if ".tmp" not in f.name and (why := partial_jsonl(f)):
            problems.append(f"{f.relative_to(run.root)}: {why}")
    return problems


def stale_temp(path: Path) -> bool:
    """Whether a temporary file of :func:`atomic_write_bytes` belongs to a process that is gone."""
    parts = Path(path).name.split(".")
    pid = next((int(p) for p in reversed(parts[:-1]) if p.isdigit()), None)
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return pid == os.getpid()  # our own leftovers are stale too: we are not writing them now

