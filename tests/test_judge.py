"""Stage 04's order-debiased judge (issue 16) against a scripted judge on a loopback server."""
import json
import re

import pytest

from speed_utils import align
from speed_utils.files import read_jsonl

OUTPUTS = ["alpha", "bravo", "charlie"]  # each root list holds these three outputs, in this order


def root(n: int) -> list[dict]:
    return [{"id": f"p{i}", "task_type": "sts", "task": "t", "topic": "x", "prompt": f"prompt {i}",
             "outputs": list(OUTPUTS)} for i in range(n)]


def shown(body: dict) -> list[str]:
    """The outputs in the order the judge was shown them."""
    text = body["messages"][-1]["content"]
    return [o for _, o in sorted((text.index(f"]\n{o}"), o) for o in OUTPUTS)]


def verdict(best: int, worst: int) -> tuple:
    return ("ok", json.dumps({"reason": "scripted", "best": best, "worst": worst}), "stop")


def judge(smoke_cfg, run_paths, make_teacher, answer, orders: int, n: int = 4):
    from fakes import FakeTeacher

    cfg = smoke_cfg.model_copy(update={"senior": smoke_cfg.senior.model_copy(update={"k_samples": 3,
                                                                                      "judge_orders": orders})})
    with FakeTeacher(default=answer) as fake:
        out = align.judge_root(cfg, run_paths, make_teacher(fake.base_url), root(n))
    assert out["judgements"] == n * orders
    return {**out, "calls": len(fake.requests)}, list(read_jsonl(run_paths.data / "prefs.jsonl"))


def test_a_judge_that_picks_by_position_keeps_no_pair(smoke_cfg, run_paths, make_teacher):
    first_best = lambda body: verdict(0, 2)  # noqa: E731
    out, prefs = judge(smoke_cfg, run_paths, make_teacher, first_best, orders=2)
    assert prefs == [] and out["pairs"] == 0
    assert out["self_agreement"] == 0.0 and out["shown_first_named_best"] == 1.0 and out["calls"] == 8
    # the paper's single-order judge keeps every such pair; its judgements are the cached original orders
    out, prefs = judge(smoke_cfg, run_paths, make_teacher, first_best, orders=1)
    assert len(prefs) == 4 and all(p["chosen"] == "alpha" for p in prefs) and out["calls"] == 0


def test_a_judge_that_reads_the_outputs_keeps_every_pair(smoke_cfg, run_paths, make_teacher):
    """The judge names "charlie" best and "alpha" worst wherever they are shown: both orders agree."""
    by_content = lambda body: verdict(shown(body).index("charlie"), shown(body).index("alpha"))  # noqa: E731
    out, prefs = judge(smoke_cfg, run_paths, make_teacher, by_content, orders=2)
    assert [(p["chosen"], p["rejected"], p["best"], p["worst"]) for p in prefs] == [("charlie", "alpha", 2, 0)] * 4
    assert out["self_agreement"] == 1.0 and out["shown_first_named_best"] == 0.5


def test_pairs_survive_only_where_the_orders_agree(smoke_cfg, run_paths, make_teacher):
    """Lists p0 and p2 are judged by content, p1 and p3 by position: two pairs survive, the agreement is 1/2."""
    def mixed(body):
        pid = int(re.search(r"prompt (\d)", body["messages"][-1]["content"]).group(1))
        return verdict(shown(body).index("bravo"), shown(body).index("charlie")) if pid % 2 == 0 else verdict(0, 1)
    out, prefs = judge(smoke_cfg, run_paths, make_teacher, mixed, orders=2)
    assert [p["id"] for p in prefs] == ["p0", "p2"] and {p["chosen"] for p in prefs} == {"bravo"}
    assert (out["lists_judged_in_every_order"], out["same_best_every_order"]) == (4, 2)
    assert out["self_agreement"] == 0.5


def test_a_best_read_from_the_outputs_survives_a_worst_picked_by_position(smoke_cfg, run_paths, make_teacher):
    """Best by content ("bravo"), worst always the last shown: both orders rank bravo first, so the pair is
    kept, against the first order's worst (the reversed order also ranks bravo above it)."""
    out, prefs = judge(smoke_cfg, run_paths, make_teacher, lambda body: verdict(shown(body).index("bravo"), 2), orders=2)
    assert [(p["chosen"], p["rejected"]) for p in prefs] == [("bravo", "charlie")] * 4
    assert (out["same_best_every_order"], out["same_best_and_worst_every_order"]) == (4, 0)


def test_a_list_with_an_unparsed_order_keeps_no_pair():
    assert align.agreed([{"best": 1, "worst": 0, "reason": ""}], 2) is None
    assert align.agreed([{"best": 1, "worst": 0}, {"best": 2, "worst": 0}], 2) is None
    assert align.agreed([{"best": 1, "worst": 0, "reason": ""}], 1) == {"best": 1, "worst": 0, "reason": ""}
    assert align.judge_orders(3, 2) == [("", [0, 1, 2]), ("r-", [2, 1, 0])]


@pytest.mark.parametrize("profile,judge,per_list", [("cpu", "calibrated", 3), ("smoke", "orders", 1), ("paper", "orders", 1)])
def test_profiles_choose_their_judge(profile, judge, per_list):
    from speed_utils.profiles import load_profile

    senior = load_profile(profile).senior
    assert (senior.judge, senior.judgements_per_list) == (judge, per_list)


def test_no_surviving_pair_leaves_the_senior_as_the_junior(smoke_cfg, run_paths):
    """DPO on an empty set is the identity: the senior adapter is the junior's, and the result says why."""
    from speed_utils.files import write_jsonl, sha256_path

    junior = run_paths.adapters / "junior"
    junior.mkdir(parents=True)
    (junior / "adapter_model.safetensors").write_bytes(b"weights")
    (junior / "adapter_config.json").write_text("{}")
    write_jsonl(run_paths.data / "prefs.jsonl", [])
    cfg = smoke_cfg.model_copy(update={"senior": smoke_cfg.senior.model_copy(update={"judge_orders": 2})})
    res = align.train_senior(cfg, run_paths)
    assert res.steps == 0 and "both orders" in res.extra["unchanged_junior"]
    assert sha256_path(run_paths.adapters / "senior") == sha256_path(junior)
    with pytest.raises(ValueError, match="no preference pair"):
        align.train_senior(smoke_cfg.model_copy(update={"senior": smoke_cfg.senior.model_copy(update={"judge_orders": 1})}),
                           run_paths)


# ---------------------------------------------------------------- the calibrated judge (issue 31)
import math  # noqa: E402

from speed_utils import judge as calibrated  # noqa: E402


def scored(best: int, worst: int, probs: list[float]) -> tuple:
    """A judgement whose "best" index token carries ``probs`` over the shown indices (the fake's logprobs)."""
    content = json.dumps({"best": best, "worst": worst, "reason": "scripted"})
    top = sorted(((str(i), math.log(p)) for i, p in enumerate(probs) if p > 0), key=lambda x: -x[1]) + [(" the", -6.0)]
    tokens = [('{"best": ', []), (str(best), top), (content[content.index(","):], [])]
    return ("ok", content, "stop", tokens)


def judge_calibrated(smoke_cfg, run_paths, make_teacher, answer, n: int = 4, margin: float = 0.15):
    from fakes import FakeTeacher

    cfg = smoke_cfg.model_copy(update={"senior": smoke_cfg.senior.model_copy(
        update={"k_samples": 3, "judge": "calibrated", "judge_margin": margin})})
    with FakeTeacher(default=answer) as fake:
        out = align.judge_root(cfg, run_paths, make_teacher(fake.base_url), root(n))
    assert out["judgements"] == 3 * n and all(b.get("top_logprobs") == calibrated.TOP_LOGPROBS for b in fake.requests)
    return out, list(read_jsonl(run_paths.data / "prefs.jsonl"))


def test_the_calibrated_judge_finds_no_preference_in_a_judge_that_picks_by_position(smoke_cfg, run_paths, make_teacher):
    out, prefs = judge_calibrated(smoke_cfg, run_paths, make_teacher, lambda body: scored(0, 2, [0.9, 0.06, 0.04]))
    assert prefs == [] and out["pairs"] == 0 and out["mean_margin"] < 1e-3  # every candidate averages 1/3
    assert out["first_shown_mass"] == pytest.approx(0.9) and out["self_agreement"] == 0.0


def test_the_calibrated_judge_yields_the_candidate_preferred_wherever_it_stands(smoke_cfg, run_paths, make_teacher):
    def charlie(body):
        at = shown(body).index("charlie")
        return scored(at, (at + 1) % 3, [0.7 if i == at else 0.15 for i in range(3)])
    out, prefs = judge_calibrated(smoke_cfg, run_paths, make_teacher, charlie)
    assert [(p["chosen"], p["rejected"]) for p in prefs] == [("charlie", "alpha")] * 4  # a tie for worst: the first
    assert all(p["reason"] == "scripted" for p in prefs)  # a reason of a judgement that named the chosen best
    assert all(p["margin"] == pytest.approx(0.55) for p in prefs) and out["pairs_share"] == 1.0
    assert out["self_agreement"] == 1.0 and out["first_shown_mass"] == pytest.approx((0.7 + 0.15 + 0.15) / 3, abs=1e-3)


def test_a_weak_preference_below_the_margin_keeps_no_pair(smoke_cfg, run_paths, make_teacher):
    def slight(body):
        at = shown(body).index("bravo")
        return scored(at, (at + 1) % 3, [0.38 if i == at else 0.31 for i in range(3)])
    out, prefs = judge_calibrated(smoke_cfg, run_paths, make_teacher, slight, margin=0.15)
    assert prefs == [] and out["mean_margin"] == pytest.approx(0.07)


def test_a_reply_without_token_probabilities_is_counted_not_guessed(smoke_cfg, run_paths, make_teacher):
    out, prefs = judge_calibrated(smoke_cfg, run_paths, make_teacher, lambda body: verdict(1, 0))
    assert prefs == [] and out["no_token_probabilities"] == 12


def test_rotations_show_each_candidate_once_at_each_position():
    rots = calibrated.rotations(3)
    assert rots == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    assert all(sorted(r[pos] for r in rots) == [0, 1, 2] for pos in range(3))
    assert calibrated.pick([1 / 3] * 3, 0.0) is None  # no preference, even at margin 0


def test_both_judges_write_prefs_rows_alike(smoke_cfg, run_paths, make_teacher):
    """Stage 04's notebook and DPO read the same fields whichever judge wrote the pairs (a cpu run of the
    calibrated judge stopped in notebook 04 on a missing "reason", 2026-12-07)."""
    def charlie(body):
        at = shown(body).index("charlie")
        return scored(at, (at + 1) % 3, [0.7 if i == at else 0.15 for i in range(3)])
    _, orders = judge(smoke_cfg, run_paths, make_teacher, charlie, orders=2)
    _, rotated = judge_calibrated(smoke_cfg, run_paths, make_teacher, charlie)
    assert orders and rotated and set(orders[0]) - {"orders"} <= set(rotated[0])
