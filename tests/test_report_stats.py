"""The report's statistics (bench.stats): hand-worked paired t-test, Welch test and Holm correction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.stats import (average_over_seeds, holm_adjust, paired_ttest_pvalues, paired_user_means, seed_spread,
                         seed_user_keys, welch_ttest_pvalue)


def test_holm_hand_worked() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max keeps 0.06
    adjusted = holm_adjust(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    assert holm_adjust(np.array([0.6, 0.7])).tolist() == [1.0, 1.0]  # capped at 1
    assert holm_adjust(np.array([])).size == 0


def test_paired_ttest_hand_worked() -> None:
    # differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), t = 2.5 / (sqrt(5/3) / 2) = 3.873 with 3 df;
    # two-sided p for t = 3.873, df = 3 is 0.0305 (t-table: t_0.975,3 = 3.182 < 3.873 < t_0.99,3 = 4.541)
    a = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]])
    b = np.array([[0.0, 5.0], [0.0, 5.0], [0.0, 5.0], [0.0, 5.0]])
    p = paired_ttest_pvalues(a, b)
    assert p[0] == pytest.approx(0.0305, abs=5e-4)
    assert p[1] == 1.0  # identical columns: no evidence of a difference
    assert paired_ttest_pvalues(np.ones(3), np.zeros(3))[0] == 0.0  # a constant non-zero shift is certain
    assert math.isnan(paired_ttest_pvalues(np.array([1.0]), np.array([0.0]))[0])  # one user: no test
    with pytest.raises(ValueError):
        paired_ttest_pvalues(np.ones(3), np.ones(4))


def test_welch_hand_worked() -> None:
    # a = 1..4 (var 5/3), b = 2,4,6,8 (var 20/3), n = 4 each: se^2 = 5/12 + 20/12 = 25/12,
    # t = -2.5 / sqrt(25/12) = -1.732; Welch df = (25/12)^2 / ((5/12)^2/3 + (20/12)^2/3) = 4.41;
    # two-sided p for |t| = 1.732 with 4.41 df is 0.152 (between df 4: 0.158 and df 5: 0.144)
    p = welch_ttest_pvalue(np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 6, 8]))
    assert 0.144 < p < 0.158
    assert welch_ttest_pvalue(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 1.0
    assert math.isnan(welch_ttest_pvalue(np.array([1.0]), np.array([2.0, 3.0])))


def test_average_over_seeds_hand_worked() -> None:
    """User 7 in seeds 0 and 1 (values 1 and 0): mean 0.5 from 2 seeds; user 9 only in seed 1 (cold-start
    splits draw cold users per seed): its one value, from 1 seed. Users are sorted."""
    keys = seed_user_keys(np.array([0, 1, 1]), np.array([7, 7, 9]))
    users, means, counts = average_over_seeds(keys, np.array([1.0, 0.0, 0.25]))
    assert users.tolist() == [7, 9] and means.tolist() == [0.5, 0.25] and counts.tolist() == [2, 1]
    # 2-D: columns averaged alike, a NaN (aggregate-only metric) stays NaN for that user
    _, table, _ = average_over_seeds(keys, np.array([[1.0, np.nan], [0.0, 1.0], [0.25, 1.0]]))
    assert table[:, 0].tolist() == [0.5, 0.25] and math.isnan(table[0, 1]) and table[1, 1] == 1.0


def test_paired_user_means_pair_by_seed_then_average() -> None:
    """a scored user 1 in seeds 0, 1 and user 2 in seed 0; b scored user 1 in seed 0 only and user 2 in
    seed 0: pairs are (0, 1) and (0, 2) only, so user 1 contributes its seed-0 values on both sides."""
    keys_a = seed_user_keys(np.array([0, 1, 0]), np.array([1, 1, 2]))
    keys_b = seed_user_keys(np.array([0, 0]), np.array([2, 1]))
    users, a, b = paired_user_means(keys_a, np.array([0.2, 0.9, 0.4]), keys_b, np.array([0.3, 0.1]))
    assert users.tolist() == [1, 2] and a.tolist() == [0.2, 0.4] and b.tolist() == [0.1, 0.3]


def test_seed_spread_hand_worked() -> None:
    sd, low, high = seed_spread(np.array([0.70, 0.75]))
    assert sd == pytest.approx(0.05 / math.sqrt(2)) and (low, high) == (0.70, 0.75)
    assert math.isnan(seed_spread(np.array([0.5]))[0])  # one seed: no spread
