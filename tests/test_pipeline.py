"""The papermill runner on the smoke profile: real notebooks, real kernels, a real llama.cpp teacher."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml

from speed_utils import registry, runner
from speed_utils.config import MTEB_LOCAL_ENV
from speed_utils.paths import REPO_ROOT
from speed_utils.files import read_jsonl
from speed_utils.schema import parse_example
from tally import FLOW

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


CANARY = "sk-canary-" + "5" * 30  # an API key in the environment must never reach any output


def cli(*args, timeout=2700) -> subprocess.CompletedProcess:
    """The command line as a terminal gets it: bytes decoded without universal newlines (which would turn a
    progress bar's \r redraws into lines of their own). The timeout guards against a hang only: the whole smoke
    run takes 7-8 min on the project's machine and 16 min on a 2-core CPU without AVX-512 (2026-12-02).

    Every run of this module is a clone's with nothing beside it (issue 33): no $SPEED_REPRO_MTEB_LOCAL, which
    CI sets for the other tests."""
    env = {k: v for k, v in os.environ.items() if k != MTEB_LOCAL_ENV}
    proc = subprocess.run([sys.executable, "-m", "speed_utils.cli", *args], capture_output=True,
                          timeout=timeout, cwd=REPO, env={**env, "OPENAI_API_KEY": CANARY})
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def fresh_calls(run: Path, stage: str | None = None) -> list[dict]:
    return [r for r in read_jsonl(run / "ledger.jsonl") if not r["cache_hit"] and (stage is None or r["stage"] == stage)]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    proc = cli("run", "--profile", "smoke", "--runs-dir", str(runs), "--run-id", "s1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = runs / "s1"
    for name, rel in (("tasks", "data/tasks.jsonl"), ("seed", "data/seed.jsonl"), ("prefs", "data/prefs.jsonl"),
                      ("revisions", "data/revisions.jsonl"), ("synthetic", "data/synthetic.jsonl")):
        FLOW[name] = len(list(read_jsonl(run / rel)))
    FLOW["trained steps"] = json.loads((run / "stages/07.done.json").read_text())["metrics"]["embedder"]["steps"]
    return runs, run, proc


def test_smoke_run_writes_every_stage(smoke_run):
    runs, run, proc = smoke_run
    for n, stage in registry.STAGES.items():
        marker = json.loads((run / "stages" / f"{n:02d}.done.json").read_text())
        assert marker["config_hash"] and marker["versions"]["torch"].startswith("2.13.0")
        assert (run / "notebooks" / stage.notebook).exists()
        for rel in stage.outputs:
            assert (run / rel).exists()
    tasks = list(read_jsonl(run / "data" / "tasks.jsonl"))
    assert {t["task_type"] for t in tasks} >= {"sts"} and len(tasks) >= 2
    seed, rejects = list(read_jsonl(run / "data/seed.jsonl")), list(read_jsonl(run / "data/rejects.jsonl"))
    assert len(seed) + len(rejects) == 8  # smoke asks for 8; every one is either kept or rejected
    for name in ("junior", "senior", "revisor"):
        assert (run / "adapters" / name / "adapter_config.json").exists()
    senior = json.loads((run / "stages/04.done.json").read_text())["metrics"]
    assert senior["judgements"]["pairs"] + senior["judgements"]["rejected"] == 4 and senior["path"] == "lora"
    assert len(list(read_jsonl(run / "data/prefs.jsonl"))) == senior["judgements"]["pairs"] >= 1
    quality = json.loads((run / "stages/05.done.json").read_text())["metrics"]["quality"]
    assert set(quality["validity"]) == {"junior", "senior", "revised"} and quality["prompts"] == 2
    rows = list(read_jsonl(run / "data/quality.jsonl"))
    assert len(rows) == 2
    for name, text in (("junior", "junior"), ("senior", "senior")):  # the table is the texts' own validity
        valid = [parse_example(r["task_type"], r[text]).ok for r in rows]
        assert [r[f"{name}_schema_valid"] for r in rows] == valid
        assert quality["validity"][name]["schema_valid"] == round(sum(valid) / 2, 3)
    assert quality["validity"]["senior"]["schema_valid"] > 0  # constrained decoding: the smoke senior writes valid JSON
    metrics = json.loads((run / "stages/02.done.json").read_text())["metrics"]
    assert metrics["valid"] == len(seed) and metrics["structured_output"] is True
    assert metrics["teacher"]["calls"] == 8 == len(fresh_calls(run, "02_seed"))
    assert "stage 02 seed: done" in proc.stdout


def test_the_terminal_is_quiet_and_the_run_ends_with_a_report_and_a_summary(smoke_run, tmp_path):
    """What a person sees (issue 21): a line per stage, progress bars, the expected time before, the summary
    after; papermill's cell chatter and the kernels' messages only in logs/; a report.html with every figure."""
    runs, run, proc = smoke_run
    seen = proc.stdout + proc.stderr
    for noise in ("Executing Cell", "Ending Cell", "Input Notebook", "Output Notebook", "Kernel is running over TCP"):
        assert noise not in seen, noise
    bars = [line for line in proc.stdout.split("\n") if line.strip("\r").startswith("01 brainstorm:")]
    assert len(bars) == 1 and bars[0].count("\r") >= 2, bars  # a progress bar redraws its one line, as in a terminal
    assert "Computing widget examples" not in seen  # stage 07 sets its model card's example itself
    inner = [part for part in re.split(r"[\r\n]", seen) if part.startswith(("writer:", "revisor:"))]
    assert not inner, inner  # stage 06: its own bar per pass, not one more per batch of requests
    assert "expected: 12 stage(s) (no rates measured for this profile" in proc.stdout  # smoke: other models than the rates
    assert "at no cost" in proc.stdout  # before the run: the teacher's cost
    assert all(f"stage {n:02d} {st.name}: done in" in proc.stdout for n, st in registry.STAGES.items())
    assert f"report: {run / 'report.html'}" in proc.stdout
    said = next(line for line in proc.stdout.splitlines() if line.startswith("embedder, STS average"))
    assert all(f"{who} " in said for who in ("smollm2-135m-instruct trained", "untrained", "all-minilm-l6-v2 as released"))
    assert "Executing Cell" in (run / "logs/00_environment.papermill.log").read_text()  # the chatter is kept, apart
    page = (run / "report.html").read_text()
    figures = sorted((run / "figures").glob("*.png"))
    assert figures and all(f'alt="{f.name}"' in page for f in figures)  # every stage's figures, in the report
    assert all(f'id="stage-{n:02d}"' in page for n in registry.STAGES) and "The claims table" in page
    assert "StageContext" not in page  # code cells left out by default ...
    again = cli("report", str(run), "--code")
    assert again.returncode == 0 and "StageContext" in (run / "report.html").read_text()  # ... and in on request


def test_smoke_run_synthesizes_trains_evaluates_and_reports(smoke_run):
    runs, run, proc = smoke_run
    synth = json.loads((run / "stages/06.done.json").read_text())["metrics"]
    raw = synth["chunks"]
    assert synth["requested"] == 12 and raw["chunks"] == 3
    kept, rejects = list(read_jsonl(run / "data/synthetic.jsonl")), list(read_jsonl(run / "data/synthesis_rejects.jsonl"))
    assert len(kept) == synth["kept"] and len(kept) + len(rejects) == 12  # every example kept or rejected with a reason
    assert all(r["reason"] for r in rejects) and raw["structured_output"] is True
    asked = Counter(r["task_type"] for r in rejects) + Counter(r["task_type"] for r in kept)  # prompts per type
    assert synth["valid_rate_after_revision"] >= 0.5 and synth["per_type"] == {
        t: {"requested": n, "valid": synth["per_type"][t]["valid"], "kept": sum(r["task_type"] == t for r in kept)}
        for t, n in asked.items()}
    # a valid example of every type asked for three times or more; a type the 7:7:7:2 mix asks for once (text
    # matching) is the 135M writer's coin flip, and the smoke teacher's parallel slots make fresh runs differ
    assert {t for t, n in asked.items() if n >= 3} <= {r["task_type"] for r in kept}
    emb = json.loads((run / "stages/07.done.json").read_text())["metrics"]
    assert emb["embedder"]["loss"] == "cached-infonce" and emb["embedder"]["steps"] >= 1 and emb["baseline"]["lora"] is False
    assert emb["embedder"]["examples"] == len(kept) > 0  # the generators' data, and only it, reaches stage 07
    scores = list(read_jsonl(run / "data/scores.jsonl"))
    assert {r["label"] for r in scores} == {"smollm2-135m-instruct untrained", "smollm2-135m-instruct + our data",
                                           "all-minilm-l6-v2 (released)", "all-minilm-l6-v2 + our data"}
    # a clone alone (issue 33): no MTEB data offline, so the STS proxy that gensim's wheel ships, and the run says so
    assert {(r["task"], r["source"]) for r in scores} == {("LeeDocSTS", "proxy")}
    assert "evaluation tasks: LeeDocSTS proxy tasks from PyPI wheels" in proc.stdout and "left out: STS13" in proc.stdout
    for r in scores:  # each score is mteb's own, read back from the JSON it wrote
        saved = json.loads(next((run / r["results"]).rglob(f"{r['task']}.json")).read_text())
        main = [s["main_score"] for split in saved["scores"].values() for s in split]
        assert math.isfinite(r["score"]) and r["score"] == pytest.approx(100 * main[0], abs=0.006), r  # 2 decimals
    cosines = json.loads((run / "data/sts_pairs.json").read_text())["models"]  # every pair's cosine, per model
    trained, untrained = cosines["smollm2-135m-instruct + our data"], cosines["smollm2-135m-instruct untrained"]
    moved = [abs(a - b) > 1e-3 for a, b in zip(trained["LeeDocSTS"], untrained["LeeDocSTS"])]  # rounding moves them by < 1e-6
    assert sum(moved) > len(moved) // 2  # training moved most pairs' cosines (lr 1e-12 moves none: checked, issue 20)
    intervals = {(r["label"], r["task"]): r for r in read_jsonl(run / "data/score_intervals.jsonl")}
    for r in scores:  # every STS score carries its bootstrap interval, around mteb's own score
        if r["type"] == "STS":
            ci = intervals[(r["label"], r["task"])]
            assert ci["value"] == pytest.approx(r["score"], abs=0.01) and ci["lo"] <= ci["value"] <= ci["hi"]
    gains = [r for (label, task), r in intervals.items() if task == "STS average - smollm2-135m-instruct untrained"]
    assert len(gains) == 3 and all(r["lo"] <= r["value"] <= r["hi"] for r in gains)
    mteb_files = list((run / "mteb/results").rglob("LeeDocSTS.json"))
    assert len(mteb_files) == 4 and all((f.parent / "settings.json").exists() for f in mteb_files)
    results = json.loads((run / "data/results.json").read_text())
    assert results["mteb"] == {} and len(results["local"]) == 4  # offline: no MTEB data, a local table
    cost = json.loads((run / "data/cost.json").read_text())
    assert sum(r["calls"] for r in cost["per_stage"]) == len(fresh_calls(run))
    assert cost["extrapolation"]["rows"][0]["calls"] == 45_000


def test_smoke_sweep_adopts_shared_stages(smoke_run):
    runs, run, proc = smoke_run
    sweep = json.loads((run / "data/sweeps.json").read_text())["sweeps"]["scaling"]
    # issue 31: each point with two seeds, the shuffled-positives control beside the sizes
    assert sweep["order"] == ["shuffled@0", "shuffled@1", "train_examples=3@0", "train_examples=3@1",
                              "train_examples=6@0", "train_examples=6@1"]
    available = len(list(read_jsonl(run / "data/synthetic.jsonl")))
    for name, point in sweep["points"].items():
        point_run = Path(point["run"])
        assert point["adopted"] == [0, 1, 2, 3, 4, 5, 6], name  # nothing retrained, no teacher call repeated
        for n in range(7):
            assert json.loads((point_run / f"stages/{n:02d}.done.json").read_text())["adopted_from"] == str(run)
        for n in (7, 8):
            assert "adopted_from" not in json.loads((point_run / f"stages/{n:02d}.done.json").read_text())
        assert not fresh_calls(point_run)
        trained = json.loads((point_run / "stages/07.done.json").read_text())["metrics"]
        size = 6 if name.startswith("shuffled") else int(name.split("=")[1].split("@")[0])
        assert trained["embedder"]["examples"] == min(size, available)  # smoke trains on the synthetic data alone
        assert trained["embedder"]["steps"] == trained["baseline"]["steps"] == 2  # every point: the same steps
    rows = {r["point"]: r for r in json.loads((run / "data/sweeps.json").read_text())["tables"]["scaling"]}
    assert rows["train_examples=6@0"]["tasks"] != rows["train_examples=6@1"]["tasks"]  # the seed changes the training
    assert len(rows["shuffled@0"]["readouts"]) == 2  # the decoder and MiniLM, both trained on the point's rows
    ci = json.loads((run / "data/sweeps.json").read_text())["intervals"]["scaling"]
    assert set(ci["points"]) == {"shuffled", "train_examples=3", "train_examples=6"} and ci["skipped"] == []
    assert all(p["seeds"] == 2 for p in ci["points"].values())
    assert set(ci["minus_first"]) == {"train_examples=6 - train_examples=3", "shuffled - train_examples=3"}
    assert set(ci["minus_shuffled"]) == {"train_examples=3 - shuffled", "train_examples=6 - shuffled"}
    assert set(ci["minus_untrained"]) == {f"{b} - untrained" for b in ci["points"]}
    assert ci["untrained"]["lo"] <= ci["untrained"]["value"] <= ci["untrained"]["hi"]
    slope = ci["slope_per_decade"]
    assert slope["lo"] <= slope["value"] <= slope["hi"] and slope["seeds"] == 2
    assert set(ci["readouts"]) == {"smollm2-135m-instruct + our data", "all-minilm-l6-v2 + our data"}
    claims = {(c["claim"], c["readout"], c["measured as"][:8]): c for c in json.loads((run / "data/claims.json").read_text())}
    verdicts = {c["holds here"].split(":")[0] for c in claims.values()}
    assert verdicts <= {"holds", "fails", "undecided at this scale", "undecided", "not measured", "readout blind"}
    trains = claims[("Synthetic data trains the embedder", "smollm2-135m-instruct + our data", "stage 08")]
    assert trains["ci95"] and trains["holds here"].startswith("undecided: one training")  # never a verdict on one
    for label in ci["readouts"]:
        got = claims[("Log-linear scaling with data", label, "stage 11")]
        want = ci["readouts"][label]["slope_per_decade"]
        assert got["ci95"] == [want["lo"], want["hi"]] and got["seeds"] == 2


def test_a_point_another_sweep_already_ran_is_adopted_whole(smoke_run, tmp_path):
    """Stage 11 hands the ablation's points to the scaling sweep as donors: an identical point trains nothing."""
    runs, run, _ = smoke_run
    done = Path(json.loads((run / "data/sweeps.json").read_text())["sweeps"]["scaling"]["points"]["train_examples=6@1"]["run"])
    spec = yaml.safe_load((REPO_ROOT / "params/sweeps/smoke-scaling.yaml").read_text())
    spec = {**spec, "name": "again", "grid": None, "seeds": None,
            "points": {"six": {"embedder": {"train_examples": 6, "seed": 1}}}}
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(spec))
    proc = cli("sweep", str(tmp_path / "again.yaml"), "--runs-dir", str(tmp_path), "--donor", str(run), "--donor", str(done))
    assert proc.returncode == 0, proc.stderr[-2000:]
    point = json.loads((tmp_path / "again/sweep.json").read_text())["points"]["six"]
    assert point["adopted"] == list(range(9))
    for n in range(9):  # the first donor that holds a stage gives it: the main run 00-06, the other point 07-08
        want = str(run) if n < 7 else str(done)
        assert json.loads((tmp_path / f"again/six/stages/{n:02d}.done.json").read_text())["adopted_from"] == want, n
    assert (tmp_path / "again/six/data/synthesis").resolve() == (run / "data/synthesis").resolve()
    assert "running" not in proc.stdout and not fresh_calls(Path(point["run"]))


def test_a_study_run_adopts_the_finished_run_and_runs_only_its_own_sweeps(smoke_run, tmp_path):
    """`make study`'s shape: a profile that changes only the sweeps adopts stages 00-10 from a finished run
    (stage 10 too: the ledger of the adopted teacher calls comes with them) and runs stage 11 alone. Its one
    point repeats one of the finished run's own scaling points, so it adopts that point's embedder and scores."""
    runs, run, _ = smoke_run
    spec = yaml.safe_load((REPO_ROOT / "params/sweeps/smoke-scaling.yaml").read_text())
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({**spec, "name": "one", "grid": {"embedder.train_examples": [6]},
                                                       "points": None, "seeds": [0]}))
    (tmp_path / "smoke-study.yaml").write_text(yaml.safe_dump(
        {"extends": "smoke", "sweeps": {"ablation": None, "scaling": str(tmp_path / "one.yaml")}}))
    proc = cli("run", "--profile", str(tmp_path / "smoke-study.yaml"), "--runs-dir", str(tmp_path / "runs"),
               "--donor", str(run))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    study = tmp_path / "runs/smoke-study"
    for n in range(11):
        assert json.loads((study / f"stages/{n:02d}.done.json").read_text())["adopted_from"] == str(run), n
    assert "adopted_from" not in json.loads((study / "stages/11.done.json").read_text())
    assert list(read_jsonl(study / "ledger.jsonl")) == list(read_jsonl(run / "ledger.jsonl"))  # no call made or lost
    point = json.loads((study / "data/sweeps.json").read_text())["sweeps"]["scaling"]["points"]
    assert list(point) == ["train_examples=6@0"] and point["train_examples=6@0"]["adopted"] == list(range(9))
    donor_point = run / "sweeps/smoke-scaling/train_examples=6@0"
    for n in (7, 8):  # nothing trained or scored again: the finished run's own point gives them
        mark = json.loads((Path(point["train_examples=6@0"]["run"]) / f"stages/{n:02d}.done.json").read_text())
        assert mark["adopted_from"] == str(donor_point), n
    bad = cli("run", "--profile", "smoke", "--runs-dir", str(tmp_path / "none"), "--donor", str(tmp_path / "nowhere"))
    assert bad.returncode == 1 and "nowhere: not a run folder" in bad.stderr and not (tmp_path / "none").exists()


def test_synthesize_shard_cli_resumes_to_nothing_on_a_finished_run(smoke_run, tmp_path):
    runs, run, _ = smoke_run
    chunks = json.loads((run / "stages/06.done.json").read_text())["metrics"]
    proc = cli("synthesize", "--profile", "smoke", "--runs-dir", str(runs), "--run-id", "s1", "--shard", "1/2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("shard 1/2: made 0 chunks") and "already there" in line, line  # every chunk is on disk
    assert not fresh_calls(run, "06")
    empty = cli("synthesize", "--profile", "smoke", "--runs-dir", str(tmp_path), "--run-id", "none", "--shard", "0/2")
    assert empty.returncode == 1 and "synthesis needs" in empty.stderr and "which stage" in empty.stderr
    bad = cli("synthesize", "--profile", "smoke", "--runs-dir", str(runs), "--run-id", "s1", "--shard", "2/2")
    assert bad.returncode == 1 and "error: --shard '2/2': need 0 <= i < n" in bad.stderr
    assert chunks == json.loads((run / "stages/06.done.json").read_text())["metrics"]


def test_api_key_in_environment_reaches_no_output(smoke_run):
    runs, run, proc = smoke_run
    assert CANARY not in proc.stdout + proc.stderr
    weights = (".safetensors", ".gguf", ".bin", ".pt")  # tensors written by torch: no text reaches them
    for f in run.rglob("*"):
        if f.is_file() and f.suffix not in weights:
            assert CANARY not in f.read_text(errors="ignore"), f


def test_rerun_skips_every_stage_and_calls_no_teacher(smoke_run):
    runs, run, _ = smoke_run
    before = (run / "ledger.jsonl").read_bytes()
    proc = cli("run", "--profile", "smoke", "--runs-dir", str(runs), "--run-id", "s1")
    assert proc.returncode == 0
    assert proc.stdout.count("skipped (up to date") == len(registry.STAGES)
    assert (run / "ledger.jsonl").read_bytes() == before


def test_changed_output_reruns_its_stage_from_cache(smoke_run):
    runs, run, _ = smoke_run
    calls = len(fresh_calls(run))
    (run / "data/seed.jsonl").write_text("")  # damage an output
    proc = cli("run", "--profile", "smoke", "--runs-dir", str(runs), "--run-id", "s1", "--from", "2")
    assert proc.returncode == 0 and "output data/seed.jsonl was modified" in proc.stdout
    assert len(fresh_calls(run)) == calls  # rebuilt from the teacher cache alone
    assert len(list(read_jsonl(run / "data/seed.jsonl"))) == json.loads((run / "stages/02.done.json").read_text())["metrics"]["valid"]


def test_failing_stage_names_stage_cell_error_and_notebook(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nb = nbformat.read(REPO / "notebooks" / "00_environment.ipynb", as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell("raise ValueError('planted failure 4711')"))
    nbformat.write(nb, nbs / "00_environment.ipynb")
    lines = []
    rc = runner.run("smoke", run_id="broken", until=0, notebooks_dir=nbs, runs_dir=tmp_path / "runs",
                      log=lines.append)
    text = "\n".join(lines)
    assert rc == 1
    assert "stage 00 environment: FAILED in cell" in text and "ValueError: planted failure 4711" in text
    executed = tmp_path / "runs" / "broken" / "notebooks" / "00_environment.ipynb"
    assert str(executed) in text and "planted failure 4711" in executed.read_text()
    assert not (tmp_path / "runs" / "broken" / "stages" / "00.done.json").exists()


def test_invalid_params_fail_before_a_run_folder_exists(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"extends": "smoke", "seed": {"n_examples": "many"}}))
    proc = cli("run", "--profile", str(bad), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert f"{bad}: seed.n_examples" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def _no_partial_lines(run: Path) -> None:
    for f in run.rglob("*.jsonl"):
        data = f.read_bytes()
        assert not data or data.endswith(b"\n"), f"{f} ends in a partial line"
        for line in data.splitlines():
            json.loads(line)


def test_killed_mid_stage_02_resumes_without_repeats_or_losses(smoke_run, tmp_path):
    """SIGKILL the whole runner (runner, kernel, llama.cpp server) mid-stage 02, then rerun. Stages 00-01 are
    adopted from the smoke run (the profile changes stage 02's section only), so only stage 02 runs."""
    profile = tmp_path / "kill.yaml"
    profile.write_text(yaml.safe_dump({"extends": "smoke", "seed": {"n_examples": 10}}))
    runs = tmp_path / "runs"
    run = runs / "k"
    base = ["run", "--profile", str(profile), "--runs-dir", str(runs), "--run-id", "k"]
    assert cli(*base, "--until", "1", "--donor", str(smoke_run[1])).returncode == 0
    assert all("adopted_from" in json.loads((run / f"stages/{n:02d}.done.json").read_text()) for n in (0, 1))

    proc = subprocess.Popen([sys.executable, "-m", "speed_utils.cli", *base, "--from", "2", "--until", "2"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(fresh_calls(run, "02_seed")) < 4:
        assert proc.poll() is None and time.monotonic() < deadline, "stage 02 ended before the kill"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(run) in " ".join(p.info["cmdline"] or [])
                and "llama_server" in " ".join(p.info["cmdline"] or [])], "llama.cpp server outlived the kill"
    assert not (run / "stages/02.done.json").exists()
    _no_partial_lines(run)
    done_before = len(fresh_calls(run, "02_seed"))

    assert cli(*base, "--from", "2", "--until", "2").returncode == 0
    calls = fresh_calls(run, "02_seed")
    keys = [c["key"] for c in calls]
    assert len(keys) == len(set(keys)) == 10, "a teacher request was repeated or lost"
    assert done_before < 10
    ids = [r["id"] for r in read_jsonl(run / "data/seed.jsonl")] + [r["id"] for r in read_jsonl(run / "data/rejects.jsonl")]
    assert len(ids) == len(set(ids)) == 10
    _no_partial_lines(run)

    seed_bytes = (run / "data/seed.jsonl").read_bytes()
    assert cli(*base, "--from", "2", "--until", "2", "--force").returncode == 0
    assert len(fresh_calls(run, "02_seed")) == 10  # forced rerun: all from cache
    assert (run / "data/seed.jsonl").read_bytes() == seed_bytes


def test_a_resumed_stage_reuses_its_trainings(smoke_run):
    """Stage 07 cut after its trainings (no marker) resumes without training again (that --force forgets the
    trainings, so they run again, is tests/test_reliability.py's, without two more minutes of training)."""
    runs, run, _ = smoke_run
    base = ("run", "--profile", "smoke", "--runs-dir", str(runs), "--run-id", "s1", "--from", "7", "--until", "7")
    weights = {f: f.read_bytes() for f in (run / "models").rglob("*.safetensors")}
    (run / "stages/07.done.json").unlink()
    assert cli(*base).returncode == 0
    emb = json.loads((run / "stages/07.done.json").read_text())["metrics"]
    assert emb["embedder"]["reused"] and emb["baseline"]["reused"]
    assert weights and {f: f.read_bytes() for f in (run / "models").rglob("*.safetensors")} == weights
