"""Profiles: every shipped profile validates; bad ones fail naming the file and the key."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from speed_utils.profiles import ConfigError, list_profiles, load_profile


def write(tmp_path: Path, name: str, data: dict) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def base_profile() -> dict:
    return yaml.safe_load(Path(load_profile.__globals__["PARAMS_DIR"], "cpu.yaml").read_text())


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu-24gb", "paper", "study", "gpu-smoke"])
def test_every_profile_loads(name):
    cfg = load_profile(name)
    assert cfg.name == name
    assert len(cfg.section_hash()) == 16


def test_the_study_changes_only_stage_11_of_the_cpu_run():
    """`make study` adopts stages 00-10 from the default run: their config hashes must not move."""
    from speed_utils.registry import STAGES

    cpu, study = load_profile("cpu"), load_profile("study")
    for n, stage in STAGES.items():
        same = cpu.section_hash(*stage.config_keys) == study.section_hash(*stage.config_keys)
        assert same == (n != 11), n


def test_all_shipped_profiles_listed():
    assert {"smoke", "cpu", "gpu-24gb", "paper", "study"} <= set(list_profiles())
    assert not [n for n in list_profiles() if n.startswith(("rates-", "prices"))]  # tables, not profiles


def test_paper_numbers_follow_the_paper():
    cfg = load_profile("paper")
    assert (cfg.seed.n_examples, cfg.senior.n_prompts, cfg.revisor.n_examples) == (25000, 10000, 10000)
    assert (cfg.junior.lr, cfg.junior.batch_size) == (1e-4, 16)
    assert (cfg.senior.lr, cfg.senior.beta, cfg.senior.batch_size) == (1e-5, 0.1, 16)
    assert (cfg.revisor.lr, cfg.revisor.batch_size) == (5e-6, 24)
    assert (cfg.embedder.batch_size, cfg.embedder.temperature, cfg.embedder.lora.r) == (1536, 0.02, 16)
    assert cfg.seed.type_weights == {"classification": 7, "sts": 7, "retrieval": 7, "short_short": 1, "long_long": 1}
    assert cfg.teacher.model == "gpt-4o-2024-05-13"


def test_extends_overrides_only_what_it_sets():
    cpu, smoke = load_profile("cpu"), load_profile("smoke")
    assert smoke.teacher.model == "smollm2-135m-instruct" and cpu.teacher.model == "qwen2.5-coder-1.5b-instruct"
    assert smoke.teacher.n_parallel == cpu.teacher.n_parallel
    assert smoke.section_hash("embedder.lora") == cpu.section_hash("embedder.lora")  # set in cpu only
    assert smoke.section_hash("seed") != cpu.section_hash("seed")


def test_unknown_key_names_file_and_key(tmp_path):
    data = base_profile()
    data["seed"]["n_exampels"] = 5
    p = write(tmp_path, "typo", data)
    with pytest.raises(ConfigError) as e:
        load_profile(p)
    assert str(p) in str(e.value) and "seed.n_exampels" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_names_key_and_value(tmp_path):
    data = base_profile()
    data["brainstorm"]["n_topics"] = "twelve"
    p = write(tmp_path, "wrongtype", data)
    with pytest.raises(ConfigError, match=r"brainstorm\.n_topics.*'twelve'"):
        load_profile(p)


def test_negative_size_rejected(tmp_path):
    data = base_profile()
    data["seed"]["n_examples"] = -3
    with pytest.raises(ConfigError, match=r"seed\.n_examples"):
        load_profile(write(tmp_path, "neg", data))


def test_unknown_model_names_key(tmp_path):
    data = base_profile()
    data["models"]["generator"] = "llama-99b"
    with pytest.raises(ConfigError, match=r"models.*unknown model 'llama-99b'"):
        load_profile(write(tmp_path, "model", data))


def test_missing_section_reported(tmp_path):
    data = base_profile()
    del data["teacher"]
    with pytest.raises(ConfigError, match=r"teacher: required key is missing"):
        load_profile(write(tmp_path, "missing", data))


def test_error_in_child_names_child_file(tmp_path):
    write(tmp_path, "parent", base_profile())
    child = write(tmp_path, "child", {"extends": "parent", "teacher": {"n_parallel": 0}})
    with pytest.raises(ConfigError) as e:
        load_profile(child)
    assert f"{child}: teacher.n_parallel" in str(e.value)


def test_api_key_in_params_is_refused(tmp_path):
    data = base_profile()
    data["teacher"]["api_key"] = "sk-should-never-be-here"
    with pytest.raises(ConfigError, match="environment variable"):
        load_profile(write(tmp_path, "secret", data))


def test_openai_backend_needs_base_url(tmp_path):
    data = base_profile()
    data["teacher"] = {"backend": "openai", "model": "gpt-4o"}
    with pytest.raises(ConfigError, match="teacher.base_url"):
        load_profile(write(tmp_path, "nourl", data))


def test_missing_topics_file(tmp_path):
    data = base_profile()
    data["brainstorm"]["topics_file"] = "does/not/exist.txt"
    with pytest.raises(ConfigError, match="topics_file: no such file"):
        load_profile(write(tmp_path, "topics", data))


def test_cli_validate_exits_2_without_traceback(tmp_path):
    data = base_profile()
    data["bogus"] = 1
    p = write(tmp_path, "bad", data)
    proc = subprocess.run([sys.executable, "-m", "speed_utils.cli", "validate", str(p)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "bogus: unknown key" in proc.stderr and "Traceback" not in proc.stderr


def test_a_switch_added_at_its_old_behaviour_leaves_finished_runs_valid(tmp_path):
    """generation.structured_output (added after runs existed): off, the generation section hashes as before
    the key existed, so no finished stage reruns; on, it counts."""
    cfg = load_profile("cpu")
    dump = cfg.model_dump(mode="json")
    del dump["generation"]["structured_output"]
    import hashlib
    import json

    before = hashlib.sha256(json.dumps({"generation": dump["generation"]}, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.section_hash("generation") == before
    on = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"structured_output": True})})
    assert on.section_hash("generation") != before


def test_where_synthesis_runs_is_never_hashed():
    """distributed.synthesis and distributed.ray (issue 19) place the work, they do not shape it: a run
    moves between one process and a Ray cluster without a stage rerunning, and the keys' arrival changed
    no profile's hash (paper's set it; the hash is the one it had before them)."""
    import hashlib
    import json

    paper = load_profile("paper")
    dump = paper.model_dump(mode="json")
    for key in ("synthesis", "ray"):
        del dump["distributed"][key]
    del dump["generation"]["structured_output"]  # hashed only when on (the test above)
    del dump["evaluate"]["fallback_tasks"]  # hashed only when not the default (issue 33)
    del dump["senior"]["judge"], dump["senior"]["judge_margin"]  # likewise (issue 31)
    del dump["embedder"]["seed"], dump["embedder"]["max_steps"], dump["embedder"]["shuffle_positives"]
    assert paper.distributed.synthesis == "ray"
    assert paper.section_hash() == hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]
    local = paper.model_copy(update={"distributed": paper.distributed.model_copy(
        update={"synthesis": "local", "ray": paper.distributed.ray.model_copy(update={"replicas": 3})})})
    assert local.section_hash() == paper.section_hash()
    assert local.section_hash("distributed") == paper.section_hash("distributed")


def test_the_revisors_learning_rate_fits_the_revisions_it_sees():
    """issue 33: gpu-24gb's 1,000 revisions at the paper's 5e-6 (set for 10,000) would barely move the revisor;
    lr x steps, the total update, stays the paper's within 5%."""
    import math

    paper = load_profile("paper").revisor
    total = paper.lr * math.ceil(paper.n_examples / paper.batch_size)
    for name in ("gpu-24gb", "paper"):
        r = load_profile(name).revisor
        assert r.lr * math.ceil(r.n_examples / r.batch_size) == pytest.approx(total, rel=0.05), name
