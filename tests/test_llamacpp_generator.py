"""The llama.cpp generation backend: a PEFT adapter converted to GGUF and served over its GGUF base.

Real parts: SmolLM2-135M (GGUF from PyPI wheels, and the HF folder dequantized from it), llama.cpp's
own converter, a real server on loopback.
"""
import json

import pytest

from speed_utils import assets
from speed_utils.generate import Generator, GenRequest

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"
PROMPTS = ["Write a sentence about cats.", "What is the capital of France?", "List three colours as JSON.",
           "Give a search query about tax law."]


@pytest.fixture(scope="module")
def base():
    return assets.hf_folder(NAME, online=False), assets.gguf_path(NAME, online=False)


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    """A rank-8 adapter with random weights large enough to move the next-token distribution."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base[0]),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    out = tmp_path_factory.mktemp("adapter") / "writer"
    model.save_pretrained(str(out))
    return out


def _served_top(gen: Generator, prompt: str, k: int = 5) -> dict[int, float]:
    import math

    # greedy: llama.cpp reports the probabilities before sampling either way, but a token sampled at
    # temperature 1 can be a partial UTF-8 byte or an end token, for which the server returns no
    # completion_probabilities (one CI run in many, unseeded)
    res = gen.server.complete({"prompt": gen.chat_text(prompt), "n_predict": 1, "temperature": 0.0, "seed": 0,
                               "n_probs": k, "post_sampling_probs": False, "lora": [{"id": 0, "scale": 1.0}]})
    assert "completion_probabilities" in res, {k: v for k, v in res.items() if k != "generation_settings"}
    return {t["id"]: math.exp(t["logprob"]) for t in res["completion_probabilities"][0]["top_logprobs"]}


def test_served_adapter_matches_the_peft_model(base, adapter, tmp_path):
    """Parity: the next-token probabilities of the served GGUF base + GGUF LoRA agree with the PEFT
    model's within 0.06 on each of the served top-5 tokens, for every prompt, and sit closer to the
    adapted model than to the bare base (so the adapter is really applied). The residual is
    llama.cpp's 8-bit quantization of activations against the Q4 weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base[0]), str(adapter)).eval()
    with Generator(base[0], str(adapter), backend="llamacpp", gguf=base[1], parallel=1,
                   log_path=tmp_path / "srv.log") as gen:
        to_adapted, to_base = [], []
        for prompt in PROMPTS:
            served = _served_top(gen, prompt)
            ids = gen.tok(gen.chat_text(prompt), return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                adapted = peft(**ids).logits[0, -1].softmax(-1)
                with peft.disable_adapter():
                    bare = peft(**ids).logits[0, -1].softmax(-1)
            to_adapted.append(max(abs(p - float(adapted[t])) for t, p in served.items()))
            to_base.append(max(abs(p - float(bare[t])) for t, p in served.items()))
    assert max(to_adapted) < 0.06, to_adapted
    assert sum(to_adapted) < sum(to_base), (to_adapted, to_base)
    assert (adapter.parent / "writer.gguf").exists()  # converted once, cached beside the adapter


CONVERT_HERE = """
import logging, sys
from speed_utils import assets, gguf_lora, llama_converters
import torch, transformers  # as in a stage's kernel
root = logging.getLogger()
before = (root.handlers[:], root.level)
assert gguf_lora._bundled_gguf_importable(llama_converters.llama_cpp_converters())
gguf_lora._convert_lora_in_process(sys.argv[1:], "here")
assert (root.handlers, root.level) == before, "the converter's logging set-up was left behind"
try:
    gguf_lora._convert_lora_in_process(["--base", sys.argv[2], "--outfile", "x.gguf", "nowhere"], "adapter nowhere")
except gguf_lora.ConversionError as e:
    assert "failed on adapter nowhere" in str(e), e
else:
    raise SystemExit("a missing adapter converted without an error")
"""


def test_a_conversion_in_this_process_equals_the_scripts_own_run(base, adapter, tmp_path, monkeypatch):
    """llama.cpp's LoRA converter run in a stage's interpreter (skipping a child's 10 s of imports) writes the
    same bytes as the script run on its own and leaves the logging set-up as it was; a bad adapter is a
    ConversionError naming it. Where PyPI's gguf is already imported (as in this pytest process, after the
    GGUF was dequantized), the conversion goes to a child process instead."""
    import subprocess
    import sys
    import types

    from speed_utils import gguf_lora

    args = ["--base", base[0], "--outtype", "f32", str(adapter)]
    here = subprocess.run([sys.executable, "-c", CONVERT_HERE, "--outfile", str(tmp_path / "here.gguf"), *args],
                          capture_output=True, text=True, cwd=tmp_path)
    assert here.returncode == 0, here.stderr[-3000:]
    gguf_lora._run_converter("convert_lora_to_gguf.py", ["--outfile", str(tmp_path / "child.gguf"), *args], "child")
    assert (tmp_path / "here.gguf").read_bytes() == (tmp_path / "child.gguf").read_bytes()

    monkeypatch.setitem(sys.modules, "gguf", types.ModuleType("gguf"))  # another gguf, imported first
    calls = []
    monkeypatch.setattr(gguf_lora, "_run_converter", lambda script, a, what: calls.append(script))
    monkeypatch.setattr(gguf_lora, "_convert_lora_in_process", lambda *a: pytest.fail("converted against it"))
    gguf_lora._convert_lora(["--outfile", str(tmp_path / "x.gguf"), *args], "adapter")
    assert calls == ["convert_lora_to_gguf.py"]


def test_seeded_ordered_and_resumed_from_the_journal(base, adapter, tmp_path):
    """Per-request seeds give the same texts again; a kill mid-stage loses finished batches to no one."""
    reqs = [GenRequest(p, n=2, max_new_tokens=12, seed=i) for i, p in enumerate(PROMPTS)]
    journal = tmp_path / "gen.jsonl"
    with Generator(base[0], str(adapter), batch_size=3, backend="llamacpp", gguf=base[1], parallel=1,
                   log_path=tmp_path / "srv.log") as gen:
        whole = gen.generate(reqs)
        assert [len(o) for o in whole] == [2] * 4 and whole[0][0] != whole[0][1]  # samples differ by seed
        assert gen.generate(reqs) == whole  # per-request seeds: the same texts again
        calls, real = [], gen._complete

        def dies_on_fifth(r, k):
            calls.append(1)
            if len(calls) == 5:
                raise KeyboardInterrupt  # the kill
            return real(r, k)

        gen._complete = dies_on_fifth
        with pytest.raises(KeyboardInterrupt):
            gen.generate(reqs, journal=journal)
        gen._complete = real
        assert len(journal.read_text().splitlines()) == 1  # the first batch of 3 rows finished
        redone = []
        gen._complete = lambda r, k: redone.append(k) or real(r, k)
        assert gen.generate(reqs, journal=journal) == whole
        assert len(redone) == 8 - 3


def test_batched_slots_resume_keeps_finished_rows_and_repeats_none(base, adapter, tmp_path):
    """Several slots (the ``cpu`` profile's 8): a row's numerics depend on the rows decoded beside it, so a
    resumed stage's new rows need not equal an uninterrupted run's bytes. What holds, and is tested here:
    after a kill every row comes back once, in request order, with the sample count asked; rows journalled
    before the kill are kept verbatim; and no journalled row is generated again."""
    reqs = [GenRequest(p, n=2, max_new_tokens=12, seed=i) for i, p in enumerate(PROMPTS)]
    journal = tmp_path / "gen.jsonl"
    with Generator(base[0], str(adapter), batch_size=2, backend="llamacpp", gguf=base[1], parallel=4,
                   log_path=tmp_path / "srv.log") as gen:
        calls, real = [], gen._complete

        def dies_late(r, k):
            calls.append(1)
            if len(calls) == 7:
                raise KeyboardInterrupt  # the kill, with earlier rows finished on other slots
            return real(r, k)

        gen._complete = dies_late
        with pytest.raises(KeyboardInterrupt):
            gen.generate(reqs, journal=journal)
        kept = [json.loads(line) for line in journal.read_text().splitlines()]
        assert 1 <= len(kept) < 4  # some batches of 2 rows finished, not all
        redone = []
        gen._complete = lambda r, k: redone.append(k) or real(r, k)
        out = gen.generate(reqs, journal=journal)
    assert [len(o) for o in out] == [2] * 4 and all(isinstance(t, str) for o in out for t in o)
    assert len(redone) == 8 - 2 * len(kept)  # nothing journalled is asked again
    flat = [t for o in out for t in o]
    for batch in kept:  # journalled rows come back verbatim
        assert all(t in flat for t in batch["texts"])
    assert len(journal.read_text().splitlines()) == 4  # one entry a batch, none twice


def test_a_parallel_server_returns_every_row_in_order(base, tmp_path):
    reqs = [GenRequest(f"Count to {i}.", temperature=0.0, max_new_tokens=8, seed=i) for i in range(5)]
    with Generator(base[0], backend="llamacpp", gguf=base[1], parallel=3, batch_size=2,
                   log_path=tmp_path / "srv.log") as gen:
        out = gen.generate(reqs)
        assert gen.tokens_out > 0 and [len(o) for o in out] == [1] * 5
        singles = [gen.generate([r])[0] for r in reqs]
    assert sum(a == b for a, b in zip(out, singles)) >= 4  # greedy: the same text batched or alone


def test_constrained_decoding_writes_the_schema_and_leaves_other_requests_alone(base, tmp_path):
    """generation.structured_output (the smoke profile): the served generator's sampling is constrained to
    the task type's JSON schema, so even the 135M model writes a parseable example; a request without a
    schema is asked exactly as before (same request, same journal key)."""
    import json

    from speed_utils.schema import KEYS, generator_schema

    reqs = [GenRequest(f"Write one {t} example as JSON.", max_new_tokens=256, seed=i, json_schema=generator_schema(t))
            for i, t in enumerate(("sts", "retrieval", "classification"))]
    with Generator(base[0], None, backend="llamacpp", gguf=base[1], parallel=1,
                   log_path=tmp_path / "server.log") as gen:
        texts = [o[0] for o in gen.generate(reqs)]
        free = gen.requests([GenRequest("Say hi.")])[0]
    for t, text in zip(("sts", "retrieval", "classification"), texts):
        assert set(json.loads(text)) == set(KEYS[t]), (t, text)  # whole JSON with the type's fields, nothing else
    assert "json_schema" not in free and gen.requests(reqs[:1])[0]["json_schema"] == reqs[0].json_schema
