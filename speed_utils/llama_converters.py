"""llama.cpp's own GGUF converters (``convert_lora_to_gguf.py`` and ``convert_hf_to_gguf.py``, with
their ``conversion/`` package and ``gguf-py``), which ship in the source distribution of the pinned
xllamacpp, not in its wheel (toolchain.md, "Engines"). :mod:`speed_utils.gguf_lora` runs them on the
generators' adapters (SPEED §3.2-3.3 sample from base + adapter; llama.cpp serves that pair offline).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from . import assets
from .files import sha256_path

log = logging.getLogger(__name__)


LLAMA_CPP_SDIST = ("xllamacpp==2026.10.11549",
                   "c17ee1163006f70726abb9f72137830818f3d8cb60bfc34cb232d08428eaa22b")
_CONVERTER_MEMBERS = ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def _fetch_sdist(package: str, dest: Path) -> Path:
    """The sdist file of ``name==version``: straight from the package index's simple page (PEP 503), else
    ``pip download``. pip prepares an sdist's metadata before it keeps the file, which for xllamacpp
    means installing its build requirements: about 4 minutes of a cold run (2026-12-01), for a file
    that is only unpacked."""

    name, version = package.split("==")
    filename = f"{name}-{version}.tar.gz"
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/{name}/", timeout=60) as r:
            page = r.read().decode("utf-8", "replace")
        (href,) = {h for h in re.findall(r'href="([^"#]+)', page) if h.rsplit("/", 1)[-1] == filename}
        with urllib.request.urlopen(urllib.parse.urljoin(f"{index}/{name}/", href), timeout=300) as r, \
                open(dest / filename, "wb") as fh:
            shutil.copyfileobj(r, fh, 1 << 22)
        return dest / filename
    except (OSError, ValueError) as e:  # no such index page or file, or more than one link: let pip find it
        log.info("index fetch of %s failed (%s); trying pip download", filename, e)
    code, tail = assets.pip_download(dest, "--no-binary", ":all:", package)
    sdists = list(dest.glob("*.tar.gz"))
    if code != 0 and not sdists:  # a failed metadata build still leaves the file
        raise assets.AssetError(f"pip download of the {package} sdist (llama.cpp's converters) failed: {tail}")
    (sdist,) = sdists
    return sdist


def llama_cpp_converters() -> Path:
    """A folder with llama.cpp's GGUF converters, from the pinned xllamacpp sdist (sha256-checked, cached)."""
    package, pinned = LLAMA_CPP_SDIST
    out = assets.cache_dir() / "_tools" / package.replace("==", "-")
    with assets.locked(out):
        if (out / "convert_lora_to_gguf.py").exists():
            return out
        with tempfile.TemporaryDirectory(dir=assets.cache_dir()) as scratch:
            sdist = _fetch_sdist(package, Path(scratch))
            if (got := sha256_path(sdist)) != pinned:
                raise assets.AssetError(f"sha256 mismatch for {sdist.name}: got {got}, pinned {pinned}")
            tmp = out.with_name(out.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            with tarfile.open(sdist) as tar:
                for m in tar.getmembers():
                    rel = m.name.split("/thirdparty/llama.cpp/", 1)[-1] if "/thirdparty/llama.cpp/" in m.name else None
                    if rel and m.isfile() and rel.startswith(_CONVERTER_MEMBERS):
                        m.name = rel
                        tar.extract(m, tmp, filter="data")
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
    return out
