"""JSON repair and per-type validation, with reject reasons (SPEED utils.py behaviour)."""
import json

import pytest

from speed_utils.schema import (KEYS, STS_TASK, parse_example, parse_json, parse_judgement, parse_revision,
                                parse_task_list, to_training_example, validate)

GOOD = {"user_query": "q", "positive_document": "pos doc", "hard_negative_document": "neg doc"}


def test_plain_json_parses_unrepaired():
    p = parse_json(json.dumps(GOOD))
    assert p.ok and p.value == GOOD and not p.repaired


@pytest.mark.parametrize("text", [
    "```json\n" + json.dumps(GOOD) + "\n```",
    "Sure! Here it is:\n" + json.dumps(GOOD) + "\nHope this helps {really}.",
    json.dumps(GOOD)[:-1] + ",}",  # trailing comma, fixed by json_repair
])
def test_damaged_json_is_repaired(text):
    p = parse_example("retrieval", text)
    assert p.ok and p.value == GOOD and p.repaired


@pytest.mark.parametrize("text,reason", [
    ("", "empty_output"),
    ("no json here at all", "no_json_object"),
    (json.dumps({"user_query": "q"}), "missing:positive_document"),
    (json.dumps({**GOOD, "user_query": "  "}), "empty:user_query"),
    (json.dumps({**GOOD, "user_query": 3}), "not_a_string:user_query"),
    (json.dumps({**GOOD, "hard_negative_document": "pos doc"}), "duplicate_fields"),
])
def test_rejects_carry_reasons(text, reason):
    p = parse_example("retrieval", text)
    assert not p.ok and p.reason == reason


def test_truncated_completion_is_rejected_even_if_parseable():
    assert parse_example("retrieval", json.dumps(GOOD), finish_reason="length").reason == "truncated"


def test_classification_labels_must_differ():
    assert validate("classification", {"input_text": "t", "label": "A", "misleading_label": "a"}) == ["labels_equal"]


def test_extra_keys_are_dropped():
    p = parse_example("sts", json.dumps({"S1": "a", "S2": "b", "S3": "c", "note": "x"}))
    assert p.value == {"S1": "a", "S2": "b", "S3": "c"}


def test_task_list_python_and_json():
    text = "['Retrieve recipes for a given dish name', \"Find court rulings on tenant rights questions\"]"
    assert parse_task_list(text).value == ["Retrieve recipes for a given dish name",
                                           "Find court rulings on tenant rights questions"]
    assert parse_task_list('```\n["Match idioms to plain sentences", "x"]\n```').value == ["Match idioms to plain sentences"]
    assert parse_task_list("I cannot help").reason == "no_list"


def test_judgement_rules():
    assert parse_judgement('{"reason": "r", "best": 1, "worst": 3}', k=5).value["best"] == 1
    assert parse_judgement('{"reason": "r", "best": 2, "worst": 2}', k=5).reason == "best_equals_worst"
    assert parse_judgement('{"reason": "r", "best": 7, "worst": 0}', k=5).reason == "index_out_of_range"
    assert parse_judgement('{"reason": "r"}', k=5).reason == "missing_or_bad_index"


def test_revision_must_hold_a_valid_example():
    ok = parse_revision("sts", json.dumps({"reason": "r", "revision": {"S1": "a", "S2": "b", "S3": "c"}}))
    assert ok.ok and ok.value["revision"]["S3"] == "c"
    bad = parse_revision("sts", json.dumps({"reason": "r", "revision": {"S1": "a"}}))
    assert bad.reason == "revision_missing:S2"


def test_training_mapping_follows_the_paper():
    c = to_training_example("classification", "Classify X", {"input_text": "t", "label": "L", "misleading_label": "M"})
    assert (c["query"], c["positive"], c["negative"]) == ("t", "L", "M")
    s = to_training_example("sts", "ignored", {"S1": "a", "S2": "b", "S3": "c"})
    assert s["instruction"] == STS_TASK and (s["query"], s["positive"], s["negative"]) == ("a", "b", "c")
    m = to_training_example("short_short", "Match", {"input": "a", "positive_document": "b"})
    assert m["negative"] is None
    assert set(KEYS) == {"retrieval", "classification", "sts", "short_short", "long_long"}


def test_task_list_numbered_or_bulleted_is_repaired_and_examples_dropped():
    text = ("Here are some tasks:\n1. Given a manga title, retrieve plot summaries of its story.\n"
            "2) Given a recipe title, retrieve cooking blog posts that prepare the same dish.\n"
            '- "Given a painting, retrieve articles on its style and technique."')
    p = parse_task_list(text, exclude=("Given a recipe title, retrieve cooking blog posts that prepare the same dish.",))
    assert p.ok and p.repaired
    assert p.value == ["Given a manga title, retrieve plot summaries of its story.",
                       "Given a painting, retrieve articles on its style and technique."]
    assert not parse_task_list("1. only one numbered line here").ok


def test_wilson_interval():
    from speed_utils.stats import wilson

    lo, hi = wilson(30, 50)
    assert 0.46 < lo < 0.47 and 0.72 < hi < 0.73  # textbook value for 30/50: [0.462, 0.724]
    assert wilson(0, 0) == (0.0, 1.0)


def test_pairwise_tally_separates_preference_from_position_bias():
    from speed_utils.align import pairwise_tally, wilson

    # p1: senior named best in both orders; p2: the judge always names the first output (pure position bias);
    # p3: junior best in both orders; p4: only one order parsed
    trials = [("p1", False, 1), ("p1", True, 0), ("p2", False, 0), ("p2", True, 0),
              ("p3", False, 0), ("p3", True, 1), ("p4", True, 0)]
    t = pairwise_tally(trials)
    assert (t["wins"], t["trials"], t["win_rate"]) == (4, 7, round(4 / 7, 3))
    assert t["first_named_best"] == round(5 / 7, 3)
    assert (t["prompts_senior_both_orders"], t["prompts_junior_both_orders"], t["prompts_split_by_order"]) == (1, 1, 1)
    assert t["consistent_win_rate"] == 0.5 and t["consistent_ci95"] == [round(x, 3) for x in wilson(1, 2)]
    position_only = pairwise_tally([(p, first, 0) for p in ("a", "b", "c") for first in (False, True)])
    assert position_only["consistent_win_rate"] is None and position_only["prompts_split_by_order"] == 3
    assert pairwise_tally([])["win_rate"] is None


def test_a_constrained_judgement_always_has_room_for_its_verdict():
    """Under constrained decoding the reason is bounded in characters, and a token holds at least one,
    so the reason plus the JSON around it ({"reason": ..., "best": k, "worst": k}) fits the token cap."""
    from speed_utils import align

    schema = align.judge_schema(4)
    assert schema["properties"]["reason"]["maxLength"] == align.JUDGE_REASON_CHARS
    assert align.JUDGE_REASON_CHARS + len('{"reason": "", "best": 3, "worst": 3}') < align.JUDGE_MAX_TOKENS
