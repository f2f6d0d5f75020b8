"""Stage 06 on a tiny model: sharding, kill-and-resume, merging, mapping to the training format."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import random_adapter

from speed_utils import synthesis
from speed_utils.profiles import load_profile
from speed_utils.runs import RunPaths
from speed_utils.files import read_jsonl, write_jsonl
from speed_utils.synthesis import Shard

pytestmark = pytest.mark.slow

TASKS = [{"id": f"t{i}", "task_type": t, "task": f"Find documents about topic {i} for {t}.", "topic": f"Top/T{i}"}
         for i, t in enumerate(["retrieval", "classification", "sts", "short_short", "long_long"] * 2)]


def profile(tmp_path: Path, **synthesis_overrides) -> Path:
    p = tmp_path / "synth.yaml"
    p.write_text(yaml.safe_dump({
        "extends": "smoke", "generation": {"batch_size": 4, "structured_output": False},  # the tiny model on transformers
        "synthesis": {"n_examples": 14, "chunk_size": 3, "max_new_tokens": 8, "revisor_max_new_tokens": 8,
                      **synthesis_overrides}}))
    return p


@pytest.fixture(scope="module")
def adapters(tiny_lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    return {name: random_adapter(tiny_lm, folder / name, seed=i) for i, name in enumerate(("junior", "senior", "revisor"))}


def new_run(root: Path, adapters: dict) -> RunPaths:
    run = RunPaths(root).make()
    write_jsonl(run.data / "tasks.jsonl", TASKS)
    run.adapters.mkdir()
    for name, path in adapters.items():
        os.symlink(path, run.adapters / name)
    return run


def chunk_rows(cfg, run) -> list[dict]:
    return synthesis.read_chunks(cfg, run)


def test_same_seed_same_prompts_in_the_profile_mix(tmp_path, adapters):
    cfg = load_profile(profile(tmp_path, n_examples=23))
    run = new_run(tmp_path / "r", adapters)
    a, b = synthesis.prompts(cfg, run), synthesis.prompts(cfg, run)
    assert [p.text for p in a] == [p.text for p in b] and len(a) == 23
    chunks = synthesis.chunked(a, cfg.synthesis.chunk_size)  # a replica computes its chunk's prompts alone
    assert [synthesis.chunk_prompts(cfg, run, j) for j in range(len(chunks))] == chunks
    counts = {t: sum(p.task_type == t for p in a) for t in ("classification", "sts", "retrieval", "short_short", "long_long")}
    assert counts == {"classification": 7, "sts": 7, "retrieval": 7, "short_short": 1, "long_long": 1}


def test_two_shards_merged_equal_one_unsharded_run(tmp_path, tiny_lm, adapters):
    cfg = load_profile(profile(tmp_path))
    one, two = new_run(tmp_path / "one", adapters), new_run(tmp_path / "two", adapters)
    s = synthesis.make_chunks(cfg, one, Shard(0, 1), base_model=tiny_lm)
    assert s["made"] == s["chunks"] == 5
    a = synthesis.make_chunks(cfg, two, Shard(0, 2), base_model=tiny_lm)
    with pytest.raises(synthesis.SynthesisError, match="chunks are missing"):
        synthesis.merge(cfg, two)  # shard 1/2 has not run yet
    b = synthesis.make_chunks(cfg, two, Shard(1, 2), base_model=tiny_lm)
    assert (a["made"], b["made"]) == (3, 2)
    assert synthesis.make_chunks(cfg, two, Shard(0, 1), base_model=tiny_lm)["made"] == 0  # all there: resumes to nothing
    rows = chunk_rows(cfg, one)
    assert rows == chunk_rows(cfg, two) and len(rows) == 14 and [r["index"] for r in rows] == list(range(14))
    assert all(r["revisor_raw"] is not None for r in rows)
    ma, mb = synthesis.merge(cfg, one), synthesis.merge(cfg, two)
    assert ma == mb and ma["requested"] == 14
    for f in ("synthetic.jsonl", "synthesis_rejects.jsonl"):
        assert (one.data / f).read_bytes() == (two.data / f).read_bytes()
    assert len(list(read_jsonl(one.data / "synthesis_rejects.jsonl"))) + ma["kept"] + sum(ma["dedup"][k] for k in ("exact", "near")) == 14


KILL_SCRIPT = """
import sys
from speed_utils import synthesis
from speed_utils.profiles import load_profile
from speed_utils.runs import RunPaths
synthesis.make_chunks(load_profile(sys.argv[1]), RunPaths(__import__("pathlib").Path(sys.argv[2])), base_model=sys.argv[3])
"""


def test_killed_three_times_resumes_to_the_same_rows(tmp_path, tiny_lm, adapters):
    prof = profile(tmp_path, n_examples=16, chunk_size=2, max_new_tokens=24, revisor_max_new_tokens=24)
    cfg = load_profile(prof)
    ref = new_run(tmp_path / "ref", adapters)
    synthesis.make_chunks(cfg, ref, base_model=tiny_lm)
    run = new_run(tmp_path / "killed", adapters)
    wdir, rdir = synthesis.pass_dirs(cfg, run)

    def made() -> int:
        return sum(len(list(d.glob("chunk-*.jsonl"))) for d in (wdir, rdir) if d.exists())

    rng = random.Random(7)
    cmd = [sys.executable, "-c", KILL_SCRIPT, str(prof), str(run.root), tiny_lm]
    kills = 0
    while kills < 3:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = made() + rng.randint(1, 3)  # let it make some progress, then kill it at a random moment
        while made() < target and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            break  # it finished: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills == 3, "the run finished before three kills"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert chunk_rows(cfg, run) == chunk_rows(cfg, ref)
    wdir, rdir = synthesis.pass_dirs(cfg, run)
    for folder in (wdir, rdir):  # no leftovers: every chunk whole, no temporary file
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        assert files == [f"chunk-{j:05d}.jsonl" for j in range(8)]
        assert all((folder / f).read_bytes().endswith(b"\n") for f in files)
    assert synthesis.merge(cfg, run) == synthesis.merge(cfg, ref)


def _planted(i: int, task_type: str, raw: str, revisor_raw: str | None, task: str = "Classify the mood.") -> dict:
    return {"index": i, "prompt_id": f"synthesis{i:05d}-{task_type}", "prompt": "p", "task_type": task_type,
            "task": task, "topic": "Top/X", "attributes": {}, "generator": "senior", "raw": raw, "revisor_raw": revisor_raw}


def test_merge_maps_validates_prefers_valid_revisions_and_dedups(tmp_path, adapters):
    cfg = load_profile(profile(tmp_path, n_examples=6, chunk_size=6))
    run = new_run(tmp_path / "m", adapters)
    cls = {"input_text": "The parcel arrived two weeks late and damaged.", "label": "complaint", "misleading_label": "praise"}
    better = {**cls, "misleading_label": "inquiry"}
    sts = {"S1": "A man plays a guitar on stage.", "S2": "A man is playing guitar at a concert.", "S3": "A man tunes a guitar."}
    rows = [
        _planted(0, "classification", json.dumps(cls), json.dumps({"reason": "r", "revision": better})),
        _planted(1, "classification", "```json\n" + json.dumps(cls) + "\n```", "not json at all"),  # original kept
        _planted(2, "sts", "broken {", json.dumps({"reason": "fixed", "revision": sts})),  # revisor repairs it
        _planted(3, "sts", "broken {", "also broken"),  # rejected
        _planted(4, "sts", json.dumps(sts), json.dumps({"reason": "same", "revision": sts})),  # duplicate of row 2
        _planted(5, "short_short", json.dumps({"input": "cheap flights", "positive_document": "low-cost airfare"}), "?"),
    ]
    wdir, rdir = synthesis.pass_dirs(cfg, run)
    write_jsonl(synthesis.chunk_path(wdir, 0), [{k: v for k, v in r.items() if k != "revisor_raw"} for r in rows])
    write_jsonl(synthesis.chunk_path(rdir, 0), [{"index": r["index"], "task_type": r["task_type"],
                                                 "revisor_raw": r["revisor_raw"]} for r in rows])
    m = synthesis.merge(cfg, run)
    out = {r["id"]: r for r in read_jsonl(run.data / "synthetic.jsonl")}
    assert sorted(out) == ["syn-0000000", "syn-0000001", "syn-0000002", "syn-0000005"]
    assert out["syn-0000005"]["revised_valid"] is False and out["syn-0000005"]["original_valid"] is True
    assert out["syn-0000000"]["negative"] == "inquiry" and out["syn-0000000"]["provenance"]["revised"] is True
    assert out["syn-0000000"]["query"] == cls["input_text"] and out["syn-0000000"]["positive"] == "complaint"
    assert out["syn-0000001"]["negative"] == "praise" and out["syn-0000001"]["provenance"]["revised"] is False
    assert out["syn-0000002"]["instruction"] == "Retrieve semantically similar text."
    assert out["syn-0000002"]["query"] == sts["S1"] and out["syn-0000002"]["negative"] == sts["S3"]
    assert out["syn-0000005"]["negative"] is None and out["syn-0000005"]["prompt_id"] == "synthesis00005-short_short"
    rejects = list(read_jsonl(run.data / "synthesis_rejects.jsonl"))
    assert {(r["id"], r["stage"]) for r in rejects} == {("synthesis00003-sts", "validate"), ("syn-0000004", "dedup")}
    assert m["valid_rate_before_revision"] == round(4 / 6, 3) and m["valid"] == 5 and m["kept"] == 4
    assert m["dedup"] == {"exact": 1, "near": 0, "drop_rate": 0.2}
    assert 0 < m["edit_distance_mean"] < 1  # row 0 changed one label; row 4 not at all


def test_shard_parsing():
    assert Shard.parse("1/4") == Shard(1, 4) and Shard(1, 4).owns(5) and not Shard(1, 4).owns(4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            Shard.parse(bad)


def test_edit_distance():
    assert synthesis.edit_distance({"a": "one two three"}, {"a": "one two three"}) == 0
    assert synthesis.edit_distance({"a": "one two three"}, {"a": "one TWO three"}) == pytest.approx(1 / 3)


def test_variant_without_revisor_reuses_the_writers_chunks(tmp_path, tiny_lm, adapters):
    with_rev = load_profile(profile(tmp_path))
    (tmp_path / "b").mkdir()
    without = load_profile(profile(tmp_path / "b", revise=False))
    run = new_run(tmp_path / "r", adapters)
    first = synthesis.make_chunks(with_rev, run, base_model=tiny_lm)
    assert (first["writer_made"], first["revisor_made"]) == (5, 5)
    again = synthesis.make_chunks(without, run, base_model=tiny_lm)
    assert (again["writer_made"], again["revisor_made"], again["made"]) == (0, 0, 0)
    rows = synthesis.read_chunks(without, run)
    assert all(r["revisor_raw"] is None for r in rows)
    assert [r["raw"] for r in rows] == [r["raw"] for r in synthesis.read_chunks(with_rev, run)]

def test_lengths_leave_a_missing_negative_out_rather_than_count_zero_words():
    rows = [{"task_type": "sts", "query": "a b", "positive": "c d e", "negative": "f"},
            {"task_type": "short_short", "query": "a", "positive": "b c", "negative": None}]
    assert synthesis.lengths(rows) == [{"task_type": "sts", "query": 2, "positive": 3, "negative": 1},
                                       {"task_type": "short_short", "query": 1, "positive": 2, "negative": None}]
