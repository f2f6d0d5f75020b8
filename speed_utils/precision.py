"""Which floating-point type the CPU and GPU paths compute in.

SPEED trains and generates in bf16 on GPUs (§4.1); a GPU without bf16 units (a T4, compute capability
7.5: torch would emulate bf16, slowly) uses fp16 mixed precision instead. On a CPU, bf16 pays only where
the cores have bf16 matrix units (Intel AMX-BF16, or AVX512-BF16): there a 2048² matmul in torch 2.13
runs 3.4× faster than in fp32 (toolchain.md, "Engines"); elsewhere bf16 is emulated and slower, so fp32
stays. ``SPEED_REPRO_DTYPE=fp32`` (or ``bf16``, ``fp16``) overrides the choice, e.g. to compare them.
"""
from __future__ import annotations

import functools
import gc
import os
from pathlib import Path

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The bf16 matrix-unit flags this CPU reports in /proc/cpuinfo (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


NAMES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "fp32": "fp32", "float32": "fp32"}


def dtype_name(setting: str | None = None) -> str:
    """"bf16", "fp16" or "fp32": ``setting`` (or ``$SPEED_REPRO_DTYPE``) if given and not "auto", else by
    hardware: a GPU's bf16 units (else fp16), a CPU's bf16 matrix units (else fp32)."""
    setting = (setting or os.environ.get("SPEED_REPRO_DTYPE") or "auto").lower()
    if setting in NAMES:
        return NAMES[setting]
    if setting != "auto":
        raise ValueError(f"dtype {setting!r}: expected auto, bf16, fp16 or fp32 (SPEED_REPRO_DTYPE)")
    import torch

    if torch.cuda.is_available():  # not counting emulation: a T4 "supports" bf16 only in software
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if cpu_bf16_flags() else "fp32"


def compute_dtype(setting: str | None = None):
    """The torch dtype for :func:`dtype_name`."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name(setting)]


def amp_flags(on_gpu: bool) -> dict[str, bool]:
    """The ``bf16``/``fp16`` arguments of a transformers trainer. On a GPU (or when a test builds GPU
    settings on the CPU) mixed precision is always on, fp16 only where the card lacks bf16; on a CPU,
    bf16 only where :func:`dtype_name` chose it."""
    name = dtype_name()
    if on_gpu and not os.environ.get("SPEED_REPRO_DTYPE"):
        name = "fp16" if name == "fp16" else "bf16"
    return {"bf16": name == "bf16", "fp16": name == "fp16"}


def trained_in(args) -> str:
    """The precision a trainer's arguments ran in, for the training record."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def release_memory() -> None:
    """Return the memory of models no longer referenced: collect them, then empty CUDA's cache."""

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
