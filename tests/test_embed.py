"""Stage 07 on a tiny decoder: EOS + last-token pooling, instructions on queries only, LoRA training, reload."""
import numpy as np
import pytest
import torch
from conftest import Snapshot

from speed_utils import embed
from speed_utils.config import EmbedderCfg, LoraCfg

pytestmark = pytest.mark.slow

ROWS = [{"instruction": f"Find the capital of country {i}", "query": f"capital of land number {i}",
         "positive": f"city {i} is the capital and seat of government of land {i}",
         "negative": f"land {i} exports grain and timber" if i % 3 else None} for i in range(24)]
CFG = EmbedderCfg(lr=5e-3, batch_size=8, mini_batch_size=4, temperature=0.05, max_length=48, epochs=3,
                  warmup_steps=0, weight_decay=0.0, gradient_checkpointing=True, lora=LoraCfg(r=4, alpha=8, dropout=0.0))


def infonce(st, rows, tau=0.05) -> float:
    q = st.encode([embed.query_text(r["instruction"], r["query"]) for r in rows], convert_to_tensor=True,
                  normalize_embeddings=True)
    d = st.encode([r["positive"] for r in rows], convert_to_tensor=True, normalize_embeddings=True)
    return float(torch.nn.functional.cross_entropy(q @ d.T / tau, torch.arange(len(rows))))


def test_pooling_takes_the_eos_state_under_left_padding(tiny_lm):
    st = embed.decoder_embedder(tiny_lm, max_length=32)
    tok = st[0].tokenizer
    feats = st[0].tokenizer(["short", "a much longer text with many more tokens"], padding=True, return_tensors="pt")
    assert tok.padding_side == "left" and (feats["input_ids"][:, -1] == tok.eos_token_id).all()
    assert feats["attention_mask"][0, 0] == 0  # the short text is padded on the left
    with torch.no_grad():
        hidden = st[0].model(**feats).last_hidden_state
        pooled = st.encode(["short", "a much longer text with many more tokens"], convert_to_tensor=True)
    assert torch.allclose(pooled, hidden[:, -1], atol=1e-5)
    # truncation keeps the EOS as the last token
    long = st[0].tokenizer(["word " * 100], truncation=True, max_length=32)["input_ids"][0]
    assert len(long) == 32 and long[-1] == tok.eos_token_id


def test_instructions_reach_queries_and_not_documents():
    data = embed.training_data(ROWS)
    assert set(data) == {"triplets", "pairs"} and len(data["triplets"]) + len(data["pairs"]) == len(ROWS)
    for part in data.values():
        for row in part:
            assert row["anchor"].startswith("Instruct: Find the capital") and "\nQuery: capital of land" in row["anchor"]
            assert "Instruct:" not in row["positive"] and "Instruct:" not in (row.get("negative") or "")
    assert data["pairs"].column_names == ["anchor", "positive"]


def test_a_lone_pair_is_not_a_batch_of_its_own(capsys):
    """One example without a hard negative beside triplets would make a batch of one: loss 0, a wasted step."""
    lone = [r for r in ROWS if r["negative"]][:4] + [next(r for r in ROWS if not r["negative"])]
    assert set(embed.training_data(lone)) == {"triplets"} and "left out" in capsys.readouterr().err
    two = lone + [r for r in ROWS if not r["negative"]][1:2]
    assert len(embed.training_data(two)["pairs"]) == 2
    assert len(embed.training_data(lone[-1:])["pairs"]) == 1  # nothing else to train on: kept


def test_training_lowers_the_loss_changes_lora_and_reloads(tiny_lm, tmp_path):
    from sentence_transformers import SentenceTransformer

    st = embed.decoder_embedder(tiny_lm, max_length=48)
    before = infonce(st, ROWS)
    snap = Snapshot()
    res = embed.train(st, ROWS, tmp_path / "emb", CFG, name="tiny", callbacks=[snap])
    assert res.loss == "cached-infonce" and res.steps >= 6 and res.trainable_params > 0
    assert snap.before and all("lora_" in n for n in snap.before) and snap.unchanged == []
    after = infonce(st, ROWS)
    assert after < before - 0.1, (before, after)
    texts = ["capital of land number 3", "city 7 is the capital"]
    reloaded = SentenceTransformer(str(tmp_path / "emb"), local_files_only=True)
    assert np.allclose(reloaded.encode(texts), st.encode(texts), atol=1e-5)
    assert reloaded.prompts["query"].startswith("Instruct: ") and reloaded[1].pooling_mode == "lasttoken"
    assert not any("lora" in k for k in reloaded.state_dict())  # merged into a plain model
    card = (tmp_path / "emb" / "README.md").read_text()
    shortest = min(ROWS, key=lambda r: len(r["query"]) + len(r["positive"]) + len(r.get("negative") or ""))
    assert shortest["positive"] in card  # the card's example is ours, not one sentence-transformers sampled


def test_plain_loss_when_not_mini_batched(tiny_lm):
    st = embed.decoder_embedder(tiny_lm, max_length=16)
    _, name = embed.contrastive_loss(st, CFG.model_copy(update={"mini_batch_size": None}))
    assert name == "infonce"


def test_bos_is_kept_where_the_tokenizer_adds_one():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "hello": 3, "world": 4}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    embed.append_eos(tok)
    assert tok("hello world")["input_ids"] == [0, 3, 4, 1]


def test_merge_from_a_fresh_copy_matches_the_trained_model(tiny_lm, tmp_path, monkeypatch):
    """The path used under ZeRO-3 or a 4-bit base: LoRA weights merged into a rebuilt full-precision model."""
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("SPEED_REPRO_DTYPE", "fp32")  # in fp32 a merge is exact, so the encodings must match

    st = embed.decoder_embedder(tiny_lm, max_length=48)
    st.quantized = True  # take the rebuild path (the weights here are fp32, so the result must match exactly)
    cfg = CFG.model_copy(update={"epochs": 1})
    embed.train(st, ROWS[:8], tmp_path / "m", cfg, name="tiny", rebuild=lambda: embed.decoder_embedder(tiny_lm, 48))
    texts = ["capital of land number 3", "city 7 is the capital"]
    assert np.allclose(SentenceTransformer(str(tmp_path / "m"), local_files_only=True).encode(texts),
                       st.encode(texts), atol=1e-5)  # st still holds the unmerged LoRA model


def test_warm_up_never_takes_more_than_a_third_of_a_short_training():
    sweeps = EmbedderCfg(batch_size=32, epochs=1, warmup_steps=5)  # the cpu sweeps: 1, 1, 2 and 3 steps
    assert [embed.warmup_steps(sweeps, n) for n in (12, 24, 48, 96)] == [0, 0, 0, 1]
    assert embed.warmup_steps(EmbedderCfg(batch_size=32, epochs=2, warmup_steps=5), 239) == 5  # the cpu run: 16 steps
    paper = EmbedderCfg(batch_size=1536, epochs=1, warmup_steps=100)
    assert embed.warmup_steps(paper, 920_000, devices=8) == 100  # the paper's training keeps its warm-up


def test_equal_steps_set_the_warm_up_whatever_the_rows():
    equal = EmbedderCfg(batch_size=8, mini_batch_size=None, epochs=4, warmup_steps=2, max_steps=8)  # cpu sweeps
    assert [embed.warmup_steps(equal, n) for n in (4, 16, 64)] == [2, 2, 2]


def test_the_shuffled_control_gives_every_row_another_rows_positive():
    rows = [{"query": f"q{i}", "positive": f"p{i}", "negative": f"n{i}"} for i in range(7)]
    moved = embed.shuffled_positives(rows, seed=3)
    assert sorted(r["positive"] for r in moved) == sorted(r["positive"] for r in rows)  # the same texts, moved
    assert all(m["positive"] != r["positive"] and (m["query"], m["negative"]) == (r["query"], r["negative"])
               for m, r in zip(moved, rows))
    assert moved == embed.shuffled_positives(rows, seed=3) != embed.shuffled_positives(rows, seed=4)
    assert embed.shuffled_positives(rows[:1], seed=0) == rows[:1]


def test_a_sweeps_seed_is_the_trainings_seed():
    from speed_utils.profiles import load_profile

    cfg = load_profile("smoke")
    assert embed.training_seed(cfg) == cfg.run.seed
    assert embed.training_seed(cfg.model_copy(update={"embedder": cfg.embedder.model_copy(update={"seed": 4})})) == 4


def test_the_same_rows_and_seed_train_the_same_embedder(tiny_lm, tmp_path):
    """The LoRA weights are drawn before the trainer seeds itself: without a seed of their own, two runs of
    stage 07 on the same data gave different embedders (seen on the smoke run, 2026-12-02)."""
    texts = ["capital of land number 3", "city 7 is the capital"]
    ec = CFG.model_copy(update={"epochs": 1})
    encoded = []
    for k in range(2):
        torch.manual_seed(1000 + k)  # whatever the process drew before
        st = embed.decoder_embedder(tiny_lm, max_length=48)
        embed.train(st, ROWS, tmp_path / f"emb{k}", ec, name="tiny", seed=7)
        encoded.append(st.encode(texts))
    assert np.array_equal(encoded[0], encoded[1])


def test_stage_07_refuses_to_train_where_the_disk_cannot_hold_its_models(tmp_path, monkeypatch):
    """issue 33: Colab's Drive; a merged 7B embedder in bf16 is about 14.5 GB, and a save that fails after
    hours of training loses them."""
    import shutil
    from collections import namedtuple

    from speed_utils import disk

    assert disk.save_bytes("mistral-7b-v0.1", on_gpu=True) == pytest.approx(7.24e9 * 2 * 1.1, rel=0.05)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100e9, 90e9, 10e9))
    with pytest.raises(disk.DiskFull, match=r"10.0 GB free, but stage 07 saves about 1[5-7].\d GB"):
        disk.check_free_space(tmp_path / "models", ["mistral-7b-v0.1"], on_gpu=True)
    disk.check_free_space(tmp_path / "models", ["smollm2-135m-instruct", "all-minilm-l6-v2"], on_gpu=False)
