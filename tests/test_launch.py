"""accelerate paths: command construction, the batch arithmetic, and a real single-process launch on the CPU."""
import json

import pytest
import yaml

from speed_utils import launch
from speed_utils.profiles import load_profile
from speed_utils.runs import RunPaths
from speed_utils.files import write_jsonl


def test_paper_commands_split_generators_and_embedder():
    cfg = load_profile("paper")
    junior = launch.command(cfg, "junior", "/runs/p")
    emb = launch.command(cfg, "embedder", "/runs/p")
    assert junior[junior.index("--num_processes") + 1] == "8" and junior[junior.index("--num_machines") + 1] == "1"
    assert emb[emb.index("--num_processes") + 1] == "16" and emb[emb.index("--num_machines") + 1] == "2"
    assert emb[emb.index("--config_file") + 1].endswith("params/accelerate/deepspeed_zero3.yaml")
    assert emb[-4:] == ["speed_utils.launch", "embedder", "--run-dir", "/runs/p"]  # it reads the run's config.yaml


def test_paper_batch_arithmetic_reaches_the_papers_batches():
    lines = launch.batch_arithmetic(load_profile("paper"))
    assert lines["junior"] == "junior: batch 16 = micro-batch 2 x 8 device(s) x accumulation 1"
    assert lines["revisor"] == "revisor: batch 24 = micro-batch 1 x 8 device(s) x accumulation 3"
    assert lines["embedder"].startswith("embedder: contrastive batch 1536 = 96 per device x 16 device(s), in-batch negatives gathered")


def test_accelerate_configs_are_valid_for_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    for name in ("ddp", "deepspeed_zero3"):
        c = load_config_from_file(f"params/accelerate/{name}.yaml")
        assert c.mixed_precision == "bf16" and not c.use_cpu
    assert load_config_from_file("params/accelerate/deepspeed_zero3.yaml").deepspeed_config["zero_stage"] == 3


@pytest.mark.slow
def test_junior_sft_through_accelerate_launch_on_the_cpu(tmp_path):
    acc = tmp_path / "cpu.yaml"
    acc.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "distributed_type": "NO", "num_machines": 1,
                                   "num_processes": 1, "mixed_precision": "no", "use_cpu": True, "machine_rank": 0}))
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump({"extends": "smoke", "junior": {"batch_size": 2, "epochs": 1, "max_length": 96},
                                    "distributed": {"launcher": "accelerate", "accelerate_config": str(acc)}}))
    cfg = load_profile(prof)
    run = RunPaths(tmp_path / "run").make()
    write_jsonl(run.data / "seed.jsonl", [{"prompt": f"Write item {i} as JSON.", "output": {"S1": "a", "S2": "b", "S3": f"{i}"}}
                                          for i in range(4)])
    result = launch.train("junior", cfg, run)
    assert result["steps"] == 2 and result["path"] == "lora" and result["losses"]
    assert (run.adapters / "junior" / "adapter_config.json").exists()
    assert json.loads(launch.result_path(run, "junior").read_text()) == result
