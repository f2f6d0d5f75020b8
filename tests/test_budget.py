"""The wall-time estimate (``speed-repro estimate``): per-card rates for a GPU profile, an API teacher's
calls in flight, evaluation sizes from mteb's own task statistics; each checked against arithmetic
written out here."""
import json
from pathlib import Path

import mteb
import pytest

from speed_utils import budget, cost
from speed_utils.profiles import ConfigError, load_profile


def test_task_tokens_count_every_character_mteb_lists():
    stats = Path(mteb.__file__).parent / "descriptive_stats"
    sts13 = json.loads((stats / "STS/STS13.json").read_text())["test"]
    assert budget.task_tokens("STS13") == pytest.approx(sts13["number_of_characters"] / 4)  # both sides of each pair
    nf = json.loads((stats / "Retrieval/NFCorpus.json").read_text())["test"]
    assert budget.task_tokens("NFCorpus") == pytest.approx(nf["number_of_characters"] / 4)  # documents and queries
    b77 = json.loads((stats / "Classification/Banking77Classification.json").read_text())
    train = b77["train"]["text_statistics"]["total_text_length"] * 80 * 77 / b77["train"]["num_samples"]
    assert budget.task_tokens("Banking77Classification") == pytest.approx(
        (b77["test"]["text_statistics"]["total_text_length"] + train) / 4)  # 8 per label x 10 experiments of training texts
    with pytest.raises(ConfigError, match="NoSuchTask"):
        budget.task_tokens("NoSuchTask")


def test_a_gpu_profile_is_estimated_per_card_with_its_teacher_calls_in_flight():
    cfg = load_profile("gpu-24gb")
    assert budget.gpus_for(cfg) == ["L4", "A100-40GB"] and budget.gpus_for(load_profile("cpu")) == []
    l4, a100 = budget.rates_for(cfg, "L4"), budget.rates_for(cfg, "A100-40GB")
    assert l4["generator"]["tok_s"] == 400 and a100["generator"]["tok_s"] == 1560  # the card's own rates ...
    assert l4["generator"]["writer_tokens"] == a100["generator"]["writer_tokens"] == 250  # ... over the common ones
    assert budget.rates_for(cfg) == l4  # the file's first card by default
    brainstorm = next(r for r in cost.estimate(cfg) if r["kind"] == "brainstorm")
    per_call = brainstorm["prompt_tokens"] / brainstorm["calls"] / 20000 + 300 / 81 + 0.4
    stage = {x.stage: x.seconds for x in budget.estimate(cfg, "L4")}
    assert stage[1] == pytest.approx(30 + brainstorm["calls"] * per_call / cfg.teacher.max_concurrency)
    assert stage[6] == pytest.approx(30 + 2 * 90 + 50_000 * 250 / 400 + 50_000 * 250 / 320)  # written, then revised
    tokens = sum(budget.task_tokens(t) for t in cfg.evaluate.tasks)
    assert stage[8] == pytest.approx(30 + 2 * tokens / 3400)  # untrained and trained, no baseline named
    faster = {x.stage: x.seconds for x in budget.estimate(cfg, "A100-40GB")}
    assert faster[1] == stage[1] and all(faster[n] < stage[n] for n in (3, 4, 6, 7, 8))
    with pytest.raises(ConfigError, match="rates for L4, A100-40GB only"):
        budget.rates_for(cfg, "H100")
    with pytest.raises(ConfigError, match="--gpu L4"):
        budget.rates_for(load_profile("cpu"), "L4")


def test_colab_line_says_where_a_runtime_ends():
    cfg = load_profile("gpu-24gb")
    for card in ("L4", "A100-40GB"):
        rows, rates = budget.estimate(cfg, card), budget.rates_for(cfg, card)
        total = sum(x.seconds for x in rows)
        line = budget.colab_line(rates, rows)
        assert ("fits one 24 h runtime" in line) == (total <= 0.9 * 24 * 3600), line
    assert budget.colab_line(budget.rates_for(load_profile("cpu")), budget.estimate(load_profile("cpu"))) is None
    long = [budget.StageEstimate(n, f"s{n}", 10 * 3600, "") for n in range(3)]
    assert "ends in stage 02 s2" in budget.colab_line({"colab_runtime_h": 24, "gpu": "L4"}, long)


def test_a_cpu_without_bf16_units_is_told_to_expect_longer(monkeypatch):
    from speed_utils import precision

    cfg = load_profile("cpu")
    rates, rows = budget.rates_for(cfg), budget.estimate(cfg)
    total = sum(x.seconds for x in rows)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    assert budget.slower_here(rates) is None and budget.hardware_line(rates, rows) is None  # the rates' kind of CPU
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    factor = rates["without_bf16_units"]["factor"]
    assert budget.slower_here(rates) == factor > 1
    assert f"expect about {budget.in_words(factor * total)}" in budget.hardware_line(rates, rows)
    assert budget.slower_here(budget.rates_for(load_profile("gpu-24gb"))) is None  # a GPU profile's rates are per card


def test_rates_measured_with_other_models_are_marked():
    assert "other_models" not in budget.rates_for(load_profile("cpu"))
    assert "other_models" not in budget.rates_for(load_profile("study"))  # extends cpu, the same models
    smoke = budget.rates_for(load_profile("smoke"))  # extends cpu with SmolLM2-135M as teacher and generator
    assert smoke["other_models"] == ["teacher smollm2-135m-instruct", "generator smollm2-135m-instruct"]
    assert "measured with other models" in smoke["machine"]


def test_the_line_before_a_run_gives_the_time_only_where_rates_fit(tmp_path, monkeypatch):
    from speed_utils import precision, runner
    from speed_utils.runs import RunPaths

    run = RunPaths(tmp_path / "run")
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("amx_bf16",))
    cpu = runner._expected(load_profile("cpu"), run, list(range(12)), False)
    minutes = sum(x.seconds for x in budget.estimate(load_profile("cpu"))) / 60
    assert cpu.startswith(f"expected: about {minutes:.0f} min for 12 stage(s) on this machine") and "at no cost" in cpu
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    assert "on this CPU, which has no bf16 units" in runner._expected(load_profile("cpu"), run, list(range(12)), False)
    smoke = runner._expected(load_profile("smoke"), run, list(range(12)), False)
    assert smoke.startswith("expected: 12 stage(s) (no rates measured") and "min" not in smoke


def test_a_profile_without_rates_of_its_own_gets_the_cpu_machines_and_says_so(tmp_path):
    """A sweep point's profile lives outside params/ and has no rates file: the estimate falls back to the cpu
    machine's rates and names the fallback (the path that stage 11's points take before each run)."""
    from speed_utils.budget import rates_for

    prof = tmp_path / "point.yaml"
    prof.write_text("extends: smoke\n")
    rates = rates_for(load_profile(prof))
    assert "no params/rates-point.yaml: the cpu machine's rates" in rates["machine"] and rates["generator"]["tok_s"] > 0
