"""`make gpu-check` on a machine without CUDA (issue 33): the same table, every CUDA-only step skipped, exit 0;
with --require-cuda, exit 2. The suite hides CUDA (conftest.py), so this runs alike on a GPU machine."""
import subprocess
import sys

from speed_utils.paths import REPO_ROOT


def check(*args):
    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_without_cuda_every_cuda_step_is_skipped_and_the_table_printed():
    proc = check()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = proc.stdout[proc.stdout.index("\nstep "):].strip().splitlines()[1:]
    assert [line.split()[-2] for line in table] == ["skip"] * 4, table
    assert "no CUDA on this machine" in proc.stdout and "run folder" not in proc.stdout and "FAIL" not in proc.stdout
    assert check("--require-cuda").returncode == 2
