"""Issue 35, item 3: a full disk (a file-size limit hit during appends, chunk writes and atomic writes) and a
read-only run folder. Real writes in a child process under RLIMIT_FSIZE; a real immutable folder."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speed_utils.files import read_jsonl
from speed_utils.paths import REPO_ROOT

FULL = """
import json, resource, signal, sys
from pathlib import Path
from speed_utils.files import append_jsonl, atomic_write_json, write_jsonl
d = Path(sys.argv[1])
append_jsonl(d / "ledger.jsonl", [{"i": i, "pad": "x" * 40} for i in range(10)])
atomic_write_json(d / "manifest.json", {"stage": 1})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, as a full disk gives ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
errors = {}
try:
    for i in range(10, 1000):
        append_jsonl(d / "ledger.jsonl", [{"i": i, "pad": "x" * 40}, {"i": -i, "pad": "y" * 40}])
except OSError as e:
    errors["append"] = str(e)
try:
    write_jsonl(d / "chunk-00001.jsonl", [{"row": "z" * 100}] * 50)
except OSError as e:
    errors["chunk"] = str(e)
try:
    atomic_write_json(d / "manifest.json", {"stage": 2, "pad": "m" * 5000})
except OSError as e:
    errors["atomic"] = str(e)
print(json.dumps(errors))
"""


def test_a_full_disk_leaves_no_partial_row_and_no_changed_file(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FULL, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = json.loads(proc.stdout.splitlines()[-1])
    assert set(errors) == {"append", "chunk", "atomic"}
    for what, msg in errors.items():
        assert "no room to write" in msg and "no partial row" in msg, (what, msg)
    assert "ledger.jsonl" in errors["append"]
    ledger = (tmp_path / "ledger.jsonl").read_bytes()
    assert ledger.endswith(b"\n") and len(ledger) <= 2000
    rows = list(read_jsonl(tmp_path / "ledger.jsonl"))
    assert [r["i"] for r in rows][:10] == list(range(10)) and len(rows) % 2 == 0  # appends are whole: pairs
    assert not (tmp_path / "chunk-00001.jsonl").exists()  # a chunk exists whole or not at all
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"stage": 1}  # the manifest unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.jsonl", "manifest.json"]  # no temp file left


def _freeze(folder: Path) -> bool:
    """Make ``folder`` unwritable for this process: chmod where it is not root, else the immutable flag."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return True
    return bool(shutil.which("chattr")) and subprocess.run(["chattr", "+i", str(folder)]).returncode == 0


def _thaw(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)])


@pytest.mark.slow
def test_a_read_only_run_folder_stops_before_any_teacher_call(tmp_path):
    run = tmp_path / "runs" / "ro"
    (run / "data").mkdir(parents=True)
    if not _freeze(run / "data"):
        pytest.skip("no way to make a folder read-only for this user here (root without chattr)")
    try:
        proc = subprocess.run([sys.executable, "-m", "speed_utils.cli", "run", "--profile", "smoke", "--runs-dir",
                               str(tmp_path / "runs"), "--run-id", "ro", "--until", "2"], capture_output=True, text=True,
                              cwd=REPO_ROOT, timeout=300)
    finally:
        _thaw(run / "data")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert f"the run folder cannot be written ({run / 'data'}:" in out and "no teacher call" in out
    assert not (run / "ledger.jsonl").exists() and not (run / "teacher_cache").exists()
