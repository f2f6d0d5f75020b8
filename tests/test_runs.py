"""Atomic writes and append-only JSONL survive a write cut at any byte."""
import json

import pytest

from speed_utils.runs import update_manifest
from speed_utils.files import append_jsonl, atomic_write_json, read_jsonl, sha256_path, write_jsonl


def test_cut_tail_is_skipped_then_repaired(tmp_path):
    p = tmp_path / "x.jsonl"
    append_jsonl(p, [{"i": 0}, {"i": 1}])
    full = p.read_bytes()
    for cut in range(len(full) - 2, len(full) // 2, -1):  # every cut inside the second line
        p.write_bytes(full[:cut])
        assert list(read_jsonl(p)) == [{"i": 0}]
        append_jsonl(p, [{"i": 2}])
        assert [r["i"] for r in read_jsonl(p)] == [0, 2]
        assert all(line.endswith(b"}") for line in p.read_bytes().splitlines())


def test_complete_last_line_without_newline_is_kept(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"i": 0}\n{"i": 1}')  # the newline was lost, the row was not
    assert [r["i"] for r in read_jsonl(p)] == [0, 1]
    append_jsonl(p, [{"i": 2}])
    assert [r["i"] for r in read_jsonl(p)] == [0, 1, 2]


def test_damaged_middle_row_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"i": 0}\n{"i": \n{"i": 2}\n')
    with pytest.raises(ValueError, match=r"x.jsonl, line 2: damaged JSONL row"):
        list(read_jsonl(p))


def test_a_damaged_cache_row_is_set_aside_with_its_line_and_the_rest_kept(tmp_path, capsys):
    """Issue 35: in an append-only cache, a middle row that is not JSON, or that lost a field it needs, is set
    aside (file and line named); the other rows stay, and the file no longer holds the damage."""
    from speed_utils.files import salvage_jsonl

    p = tmp_path / "c.jsonl"
    p.write_text('{"key": "a", "v": 1}\n{"key": "b", "v\n{"key": "c"}\n{"key": "d", "v": 4}\n{"key": "e", "v')
    assert [r["key"] for r in salvage_jsonl(p, ("key", "v"))] == ["a", "d"]  # the cut last line is a kill's, not damage
    aside = list(read_jsonl(tmp_path / "c.jsonl.damaged.jsonl"))
    assert [(d["line"], d["why"].split(" (")[0]) for d in aside] == [(2, "not JSON"), (3, "no 'v'")]
    err = capsys.readouterr().err
    assert "c.jsonl: 2 damaged row(s)" in err and "line 2 (not JSON" in err and "line 3 (no 'v')" in err
    assert [r["key"] for r in read_jsonl(p)] == ["a", "d"]  # a plain reader sees no damage now
    assert salvage_jsonl(p, ("key", "v")) == [{"key": "a", "v": 1}, {"key": "d", "v": 4}]
    assert len(list(read_jsonl(tmp_path / "c.jsonl.damaged.jsonl"))) == 2  # nothing set aside twice


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"k": 1})
    write_jsonl(tmp_path / "b.jsonl", [{"k": 2}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.jsonl"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"k": 1}


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os
    import stat

    from speed_utils.files import atomic_write_text

    atomic_write_text(tmp_path / "a.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_manifest_records_rows_and_hash(run_paths):
    out = run_paths.data / "seed.jsonl"
    write_jsonl(out, [{"a": 1}, {"a": 2}])
    m = update_manifest(run_paths, 2, [out])
    assert m["files"]["data/seed.jsonl"] == {"stage": 2, "sha256": sha256_path(out), "bytes": out.stat().st_size, "rows": 2}


def test_remove_takes_links_not_their_targets(tmp_path):
    from speed_utils.files import remove

    donor = tmp_path / "donor"
    (donor / "sub").mkdir(parents=True)
    (donor / "sub" / "w.bin").write_bytes(b"x")
    (tmp_path / "link").symlink_to(donor)
    (tmp_path / "f.txt").write_text("x")
    for name in ("link", "f.txt", "donor", "absent"):
        remove(tmp_path / name)
        assert not (tmp_path / name).exists() and not (tmp_path / name).is_symlink()
        if name == "link":
            assert (donor / "sub" / "w.bin").exists()  # the linked folder is kept
