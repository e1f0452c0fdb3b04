"""Small statistics for the experiment report, in numpy only: confidence intervals, 1-D Wasserstein
distance, Gaussian kernel density."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


# one-sided Student-t quantiles t_{q, df}, df = 1..30, for the power of a paired design (q = power)
_T_POWER = {
    0.8: (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870, 0.868, 0.866,
          0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854),
    0.9: (3.078, 1.886, 1.638, 1.533, 1.476, 1.440, 1.415, 1.397, 1.383, 1.372, 1.363, 1.356, 1.350, 1.345, 1.341,
          1.337, 1.333, 1.330, 1.328, 1.325, 1.323, 1.321, 1.319, 1.318, 1.316, 1.315, 1.314, 1.313, 1.311, 1.310),
}
_Z_POWER = {0.8: 0.8416, 0.9: 1.2816}


def t975(df: int) -> float:
    """t_{0.975, df}; the normal quantile 1.96 beyond df = 30 (error < 2%)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval of the mean) over seeds; half-width NaN for one value."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    return float(x.mean()), float(t975(x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def wasserstein_1d(a: Sequence[float], b: Sequence[float]) -> float:
    """W1 distance between two empirical distributions = integral |F_a(t) - F_b(t)| dt (same units as the data)."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        return float("nan")
    grid = np.concatenate([a, b])
    grid.sort()
    deltas = np.diff(grid)
    fa = np.searchsorted(a, grid[:-1], side="right") / a.size
    fb = np.searchsorted(b, grid[:-1], side="right") / b.size
    return float(np.sum(np.abs(fa - fb) * deltas))


def gaussian_kde(samples: Sequence[float], grid: np.ndarray, bandwidth: float | None = None) -> np.ndarray:
    """Gaussian kernel density of `samples` on `grid`; Scott's rule bandwidth (n^(-1/5) * std) by default."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.zeros_like(grid, dtype=np.float64)
    if bandwidth is None:
        sd = x.std(ddof=1) if x.size > 1 else 0.0
        bandwidth = sd * x.size ** (-1.0 / 5.0) if sd > 0 else 1.0
    z = (grid[:, None] - x[None, :]) / bandwidth
    return np.exp(-0.5 * z * z).sum(1) / (x.size * bandwidth * math.sqrt(2 * math.pi))


def paired_t(diffs: Sequence[float], power: float = 0.8) -> dict[str, float]:
    """Paired differences (one per seed): n, mean, sd, the 95% t-interval of the mean, and the minimum
    detectable difference of this design: the true mean difference a two-sided 5% paired t-test detects
    with probability `power`, (t_{0.975,n-1} + t_{power,n-1}) * sd / sqrt(n) (the usual approximation,
    taking the observed sd as the true one). NaN where n < 2."""
    if power not in _T_POWER:
        raise ValueError(f"power must be one of {sorted(_T_POWER)}, got {power}")
    x = np.asarray([v for v in diffs if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    nan = float("nan")
    if n == 0:
        return {"n": 0, "mean": nan, "sd": nan, "ci_low": nan, "ci_high": nan, "mde": nan}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": nan, "ci_low": nan, "ci_high": nan, "mde": nan}
    sd = float(x.std(ddof=1))
    se = sd / math.sqrt(n)
    df = n - 1
    tp = _T_POWER[power][df - 1] if df <= 30 else _Z_POWER[power]
    half = t975(df) * se
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "mde": (t975(df) + tp) * se}


def paired_bootstrap(pass_a: np.ndarray, pass_b: np.ndarray, weight: np.ndarray, *, resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap over prompts of a difference of accuracies, averaged over seeds.

    pass_a, pass_b: [seeds, prompts] passes (prompt level: 0/1; instruction level: instructions passed);
    weight: [seeds, prompts] what each prompt counts for (prompt level: 1; instruction level: its number of
    instructions). Each resample draws the prompts with replacement, the SAME draw for both methods and
    every seed; the statistic is mean over seeds of (sum pass_a / sum weight - sum pass_b / sum weight).
    Returns (observed difference, 2.5% and 97.5% percentiles). It measures the uncertainty from the choice
    of prompts given these seeds, not from the seeds (see `paired_t` for that)."""
    a, b, w = (np.asarray(v, dtype=np.float64) for v in (pass_a, pass_b, weight))
    if a.shape != b.shape or a.shape != w.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"need equal [seeds, prompts] arrays, got {a.shape}, {b.shape}, {w.shape}")
    observed = float(np.mean((a.sum(1) - b.sum(1)) / w.sum(1)))
    if resamples <= 0:
        return observed, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    p = a.shape[1]
    stats = np.empty(resamples)
    chunk = 500
    for s in range(0, resamples, chunk):
        k = min(chunk, resamples - s)
        idx = rng.integers(0, p, size=(k, p))
        counts = np.zeros((k, p))
        np.add.at(counts, (np.repeat(np.arange(k), p), idx.ravel()), 1.0)
        den = counts @ w.T  # [k, seeds]
        stats[s : s + k] = np.mean((counts @ a.T - counts @ b.T) / np.where(den > 0, den, np.nan), axis=1)
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return observed, float(lo), float(hi)

