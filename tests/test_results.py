"""Stage 09's tables: golden mteb files in both layouts, MTEB(eng, v1) rules, missing tasks, the paper's numbers."""
import shutil
from pathlib import Path

import pytest

from speed_utils import results, sweep_results

GOLDEN = Path(__file__).parent / "data" / "mteb_golden"
EXPECTED = {"Class.": 78.0, "Clust.": 48.0, "PairCl.": 86.0, "Rerank": 60.0, "Retr.": 48.0, "STS": 83.0, "Summ.": 31.0,
            "Avg": 63.27}


@pytest.mark.parametrize("layout", ["current", "pre-1.11"])
def test_golden_files_give_the_expected_category_table(layout):
    loaded = results.load_folder(GOLDEN / layout)
    assert {ts.schema for ts in loaded.values()} == {"current" if layout == "current" else "pre-1.11"}
    scores = results.eng_v1_scores(loaded)
    assert len(scores) == 56 and scores["MSMARCO"] == pytest.approx(48.0)  # dev, not the 0.99 test decoy
    assert scores["CQADupstackRetrieval"] == pytest.approx(48.0)  # 12 forums averaged (pre-1.11) or one file
    assert scores["STS17"] == pytest.approx(83.0) and scores["AmazonReviewsClassification"] == pytest.approx(78.0)
    table = results.category_table(scores)
    assert table["evaluated"] == table["total"] == 56
    row = results.table_row("golden", table)
    assert {k: row[k] for k in EXPECTED} == EXPECTED
    assert results.describe_coverage(table) == "56 of 56 tasks evaluated"


def test_missing_tasks_are_reported_not_averaged_over(tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(GOLDEN / "current", folder)
    for t in ("RedditClustering", "MSMARCO", "SummEval"):
        (folder / f"{t}.json").unlink()
    table = results.category_table(results.eng_v1_scores(results.load_folder(folder)))
    assert table["evaluated"] == 53 and table["avg"] is None
    assert table["categories"]["Clustering"]["mean"] is None and table["categories"]["Clustering"]["partial_mean"] == 48.0
    assert table["categories"]["Clustering"]["missing"] == ["RedditClustering"]
    assert table["categories"]["STS"]["mean"] == 83.0
    row = results.table_row("partial", table)
    assert row["Clust."] == "48.00 (10/11)" and row["Summ."] == "—" and row["Avg"] == "— (53/56)"
    assert results.describe_coverage(table) == "53 of 56 tasks evaluated; incomplete: Clust. 10/11, Retr. 14/15, Summ. 0/1"


def test_local_copies_do_not_count_as_mteb_unless_asked(tmp_path):
    src = (GOLDEN / "current" / "STS13.json").read_text().replace('"golden"', '"local-abc123"')
    (tmp_path / "STS13.json").write_text(src)
    loaded = results.load_folder(tmp_path)
    assert loaded["STS13"].local and results.eng_v1_scores(loaded) == {}
    assert results.eng_v1_scores(loaded, include_local=True) == {"STS13": pytest.approx(83.0)}


def test_paper_rows_are_consistent_with_their_category_counts():
    counts = results.paper()["mteb_categories"]
    for block in ("table1_zero_shot", "table1_supervised", "e5_mistral"):
        for r in results.paper()[block]["rows"]:
            weighted = sum(r[c] * n for c, n in counts.items()) / sum(counts.values())
            consistent = weighted == pytest.approx(r["avg"], abs=0.1)  # rounding of 8 one-decimal numbers
            assert consistent != bool(r.get("avg_inconsistent")), r["model"]  # inconsistencies are flagged, not fixed


def test_deltas_only_where_both_are_numbers():
    speed = next(r for r in results.paper_rows() if r["model"].startswith("SPEED"))
    ours = {"model": "x", "Class.": 70.0, "Clust.": "45.00 (3/11)", "Avg": "— (20/56)"}
    assert results.deltas(ours, speed) == {"Class.": -8.3}


def test_sweep_sizes_that_break_the_comparison_are_named():
    def row(point, asked, trained, kept=500):
        return {"point": point, "asked": asked, "train_examples": trained, "synthetic_kept": kept}

    equal = [row("senior", 150, 150), row("junior", 150, 150)]
    assert sweep_results.size_warnings("ablation", equal) == []
    short = [row("senior", 150, 150), row("junior", 150, 120, kept=120)]
    notes = sweep_results.size_warnings("ablation", short)
    assert notes[0].startswith("ablation point 'junior' trained on 120 examples, not the 150 asked")
    assert "all its training data held (120 synthetic rows kept)" in notes[0]
    assert "differ in size (senior: 150, junior: 120)" in notes[1] and len(notes) == 2
    collapsed = [row("n=100", 100, 100), row("n=200", 200, 180, kept=180), row("n=400", 400, 180, kept=180)]
    notes = sweep_results.size_warnings("scaling", collapsed)
    assert notes[-1] == "scaling points n=200, n=400 all trained on 180 examples" and len(notes) == 3


def test_a_claim_holds_only_where_its_whole_interval_is_on_its_side():
    from speed_utils.stats import Interval, decide

    def verdict(lo, hi, null=0.0):
        return decide(None if lo is None else Interval((lo + hi) / 2, lo, hi), null)["verdict"]

    assert verdict(0.1, 2.0) == "holds" and verdict(-2.0, -0.1) == "fails" and verdict(-1.0, 1.0) == "undecided at this scale"
    assert verdict(0.52, 0.9, null=0.5) == "holds" and verdict(0.3, 0.9, null=0.5) == "undecided at this scale"
    assert verdict(None, None) == "not measured"


def test_sweep_points_keep_their_spec_order_though_the_summary_sorts_its_keys(tmp_path):
    """The first point is the one the others are compared with (the ablation's senior+revisor): sweep.json
    sorts its keys, so the order comes from the summary's ``order`` or, in an older summary, from the spec."""
    from speed_utils.paths import REPO_ROOT
    from speed_utils.sweep_results import point_order

    import yaml

    spec = tmp_path / "ablation.yaml"  # the study's ablation as it was before its points had seeds
    raw = yaml.safe_load((REPO_ROOT / "params/sweeps/study-ablation.yaml").read_text())
    raw.pop("seeds")
    raw["points"] = {k: v for k, v in raw["points"].items() if k not in ("shuffled", "teacher")}
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    points = {p: {} for p in sorted(["senior+revisor", "senior", "junior+revisor", "junior"])}  # as read back
    want = ["senior+revisor", "senior", "junior+revisor", "junior"]
    assert point_order({"spec": str(spec), "order": want, "points": points}) == want
    assert point_order({"spec": str(spec), "points": points}) == want  # written before "order" existed
    assert point_order({"spec": "/nowhere.yaml", "points": points}) == sorted(points)
    assert point_order({"spec": str(spec), "order": ["senior", "gone"], "points": {"senior": {}, "extra": {}}}) == \
        ["senior", "extra"]
