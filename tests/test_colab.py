"""The Colab entry (notebooks/colab.ipynb), read as a user would run it: the order of its steps and its secrets."""
from pathlib import Path

import nbformat

NB = Path(__file__).resolve().parent.parent / "notebooks" / "colab.ipynb"


def code() -> list[str]:
    return [c.source for c in nbformat.read(NB, as_version=4).cells if c.cell_type == "code"]


def test_keys_come_from_colab_secrets_and_nothing_is_spent_before_the_pre_flight():
    cells = code()
    text = "\n".join(cells)
    assert "userdata.get(name)" in text and "sk-" not in text and "hf_" not in text.replace("hf_token", "")
    assert not any("parameters" in c for c in cells)  # no papermill parameters: a key could never be one
    order = [next(i for i, c in enumerate(cells) if marker in c)
             for marker in ("drive.mount", "pip install", "userdata.get", '"validate", "gpu-24gb"], check=True',
                            "speed-repro run --profile gpu-24gb")]
    assert order == sorted(order)  # install, keys, pre-flight, and only then the run


def test_the_run_folder_is_on_drive_and_the_gpu_environment_is_the_pinned_one():
    text = "\n".join(code())
    assert 'RUNS = "/content/drive/MyDrive/' in text and "--runs-dir {RUNS}" in text  # survives a disconnect
    for req in ("requirements.txt", "requirements-gpu.txt", "requirements-vllm.txt"):
        assert req in text and (NB.parent.parent / req).is_file()


def test_colabs_torchvision_and_torchaudio_go_before_transformers_imports_them():
    """issue 33: Colab's torchvision and torchaudio are built for its own torch; beside torch 2.13 their
    operators fail to load when transformers imports them."""
    cells = code()
    install = next(i for i, c in enumerate(cells) if "pip install -q -r requirements.txt" in c)
    assert "pip uninstall -q -y torchvision torchaudio" in cells[install]
    assert cells[install].index("requirements.txt") < cells[install].index("uninstall")
