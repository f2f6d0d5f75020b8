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
