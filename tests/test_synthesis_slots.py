"""Stage 06 on llama.cpp slots (issue 32): chunks overlap, so the next chunk's rows fill the slots while a
chunk's longest rows finish. Real parts: SmolLM2-135M's GGUF with random LoRA adapters, a llama.cpp server."""
import threading

import pytest
import yaml
from test_scale import adapters, new_run  # noqa: F401 - the module's adapters fixture, reused

from speed_utils import synthesis
from speed_utils.files import read_jsonl
from speed_utils.generate import Generator
from speed_utils.profiles import load_profile

pytestmark = pytest.mark.slow


def test_chunks_overlap_on_several_slots_and_every_chunk_is_written(tmp_path, adapters, monkeypatch):  # noqa: F811
    prof = tmp_path / "slots.yaml"
    prof.write_text(yaml.safe_dump({
        "extends": "smoke", "generation": {"backend": "llamacpp", "parallel": 4, "threads": 2, "structured_output": False},
        "synthesis": {"n_examples": 8, "chunk_size": 2, "max_new_tokens": 8, "revisor_max_new_tokens": 8}}))
    cfg = load_profile(prof)
    run = new_run(tmp_path / "run", adapters)
    busy, peak, lock, real = [0], [0], threading.Lock(), Generator.generate

    def counted(self, *a, **k):
        with lock:
            busy[0] += 1
            peak[0] = max(peak[0], busy[0])
        try:
            return real(self, *a, **k)
        finally:
            with lock:
                busy[0] -= 1

    monkeypatch.setattr(Generator, "generate", counted)
    made = synthesis.make_chunks(cfg, run)
    assert made["made"] == made["chunks"] == 4
    assert peak[0] == 3  # 1 + ceil(4 slots / 2 rows a chunk) chunks at once
    rows = synthesis.read_chunks(cfg, run)
    assert [r["index"] for r in rows] == list(range(8)) and all(r["revisor_raw"] is not None for r in rows)
    merged = synthesis.merge(cfg, run)
    assert merged["requested"] == 8 and len(list(read_jsonl(run.data / "synthetic.jsonl"))) == merged["kept"]


def test_one_chunk_at_a_time_where_slots_would_not_fill():
    class Gen:
        backend, parallel = "llamacpp", 1

    assert synthesis.chunks_in_flight(Gen(), 12) == 1
    Gen.parallel = 8
    assert synthesis.chunks_in_flight(Gen(), 12) == 2
    Gen.backend = "transformers"
    assert synthesis.chunks_in_flight(Gen(), 12) == 1
