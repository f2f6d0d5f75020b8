"""MinHash dedup removes planted near-duplicates, keeps distinct rows, and is order-deterministic."""
import random

from speed_utils.dedup import dedup, normalize

WORDS = ("river bank loan interest rate mortgage tree forest cloud rain storm court judge trial appeal "
         "engine piston fuel brake wheel garden soil seed harvest violin concert melody rhythm").split()


def _row(i, text, neg=None):
    return {"id": f"r{i}", "query": text, "positive": f"answer about {text[:20]}", "negative": neg}


def _distinct(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(n)]


def test_planted_near_duplicates_are_removed_and_distinct_rows_kept():
    texts = _distinct(30)
    rows = [_row(i, t) for i, t in enumerate(texts)]
    planted = []
    for j, i in enumerate((3, 7, 11, 19)):  # near copies: case, punctuation and one changed word
        words = texts[i].split()
        words[5] = "zebra"
        planted.append(_row(100 + j, ", ".join(words).upper() + "!"))
    exact = _row(200, texts[2])  # an exact copy (after normalisation) of row 2
    result = dedup(rows + planted + [exact], threshold=0.8)
    assert [r["id"] for r in result.kept] == [r["id"] for r in rows]
    dropped = {r["id"]: (r["dedup"], r["duplicate_of"]) for r in result.dropped}
    assert dropped == {"r100": ("near", "r3"), "r101": ("near", "r7"), "r102": ("near", "r11"),
                       "r103": ("near", "r19"), "r200": ("exact", "r2")}
    assert abs(result.drop_rate - 5 / 35) < 1e-9


def test_rows_that_share_a_topic_but_differ_are_kept():
    a = _row(0, "How do I refinance a mortgage with a variable interest rate in Canada?")
    b = _row(1, "What documents does a bank ask for before approving a small business loan?")
    assert len(dedup([a, b], threshold=0.8).kept) == 2


def test_the_negative_is_part_of_an_example():
    a = _row(0, "same query text here for both", neg="a completely different hard negative one")
    b = {**_row(1, "same query text here for both"), "negative": "zzz qqq www unrelated negative text body"}
    b["positive"] = a["positive"]
    assert len(dedup([a, b], threshold=0.95).kept) == 2


def test_result_depends_only_on_row_order():
    texts = _distinct(20, seed=1)
    rows = [_row(i, t) for i, t in enumerate(texts + texts[:5])]
    one, two = dedup(rows), dedup([dict(r) for r in rows])
    assert one.kept == two.kept and one.dropped == two.dropped and len(one.kept) == 20


def test_normalize():
    assert normalize("  Hello,   WORLD!\n") == "hello world"
