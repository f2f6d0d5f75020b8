"""Issue 7: bad params (hypothesis), QLoRA without CUDA, the run-folder lock, verify, truncated replies."""
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from speed_utils import cli, registry, runner, sweep_spec, sweeps
from speed_utils.paths import REPO_ROOT
from tally import TALLIES
from speed_utils.profiles import ConfigError, load_profile
from speed_utils.runs import RunLock, RunLocked, RunPaths, update_manifest
from speed_utils.files import append_jsonl, write_jsonl

SMOKE = load_profile("smoke").model_dump(mode="json")
# (dotted key, a bad value, words the error must contain)
NUMERIC = [("seed.n_examples", "int"), ("senior.n_prompts", "int"), ("revisor.n_examples", "int"),
           ("synthesis.n_examples", "int"), ("embedder.batch_size", "int"), ("generation.batch_size", "int"),
           ("brainstorm.n_topics", "int"), ("junior.lr", "float"), ("embedder.temperature", "float"),
           ("teacher.max_calls", "int"), ("synthesis.chunk_size", "int"), ("evaluate.batch_size", "int")]
PATHS = ["brainstorm.topics_file", "evaluate.local_tasks_dir", "sweeps.scaling"]
SECTIONS = [k for k, v in SMOKE.items() if isinstance(v, dict)]


def _set(data: dict, dotted: str, value) -> dict:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


bad_params = st.one_of(
    st.tuples(st.just("wrong type"), st.sampled_from([k for k, _ in NUMERIC]),
              st.sampled_from(["many", [1, 2], {"a": 1}, "1e3x"])),
    st.tuples(st.just("negative"), st.sampled_from([k for k, _ in NUMERIC]), st.integers(-10**6, 0)),
    st.tuples(st.just("unknown key"), st.sampled_from(SECTIONS),
              st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12)),
    st.tuples(st.just("missing path"), st.sampled_from(PATHS), st.text("abcdefgh/", min_size=1, max_size=10)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=bad_params)
def test_generated_bad_params_name_the_file_and_the_key(case, tmp_path_factory):
    kind, key, value = case
    folder = tmp_path_factory.mktemp("bad")
    data = {"extends": "smoke"}
    if kind == "unknown key":
        current = SMOKE[key]
        if value in current:
            return  # a real key: not a bad case
        _set(data, f"{key}.{value}", 1)
        dotted = f"{key}.{value}"
    elif kind == "missing path":
        _set(data, key, f"no/such/{value}.yaml")
        dotted = key
    else:
        _set(data, key, value)
        dotted = key
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_profile(path)
    assert f"{path}: {dotted}" in str(e.value), str(e.value)
    TALLIES["bad params files tried"][kind] += 1


def test_qlora_without_cuda_fails_before_a_run_folder_exists(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what this test is about, on any machine
    prof = tmp_path / "q.yaml"
    prof.write_text(yaml.safe_dump({"extends": "smoke", "junior": {"qlora": True}, "embedder": {"qlora": True}}))
    with pytest.raises(ConfigError) as e:
        runner.run(str(prof), runs_dir=tmp_path / "runs")
    assert f"{prof}: junior.qlora" in str(e.value) and f"{prof}: embedder.qlora" in str(e.value)
    assert "no CUDA" in str(e.value) and not (tmp_path / "runs").exists()
    assert cli.main(["run", "--profile", str(prof), "--runs-dir", str(tmp_path / "runs")]) == 2
    TALLIES["bad params files tried"]["QLoRA without CUDA"] += 1


def test_second_runner_on_the_same_run_folder_exits_with_a_clear_message(tmp_path):
    import subprocess
    import sys
    import time

    folder = tmp_path / "runs" / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from speed_utils.runs import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lines = []
        rc = runner.run("smoke", run_id="busy", runs_dir=tmp_path / "runs", log=lines.append)
        with pytest.raises(RunLocked, match="being written by another runner"):
            RunLock(folder).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert rc == 3 and f"being written by another runner (pid {holder.pid}" in lines[-1]
    time.sleep(0.2)
    RunLock(folder).acquire().release()  # free again once the holder is gone


def test_verify_reports_each_problem(tmp_path, capsys):
    run = RunPaths(tmp_path / "run").make()
    (run.root / "config.yaml").write_text(load_profile("smoke").to_yaml())
    write_jsonl(run.data / "seed.jsonl", [{"i": i} for i in range(5)])
    (run.adapters / "junior").mkdir(parents=True)
    (run.adapters / "junior" / "adapter_model.safetensors").write_bytes(b"weights")
    (run.adapters / "junior" / "adapter_config.json").write_text("{}")
    update_manifest(run, 2, [run.data / "seed.jsonl", run.adapters / "junior"])
    append_jsonl(run.ledger, [{"a": 1}])
    assert cli.verify(run.root) == 0
    with open(run.data / "seed.jsonl", "r+b") as f:  # truncate mid-row
        f.truncate(f.seek(0, 2) - 3)
    (run.adapters / "junior" / "adapter_model.safetensors").unlink()
    with open(run.ledger, "ab") as f:
        f.write(b'{"cut": ')
    lines = []
    assert cli.verify(run.root, log=lines.append) == 1
    text = "\n".join(lines)
    assert "data/seed.jsonl: sha256 differs" in text and "data/seed.jsonl: 4 rows, the manifest says 5" in text
    assert "adapters/junior: sha256 differs" in text and "ledger.jsonl: ends in a partial line" in text
    assert "data/seed.jsonl: ends in a partial line" in text and text.endswith("5 problem(s)")


def test_truncated_teacher_completion_is_a_counted_reject(smoke_cfg, run_paths, make_teacher):
    from fakes import FakeTeacher

    from speed_utils.prompts import generation_prompt
    from speed_utils.teacher_data import ask_teacher
    from speed_utils.schema import parse_example

    with FakeTeacher(default=lambda body: ("ok", '{"S1": "a cat sat", "S2": "a cat is sitt', "length")) as fake:
        teacher = make_teacher(fake.base_url)
        p = generation_prompt("sts", 0, 0, topic="Top/Pets")
        kept, rejects = ask_teacher(teacher, "seed", [p], smoke_cfg.seed, 0, "t",
                                    parse=lambda p, r: parse_example(p.task_type, r.content, r.finish_reason))
    assert kept == [] and rejects[0]["reason"] == "truncated" and rejects[0]["finish_reason"] == "length"


def test_lock_is_reentrant_within_a_process(tmp_path):
    first = RunLock(tmp_path / "r").acquire()
    assert RunLock(tmp_path / "r").acquire() is first  # a notebook cell run again after an error
    first.release()
    RunLock(tmp_path / "r").acquire().release()


def test_stale_temp_files_are_told_from_live_writers(tmp_path):
    import os
    import subprocess

    from speed_utils.runs import stale_temp

    live = subprocess.Popen(["sleep", "30"])
    try:
        assert not stale_temp(tmp_path / f".chunk-00001.jsonl.{live.pid}.abc.tmp")
    finally:
        live.kill()
        live.wait()
    assert stale_temp(tmp_path / f".chunk-00001.jsonl.{live.pid}.abc.tmp")  # its writer is gone
    assert stale_temp(tmp_path / f".chunk-00001.jsonl.{os.getpid()}.abc.tmp")


def test_rerunning_an_adopted_stage_never_writes_into_the_donor(tmp_path):
    donor = RunPaths(tmp_path / "donor").make()
    (donor.root / "env.json").write_text('{"donor": true}')
    point = RunPaths(tmp_path / "point").make()
    (point.root / "env.json").symlink_to(donor.root / "env.json")
    ctx = registry.StageContext(point.root, "smoke", stage=0)
    assert not (point.root / "env.json").exists() and (donor.root / "env.json").read_text() == '{"donor": true}'
    ctx.lock.release()


def test_editing_a_sweep_spec_invalidates_stage_11(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nprofile: smoke\ngrid: {embedder.train_examples: [3]}\n")
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump({"extends": "smoke", "sweeps": {"scaling": str(spec)}}))
    run = RunPaths(tmp_path / "run").make()
    before = registry.expected_marker(run, load_profile(prof), registry.STAGES[11])["config_hash"]
    spec.write_text("name: s\nprofile: smoke\ngrid: {embedder.train_examples: [3, 6]}\n")
    assert registry.expected_marker(run, load_profile(prof), registry.STAGES[11])["config_hash"] != before


def test_stage_11_hands_the_ablation_points_to_the_scaling_sweep_as_donors(monkeypatch, tmp_path):
    calls = []

    def fake_sweep(spec, runs_dir, donors, log):  # records the hand-off; the real sweep is tested on smoke
        calls.append((spec, list(donors)))
        return {"points": {p: {"run": str(runs_dir / Path(spec).stem / p)} for p in ("a", "b")}}

    monkeypatch.setattr(sweeps, "sweep", fake_sweep)
    cfg = load_profile("study")  # both sweeps (the cpu profile runs the ablation alone)
    run = RunPaths(tmp_path / "run")
    sweeps.run_sweeps(cfg, run, log=lambda *_: None)
    ablation_points = [run.root / "sweeps" / "study-ablation" / p for p in ("a", "b")]
    assert [Path(s).stem for s, _ in calls] == ["study-ablation", "study-scaling"]
    assert calls[0][1] == [run.root] and calls[1][1] == [run.root, *ablation_points]

    # a study: its stages adopted from a finished run, whose own sweep points donate too (after its own)
    done = RunPaths(tmp_path / "done")
    for point in ("study-scaling/x", "study-ablation/y", "study-ablation/profiles"):  # profiles/: not a run folder
        (done.root / "sweeps" / point).mkdir(parents=True)
    for point in ("study-scaling/x", "study-ablation/y"):
        (done.root / "sweeps" / point / "config.yaml").write_text("{}")
    study = RunPaths(tmp_path / "study").make()
    for n in (0, 5):
        study.marker(n).write_text(json.dumps({"adopted_from": str(done.root)}))
    study.marker(6).write_text(json.dumps({"config_hash": "made here"}))
    calls.clear()
    sweeps.run_sweeps(cfg, study, log=lambda *_: None)
    donated = [done.root / "sweeps/study-ablation/y", done.root / "sweeps/study-scaling/x"]
    assert calls[0][1] == [study.root, *donated]
    assert calls[1][1] == [study.root, *[study.root / "sweeps/study-ablation" / p for p in ("a", "b")], *donated]


@pytest.mark.parametrize("spec", sorted((REPO_ROOT / "params" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_has_exactly_its_points(spec):
    """Named points, or one per grid combination: never an extra unnamed point (product() of no grid)."""
    raw = yaml.safe_load(spec.read_text())
    loaded = sweep_spec.load_sweep(spec)
    grid = 1 if raw.get("grid") else 0
    for values in (raw.get("grid") or {}).values():
        grid *= len(values)
    want = (len(raw.get("points") or {}) + grid) * len(raw.get("seeds") or [None])
    assert len(loaded["points"]) == want and all(loaded["points"].keys()), list(loaded["points"])
    assert set(loaded["bases"]) == set(loaded["points"])
    for name, (base, seed) in loaded["bases"].items():  # each seed's point trains with that seed
        assert (loaded["points"][name].get("embedder") or {}).get("seed") == seed, name


def test_a_sweeps_seeds_are_checked(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nprofile: smoke\nseeds: [1, 1]\npoints: {a: {}}\n")
    with pytest.raises(ConfigError, match="seeds: a list of distinct"):
        sweep_spec.load_sweep(spec)
    spec.write_text("name: s\nprofile: smoke\nseeds: [3, 4]\npoints: {a: {embedder: {lr: 0.1}}}\n")
    got = sweep_spec.load_sweep(spec)
    assert got["points"] == {"a@3": {"embedder": {"lr": 0.1, "seed": 3}}, "a@4": {"embedder": {"lr": 0.1, "seed": 4}}}


def test_evaluation_revision_follows_the_weights(tmp_path):
    from speed_utils import evaluate

    run = RunPaths(tmp_path / "run").make()
    (run.models / "embedder").mkdir(parents=True)
    (run.models / "embedder" / "model.safetensors").write_bytes(b"weights v1")
    cfg = load_profile("smoke")
    c = evaluate.Candidate("x", "org/x", str(run.models / "embedder"), "encoder", True)
    first = evaluate.revision(cfg, c, run)
    (run.models / "embedder" / "model.safetensors").write_bytes(b"weights v2")
    assert evaluate.revision(cfg, c, run) != first
    released = evaluate.Candidate("y", "org/y", "/some/released/model", "encoder", False)
    assert evaluate.revision(cfg, released, run) == evaluate.revision(cfg, released, run)


def test_corrupt_inputs_are_caught_by_their_checksums(tmp_path):
    from speed_utils.registry import StageContext, StageError

    run = RunPaths(tmp_path / "run").make()
    write_jsonl(run.data / "seed.jsonl", [{"i": i} for i in range(4)])
    (run.adapters / "junior").mkdir(parents=True)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        (run.adapters / "junior" / f).write_text(f)
    write_jsonl(run.data / "tasks.jsonl", [{"t": 1}])
    update_manifest(run, 2, [run.data / "seed.jsonl", run.data / "tasks.jsonl", run.adapters / "junior"])
    with open(run.data / "seed.jsonl", "r+b") as f:
        f.truncate(10)
    with pytest.raises(StageError, match=r"seed.jsonl does not match its checksum .* after stage 2 wrote it"):
        StageContext(run.root, "smoke", stage=3)
    (run.adapters / "junior" / "adapter_model.safetensors").unlink()
    with pytest.raises(StageError, match=r"adapters/junior does not match its checksum"):
        StageContext(run.root, "smoke", stage=4)


def test_api_key_as_a_papermill_parameter_is_refused(monkeypatch):
    import __main__

    from speed_utils.registry import StageError, refuse_secret_parameters

    monkeypatch.setattr(__main__, "api_key", "sk-canary-123", raising=False)
    with pytest.raises(StageError, match="api_key: API keys must not be papermill parameters"):
        refuse_secret_parameters()


def test_snapshot_copies_small_results_and_summarises_the_ledger(tmp_path):
    run = RunPaths(tmp_path / "run").make()
    (run.root / "config.yaml").write_text(load_profile("smoke").to_yaml())
    (run.stages / "02.done.json").write_text("{}")
    write_jsonl(run.data / "seed.jsonl", [{"i": 1}])
    (run.data / "big.jsonl").write_bytes(b"{}\n" * 600_000)  # 1.8 MB: stays out
    append_jsonl(run.ledger, [{"stage": "02_seed", "key": "a", "cache_hit": False, "prompt_tokens": 5, "completion_tokens": 2},
                              {"stage": "02_seed", "key": "a", "cache_hit": True}])
    assert cli.snapshot(run.root, tmp_path / "snap") == 0
    names = {p.name for p in (tmp_path / "snap").iterdir()}
    assert {"config.yaml", "02.done.json", "seed.jsonl", "ledger_summary.json"} <= names and "big.jsonl" not in names
    summary = json.loads((tmp_path / "snap" / "ledger_summary.json").read_text())
    assert summary["02_seed"] == {"calls": 1, "cache_hits": 1, "prompt_tokens": 5, "completion_tokens": 2}
    assert summary["total"]["unique_request_keys"] == 1


def test_a_forced_stage_forgets_its_finished_trainings(tmp_path):
    """--force: the records that let a resumed stage 07 reuse its trainings go, so both train again; another
    stage's records stay."""
    from speed_utils.runs import record_path
    from speed_utils.train import record_training, trained_before

    run = RunPaths(tmp_path / "run")
    for rel in ("models/embedder", "models/baseline", "adapters/junior"):
        (run.root / rel).mkdir(parents=True)
        (run.root / rel / "model.safetensors").write_bytes(rel.encode())
        record_training(run.root / rel, "key", {"steps": 1})
        assert trained_before(run.root / rel, "key") == {"steps": 1}
    runner.forget_trainings(run, registry.STAGES[7])
    for rel in ("models/embedder", "models/baseline"):
        assert trained_before(run.root / rel, "key") is None and not record_path(run.root / rel).exists()
    assert trained_before(run.root / "adapters/junior", "key") == {"steps": 1}


def test_a_stage_reads_the_runs_config_once_under_the_runner_and_checks_the_profile_by_hand(tmp_path, monkeypatch):
    """Issue 34: under the runner (which wrote config.yaml from the profile as the run started) a stage reads
    config.yaml alone, never the profile; by hand it loads the profile too and refuses one changed since."""
    from speed_utils import profiles
    from speed_utils.runs import LOCK_ENV

    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump({"extends": "smoke", "embedder": {"lr": 3.0e-4}}))
    run = RunPaths(tmp_path / "run").make()
    assert registry.frozen_config(run, prof).embedder.lr == 3.0e-4  # the first stage by hand writes config.yaml
    prof.write_text(yaml.safe_dump({"extends": "smoke", "embedder": {"lr": 5.0e-4}}))
    with pytest.raises(registry.StageError, match="the profile changed after this run started"):
        registry.frozen_config(run, prof)
    monkeypatch.setenv(LOCK_ENV, str(run.root.resolve()))
    monkeypatch.setattr(profiles, "load_profile", lambda p: pytest.fail("parsed the profile under the runner"))
    monkeypatch.setattr(registry, "load_profile", lambda p: pytest.fail("parsed the profile under the runner"))
    assert registry.frozen_config(run, prof).embedder.lr == 3.0e-4  # the run's config, as the runner wrote it
