"""Where stage 08's tasks come from (issue 33): the project runs with nothing beside it."""
import random
from pathlib import Path

import pytest

from speed_utils import mteb_tasks, preflight
from speed_utils.config import MTEB_LOCAL_ENV
from speed_utils.profiles import ConfigError, load_profile

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mteb_local"


@pytest.fixture
def no_local(monkeypatch):
    monkeypatch.delenv(MTEB_LOCAL_ENV, raising=False)


def copies(tmp_path: Path, *folders: str) -> Path:
    """A folder of local copies with the named task folders (empty: the plan only looks for them)."""
    for f in folders:
        (tmp_path / "mteb_local" / f).mkdir(parents=True)
    return tmp_path / "mteb_local"


def test_no_profile_names_a_folder_outside_the_project():
    for name in ("cpu", "smoke", "study", "gpu-24gb", "gpu-smoke", "paper"):
        text = (Path(mteb_tasks.__file__).parents[1] / "params" / f"{name}.yaml").read_text()
        assert "local_tasks_dir: ../" not in text, name


def test_a_clone_alone_evaluates_the_proxy_tasks_and_says_so(no_local):
    cfg = load_profile("cpu")
    p = mteb_tasks.plan(cfg, use_hub=False)
    assert [(t.name, t.source) for t in p.tasks] == [("LeeDocSTS", "proxy"), ("PangLeePolarityClassification", "proxy")]
    line = mteb_tasks.describe(p)
    assert "not MTEB tasks" in line and "STS12" in line and MTEB_LOCAL_ENV in line  # what is missing, and the way in
    check, = preflight.check_tasks(cfg)
    assert check.status == "warn" and "LeeDocSTS" in check.detail


def test_the_environment_names_the_local_copies(tmp_path, monkeypatch):
    folder = copies(tmp_path, "sts12", "sts13", "sickr")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(MTEB_LOCAL_ENV, "mteb_local")  # relative to where the command runs
    cfg = load_profile("cpu")
    assert cfg.evaluate.local_tasks_dir == str(folder.resolve())  # recorded in the run's config.yaml
    p = mteb_tasks.plan(cfg, use_hub=False)
    assert [(t.name, t.source) for t in p.tasks] == [("STS12", "local"), ("STS13", "local"), ("SICK-R", "local")]
    assert p.local_from == f"${MTEB_LOCAL_ENV}"
    assert "STS14, STS15, MSRParaphraseCorpus: the Hub is not in use, and not in" in mteb_tasks.describe(p)


def test_a_missing_folder_in_the_environment_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv(MTEB_LOCAL_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=rf"\${MTEB_LOCAL_ENV}: no such folder .*nowhere"):
        load_profile("smoke")


def test_the_profile_key_wins_over_the_environment(tmp_path, monkeypatch):
    folder = copies(tmp_path, "sts13")
    monkeypatch.setenv(MTEB_LOCAL_ENV, str(tmp_path / "elsewhere"))  # not even checked: the profile names one
    profile = tmp_path / "mine.yaml"
    profile.write_text(f"extends: smoke\nevaluate: {{local_tasks_dir: {folder}}}\n")
    p = mteb_tasks.plan(load_profile(profile), use_hub=False)
    assert [(t.name, t.source) for t in p.tasks] == [("STS13", "local")] and p.local_from == "evaluate.local_tasks_dir"


def test_with_the_hub_the_tasks_come_from_mteb_and_each_once(tmp_path, monkeypatch):
    monkeypatch.setenv(MTEB_LOCAL_ENV, str(copies(tmp_path, "msrp", "sts12")))
    profile = tmp_path / "hub.yaml"
    profile.write_text("extends: cpu\nevaluate: {tasks: [STS12, STSBenchmark]}\n")
    p = mteb_tasks.plan(load_profile(profile), use_hub=True)
    names = [t.name for t in p.tasks]
    assert len(names) == len(set(names))  # STS12 in both evaluate.tasks and local_tasks: evaluated once
    sources = {t.name: t.source for t in p.tasks}
    assert sources["STS14"] == "mteb" and sources["MSRParaphraseCorpus"] == "local"  # not in MTEB: the copy
    assert not any(t.source == "proxy" for t in p.tasks)


def test_nothing_to_evaluate_fails_before_the_run(tmp_path, no_local):
    profile = tmp_path / "bare.yaml"
    profile.write_text("extends: smoke\nevaluate: {fallback_tasks: []}\n")
    check, = preflight.check_tasks(load_profile(profile))
    assert check.status == "fail" and "nothing to evaluate" in check.detail


def test_a_hub_task_draws_the_sample_a_local_copy_draws(monkeypatch):
    """mteb's Hub task, its data replaced by a local list: the seeded sample is the file task's."""
    from datasets import Dataset, DatasetDict

    rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "score": float(i % 5)} for i in range(50)]
    task = mteb_tasks.hub_task("STS13", limit=8, seed=4)
    task.dataset = DatasetDict({"test": Dataset.from_list(rows)})
    task.dataset_transform()
    want = sorted(random.Random("4:STS13").sample(range(50), 8))
    assert task.dataset["test"]["sentence1"] == [f"a{i}" for i in want]
    assert task.metadata.name == "STS13" and "8-row sample" in task.metadata.description
    assert mteb_tasks.task_source(task) == "mteb-sample"  # stage 09 keeps it out of the MTEB table


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/mteb_local is not beside the project")
def test_a_local_copy_is_the_same_seeded_sample_as_before():
    task = mteb_tasks.file_task("STS13", SHARED, limit=8, seed=4)
    task.load_data()
    every = mteb_tasks.file_task("STS13", SHARED)
    every.load_data()
    picked = mteb_tasks.sample_rows(len(every.dataset["test"]), 8, 4, "STS13")
    assert task.dataset["test"]["sentence1"] == [every.dataset["test"][i]["sentence1"] for i in picked]
