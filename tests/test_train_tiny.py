"""SFT, DPO and the generator on a tiny Llama built from a config (SmolLM2's tokenizer and chat template)."""
import json
import math

import pytest
import torch
from conftest import Snapshot, random_adapter

from speed_utils.config import JuniorCfg, LoraCfg, SeniorCfg
from speed_utils import align
from speed_utils.generate import GenRequest, Generator
from speed_utils.files import read_jsonl, write_jsonl
from speed_utils.train import batch_plan, dpo, quant_config, sft

pytestmark = pytest.mark.slow


ROWS = [{"prompt": f"Write JSON for item {i}.", "completion": '{"S1": "a cat", "S2": "a kitten", "S3": "a car"}'}
        for i in range(16)]
LORA = LoraCfg(r=4, alpha=8, dropout=0.0)


def test_sft_trains_every_lora_parameter(tiny_lm, tmp_path):
    snap = Snapshot()
    res = sft(tiny_lm, ROWS, tmp_path / "junior", JuniorCfg(lr=5e-3, batch_size=4, epochs=1, lora=LORA),
              max_length=64, callbacks=[snap])
    assert res.path == "lora" and res.steps == 4 and res.trainable_params > 0 and res.optimizer == "adamw_torch"
    assert all(math.isfinite(loss) for _, loss in res.losses) and res.losses
    assert snap.before and snap.unchanged == []
    assert (tmp_path / "junior" / "adapter_config.json").exists()


def test_a_finished_training_is_reused_and_any_change_retrains(tiny_lm, tmp_path):
    """A stage resumed after its training does not train again; other rows, or a touched adapter, do."""
    cfg = JuniorCfg(lr=5e-3, batch_size=4, epochs=1, lora=LORA)
    first = sft(tiny_lm, ROWS, tmp_path / "junior", cfg, max_length=64)
    weights = (tmp_path / "junior" / "adapter_model.safetensors").read_bytes()
    again = sft(tiny_lm, ROWS, tmp_path / "junior", cfg, max_length=64)
    assert again.extra["reused"] and again.losses == first.losses and again.steps == first.steps
    assert (tmp_path / "junior" / "adapter_model.safetensors").read_bytes() == weights
    assert (tmp_path / "junior.train.json").exists() and not (tmp_path / "junior" / "junior.train.json").exists()

    other = sft(tiny_lm, ROWS[:8], tmp_path / "junior", cfg, max_length=64)
    assert "reused" not in other.extra and other.steps == 2
    (tmp_path / "junior" / "adapter_model.safetensors").write_bytes(weights)  # the record no longer matches the files
    assert "reused" not in sft(tiny_lm, ROWS[:8], tmp_path / "junior", cfg, max_length=64).extra


def test_dpo_from_junior_trains_and_reports_margins(tiny_lm, tmp_path):
    junior = sft(tiny_lm, ROWS, tmp_path / "junior", JuniorCfg(lr=5e-3, batch_size=4, epochs=1, lora=LORA),
                 max_length=64).adapter
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "no json here"} for r in ROWS]
    snap = Snapshot()
    res = dpo(tiny_lm, junior, pairs, tmp_path / "senior",
              SeniorCfg(n_prompts=16, lr=5e-3, batch_size=4, epochs=1, beta=0.1, lora=LORA), max_length=64,
              callbacks=[snap])
    assert res.steps == 4 and all(math.isfinite(loss) for _, loss in res.losses)
    assert res.losses[0][1] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference (the junior) at step 1
    assert snap.unchanged == [] and not any(".ref." in n for n in snap.before)  # the reference stays frozen
    assert res.extra["reward_margins"]
    assert not (tmp_path / "senior" / "ref").exists()


class RefCheck(Snapshot):
    """At the end of DPO: the frozen reference adapter's weights, and whether any of them can train."""

    def on_train_end(self, args, state, control, model=None, **kw):
        super().on_train_end(args, state, control, model=model, **kw)
        self.ref = {n.replace(".ref.", ".default."): p.detach().clone() for n, p in model.named_parameters() if ".ref." in n}
        self.ref_trainable = [n for n, p in model.named_parameters() if ".ref." in n and p.requires_grad]


def test_dpo_reference_is_the_junior_adapter_not_the_base_model(tiny_lm, tmp_path):
    """SPEED Eq. 2's reference is the junior. The loss at step 1 (log 2) and a frozen reference would also hold
    if trl scored the reference with the adapter switched off (the base model), which its own code does for
    some peft versions; here the reference adapter's weights are compared with the junior's saved ones."""
    from safetensors.torch import load_file

    junior = sft(tiny_lm, ROWS, tmp_path / "junior", JuniorCfg(lr=5e-3, batch_size=4, epochs=1, lora=LORA),
                 max_length=64).adapter
    saved = load_file(f"{junior}/adapter_model.safetensors")
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "no json here"} for r in ROWS[:8]]
    check = RefCheck()
    dpo(tiny_lm, junior, pairs, tmp_path / "senior", SeniorCfg(n_prompts=8, lr=5e-3, batch_size=4, epochs=1, beta=0.1,
        lora=LORA), max_length=64, callbacks=[check])
    assert check.ref and check.ref_trainable == []  # a reference adapter exists, and it is frozen
    lora_b = [n for n in check.ref if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(check.ref[n]) for n in lora_b)  # not a zero (= base model) adapter
    for name, weight in check.ref.items():  # ... but exactly the junior's trained weights
        key = name.replace(".default", "")
        assert torch.equal(weight.cpu().to(saved[key].dtype), saved[key]), name
    assert check.unchanged == []  # while the policy (the "default" adapter) moved away from it


def test_revisor_trains_a_fresh_adapter_on_the_base_model(tiny_lm, smoke_cfg, run_paths, monkeypatch):
    """SPEED Eq. 3: the revisor starts from the base model, not the junior; input = prompt + task +
    original, target = the teacher's {"reason", "revision"}."""
    revisions = [{"id": f"rev-{i}", "task_type": "sts", "revisor_input": f"Revise example {i}.", "reason": "too close",
                  "revision": {"S1": f"a cat {i}", "S2": "a kitten", "S3": "a car"}} for i in range(16)]
    write_jsonl(run_paths.data / "revisions.jsonl", revisions)
    random_adapter(tiny_lm, run_paths.adapters / "junior")  # a trained junior is there; it must not be the start
    seen, snap, real_sft = [], Snapshot(), align.sft

    def sft_watched(model_id, rows, *args, **kw):
        seen.append((model_id, rows))
        return real_sft(model_id, rows, *args, callbacks=[snap], **kw)

    monkeypatch.setattr(align, "base_model", lambda cfg: tiny_lm)
    monkeypatch.setattr(align, "sft", sft_watched)
    res = align.train_revisor(smoke_cfg, run_paths)

    (model_id, rows), = seen
    assert model_id == tiny_lm and rows[0]["prompt"] == "Revise example 0."
    assert json.loads(rows[0]["completion"]) == {"reason": "too close", "revision": revisions[0]["revision"]}
    lora_b = [p for n, p in snap.before.items() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)  # a fresh adapter, not the junior's
    # >= 3 steps: the first warms up at lr 0, and lora_A moves only once lora_B is non-zero
    assert res.steps >= 3 and res.losses and all(math.isfinite(loss) for _, loss in res.losses)
    assert snap.unchanged == []
    saved = json.loads((run_paths.adapters / "revisor" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == tiny_lm


def test_generator_is_batched_ordered_and_seeded(tiny_lm, tmp_path):
    reqs = [GenRequest(f"Say something about {w}.", n=2, max_new_tokens=6, seed=3) for w in ("cats", "tax", "rain")]
    a = Generator(tiny_lm, batch_size=4).generate(reqs)
    b = Generator(tiny_lm, batch_size=4).generate(reqs)
    assert [len(x) for x in a] == [2, 2, 2] and a == b
    greedy = [GenRequest("Say something.", temperature=0.0, max_new_tokens=6)]
    one = Generator(tiny_lm, batch_size=1).generate(greedy)
    assert one == Generator(tiny_lm, batch_size=4).generate(greedy)


def test_journal_resumes_a_killed_generation_without_redoing_finished_batches(tiny_lm, tmp_path):
    reqs = [GenRequest(f"Say something about {w}.", n=2, max_new_tokens=6, seed=i)
            for i, w in enumerate(("cats", "tax", "rain", "sea"))]
    whole = Generator(tiny_lm, batch_size=3).generate(reqs)  # 8 rows: batches of 3, 3, 2
    journal = tmp_path / "batches.jsonl"
    gen = Generator(tiny_lm, batch_size=3)
    real, calls = gen._batch, []

    def dies_on_third(rs, ids):
        calls.append(ids)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the kill
        return real(rs, ids)

    gen._batch = dies_on_third
    with pytest.raises(KeyboardInterrupt):
        gen.generate(reqs, journal=journal)
    with open(journal, "a") as f:
        f.write('{"key": "cut by the ki')  # a write the kill cut short
    resumed = Generator(tiny_lm, batch_size=3)
    redo = []
    real2 = resumed._batch
    resumed._batch = lambda rs, ids: redo.append(ids) or real2(rs, ids)
    assert resumed.generate(reqs, journal=journal) == whole
    assert len(redo) == 1  # only the batch in flight was generated again
    assert Generator(tiny_lm, batch_size=2).generate(reqs, journal=journal) == Generator(tiny_lm, batch_size=2).generate(reqs)
    rows = journal.read_text().splitlines(keepends=True)
    journal.write_text(rows[0] + "not json\n" + "".join(rows[2:]))  # a middle batch damaged: set aside, made again
    redo.clear()
    again = Generator(tiny_lm, batch_size=3)
    real3 = again._batch
    again._batch = lambda rs, ids: redo.append(ids) or real3(rs, ids)
    assert again.generate(reqs, journal=journal) == whole
    assert len(redo) == 1 and len(list(read_jsonl(tmp_path / "batches.jsonl.damaged.jsonl"))) == 1


def test_qlora_is_never_used_without_cuda():
    assert quant_config(True) is None  # this machine has no GPU: plain LoRA, recorded as "lora"
    assert batch_plan(16) == (4, 4) and batch_plan(24) == (4, 6)


def test_mixed_sampling_settings_never_share_a_batch(tiny_lm):
    gen = Generator(tiny_lm, batch_size=8)
    seen = []
    real = gen._batch
    gen._batch = lambda reqs, ids: seen.append({(r.temperature, r.max_new_tokens) for r in reqs}) or real(reqs, ids)
    out = gen.generate([GenRequest("a", n=3, temperature=0.0, max_new_tokens=3),
                        GenRequest("b", n=2, temperature=1.0, max_new_tokens=5)])
    assert [len(o) for o in out] == [3, 2] and all(len(s) == 1 for s in seen) and len(seen) == 2


def test_both_backends_are_given_the_same_requests(tiny_lm):
    """vLLM is absent here: check that the transformers path feeds its batches exactly what the vLLM path
    would send (rendered prompt, sampling settings, seed), so both engines get the same work."""
    gen = Generator(tiny_lm, batch_size=3, backend="transformers")
    reqs = [GenRequest(f"Write JSON about {w}.", n=2, temperature=t, max_new_tokens=4, seed=i)
            for i, (w, t) in enumerate([("cats", 1.0), ("tax", 0.0), ("rain", 1.0), ("sea", 1.0)])]
    seen = []
    real = gen._batch
    gen._batch = lambda rs, ids: seen.extend(
        (gen.chat_text(r.prompt), r.temperature, r.top_p, r.max_new_tokens, r.seed) for r in rs) or real(rs, ids)
    out = gen.generate(reqs)
    asked = gen.requests(reqs)
    assert [len(o) for o in out] == [2, 2, 2, 2]
    assert sorted(seen) == sorted((a["prompt"], a["temperature"], a["top_p"], a["max_tokens"], a["seed"])
                                  for a in asked for _ in range(a["n"]))
    assert asked[0]["prompt"].endswith("<|im_start|>assistant\n")  # the model's own chat template
