"""Small statistics for the experiment report, in numpy only: confidence intervals, 1-D Wasserstein
distance, Gaussian kernel density."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


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
