"""The report's statistics (bench.stats): hand-worked paired t-test, Welch test and Holm correction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.stats import holm_adjust, paired_ttest_pvalues, welch_ttest_pvalue


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
