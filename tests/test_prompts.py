"""Prompts: seeded, fully rendered, weighted as in SPEED's code, topics truncated as in App. D.1."""
import re
from collections import Counter

from speed_utils.prompts import (RETRIEVAL_ATTRS, allocate, all_topics, brainstorm_prompt, generation_prompt,
                                 judge_prompt, revision_prompt, rng_for, sample_attributes, sample_topics,
                                 truncate_topic)
from speed_utils.schema import KEYS

TYPES = ["retrieval", "classification", "sts", "short_short", "long_long"]


def test_truncation_matches_paper_example():
    assert truncate_topic("Arts/Movies/Titles/3/36_Hours_-_1964/Cast_and_Crew") == "Arts/Movies/36_Hours_-_1964/Cast_and_Crew"
    assert truncate_topic("Science/Biology") == "Science/Biology"


def test_topic_list_is_ours_and_large_enough():
    topics = all_topics()
    assert 300 <= len(topics) == len(set(topics))
    assert sum(t.count("/") >= 4 for t in topics) >= 50  # deep paths that truncation shortens
    assert all(s.count("/") <= 3 for s in sample_topics(50, seed=1))


def test_same_seed_same_prompts_and_items_independent_of_count():
    a = [generation_prompt(t, i, seed=7, task="Find X", topic="Arts/Movies").text for i, t in enumerate(TYPES)]
    b = [generation_prompt(t, i, seed=7, task="Find X", topic="Arts/Movies").text for i, t in enumerate(TYPES)]
    c = [generation_prompt(t, i, seed=8, task="Find X", topic="Arts/Movies").text for i, t in enumerate(TYPES)]
    assert a == b and a != c
    assert sample_topics(5, 3) == sample_topics(20, 3)[:5]


def test_every_prompt_is_fully_rendered_and_names_its_keys():
    for i in range(40):
        for t in TYPES:
            p = generation_prompt(t, i, seed=0, task="Retrieve support articles for a complaint", topic="Home/Garden")
            assert not re.search(r"\{[a-z_]+\}", p.text), p.text
            assert "None" not in p.text
            for key in KEYS[t]:
                assert f'"{key}"' in p.text
    for t in ["retrieval", "classification", "short_short", "long_long"]:
        text = brainstorm_prompt(t, "Sports/Tennis", 0, seed=0).text
        assert "Sports > Tennis" in text and "{" not in text


def test_attribute_weights_follow_speed():
    rng = rng_for(0, "weights", 0)
    draws = Counter(sample_attributes("retrieval", rng)["query_type"] for _ in range(6000))
    options, weights = RETRIEVAL_ATTRS["query_type"]
    for opt, w in zip(options, weights):
        assert abs(draws[opt] / 6000 - w) < 0.03
    half = sum(sample_attributes("classification", rng)["difficulty"] is not None for _ in range(4000)) / 4000
    assert abs(half - 0.5) < 0.04


def test_allocation_is_exact_and_covers_all_types():
    counts = allocate(120, {"classification": 7, "sts": 7, "retrieval": 7, "short_short": 1, "long_long": 1})
    assert sum(counts.values()) == 120 and min(counts.values()) >= 5
    assert allocate(3, {"a": 1, "b": 0}) == {"a": 3}


def test_judge_and_revision_prompts():
    j = judge_prompt("PROMPT", ["out a", "out b", "out c"])
    assert "[2]\nout c" in j and '"best"' in j and '"worst"' in j and "3 outputs" in j
    r = revision_prompt("PROMPT", "TASK", '{"S1": "x"}')
    assert '"revision"' in r and "TASK" in r and '{"S1": "x"}' in r
