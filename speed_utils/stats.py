"""Intervals for scores computed on samples of test pairs (issue 16: differences that carry intervals).

An STS score is Spearman's rank correlation between the gold scores and the model's cosine
similarities over a task's test pairs. Where the pairs are a sample (``evaluate.limit``) or the
models differ by little, a point score says nothing on its own, so each one gets a percentile
bootstrap interval over its pairs (Efron & Tibshirani 1993, ch. 13):

* :func:`spearman_interval`: one task, one model;
* :func:`average_interval`: the average over tasks, each task's pairs resampled independently;
* :func:`paired_interval`: the difference of two models' averages on the *same* resampled pairs,
  so the pair-to-pair difficulty shared by both models cancels (the paired bootstrap);
* :func:`slope_interval`: the slope of a log-linear fit over scaling points, refitted per replicate.

Resampling is seeded: the same inputs always give the same interval.
"""
from __future__ import annotations

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
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


__all__ = ["Interval", "spearman_interval", "average_interval", "paired_interval", "slope_interval", "resamples"]
