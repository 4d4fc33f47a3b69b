"""bench gate's rules and checks on hand-built snapshots: every number is worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bench.metrics  # noqa: F401  (registers the metrics the rules name)
from bench import gate
from bench.gate import CellState, GateError, SegmentValues, Snapshot, Tolerance, compare, parse_rules

GROUP = ("synthetic", "random", "{}", 0)
FINGERPRINT = "abc123"


def snapshot(values: dict[str, dict[str, list[float]]], *, suite: str = "s", fingerprint: str = FINGERPRINT,
             systems: dict[str, dict[str, float]] | None = None, users: list[int] | None = None) -> Snapshot:
    """A one-split snapshot: ``values[model][metric] = per-user values`` on segment "all"."""
    cells = {}
    metrics: set[str] = set()
    for model, per_metric in values.items():
        n = len(next(iter(per_metric.values())))
        seg = SegmentValues("ok", np.asarray(users if users is not None else range(n)),
                            {m: np.asarray(v, dtype=float) for m, v in per_metric.items()},
                            {m: float(np.mean(v)) for m, v in per_metric.items()})
        metrics |= set(per_metric)
        cells[(*GROUP, model)] = CellState(model, "{}", "ok", segments={"all": seg},
                                           systems=(systems or {}).get(model, {}))
    return Snapshot(suite, "run", {}, {GROUP: fingerprint}, cells, metrics, f"<{suite}>")


def rules(text_rules: dict) -> gate.Rules:
    return parse_rules(text_rules, "<test rules>")


NDCG_5PCT = {"accuracy": [{"metric": "ndcg@10", "max_drop": "5%"}]}


def only_check(result: gate.GateResult) -> gate.Check:
    assert len(result.checks) == 1, result.checks
    return result.checks[0]


def test_tolerance_relative_and_absolute():
    assert Tolerance.parse("5%", "x") == Tolerance(0.05, True)
    assert Tolerance.parse("5%", "x").allowed(0.4) == pytest.approx(0.02)
    assert Tolerance.parse(0.01, "x").allowed(0.4) == 0.01
    for bad in ("five", "-3%", -0.1, True, "5"):
        with pytest.raises(GateError, match="not a tolerance"):
            Tolerance.parse(bad, "max_drop")


def test_constant_drop_beyond_tolerance_fails():
    # Every user loses 0.1 of 0.5: drop 20% > 5%; a constant shift is certain (p = 0).
    base = snapshot({"als": {"ndcg@10": [0.5, 0.5, 0.5, 0.5]}})
    cur = snapshot({"als": {"ndcg@10": [0.4, 0.4, 0.4, 0.4]}})
    check = only_check(compare(base, cur, rules(NDCG_5PCT)))
    assert check.verdict == "fail" and check.p_value == 0.0
    assert check.delta == pytest.approx(-0.1)
    assert check.detail["allowed_drop"] == pytest.approx(0.025)


def test_drop_within_tolerance_passes_even_if_certain():
    # 0.5 -> 0.49 is a 2% drop: within 5%, so it passes although every user lost the same.
    base = snapshot({"als": {"ndcg@10": [0.5, 0.5, 0.5]}})
    cur = snapshot({"als": {"ndcg@10": [0.49, 0.49, 0.49]}})
    check = only_check(compare(base, cur, rules(NDCG_5PCT)))
    assert check.verdict == "pass" and check.note == "within tolerance"


def test_large_but_noisy_drop_passes():
    # Differences (-0.3, 0, 0): mean -0.1 (a 20% drop), sd 0.1732, se 0.1, t = -1 with 2 degrees of
    # freedom, where the two-sided p-value is 1 - |t| / sqrt(t^2 + 2) = 1 - 1/sqrt(3) = 0.4226.
    base = snapshot({"als": {"ndcg@10": [0.5, 0.5, 0.5]}})
    cur = snapshot({"als": {"ndcg@10": [0.2, 0.5, 0.5]}})
    check = only_check(compare(base, cur, rules(NDCG_5PCT)))
    assert check.p_value == pytest.approx(1 - 1 / math.sqrt(3), abs=1e-9)
    assert check.verdict == "pass" and "not significant" in check.note


def test_direction_comes_from_the_metric_registry():
    # arp: lower is better. Rising from 10 to 12 for every user is a 20% drop in quality: fail.
    base = snapshot({"als": {"arp@10": [10.0, 10.0, 10.0]}})
    worse = snapshot({"als": {"arp@10": [12.0, 12.0, 12.0]}})
    better = snapshot({"als": {"arp@10": [8.0, 8.0, 8.0]}})
    arp_rules = rules({"accuracy": [{"metric": "arp@10", "max_drop": "5%"}]})
    assert only_check(compare(base, worse, arp_rules)).verdict == "fail"
    improved = only_check(compare(base, better, arp_rules))
    assert improved.verdict == "pass" and improved.note == "better (significant)"


def test_family_wise_correction_over_checks():
    # Two users, differences (-0.1 - e, -0.1 + e) with e = 0.005: t = -0.1/e = -20 with 1 degree of
    # freedom (Cauchy), p = 1 - (2/pi) atan(20) = 0.0318 < 0.05. With two such checks Holm doubles the
    # smaller p: 0.0637 > 0.05, so neither is significant; without correction both fail.
    e = 0.005
    per_user = {"ndcg@10": [0.5, 0.5], "recall@10": [0.5, 0.5]}
    lowered = {"ndcg@10": [0.4 - e, 0.4 + e], "recall@10": [0.4 - e, 0.4 + e]}
    base, cur = snapshot({"als": per_user}), snapshot({"als": lowered})
    both = {"accuracy": [{"metric": "ndcg@10"}, {"metric": "recall@10"}]}
    raw_p = 1 - 2 / math.pi * math.atan(20)
    holm = compare(base, cur, rules(both | {"correction": "holm"}))
    for check in holm.checks:
        assert check.p_value == pytest.approx(raw_p, rel=1e-6)
        assert check.p_adjusted == pytest.approx(2 * raw_p, rel=1e-6)
        assert check.verdict == "pass"
    assert holm.exit_code == 0
    uncorrected = compare(base, cur, rules(both | {"correction": "none"}))
    assert [c.verdict for c in uncorrected.checks] == ["fail", "fail"] and uncorrected.exit_code == 1


def test_bootstrap_test_agrees_on_a_certain_shift():
    base = snapshot({"als": {"ndcg@10": [0.5] * 20}})
    cur = snapshot({"als": {"ndcg@10": [0.3] * 20}})
    check = only_check(compare(base, cur, rules({"test": "bootstrap", **NDCG_5PCT})))
    # Centred differences are all zero: no resample reaches |-0.2|; p = 1/(resamples + 1).
    assert check.p_value == pytest.approx(1 / 2001) and check.verdict == "fail"
    assert check.ci_low == pytest.approx(-0.2) and check.ci_high == pytest.approx(-0.2)


def test_more_specific_rule_below_wins():
    base = snapshot({"als": {"ndcg@10": [0.5] * 4}, "pop": {"ndcg@10": [0.5] * 4}})
    cur = snapshot({"als": {"ndcg@10": [0.45] * 4}, "pop": {"ndcg@10": [0.45] * 4}})  # 10% drop, certain
    result = compare(base, cur, rules({"accuracy": [{"metric": "ndcg@10", "max_drop": "5%"},
                                                    {"metric": "ndcg@10", "models": ["pop"], "max_drop": 0.1}]}))
    verdicts = {c.model: c.verdict for c in result.checks}
    assert verdicts == {"als": "fail", "pop": "pass"}  # pop's absolute 0.1 allows a 0.05 drop


def test_timing_ratio_cancels_machine_speed():
    rule = {"timing": [{"metric": "fit_seconds", "reference": "pop", "max_increase": "100%", "floor_seconds": 0.01}]}
    values = {"als": {"ndcg@10": [0.5]}, "pop": {"ndcg@10": [0.5]}}
    base = snapshot(values, systems={"als": {"fit": {"fit_seconds": 2.0}}, "pop": {"fit": {"fit_seconds": 0.5}}})
    # A machine twice as slow: both doubled, the ratio 4 is unchanged -> pass.
    slow_machine = snapshot(values, systems={"als": {"fit": {"fit_seconds": 4.0}}, "pop": {"fit": {"fit_seconds": 1.0}}})
    check = only_check(compare(base, slow_machine, rules(rule)))
    assert (check.baseline, check.current, check.verdict) == (4.0, 4.0, "pass")
    # Same machine, als 3x slower: ratio 12 = +200% > +100% -> fail.
    slower = snapshot(values, systems={"als": {"fit": {"fit_seconds": 6.0}}, "pop": {"fit": {"fit_seconds": 0.5}}})
    check = only_check(compare(base, slower, rules(rule)))
    assert check.current == 12.0 and check.detail["growth"] == pytest.approx(2.0) and check.verdict == "fail"


def test_timing_reference_under_the_floor_is_skipped_not_passed():
    rule = {"accuracy": [{"metric": "ndcg@10"}],
            "timing": [{"metric": "fit_seconds", "reference": "pop", "floor_seconds": 0.05}]}
    values = {"als": {"ndcg@10": [0.5]}, "pop": {"ndcg@10": [0.5]}}
    base = snapshot(values, systems={"als": {"fit": {"fit_seconds": 0.2}}, "pop": {"fit": {"fit_seconds": 0.0002}}})
    result = compare(base, base, rules(rule))
    timing = [c for c in result.checks if c.kind == "timing"]
    assert [c.verdict for c in timing] == ["skip"] and "floor" in timing[0].note
    assert "1 skipped" in gate.headline(result)


@pytest.mark.parametrize("change, message", [
    (dict(suite="other"), "suite mismatch"),
    (dict(fingerprint="zzz"), "split fingerprint mismatch"),
    (dict(users=[7, 8, 9, 10]), "test users differ"),
])
def test_incomparable_snapshots_are_usage_errors(change, message):
    base = snapshot({"als": {"ndcg@10": [0.5] * 4}})
    cur = snapshot({"als": {"ndcg@10": [0.5] * 4}}, **change)
    with pytest.raises(GateError, match=message):
        compare(base, cur, rules(NDCG_5PCT))


def test_missing_model_and_metric_are_usage_errors():
    base = snapshot({"als": {"ndcg@10": [0.5] * 4}, "pop": {"ndcg@10": [0.5] * 4}})
    with pytest.raises(GateError, match="model 'pop' .* not in the current run"):
        compare(base, snapshot({"als": {"ndcg@10": [0.5] * 4}}), rules(NDCG_5PCT))
    with pytest.raises(GateError, match="recall@10 is missing in the baseline"):
        compare(base, base, rules({"accuracy": [{"metric": "recall@10"}]}))
    # A metric the baseline has for one model but not for another (undefined there, e.g. ild).
    base_gap = snapshot({"als": {"ndcg@10": [0.5] * 4}, "pop": {"recall@10": [0.5] * 4}})
    with pytest.raises(GateError, match="ndcg@10 is missing for pop .* in the baseline and the current run"):
        compare(base_gap, base_gap, rules(NDCG_5PCT))
    timing = {"timing": [{"metric": "latency_p50_ms", "reference": "pop"}]}
    with pytest.raises(GateError, match="latency_p50_ms is in no row of the baseline"):
        compare(base, base, rules(timing))


@pytest.mark.parametrize("raw, message", [
    ({"accuracy": [{"metric": "ndcg@10", "max_dorp": "5%"}]}, "did you mean 'max_drop'"),
    ({"accuracy": [{"metric": "ndcg"}]}, "needs a cut-off"),
    ({"accuracy": [{"metric": "ndgc@10"}]}, "did you mean 'ndcg'"),
    ({"accuracy": [{"metric": "ndcg@10", "test": "wilcoxon"}]}, "test = 'wilcoxon' is unknown"),
    ({"timing": [{"metric": "users_per_second", "reference": "pop"}]}, "not a duration"),
    ({"timing": [{"reference": "pop"}]}, "needs a 'metric'"),
    ({}, "checks nothing"),
])
def test_bad_rules_name_the_culprit(raw, message):
    with pytest.raises(GateError, match=message):
        parse_rules(raw, "<rules>")


def test_default_rules_ship_as_package_data():
    rules_ = gate.load_rules()
    assert rules_.accuracy_metrics == ["ndcg@10", "recall@10"]
    assert {r.reference for r in rules_.timing} == {"calibration"}


def _two_seeds(snap: Snapshot) -> Snapshot:
    """The same snapshot with its seed-0 cells copied as seed 1 (same users, same values)."""
    seed1 = (*GROUP[:3], 1)
    cells = dict(snap.cells) | {(*seed1, key[4]): cell for key, cell in snap.cells.items()}
    return Snapshot(snap.suite, snap.run_id, snap.provenance, {GROUP: FINGERPRINT, seed1: FINGERPRINT}, cells,
                    snap.metrics, snap.source)


def test_seeds_are_not_extra_users():
    """A duplicated seed adds no evidence: one check over both seeds, on the 3 users, with the one-seed p.

    Differences (-0.3, 0, 0): p = 0.4226 (hand-worked in test_large_but_noisy_drop_passes). Pooling the two
    seeds' 6 values as users would give t = -1.58 with 5 df, p = 0.175; two per-seed checks would test each
    seed apart. Both overstate what a repeated seed tells.
    """
    base = snapshot({"als": {"ndcg@10": [0.5, 0.5, 0.5]}})
    cur = snapshot({"als": {"ndcg@10": [0.2, 0.5, 0.5]}})
    one = only_check(compare(base, cur, rules(NDCG_5PCT)))
    both = only_check(compare(_two_seeds(base), _two_seeds(cur), rules(NDCG_5PCT)))
    assert both.p_value == pytest.approx(one.p_value) == pytest.approx(1 - 1 / math.sqrt(3))
    assert both.detail["n"] == 3 and both.detail["seeds"] == [0, 1]
    assert both.where == "synthetic/random/seeds=0,1" and both.delta == pytest.approx(-0.1)


def _calibrated(snap: Snapshot, seconds: float, cpu_seconds: float | None = None) -> Snapshot:
    snap.provenance = {"calibration": {"seconds": seconds, "cpu_seconds": cpu_seconds or seconds}}
    return snap


def test_timing_divides_by_the_runs_calibration():
    """Default reference: the run's calibration workload. Baseline: als fit 1.0 s / calibration 0.2 s = 5.

    A machine twice as slow (calibration 0.4 s, fit 2.0 s): ratio 5, +0% -> pass. The same machine with a 3x
    slower fit (3.0 s): ratio 15 = +200% > +100% -> fail. pop's 0.2 ms fit counts as the 0.25 s floor:
    1.25 on both sides of the first pair, measured rather than skipped.
    """
    rule = {"timing": [{"metric": "fit_seconds", "max_increase": "100%", "floor_seconds": 0.25}]}
    values = {"als": {"ndcg@10": [0.5]}, "pop": {"ndcg@10": [0.5]}}

    def snap(als: float, calibration: float) -> Snapshot:
        return _calibrated(snapshot(values, systems={"als": {"fit": {"fit_seconds": als}},
                                                     "pop": {"fit": {"fit_seconds": 0.0002}}}), calibration)

    result = compare(snap(1.0, 0.2), snap(2.0, 0.4), rules(rule))
    checks = {c.model: c for c in result.checks}
    assert (checks["als"].baseline, checks["als"].current, checks["als"].verdict) == (5.0, 5.0, "pass")
    assert checks["als"].metric == "fit_seconds / calibration"
    assert checks["pop"].baseline == pytest.approx(1.25) and checks["pop"].verdict == "pass"
    slower = {c.model: c for c in compare(snap(1.0, 0.2), snap(3.0, 0.2), rules(rule)).checks}
    assert slower["als"].current == 15.0 and slower["als"].detail["growth"] == pytest.approx(2.0)
    assert slower["als"].verdict == "fail" and slower["pop"].verdict == "pass"


def test_cpu_time_rules_divide_by_the_calibrations_cpu_time():
    rule = {"timing": [{"metric": "fit_cpu_seconds", "max_increase": "100%", "floor_seconds": 0.01}]}
    values = {"als": {"ndcg@10": [0.5]}}
    base = _calibrated(snapshot(values, systems={"als": {"fit": {"fit_cpu_seconds": 0.8}}}), 0.5, 0.1)
    cur = _calibrated(snapshot(values, systems={"als": {"fit": {"fit_cpu_seconds": 0.8}}}), 2.0, 0.1)
    check = only_check(compare(base, cur, rules(rule)))  # wall calibration 4x slower: irrelevant to CPU time
    assert (check.baseline, check.current, check.verdict) == (8.0, 8.0, "pass")


def test_missing_calibration_is_a_usage_error():
    rule = {"timing": [{"metric": "fit_seconds"}]}
    values = {"als": {"ndcg@10": [0.5]}}
    base = snapshot(values, systems={"als": {"fit": {"fit_seconds": 1.0}}})
    with pytest.raises(GateError, match="no calibration timing"):
        compare(base, _calibrated(snapshot(values, systems={"als": {"fit": {"fit_seconds": 1.0}}}), 0.2),
                rules(rule))


def test_shipped_rules_time_the_committed_smoke_baseline():
    """Before, every timing check of the smoke gate was skipped (reference pop under the floor): none may be."""
    from pathlib import Path

    baseline = gate.load_baseline(Path(__file__).resolve().parents[1] / "reports" / "baselines" / "smoke.json")
    result = compare(baseline, baseline, gate.load_rules())
    timing = [c for c in result.checks if c.kind == "timing"]
    assert timing and all(c.verdict == "pass" for c in timing)
    assert {c.model for c in timing if c.metric == "fit_seconds / calibration"} >= {"als", "ease", "bpr"}


def test_a_cells_own_calibration_is_preferred_to_the_runs():
    """The calibration timed around a cell's fit tracks the load that fit met: 1.0 s / 0.25 s = 4 in the
    baseline; now the fit took 2.0 s while its cell's calibration took 0.5 s (load came), though the run's
    start/end calibration says 0.2 s: ratio 4, +0% -> pass (the run-level figure would read +150%)."""
    rule = {"timing": [{"metric": "fit_seconds", "max_increase": "100%", "floor_seconds": 0.25}]}
    values = {"als": {"ndcg@10": [0.5]}}
    base = _calibrated(snapshot(values, systems={"als": {"fit": {"fit_seconds": 1.0, "calibration_seconds": 0.25}}}),
                       0.25)
    cur = _calibrated(snapshot(values, systems={"als": {"fit": {"fit_seconds": 2.0, "calibration_seconds": 0.5}}}),
                      0.2)
    check = only_check(compare(base, cur, rules(rule)))
    assert (check.baseline, check.current, check.verdict) == (4.0, 4.0, "pass")
    assert check.detail["current_reference_seconds"] == 0.5


def test_durations_under_the_floor_on_both_sides_compare_equal():
    """pop fits in 0.2 ms, then 0.3 ms; its cell's calibration went from 0.3 s to 0.1 s. Both fits count as
    the 0.25 s floor (in the baseline's seconds, scaled with the calibration: 0.0833 s now): +0%, not the
    +200% that dividing one fixed floor by a calibration three times smaller would claim."""
    rule = {"timing": [{"metric": "fit_seconds", "max_increase": "100%", "floor_seconds": 0.25}]}
    values = {"pop": {"ndcg@10": [0.5]}}
    base = snapshot(values, systems={"pop": {"fit": {"fit_seconds": 0.0002, "calibration_seconds": 0.3}}})
    cur = snapshot(values, systems={"pop": {"fit": {"fit_seconds": 0.0003, "calibration_seconds": 0.1}}})
    check = only_check(compare(base, cur, rules(rule)))
    assert check.baseline == pytest.approx(0.25 / 0.3) and check.current == pytest.approx(0.25 / 0.3)
    assert check.verdict == "pass"
    # a real slowdown on the faster machine: 0.5 s now = 1.5 s in baseline seconds, 6x the floored 0.25 s
    slow = snapshot(values, systems={"pop": {"fit": {"fit_seconds": 0.5, "calibration_seconds": 0.1}}})
    check = only_check(compare(base, slow, rules(rule)))
    assert check.detail["growth"] == pytest.approx(5.0) and check.verdict == "fail"
