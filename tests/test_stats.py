"""Bootstrap intervals of STS scores (speed_utils.stats)."""
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from speed_utils.stats import average_interval, paired_interval, slope_interval, spearman_interval


def correlated(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    return x, rho * x + math.sqrt(1 - rho * rho) * rng.standard_normal(n)


def test_point_value_is_scipys_spearman_with_ties():
    gold = [1, 2, 2, 3, 5, 5, 5, 4, 0, 1]
    pred = [0.1, 0.3, 0.2, 0.2, 0.9, 0.7, 0.7, 0.5, 0.0, 0.4]
    assert spearman_interval(gold, pred).value == pytest.approx(spearmanr(gold, pred)[0], abs=1e-12)


def test_interval_of_a_known_case_covers_the_true_rank_correlation():
    """Bivariate normal with Pearson 0.6: Spearman's rho is (6/pi) asin(0.3) = 0.582. Over 40 samples of
    300 pairs, the 95% interval covers it about 38 times; its width is near 2 x 1.96 x its standard error."""
    true = 6 / math.pi * math.asin(0.3)
    covered, widths = 0, []
    for s in range(40):
        ci = spearman_interval(*correlated(300, 0.6, s), n_boot=1000, seed=s)
        covered += ci.contains(true)
        widths.append(ci.hi - ci.lo)
    assert covered >= 34  # P(covered <= 33 | p = 0.95) < 0.3%
    se = (1 - true ** 2) * math.sqrt(1.06 / (300 - 3))  # Fisher z of Spearman: Fieller, Hartley & Pearson (1957)
    assert np.mean(widths) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_perfect_agreement_has_no_width_and_intervals_are_seeded():
    x = np.arange(50.0)
    ci = spearman_interval(x, 2 * x + 1)
    assert (ci.value, ci.lo, ci.hi) == (1.0, 1.0, 1.0)
    g, p = correlated(100, 0.3, 1)
    assert spearman_interval(g, p, seed=3) == spearman_interval(g, p, seed=3)
    assert spearman_interval(g, p, seed=3) != spearman_interval(g, p, seed=4)


def test_average_is_the_mean_of_task_scores_and_narrower_than_one_task():
    tasks = {f"t{i}": correlated(200, 0.5, i) for i in range(4)}
    avg = average_interval(tasks)
    singles = [spearman_interval(*tasks[t]) for t in tasks]
    assert avg.value == pytest.approx(np.mean([s.value for s in singles]))
    assert avg.hi - avg.lo < np.mean([s.hi - s.lo for s in singles])


def test_paired_interval_of_identical_models_is_zero_and_detects_a_real_difference():
    rng = np.random.default_rng(0)
    tasks = {}
    for i in range(3):
        gold, good = correlated(250, 0.7, 10 + i)
        worse = good + 0.8 * rng.standard_normal(250)  # the same model, blurred
        tasks[f"t{i}"] = (gold, good, worse)
    same = paired_interval({t: (g, a, a) for t, (g, a, _) in tasks.items()})
    assert (same.value, same.lo, same.hi) == (0.0, 0.0, 0.0) and same.contains(0)
    diff = paired_interval(tasks)
    assert diff.hi < 0  # B (blurred) is worse, and the paired interval says so
    # pairing removes the difficulty the two models share: narrower than the two unpaired intervals combined
    a = average_interval({t: (g, x) for t, (g, x, _) in tasks.items()})
    b = average_interval({t: (g, y) for t, (g, _, y) in tasks.items()})
    assert diff.hi - diff.lo < math.hypot(a.hi - a.lo, b.hi - b.lo)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one length"):
        spearman_interval([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        spearman_interval([1, 2], [1, 2])
    with pytest.raises(ValueError, match="no task"):
        average_interval({})


def test_slope_interval_recovers_a_log_linear_trend_and_contains_zero_without_one():
    """Models whose noise falls with log10(n): the slope's interval is positive; the same model at every
    size gives a slope of exactly 0."""
    rng = np.random.default_rng(5)
    gold = {f"t{i}": rng.standard_normal(300) for i in range(3)}
    sizes = [10, 100, 1000]
    noise = {t: rng.standard_normal(300) for t in gold}
    pts = [{t: (g, g + (4 - math.log10(n)) * noise[t]) for t, g in gold.items()} for n in sizes]
    rising = slope_interval(sizes, pts)
    assert rising.lo > 0 and rising.contains(rising.value)
    flat = slope_interval(sizes, [pts[0]] * 3)
    assert (flat.value, flat.lo, flat.hi) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="two sizes"):
        slope_interval([10, 10], pts[:2])


# ---------------------------------------------------------------- several trainings (issue 31)
from speed_utils.stats import decide, seeded_difference, seeded_interval  # noqa: E402


def trainings(rhos: list[float], n: int = 400, tasks=("A", "B"), seed: int = 0) -> list[dict]:
    """One {task: (gold, prediction)} per training: each training's predictions correlate with gold at
    its own rho (the seed's luck), on the same test pairs."""
    rng = np.random.default_rng(seed)
    gold = {t: rng.standard_normal(n) for t in tasks}
    out = []
    for rho in rhos:
        out.append({t: (g, rho * g + math.sqrt(1 - rho * rho) * rng.standard_normal(n)) for t, g in gold.items()})
    return out


def test_where_the_seeds_vary_most_the_interval_is_wider_than_the_pairs_alone():
    runs = trainings([0.30, 0.55, 0.80, 0.45, 0.70])  # training noise of +-0.2 against pair noise of ~0.04
    two = seeded_interval(runs, n_boot=1000)
    pairs_only = average_interval(runs[0], n_boot=1000)
    assert two.seeds == 5 and two.hi - two.lo > 2 * (pairs_only.hi - pairs_only.lo)
    assert two.value == pytest.approx(np.mean([average_interval(r).value for r in runs]))


def test_one_training_gives_the_pair_interval_and_no_verdict():
    runs = trainings([0.6])
    one = seeded_interval(runs, n_boot=1000)
    assert (one.lo, one.hi) == pytest.approx((average_interval(runs[0], n_boot=1000).lo,
                                              average_interval(runs[0], n_boot=1000).hi))
    assert decide(one)["verdict"].startswith("undecided: one training")


def test_a_verdict_is_undecided_when_the_seeds_disagree():
    base = trainings([0.5, 0.5, 0.5], seed=1)
    # seed 0 and 1 gain, seed 2 loses as much: the pairs alone would call each gain clear
    better = [{t: (g, p + k * g) for t, (g, p) in run.items()} for run, k in zip(base, (0.6, 0.6, -0.6))]
    diff = seeded_difference(better, base, n_boot=1000)
    assert diff.lo < 0 < diff.hi
    out = decide(diff)
    assert out["verdict"] == "undecided at this scale" and out["detectable"] > 0


def test_a_gain_in_every_seed_holds_and_a_loss_fails():
    base = trainings([0.4, 0.5, 0.45], seed=2)
    better = [{t: (g, p + 0.5 * g) for t, (g, p) in run.items()} for run in base]
    assert decide(seeded_difference(better, base, n_boot=1000))["verdict"] == "holds"
    assert decide(seeded_difference(base, better, n_boot=1000))["verdict"] == "fails"


def test_an_untrained_reference_is_subtracted_from_every_seed():
    runs, (untrained,) = trainings([0.6, 0.7], seed=3), trainings([0.1], seed=3)
    diff = seeded_difference(runs, [untrained], n_boot=500)
    assert diff.value == pytest.approx(np.mean([average_interval(r).value for r in runs]) - average_interval(untrained).value)
    with pytest.raises(ValueError, match="pair them by seed"):
        seeded_difference(runs, runs + runs, n_boot=10)


def test_a_seeded_slope_is_the_mean_of_each_seeds_slope_and_one_seed_gives_no_verdict():
    from speed_utils.stats import seeded_slope

    rhos = {2: [0.2, 0.3], 20: [0.5, 0.45], 200: [0.7, 0.65]}  # two seeds at three sizes
    runs = [trainings(r, seed=5) for r in rhos.values()]
    got = seeded_slope(list(rhos), runs, n_boot=500)
    per_seed = [slope_interval(list(rhos), [runs[i][j] for i in range(3)], n_boot=10).value for j in range(2)]
    assert got.value == pytest.approx(np.mean(per_seed)) and got.seeds == 2 and got.lo < got.value < got.hi
    with pytest.raises(ValueError, match="same seeds"):
        seeded_slope([2, 20], [runs[0], runs[1][:1]])
