"""Free space, checked before long work writes its results (issue 33: Colab's Drive; a save that fails after
hours of training loses them)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from . import assets
from .train import cuda_available


class DiskFull(RuntimeError):
    """Too little free space where a stage would write its models (checked before hours of training)."""


def save_bytes(model: str, on_gpu: bool | None = None) -> int:
    """An upper bound on the bytes of ``model`` saved merged: bf16 from a GPU (the QLoRA rebuild), fp32 on a CPU,
    plus 10% for tokenizer and config files."""
    on_gpu = cuda_available() if on_gpu is None else on_gpu
    return int(assets.spec(model).params_b * 1e9 * (2 if on_gpu else 4) * 1.1)


def check_free_space(folder: Path, models: Sequence[str], on_gpu: bool | None = None) -> None:
    """Stage 07 saves each trained model beside the old one before it replaces it (atomic): refuse to train
    where the run folder's disk (Google Drive, on Colab) cannot hold them (issue 33: a merged 7B embedder is
    about 14.5 GB, and a save that fails at the end loses the hours of training before it)."""
    need = sum(save_bytes(m, on_gpu) for m in models)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DiskFull(f"{folder}: {free / 1e9:.1f} GB free, but stage 07 saves about {need / 1e9:.1f} GB "
                       f"({', '.join(models)}): free space there, or run with --runs-dir on a larger local disk "
                       "and copy the run folder afterwards")


__all__ = ["DiskFull", "save_bytes", "check_free_space"]
