"""Which floating-point type the CPU and GPU paths compute in.

SPEED trains and generates in bf16 on GPUs (§4.1). On a CPU, bf16 pays only where the cores have
bf16 matrix units (Intel AMX-BF16, or AVX512-BF16): there a 2048² matmul in torch 2.13 runs 3.4×
faster than in fp32 (toolchain.md, "Engines"); elsewhere bf16 is emulated and slower, so fp32 stays.
``SPEED_REPRO_DTYPE=fp32`` (or ``bf16``) overrides the choice, e.g. to compare the two.
"""
from __future__ import annotations

import functools
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


def dtype_name(setting: str | None = None) -> str:
    """"bf16" or "fp32": ``setting`` (or ``$SPEED_REPRO_DTYPE``) if given and not "auto", else by hardware."""
    setting = (setting or os.environ.get("SPEED_REPRO_DTYPE") or "auto").lower()
    if setting in ("bf16", "bfloat16"):
        return "bf16"
    if setting in ("fp32", "float32"):
        return "fp32"
    if setting != "auto":
        raise ValueError(f"dtype {setting!r}: expected auto, bf16 or fp32 (SPEED_REPRO_DTYPE)")
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_flags() else "fp32"


def compute_dtype(setting: str | None = None):
    """The torch dtype for :func:`dtype_name`."""
    import torch

    return torch.bfloat16 if dtype_name(setting) == "bf16" else torch.float32
