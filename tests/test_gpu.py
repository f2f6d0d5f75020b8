"""The GPU code paths, on a GPU (marker `gpu`: skipped unless SPEED_REPRO_TEST_GPU=1 and CUDA is present;
benchmarks/gpu_check.py runs them). Tiny models, so a run takes seconds; what they check cannot be
checked on the CPU: QLoRA on CUDA, vLLM in its worker process, the memory given back."""
import math

import pytest
import torch
from conftest import Snapshot

from speed_utils import assets, train
from speed_utils.config import JuniorCfg, LoraCfg
from speed_utils.generate import GenRequest, Generator
from speed_utils.vllm_worker import available

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
ROWS = [{"prompt": f"Write JSON for item {i}.", "completion": '{"S1": "a cat"}'} for i in range(8)]


def test_qlora_sft_runs_on_cuda_with_the_paged_optimizer(tiny_lm, tmp_path):
    snap = Snapshot()
    res = train.sft(tiny_lm, ROWS, tmp_path / "j", JuniorCfg(qlora=True, lr=5e-3, batch_size=4, epochs=1,
                    lora=LoraCfg(r=4, alpha=8, dropout=0.0)), max_length=64, callbacks=[snap])
    assert res.path == "qlora" and res.optimizer == train.optimizer(True) and res.dtype in ("bf16", "fp16")
    assert snap.unchanged == [] and all(math.isfinite(loss) for _, loss in res.losses)


def test_vllm_generates_seeded_in_its_worker_and_gives_the_memory_back():
    if not available():
        pytest.skip("vLLM is installed neither here nor in .venv-vllm (make vllm-env)")
    base = assets.hf_folder("smollm2-135m-instruct", online=False)
    free_before = torch.cuda.mem_get_info()[0]
    reqs = [GenRequest("Name a colour.", n=2, max_new_tokens=16, seed=3), GenRequest("Name a city.", seed=4)]
    with Generator(base, backend="vllm") as gen:
        a = gen.generate(reqs)
        assert a == gen.generate(reqs) and [len(x) for x in a] == [2, 1] and all(t for x in a for t in x)
        worker = gen.worker.proc
        assert torch.cuda.mem_get_info()[0] < free_before  # the engine holds its share of the card
    assert worker.poll() is not None  # the process is gone, and with it its memory
    assert torch.cuda.mem_get_info()[0] >= free_before - 512 * 2**20
