"""Intervals for scores computed on samples of test pairs (issue 16: differences that carry intervals).

An STS score is Spearman's rank correlation between the gold scores and the model's cosine
similarities over a task's test pairs. Where the pairs are a sample (``evaluate.limit``) or the
models differ by little, a point score says nothing on its own, so each one gets a percentile
bootstrap interval over its pairs (Efron & Tibshirani 1993, ch. 13):

* :func:`spearman_interval`: one task, one model;
* :func:`average_interval`: the average over tasks, each task's pairs resampled independently;
* :func:`paired_interval`: the difference of two models' averages on the *same* resampled pairs,
  so the pair-to-pair difficulty shared by both models cancels (the paired bootstrap);
* :func:`slope_interval`: the slope of a log-linear fit over scaling points, refitted per replicate;
* :func:`seeded_interval` and :func:`seeded_difference` (issue 31): the same for a point trained with
  several seeds, resampling the seeds and the pairs (a two-level bootstrap), so the interval covers the
  training's own noise; :func:`decide` turns one into a verdict, with the smallest effect the design
  could have detected.

Resampling is seeded: the same inputs always give the same interval.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval, ×100 where the inputs are correlations."""

    value: float
    lo: float
    hi: float

    def scaled(self, k: float) -> "Interval":
        return Interval(self.value * k, self.lo * k, self.hi * k)

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def to_dict(self, digits: int = 2) -> dict:
        return {"value": round(self.value, digits), "lo": round(self.lo, digits), "hi": round(self.hi, digits)}

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _spearman_rows(gold: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of ``gold`` against the same row of ``pred`` (ties get mean ranks)."""
    from scipy.stats import rankdata

    rg, rp = rankdata(gold, axis=-1), rankdata(pred, axis=-1)
    rg = rg - rg.mean(axis=-1, keepdims=True)
    rp = rp - rp.mean(axis=-1, keepdims=True)
    den = np.sqrt((rg * rg).sum(-1) * (rp * rp).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rg * rp).sum(-1) / den, 0.0)


def resamples(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``n_boot`` bootstrap index sets over ``n`` items (rows of a matrix), seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _percentile(point: float, boots: np.ndarray, level: float) -> Interval:
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return Interval(float(point), float(lo), float(hi))


def _check(gold: Sequence[float], *preds: Sequence[float]) -> tuple[np.ndarray, ...]:
    arrays = tuple(np.asarray(x, dtype=float) for x in (gold, *preds))
    if any(a.shape != arrays[0].shape or a.ndim != 1 for a in arrays):
        raise ValueError(f"gold and predictions must be 1-D and of one length: {[a.shape for a in arrays]}")
    if len(arrays[0]) < 3:
        raise ValueError(f"a bootstrap over {len(arrays[0])} pairs means nothing: need at least 3")
    return arrays


def spearman_interval(gold: Sequence[float], pred: Sequence[float], n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> Interval:
    """Spearman's rho of ``pred`` against ``gold`` with its bootstrap interval over the pairs."""
    g, p = _check(gold, pred)
    idx = resamples(len(g), n_boot, seed)
    return _percentile(_spearman_rows(g, p), _spearman_rows(g[idx], p[idx]), level)


def average_interval(tasks: Mapping[str, tuple[Sequence[float], Sequence[float]]], n_boot: int = N_BOOT,
                     seed: int = 0, level: float = LEVEL) -> Interval:
    """The mean over tasks of Spearman's rho, each task's pairs resampled on their own.

    ``tasks`` maps a task name to its (gold, prediction) lists.
    """
    point, boots = _average(tasks, n_boot, seed)
    return _percentile(point, boots, level)


def paired_interval(tasks: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
                    n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Interval:
    """Model B's average Spearman minus model A's, over the same resampled pairs of every task.

    ``tasks`` maps a task name to (gold, prediction of A, prediction of B). Two identical models give
    exactly 0 in every resample.
    """
    a = {t: (g, pa) for t, (g, pa, _) in tasks.items()}
    b = {t: (g, pb) for t, (g, _, pb) in tasks.items()}
    point_a, boots_a = _average(a, n_boot, seed)
    point_b, boots_b = _average(b, n_boot, seed)
    return _percentile(point_b - point_a, boots_b - boots_a, level)


def slope_interval(xs: Sequence[float], points: Sequence[Mapping[str, tuple[Sequence[float], Sequence[float]]]],
                   n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Interval:
    """The slope ``b`` of ``avg = a + b·log10(x)`` over scaling points, with its bootstrap interval.

    ``points[i]`` holds point i's {task: (gold, prediction)}, all on the same pairs; every replicate
    resamples the pairs once for all points, refits the line and keeps its slope (SPEED §4.4's
    log-linear scaling, tested here with its uncertainty)."""
    if len(set(xs)) < 2 or len(xs) != len(points):
        raise ValueError(f"a slope needs points at two sizes or more, one score set each: sizes {list(xs)}")
    lx = np.log10(np.asarray(xs, dtype=float))
    lx = lx - lx.mean()
    avgs = [_average(p, n_boot, seed) for p in points]
    point = np.array([a for a, _ in avgs])
    boots = np.stack([b for _, b in avgs], axis=1)  # (n_boot, n_points)
    slope = lambda y: (y - y.mean(axis=-1, keepdims=True)) @ lx / (lx @ lx)  # noqa: E731
    return _percentile(float(slope(point)), slope(boots), level)


# ---------------------------------------------------------------- several trainings (issue 31)
Pairs = Mapping[str, tuple[Sequence[float], Sequence[float]]]  # task -> (gold, prediction) of one training


@dataclass(frozen=True)
class SeededInterval(Interval):
    """An interval over trainings and test pairs: ``seeds`` trainings (1: the training's noise is not
    in it), ``se`` the replicates' standard deviation (the standard error the verdict's power uses)."""

    seeds: int = 1
    se: float = 0.0

    def scaled(self, k: float) -> "SeededInterval":
        return SeededInterval(self.value * k, self.lo * k, self.hi * k, self.seeds, self.se * abs(k))

    def to_dict(self, digits: int = 2) -> dict:
        return {**super().to_dict(digits), "seeds": self.seeds, "se": round(self.se, digits)}


def _seed_replicates(runs: Sequence[Pairs], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(each training's average on the real pairs, shape (S,); on each replicate's resampled pairs, (n_boot, S)).
    Every training is scored on the same resampled pairs in a replicate (their test set is one)."""
    if not runs:
        raise ValueError("no training to average")
    names = sorted(runs[0])
    if any(sorted(r) != names for r in runs):
        raise ValueError(f"every training must be scored on the same tasks: {[sorted(r) for r in runs]}")
    pointed = [_average(r, n_boot, seed) for r in runs]  # _average resamples by (seed, task): the same pairs
    return np.array([p for p, _ in pointed]), np.stack([b for _, b in pointed], axis=1)


def _over_seeds(points: np.ndarray, boots: np.ndarray, n_boot: int, seed: int, level: float) -> SeededInterval:
    """Resample the trainings within each pair replicate. The seed level's deviations are rescaled twice:
    by sqrt(S/(S-1)), so that their variance is unbiased (Rao & Wu 1988: the plain bootstrap of a mean of S
    values has (S-1)/S of it), and by t(S-1)/z at the interval's level, so that a spread estimated from S
    trainings widens as Student's t says it must (with 2 seeds, 6.5 times the normal interval; with 5,
    1.4 times). The test pairs, hundreds of them, keep the plain bootstrap."""
    S = points.shape[0]
    if S == 1:
        b = boots[:, 0]
        return SeededInterval(float(points[0]), *map(float, np.quantile(b, [(1 - level) / 2, (1 + level) / 2])),
                              seeds=1, se=float(b.std(ddof=1)))
    pick = np.random.default_rng([seed, 31]).integers(0, S, size=(n_boot, S))
    all_mean = boots.mean(axis=1)
    drawn = np.take_along_axis(boots, pick, axis=1).mean(axis=1)
    from scipy.stats import norm, t

    q = (1 + level) / 2
    reps = all_mean + np.sqrt(S / (S - 1)) * t.ppf(q, S - 1) / norm.ppf(q) * (drawn - all_mean)
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return SeededInterval(float(points.mean()), float(lo), float(hi), seeds=S, se=float(reps.std(ddof=1)))


def seeded_interval(runs: Sequence[Pairs], n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> SeededInterval:
    """The mean over trainings (one per seed) of the STS average, with a two-level bootstrap interval:
    each replicate resamples the test pairs of every task, then the trainings."""
    points, boots = _seed_replicates(runs, n_boot, seed)
    return _over_seeds(points, boots, n_boot, seed, level)


def seeded_difference(runs: Sequence[Pairs], reference: Sequence[Pairs], n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> SeededInterval:
    """Mean over seeds of (``runs[i]`` minus ``reference[i]``), the trainings paired by seed (same seed: same
    row order and initialisation), on the same resampled pairs. A ``reference`` of one (an untrained model:
    no seed) is subtracted from every training."""
    if len(reference) not in (1, len(runs)):
        raise ValueError(f"{len(runs)} trainings against {len(reference)}: pair them by seed, or give one reference")
    points, boots = _seed_replicates(runs, n_boot, seed)
    ref_points, ref_boots = _seed_replicates(reference, n_boot, seed)
    return _over_seeds(points - ref_points, boots - ref_boots, n_boot, seed, level)


def seeded_slope(xs: Sequence[float], runs: Sequence[Sequence[Pairs]], n_boot: int = N_BOOT, seed: int = 0,
                 level: float = LEVEL) -> SeededInterval:
    """The slope of ``avg = a + b·log10(x)`` with a two-level interval: ``runs[i][j]`` is size i trained with
    seed j (the same seeds at every size); each seed's slope is fitted on the same resampled pairs, then the
    seeds are resampled (:func:`seeded_interval`'s rescaling)."""
    if len(set(xs)) < 2 or len(xs) != len(runs) or len({len(r) for r in runs}) != 1:
        raise ValueError(f"a slope needs two sizes or more with the same seeds at each: sizes {list(xs)}, "
                         f"trainings {[len(r) for r in runs]}")
    lx = np.log10(np.asarray(xs, dtype=float))
    lx = lx - lx.mean()
    reps = [_seed_replicates(r, n_boot, seed) for r in runs]
    points = np.stack([p for p, _ in reps])  # (sizes, S)
    boots = np.stack([b for _, b in reps], axis=1)  # (n_boot, sizes, S)
    slope = lambda y: np.einsum("...is,i->...s", y - y.mean(axis=-2, keepdims=True), lx) / (lx @ lx)  # noqa: E731
    return _over_seeds(slope(points), slope(boots), n_boot, seed, level)


POWER_Z = 0.8416  # z of 80% power


def detectable(se: float, level: float = LEVEL) -> float:
    """The smallest true effect a two-sided test at ``level`` finds with 80% power, given the standard error."""
    from scipy.stats import norm

    return float((norm.ppf((1 + level) / 2) + POWER_Z) * se)


def decide(ci: Interval | None, null: float = 0.0) -> dict:
    """A verdict a reader can trust: "holds" or "fails" only where the interval excludes ``null`` and covers
    the trainings' noise (two seeds or more); else "undecided at this scale", with the smallest effect this
    design could have detected."""
    if ci is None:
        return {"verdict": "not measured", "detectable": None}
    seeds = getattr(ci, "seeds", None)
    mde = round(detectable(ci.se), 2) if isinstance(ci, SeededInterval) and ci.se > 0 else None
    if seeds is not None and seeds < 2:
        return {"verdict": "undecided: one training (its noise is not in the interval)", "detectable": mde}
    if ci.lo > null:
        return {"verdict": "holds", "detectable": mde}
    if ci.hi < null:
        return {"verdict": "fails", "detectable": mde}
    return {"verdict": "undecided at this scale", "detectable": mde}


def _average(tasks: Mapping[str, tuple[Sequence[float], Sequence[float]]], n_boot: int,
             seed: int) -> tuple[float, np.ndarray]:
    """The average's point value and its bootstrap replicates; the resampled indices of a task depend
    only on the seed, the task's name and its size, so two models' calls resample alike."""
    if not tasks:
        raise ValueError("no task to average")
    points, boots = [], []
    for name in sorted(tasks):
        g, p = _check(*tasks[name])
        idx = resamples(len(g), n_boot, _task_seed(seed, name))
        points.append(_spearman_rows(g, p))
        boots.append(_spearman_rows(g[idx], p[idx]))
    return float(np.mean(points)), np.mean(boots, axis=0)


def _task_seed(seed: int, name: str) -> int:

    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


__all__ = ["Interval", "SeededInterval", "spearman_interval", "average_interval", "paired_interval", "slope_interval",
           "seeded_interval", "seeded_difference", "seeded_slope", "decide", "detectable", "resamples", "wilson"]
