"""Stage 10's numbers for a fixed ledger are exact; the pre-flight estimate counts the profile's calls."""
import pytest

from speed_utils import cost
from speed_utils.profiles import load_profile
from speed_utils.files import write_jsonl


def row(stage, tag, p, c, hit=False):
    return {"stage": stage, "tag": tag, "prompt_tokens": p, "completion_tokens": c, "cache_hit": hit}


LEDGER = [row("01_brainstorm", "b00000-retrieval", 100, 50), row("01_brainstorm", "b00001-classification", 100, 50),
          *[row("02_seed", f"s0000{i}-sts", 200, 100) for i in range(3)], row("02_seed", "s00000-sts", 200, 100, hit=True),
          *[row("04_senior", f"judge-senior0000{i}-sts", 1000, 50) for i in range(2)],
          *[row("05_revisor", f"rev-senior0000{i}-sts-0", 500, 300) for i in range(2)],
          row("05_revisor", "q-pair-heldout00000-sts-1", 700, 40)]


def test_kind_of_tags():
    """A row's kind is what its request said; a ledger from before requests carried one is decoded by prompt id."""
    assert [cost.kind_of({"tag": t}) for t in ("b00003-long_long", "s00012-sts", "judge-senior00001-sts", "rev-x", "q-pair-y", "zzz")] \
        == ["brainstorm", "seed", "judge", "revision", "quality", "other"]
    assert cost.kind_of({"tag": "s00012-sts", "kind": "judge"}) == "judge"


def test_stage_table_is_exact(tmp_path):
    write_jsonl(tmp_path / "ledger.jsonl", LEDGER)
    table = {r["stage"]: r for r in cost.stage_table(tmp_path / "ledger.jsonl", "local-model")}
    assert table["02_seed"] == {"stage": "02_seed", "calls": 3, "cache_hits": 1, "prompt_tokens": 600,
                                "completion_tokens": 300, "usd": 0.0075, "priced_as": "gpt-4o-2024-05-13"}
    assert table["05_revisor"]["calls"] == 3 and table["05_revisor"]["usd"] == pytest.approx((1700 * 5 + 640 * 15) / 1e6)


def test_extrapolation_to_paper_sizes_is_exact(tmp_path):
    write_jsonl(tmp_path / "ledger.jsonl", LEDGER)
    x = cost.extrapolate(tmp_path / "ledger.jsonl", "gpt-4o-2024-05-13")
    assert x["per_call_tokens"] == {"seed": [200.0, 100.0], "judge": [1000.0, 50.0], "revision": [500.0, 300.0]}
    speed, e5_all, e5_500k = x["rows"]
    assert speed == {"pipeline": "SPEED (this run's tokens per call)", "calls": 45_000, "tokens": 26_000_000, "usd": 190.0}
    assert (e5_all["calls"], e5_all["tokens"], e5_all["usd"]) == (920_415, 276_124_500, 2301.04)
    assert (e5_500k["calls"], e5_500k["tokens"], e5_500k["usd"]) == (500_000, 150_000_000, 1250.0)
    assert x["speed_breakdown"]["judge"] == {"calls": 10_000, "tokens": 10_500_000}


def test_extrapolation_says_what_is_missing(tmp_path):
    write_jsonl(tmp_path / "ledger.jsonl", LEDGER[:6])
    x = cost.extrapolate(tmp_path / "ledger.jsonl", "gpt-4o-2024-05-13")
    assert x["missing"] == ["judge", "revision"] and "rows" not in x


def test_estimate_counts_the_profiles_calls():
    cfg = load_profile("paper")
    rows = {r["kind"]: r for r in cost.estimate(cfg)}
    assert rows["seed"]["calls"] == 25_000 and rows["judge"]["calls"] == 10_000 and rows["revision"]["calls"] == 10_000
    assert rows["brainstorm"]["calls"] == 10_000 * 4
    assert all(r["prompt_tokens"] > r["calls"] * 50 for r in rows.values())  # real prompts are hundreds of tokens
    assert rows["seed"]["usd_max"] == pytest.approx(
        (rows["seed"]["prompt_tokens"] * 5 + rows["seed"]["completion_tokens_max"] * 15) / 1e6, abs=0.01)


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu-24gb", "paper"])
def test_every_profiles_budget_covers_its_planned_calls(name):
    cfg = load_profile(name)
    assert sum(r["calls"] for r in cost.estimate(cfg)) <= cfg.teacher.max_calls
