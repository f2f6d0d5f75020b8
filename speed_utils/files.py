"""Files that survive a kill: atomic replacement, append-only JSONL, and content hashes.

Every file a stage writes is either replaced atomically (write to a temporary file in the same
folder, fsync, rename) or appended one complete line at a time. A process killed at any moment
therefore leaves either the old file, the new file, or a JSONL file whose last line may be cut;
readers drop such a cut tail (and :func:`append_jsonl` repairs it before appending).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator


# ---------------------------------------------------------------- atomic and append-only I/O
def _umask() -> int:
    """The process umask, read without setting it (os.umask can only read by changing it, for all threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name lets a cleaner tell a live writer's file from one cut by a kill
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                os.fchmod(f.fileno(), 0o666 & ~_umask())  # the mode open() would give, not mkstemp's 0600
            except OSError:
                pass  # a filesystem that refuses chmod keeps mkstemp's mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise out_of_space(path, e) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def out_of_space(path: Path, e: OSError) -> OSError:
    """``e``, or where the disk (or a file-size limit) is full, an error that names the file and says that
    nothing partial was left: the file holds what it held before the write."""
    if e.errno not in NO_SPACE:
        return e
    return OSError(e.errno, f"{path}: no room to write ({os.strerror(e.errno)}); the file is as it was before this "
                            "write, with no partial row. Free space (or raise the file-size limit) and rerun: the run "
                            "resumes where it stopped")


def remove(path: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a folder tree; nothing if it is absent."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def jsonl_text(rows: Iterable[dict]) -> str:
    """Rows as JSONL text, exactly as :func:`write_jsonl` writes them (keys sorted, UTF-8 kept)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Replace ``path`` atomically with one JSON object per line; returns the row count."""
    text = jsonl_text(rows)
    atomic_write_text(path, text)
    return text.count("\n")


_append_lock = threading.Lock()


def _mend_tail(f) -> None:
    """Make an open JSONL file end on a line boundary before appending.

    A last line without its newline is either complete JSON (the newline was lost: add it, so
    the row that readers already saw is kept) or a write cut by a kill (truncate it).
    """
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    back = min(size, 1 << 20)
    while True:
        f.seek(size - back)
        chunk = f.read(back)
        cut = chunk.rfind(b"\n")
        if cut >= 0 or back == size:
            start = size - back + cut + 1 if cut >= 0 else 0
            f.seek(start)
            try:
                json.loads(f.read())
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            except ValueError:
                f.truncate(start)
            return
        back = min(size, back * 2)


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append complete lines, fsynced, under a thread lock and an exclusive file lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = jsonl_text(rows).encode()
    with _append_lock, open(path, "ab+", buffering=0) as f:  # unbuffered: a failed write leaves nothing queued
        fcntl.flock(f, fcntl.LOCK_EX)  # another process (a notebook run by hand) may append too
        try:
            _mend_tail(f)
            start = f.seek(0, os.SEEK_END)
            try:
                view = memoryview(payload)
                while view:
                    view = view[f.write(view):]
                os.fsync(f.fileno())
            except OSError as e:  # a full disk or a file-size limit: take back what part of the rows got in
                f.truncate(start)
                raise out_of_space(path, e) from e
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSONL file; a cut last line (no newline, not JSON) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    pass  # a write cut by a kill; append_jsonl will drop it
                return
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {number}: damaged JSONL row ({e.msg}); "
                                     "restore the file or rerun the stage that wrote it") from None


def salvage_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of an append-only cache, ledger or journal, setting damaged rows aside instead of stopping.

    A row is damaged when it is not a JSON object, or lacks a field of ``required`` (its content dropped).
    Damaged rows go, with their line numbers, to ``<name>.damaged.jsonl`` beside the file (appended, so
    nothing is lost); the file is rewritten atomically without them and a warning names file and lines.
    What the damaged rows held is made again by the caller (a teacher call, a generation batch), exactly
    once. A last line cut by a kill is dropped as :func:`read_jsonl` drops it.
    """
    path = Path(path)
    if not path.exists():
        return []
    good_lines, rows, damaged = [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            cut = not line.endswith("\n")
            try:
                row = json.loads(line)
                why = ("not a JSON object" if not isinstance(row, dict)
                       else next((f"no {k!r}" for k in required if k not in row), None))
            except json.JSONDecodeError as e:
                row, why = None, f"not JSON ({e.msg})"
            if why is None:
                good_lines.append(line if not cut else line + "\n")
                rows.append(row)
            elif not cut:  # a cut last line is a write a kill interrupted, not damage
                damaged.append({"line": number, "why": why, "text": line.rstrip("\n")})
    if damaged:
        append_jsonl(path.with_name(path.name + ".damaged.jsonl"), damaged)
        atomic_write_text(path, "".join(good_lines))
        where = ", ".join(f"line {d['line']} ({d['why']})" for d in damaged[:5]) + (" ..." if len(damaged) > 5 else "")
        print(f"WARNING: {path}: {len(damaged)} damaged row(s) set aside in {path.name}.damaged.jsonl: {where}; "
              "what they held will be made again", file=sys.stderr, flush=True)
    return rows


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.endswith(b"\n"))


# ---------------------------------------------------------------- hashing
def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file contents in sorted order."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()
