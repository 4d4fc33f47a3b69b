"""Confidence intervals and paired significance tests over per-user values.

Users are the unit of every CI and test. A run with several seeds scores many
users once per seed; those values are not independent users (a user with a
high NDCG under seed 0 has a high one under seed 1), so pooling them as if they
were inflates n and shrinks p-values. The one rule, shared by the report and
the gate: values are keyed by (seed, user) (:func:`seed_user_keys`); two models
(or two runs) are paired on the (seed, user) keys both scored; each user's
paired values are then averaged over the seeds that user appears in
(:func:`average_over_seeds`), and CIs and tests run over those per-user means.
A user scored in only some seeds (cold-start splits draw their cold users per
seed) counts once, with the mean of the seeds it has. The spread across seeds
is reported apart (:func:`seed_spread`), never folded into n.
"""

from __future__ import annotations

import numpy as np

_USER_BITS = 32


def seed_user_keys(seeds: np.ndarray, users: np.ndarray) -> np.ndarray:
    """One int64 key per (seed, user): sorting and intersecting keys pairs the same user in the same seed."""
    return np.asarray(seeds).astype(np.int64) * (1 << _USER_BITS) + np.asarray(users).astype(np.int64)


def average_over_seeds(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's mean over the seeds it was scored in: ``(users, means, seeds per user)``.

    ``values`` is 1-D or ``[len(keys), m]`` (columns averaged alike); a NaN in a
    user's values (aggregate-only metrics) leaves that user's mean NaN.
    """
    keys = np.asarray(keys, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    users, inverse, counts = np.unique(keys & ((1 << _USER_BITS) - 1), return_inverse=True, return_counts=True)
    sums = np.zeros((users.size,) + values.shape[1:])
    np.add.at(sums, inverse, values)
    return users, sums / counts.reshape((-1,) + (1,) * (values.ndim - 1)), counts


def paired_user_means(keys_a: np.ndarray, a: np.ndarray, keys_b: np.ndarray,
                      b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair two keyed value sets on the (seed, user) keys both have, then average each user over seeds.

    Returns ``(users, a_means, b_means)``: the rows of a paired test where every user counts once.
    """
    _, ia, ib = np.intersect1d(keys_a, keys_b, assume_unique=True, return_indices=True)
    shared = np.asarray(keys_a)[ia]
    users, a_means, _ = average_over_seeds(shared, np.asarray(a)[ia])
    _, b_means, _ = average_over_seeds(shared, np.asarray(b)[ib])
    return users, a_means, b_means


def seed_spread(seed_means: np.ndarray) -> tuple[float, float, float]:
    """(sample SD, min, max) of per-seed means; SD is NaN with one seed."""
    x = np.asarray(seed_means, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    return (float(x.std(ddof=1)) if x.size > 1 else float("nan")), float(x.min()), float(x.max())


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


def paired_ttest_pvalues(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sided paired t-test p-value per column of ``a`` and ``b`` (rows = the same users).

    The test IR evaluation usually reports for per-user metric differences
    (``scipy.stats.ttest_rel``); it is cheap enough to run for every column of a
    leaderboard, where a bootstrap per column would dominate report time.
    Identical columns (zero variance of the difference) get p = 1; columns with
    NaN or fewer than two users get NaN (no test possible).
    """
    from scipy.stats import ttest_rel

    a = np.atleast_2d(np.asarray(a, dtype=np.float64).T).T
    b = np.atleast_2d(np.asarray(b, dtype=np.float64).T).T
    if a.shape != b.shape:
        raise ValueError(f"paired test needs equal shapes, got {a.shape} and {b.shape}")
    out = np.full(a.shape[1], np.nan)
    if a.shape[0] < 2:
        return out
    diff = a - b
    finite = np.isfinite(diff).all(0)
    constant = finite & (np.ptp(np.where(np.isfinite(diff), diff, 0.0), axis=0) == 0)
    out[constant] = np.where(diff[0, constant] == 0, 1.0, 0.0)  # all-equal non-zero shift: certain difference
    test = finite & ~constant
    if test.any():
        out[test] = ttest_rel(a[:, test], b[:, test], axis=0).pvalue
    return out


def holm_adjust(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error control, any dependence).

    Sorted ascending, the i-th smallest of m p-values is multiplied by (m - i),
    running maxima keep the order, capped at 1. NaN entries are left out of the
    family and stay NaN.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def welch_ttest_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test p-value for unpaired samples (different users, e.g. different splits).

    NaN values are dropped; fewer than two values on either side gives NaN.
    """
    from scipy.stats import ttest_ind

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return float("nan")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)
