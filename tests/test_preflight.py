"""Pre-flight (speed_utils.preflight): a gated model and a dead endpoint stop a run before any teacher call.

The Hub is a scripted local server (``HF_ENDPOINT``) that answers huggingface_hub's access check the
way huggingface.co does: 403 with ``X-Error-Code: GatedRepo`` for a gated model the token may not
download, 200 for the rest. The dead endpoint is a loopback port nothing listens on.
"""
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
GATED = "meta-llama/Meta-Llama-3-8B"


@pytest.fixture
def fake_hub():
    """A Hub whose only gated model is LLaMA-3-8B; it records the tokens it was shown."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("authorization")))
            gated = self.path == f"/api/models/{GATED}/auth-check"
            self.send_response(403 if gated else 200)
            if gated:
                self.send_header("X-Error-Code", "GatedRepo")
                self.send_header("X-Error-Message", "Access to model is restricted.")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gated_profile(tmp_path: Path) -> Path:
    """The smoke profile with the paper's gated generator and an OpenAI-style teacher on a dead port."""
    prof = tmp_path / "gated.yaml"
    prof.write_text(yaml.safe_dump({
        "extends": "smoke", "models": {"generator": "llama-3-8b"},
        "teacher": {"backend": "openai", "model": "gpt-4o-2024-05-13", "base_url": f"http://127.0.0.1:{dead_port()}/v1",
                    "api_key_env": "SPEED_TEST_TEACHER_KEY"}}))
    return prof


def cli(*args, hub: str, home: Path, **env) -> subprocess.CompletedProcess:
    """The command line against the scripted Hub, with no token but the one a test sets (an empty HF_HOME:
    a developer's saved login never reaches the fake Hub)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_TOKEN_PATH")}
    return subprocess.run([sys.executable, "-m", "speed_utils.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**environ, "HF_ENDPOINT": hub, "HF_HOME": str(home),
                                                      "SPEED_TEST_TEACHER_KEY": "k", **env})


def test_validate_names_the_gated_model_its_licence_page_and_hf_token(fake_hub, tmp_path):
    hub, seen = fake_hub
    proc = cli("validate", str(gated_profile(tmp_path)), hub=hub, home=tmp_path / "hf")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = {ln.split()[1] + " " + ln.split()[0]: ln for ln in proc.stdout.splitlines()[1:]}
    assert f"generator: {GATED} is gated" in lines["hub fail"]
    assert f"https://huggingface.co/{GATED}" in lines["hub fail"] and "$HF_TOKEN" in lines["hub fail"]
    assert "does not answer" in lines["teacher fail"] and str(gated_profile(tmp_path)) in lines["teacher fail"]
    assert "smollm2-135m-instruct" not in proc.stdout.split("is gated")[0]  # the ungated models passed
    assert {p for p, _ in seen} >= {f"/api/models/{GATED}/auth-check"} and {a for _, a in seen} == {None}
    with_token = cli("validate", str(gated_profile(tmp_path)), hub=hub, home=tmp_path / "hf", HF_TOKEN="hf_test_token")
    assert "the account of the token in use" in with_token.stdout
    assert ("Bearer hf_test_token") in {auth for _, auth in seen}  # the token was shown to the Hub


def test_validate_passes_what_this_machine_can_run_and_checks_only_files_with_schema_only():
    proc = subprocess.run([sys.executable, "-m", "speed_utils.cli", "validate", "smoke", "cpu"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fail" not in proc.stdout and proc.stdout.count("skip  hub") == 2  # offline: PyPI wheels
    only = subprocess.run([sys.executable, "-m", "speed_utils.cli", "validate", "--schema-only", "paper"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert only.returncode == 0 and "hub" not in only.stdout  # the paper profile's files are fine


@pytest.mark.slow
def test_a_gated_model_and_a_dead_endpoint_stop_the_run_in_stage_00(fake_hub, tmp_path):
    hub, _ = fake_hub
    runs = tmp_path / "runs"
    proc = cli("run", "--profile", str(gated_profile(tmp_path)), "--runs-dir", str(runs), hub=hub, home=tmp_path / "hf")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stdout + proc.stderr
    assert "pre-flight failed, before any teacher call" in err and f"{GATED} is gated" in err and "does not answer" in err
    run = runs / "gated"
    assert not (run / "stages/00.done.json").exists() and not (run / "stages/01.done.json").exists()
    assert not (run / "ledger.jsonl").exists() and not (run / "env.json").exists()  # nothing spent, nothing fetched


def test_the_qlora_check_names_each_key_and_its_file(tmp_path, monkeypatch):
    import torch

    from speed_utils import preflight
    from speed_utils.profiles import load_profile

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU's answer, on any machine
    prof = tmp_path / "q.yaml"
    prof.write_text(yaml.safe_dump({"extends": "smoke", "junior": {"qlora": True}}))
    (c,) = preflight.check_qlora(load_profile(prof), prof)
    assert c.status == "fail" and "no CUDA" in c.detail and f"{prof}: junior.qlora" in c.detail
    assert json.dumps(vars(c))  # recorded in env.json as it is


def test_a_profile_that_synthesizes_on_ray_needs_ray_installed(tmp_path, monkeypatch):
    from speed_utils import preflight, scale
    from speed_utils.profiles import load_profile

    prof = tmp_path / "r.yaml"
    prof.write_text(yaml.safe_dump({"extends": "smoke", "distributed": {"synthesis": "ray"}}))
    monkeypatch.setattr(scale, "available", lambda: False)  # a machine without the .[scale] extra
    (c,) = preflight.check_ray(load_profile(prof), prof)
    assert c.status == "fail" and "pip install -e '.[scale]'" in c.detail and f"{prof}: distributed.synthesis" in c.detail
    assert preflight.check_ray(load_profile("smoke"), None) == []  # one process: nothing to check


def test_a_teacher_model_the_endpoint_does_not_serve_is_refused(tmp_path, monkeypatch):
    """issue 33: every call would fail on it, so the pre-flight refuses the run (it used to warn)."""
    from fakes import FakeTeacher

    from speed_utils.profiles import load_profile
    from speed_utils.preflight import check_teacher

    monkeypatch.setenv("SPEED_TEST_TEACHER_KEY", "k")
    with FakeTeacher(models=["gpt-4o-mini", "gpt-4.1"]) as fake:
        prof = tmp_path / "t.yaml"
        prof.write_text(yaml.safe_dump({"extends": "smoke", "teacher": {
            "backend": "openai", "model": "gpt-4o-2024-05-13", "base_url": fake.base_url,
            "api_key_env": "SPEED_TEST_TEACHER_KEY"}}))
        check, = check_teacher(load_profile(prof), prof)
        assert check.status == "fail" and "does not serve teacher.model 'gpt-4o-2024-05-13'" in check.detail
        assert str(prof) in check.detail
        fake.models = ["gpt-4o-2024-05-13"]
        assert check_teacher(load_profile(prof), prof)[0].status == "ok"


def test_openais_own_endpoint_gets_max_completion_tokens(make_teacher):
    """Newer OpenAI models refuse max_tokens with HTTP 400 (the teacher counted those as rejects)."""
    from fakes import FakeTeacher

    from speed_utils.config import TeacherCfg
    from speed_utils.teacher import Request

    openai = TeacherCfg(backend="openai", model="gpt-5", base_url="https://api.openai.com/v1")
    assert openai.cap_name == "max_completion_tokens"
    assert TeacherCfg(backend="openai", model="m", base_url="http://127.0.0.1:8000/v1").cap_name == "max_tokens"
    assert TeacherCfg(backend="openai", model="m", base_url="http://x/v1", token_param="max_completion_tokens").cap_name \
        == "max_completion_tokens"
    with FakeTeacher() as fake:
        t = make_teacher(fake.base_url, token_param="max_completion_tokens")
        assert t.complete(Request.chat("hi", max_tokens=7)).ok
        assert fake.requests[-1]["max_completion_tokens"] == 7 and "max_tokens" not in fake.requests[-1]


def fake_nvidia_smi(tmp_path, monkeypatch, cuda: str) -> None:
    """An nvidia-smi on PATH that prints its header with the driver's CUDA version, and a driver present."""
    from speed_utils import preflight

    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\necho '| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: {cuda} |'\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(preflight, "_gpu_driver", lambda: True)


def test_a_driver_older_than_torchs_cuda_is_named_with_the_way_out(tmp_path, monkeypatch):
    """issue 33: torch 2.13's wheels are CUDA 13 builds; on a driver for CUDA 12.4 the pre-flight said "no CUDA,
    set qlora false". It now says what to update or install (CUDA is hidden from the suite: as on that machine)."""
    import torch

    from speed_utils import preflight
    from speed_utils.profiles import load_profile

    fake_nvidia_smi(tmp_path, monkeypatch, "12.4")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    why = preflight.cuda_unusable()
    assert "built for CUDA 13.0" in why and "supports CUDA 12.4" in why and "580" in why and "whl/cu124" in why
    qlora, = preflight.check_qlora(load_profile("gpu-smoke"))
    assert qlora.status == "fail" and qlora.detail == why and "qlora: false" not in qlora.detail
    gpu, = preflight.check_gpu(load_profile("gpu-24gb"))
    assert gpu.status == "fail" and gpu.detail == why
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU build" in preflight.cuda_unusable()


def test_a_recent_driver_gives_no_driver_message(tmp_path, monkeypatch):
    import torch

    from speed_utils import preflight

    fake_nvidia_smi(tmp_path, monkeypatch, "13.1")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert preflight.driver_cuda() == (13, 1) and preflight.cuda_unusable() is None
    monkeypatch.setattr(preflight, "_gpu_driver", lambda: False)
    assert preflight.cuda_unusable() is None  # no NVIDIA driver: nothing to say (the CPU's usual case)


def test_a_profile_that_needs_vllm_without_its_environment_is_refused(tmp_path, monkeypatch):
    """issue 33: on a CUDA machine without .venv-vllm, `auto` fell back to transformers with no word."""
    import torch

    from speed_utils import preflight, vllm_worker
    from speed_utils.profiles import load_profile

    monkeypatch.setattr(vllm_worker, "available", lambda: False)
    assert preflight.check_generation(load_profile("gpu-24gb")) == []  # here: no CUDA, so auto is not vLLM
    monkeypatch.setattr(preflight, "_gpu_driver", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check, = preflight.check_generation(load_profile("gpu-24gb"))
    assert check.status == "fail" and "make vllm-env" in check.detail and "generation.backend: transformers" in check.detail
    prof = tmp_path / "t.yaml"
    prof.write_text("extends: gpu-24gb\ngeneration: {backend: transformers}\n")
    assert preflight.check_generation(load_profile(prof)) == []  # chosen knowingly
    monkeypatch.setattr(vllm_worker, "available", lambda: True)
    assert preflight.check_generation(load_profile("gpu-24gb")) == []
