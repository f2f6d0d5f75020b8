"""PEFT LoRA adapters in GGUF form, so llama.cpp serves the generators (SPEED §3.2–3.3).

The junior, senior and revisor are LoRA adapters over one base model. Offline, that base is a
Q4_K_M GGUF dequantized to an HF folder for training (:func:`speed_utils.assets.hf_folder`), so
the adapter trained on the dequantized weights applies exactly to the GGUF it came from: llama.cpp
loads the GGUF base and the adapter converted here by llama.cpp's own ``convert_lora_to_gguf.py``.

A conversion is cached beside the adapter folder (``adapters/junior.gguf``) with a sidecar
holding the adapter's sha256, so a retrained adapter is converted again and an unchanged one never.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

from . import llama_converters
from .files import atomic_write_json, sha256_path


class ConversionError(RuntimeError):
    """llama.cpp's converter failed on an adapter or model."""


def _run_converter(script: str, args: list[str], what: str) -> None:
    tools = llama_converters.llama_cpp_converters()
    env = {**os.environ, "PYTHONPATH": str(tools), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    proc = subprocess.run([sys.executable, str(tools / script), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ConversionError(f"llama.cpp's {script} failed on {what}:\n{proc.stderr[-3000:]}")


def _bundled_gguf_importable(tools: Path) -> bool:
    """Whether ``import gguf`` here gives the converters' own gguf-py (nothing imported it yet, or it did)."""
    mod = sys.modules.get("gguf")
    return mod is None or str(tools) in str(getattr(mod, "__file__", ""))


def _convert_lora_in_process(args: list[str], what: str) -> None:
    """llama.cpp's ``convert_lora_to_gguf.py`` run as ``__main__`` in this interpreter.

    A child process spends about 10 s importing torch and transformers before it converts a LoRA in well
    under a second; a stage that serves adapters has both imported already. The script's logging setup is
    undone afterwards and its errors (``sys.exit`` after ``logger.error``) become a :class:`ConversionError`
    carrying its log.
    """

    tools = llama_converters.llama_cpp_converters()
    root, log = logging.getLogger(), io.StringIO()
    saved = root.handlers[:], root.level, sys.argv, sys.path[:]
    root.handlers = [logging.StreamHandler(log)]  # so the script's basicConfig adds none of its own
    sys.path.insert(0, str(tools))
    sys.argv = [str(tools / "convert_lora_to_gguf.py"), *args]
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise ConversionError(f"llama.cpp's convert_lora_to_gguf.py failed on {what}:\n{log.getvalue()[-3000:]}") from e
    except Exception as e:
        raise ConversionError(f"llama.cpp's convert_lora_to_gguf.py failed on {what}: {type(e).__name__}: {e}\n"
                              f"{log.getvalue()[-3000:]}") from e
    finally:
        root.handlers, root.level, sys.argv = saved[0], saved[1], saved[2]
        sys.path[:] = saved[3]


def _convert_lora(args: list[str], what: str) -> None:
    """In this interpreter where the converters' own gguf-py can be imported; else in a child process (where
    transformers already imported PyPI's ``gguf``, say after dequantizing a GGUF, the script must not run
    against that one: it lacks what the converters use)."""
    if _bundled_gguf_importable(llama_converters.llama_cpp_converters()):
        _convert_lora_in_process(args, what)
    else:
        _run_converter("convert_lora_to_gguf.py", args, what)


def adapter_to_gguf(adapter: Path, base_folder: str, outtype: str = "f32") -> Path:
    """``adapter`` (a PEFT LoRA folder) as a GGUF LoRA file, converted once per adapter content.

    ``base_folder``: the HF folder (or Hub id) of the base the adapter was trained on; only its
    config is read. f32 keeps the adapter's weights as trained (a rank-16 adapter of the 0.5B
    generator is about 35 MB).
    """
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
    out = adapter.with_name(adapter.name + ".gguf")
    sidecar = out.with_name(out.name + ".json")
    source = {"adapter_sha256": sha256_path(adapter), "outtype": outtype, "converter": llama_converters.LLAMA_CPP_SDIST[0]}
    try:
        recorded = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        recorded = None
    if out.exists() and recorded == {**source, "gguf_sha256": sha256_path(out)}:
        return out
    sidecar.unlink(missing_ok=True)  # never a sidecar that vouches for another conversion
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    base_arg = ["--base", base_folder] if Path(base_folder).is_dir() else ["--base-model-id", base_folder]
    _convert_lora([*base_arg, "--outfile", str(tmp), "--outtype", outtype, str(adapter)], f"adapter {adapter}")
    os.replace(tmp, out)
    atomic_write_json(sidecar, {**source, "gguf_sha256": sha256_path(out)})
    return out


def merged_to_gguf(base_folder: str, adapter: Path, out: Path, outtype: str = "bf16") -> Path:
    """The base with ``adapter`` merged in, written as one GGUF model (the alternative to a LoRA file).

    Used by ``benchmarks/generation.py`` to compare the two ways of serving an adapter.
    """

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
        PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(d)
        AutoTokenizer.from_pretrained(base_folder).save_pretrained(d)
        _run_converter("convert_hf_to_gguf.py", ["--outfile", str(out), "--outtype", outtype, d], f"merged {adapter}")
    return out
