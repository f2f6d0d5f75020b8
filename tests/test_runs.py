"""Atomic writes and append-only JSONL survive a write cut at any byte."""
import json

from speed_utils.runs import append_jsonl, atomic_write_json, read_jsonl, sha256_path, update_manifest, write_jsonl


def test_cut_tail_is_skipped_then_repaired(tmp_path):
    p = tmp_path / "x.jsonl"
    append_jsonl(p, [{"i": 0}, {"i": 1}])
    full = p.read_bytes()
    for cut in range(len(full) - 1, len(full) // 2, -1):  # every cut inside the second line
        p.write_bytes(full[:cut])
        rows = list(read_jsonl(p))
        assert rows in ([{"i": 0}], [{"i": 0}, {"i": 1}])
        append_jsonl(p, [{"i": 2}])
        assert [r["i"] for r in read_jsonl(p)][-1] == 2
        assert all(line.endswith(b"}") for line in p.read_bytes().splitlines())


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"k": 1})
    write_jsonl(tmp_path / "b.jsonl", [{"k": 2}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.jsonl"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"k": 1}


def test_manifest_records_rows_and_hash(run_paths):
    out = run_paths.data / "seed.jsonl"
    write_jsonl(out, [{"a": 1}, {"a": 2}])
    m = update_manifest(run_paths, 2, [out])
    assert m["files"]["data/seed.jsonl"] == {"stage": 2, "sha256": sha256_path(out), "bytes": out.stat().st_size, "rows": 2}
