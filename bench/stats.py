"""Confidence intervals and paired significance tests over per-user values."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the mean, for every column of ``values`` at once.

    One resampling of users is shared by all columns (they are paired), done as a
    resample-count matrix so the cost is one matrix product, not a Python loop.
    Columns with NaN (aggregate-only metrics) get NaN bounds.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64).T).T
    n, m = values.shape
    if n == 0:
        nan = np.full(m, np.nan)
        return nan, nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    offsets = (np.arange(n_resamples) * n)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n).reshape(n_resamples, n)
    finite = np.where(np.isfinite(values), values, 0.0)
    means = counts @ finite / n
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    bad = ~np.isfinite(values).all(0)
    low[bad], high[bad] = np.nan, np.nan
    return low, high


def paired_bootstrap_pvalue(a: np.ndarray, b: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value that mean(a - b) = 0, by bootstrap of the paired differences.

    Centres the differences (the null holds) and counts resampled means at least
    as extreme as the observed one.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = diff.size
    if n == 0:
        return float("nan")
    observed = diff.mean()
    centred = diff - observed
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    means = centred[draws].mean(1) if n * n_resamples <= 20_000_000 else np.array(
        [centred[rng.integers(0, n, n)].mean() for _ in range(n_resamples)])
    return float((np.sum(np.abs(means) >= abs(observed)) + 1) / (n_resamples + 1))
