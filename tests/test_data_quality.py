"""The data-quality rules (issue 31, item 3): each passes a sound row and fails on a row built to break it."""
import json

import numpy as np
import pytest

from speed_utils import data_quality as dq

SOUND_RETRIEVAL = {"user_query": "how do tides form along the coast",
                   "positive_document": "Tides form because the gravity of the moon and the sun pulls on the "
                                        "oceans of the earth, and the water rises and falls along the coast twice "
                                        "a day as the planet turns under those bulges of water.",
                   "hard_negative_document": "Coastal erosion is the loss of land along the shoreline when waves "
                                             "and currents carry away the sand and rock over many years."}
ASKED = {"query_length": "5 to 15 words", "num_words": 30}


def raw(obj: dict) -> str:
    return json.dumps(obj)


def with_(**fields) -> str:
    return raw({**SOUND_RETRIEVAL, **fields})


def check(text: str, attributes=ASKED, encode=None) -> dict:
    return dq.check_output("retrieval", text, attributes, "Retrieve passages that answer the question.", encode)


class KeywordEncoder:
    """A reference encoder that cannot be fooled on these rows: bag of a few topic words."""

    VOCAB = ("tide", "moon", "gravity", "ocean", "coast", "erosion", "sand", "rock", "wave")

    def __call__(self, texts):
        return np.array([[t.lower().count(w) + 1e-3 for w in self.VOCAB] for t in texts], dtype=float)


def test_a_sound_row_passes_every_rule():
    got = check(raw(SOUND_RETRIEVAL), encode=KeywordEncoder())
    assert got == {"valid": True, "instructions": True, "english": True, "not_a_copy": True, "ranks_positive": True}


def test_invalid_json_or_a_missing_key_fails_valid_and_leaves_the_rest_unjudged():
    for text in ('{"user_query": "tides", "positive_document": ', raw({"user_query": "q", "positive_document": "p"})):
        got = check(text)
        assert got["valid"] is False and all(got[r] is None for r in ("instructions", "english", "not_a_copy"))


def test_word_counts_the_prompt_asked_for():
    assert check(with_(user_query="tides"))["instructions"] is False  # "5 to 15 words"
    assert check(with_(positive_document="The moon pulls the sea."))["instructions"] is False  # at least 30
    assert check(raw(SOUND_RETRIEVAL), attributes={"query_length": "less than 5 words"})["instructions"] is False
    assert check(raw(SOUND_RETRIEVAL), attributes={})["instructions"] is None  # nothing to count
    cls = {"input_text": "Great phone, the battery lasts two full days and the screen is bright.",
           "label": "positive", "misleading_label": "negative"}
    assert dq.check_output("classification", raw(cls), {"num_words": "less than 10"})["instructions"] is False
    assert dq.check_output("classification", raw(cls), {"num_words": "at least 10"})["instructions"] is True
    sts = {"S1": "A man plays a guitar.", "S2": "A man is playing the guitar. He sings too.", "S3": "A dog runs."}
    assert dq.check_output("sts", raw(sts), {"unit": "sentence"})["instructions"] is False
    short = {"input": "a question " * 20, "positive_document": "an answer"}
    assert dq.check_output("short_short", raw(short), {})["instructions"] is False


@pytest.mark.parametrize("text", [
    "Hyvää päivää, tämä on täysin suomenkielinen lause ilman englantia mukana lainkaan.",  # not English
    "xqzt vbnm plok wert yuio asdf ghjk zxcv qwer tyui",  # gibberish: no function word
    "Привет мир это предложение на русском языке для проверки правила",  # another script
    "{{ }} [[ ]] ### $$$ 0101 2323 //// ++++ ---- ====",  # not words
])
def test_text_that_is_not_english_prose_fails(text):
    assert dq.check_output("retrieval", with_(positive_document=text), {}, "t")["english"] is False


def test_a_positive_that_repeats_the_query_fails():
    q = SOUND_RETRIEVAL["user_query"]
    assert check(with_(positive_document=q))["valid"] is False  # the schema already refuses an exact copy
    assert check(with_(positive_document=q + "."))["not_a_copy"] is False
    assert check(with_(positive_document=q.upper() + "?"))["not_a_copy"] is False  # normalised alike
    assert check(with_(positive_document=q + "s"))["not_a_copy"] is False  # 90% alike


def test_the_reference_encoder_must_rank_the_positive_above_the_hard_negative():
    swapped = with_(positive_document=SOUND_RETRIEVAL["hard_negative_document"],
                    hard_negative_document=SOUND_RETRIEVAL["positive_document"])
    assert check(swapped, encode=KeywordEncoder())["ranks_positive"] is False
    matching = {"input": "a tide question", "positive_document": "the moon makes tides"}
    assert dq.check_output("short_short", raw(matching), {}, "t", KeywordEncoder())["ranks_positive"] is None  # no negative


def test_a_near_duplicate_of_an_earlier_output_fails_distinct():
    outputs = [{"prompt_id": f"p{i}", "task_type": "retrieval", "raw": text, "attributes": ASKED} for i, text in
               enumerate([raw(SOUND_RETRIEVAL), with_(user_query=SOUND_RETRIEVAL["user_query"] + "!"), "not json"])]
    rows = dq.check_generator(outputs)
    assert [r["distinct"] for r in rows] == [True, False, None]


def test_rates_have_wilson_intervals_and_generators_are_compared_on_the_same_prompts():
    a = [{"prompt_id": f"p{i}", "valid": i < 4} for i in range(10)]
    b = [{"prompt_id": f"p{i}", "valid": i < 9} for i in range(10)]
    assert dq.rate(a, "valid") == {"rate": 0.4, "lo": pytest.approx(0.168, abs=0.001), "hi": pytest.approx(0.687, abs=0.001), "n": 10}
    diff = dq.paired_rate_difference(a, b, "valid", n_boot=500)
    assert diff["value"] == pytest.approx(0.5) and 0 < diff["lo"] <= diff["value"] <= diff["hi"] and diff["n"] == 10
    assert dq.paired_rate_difference(a, a, "valid", n_boot=100)["value"] == 0.0
