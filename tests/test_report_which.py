"""The report's "Which model when" choices, model styles and units, on hand-built run folders.

The run folders are built by hand so every expected answer is worked out in
advance: which model each latency budget gets, who is within noise (checked
against scipy's paired t-test), and which update policy is the cheapest one
within noise of the freshest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.report import load_run, tables, units, write_report
from bench.report.style import FAMILIES, KNOWN, MARKERS, PALETTES, model_family, model_styles
from bench.report.which_model import policy_choices, which_model
from bench.results import atomic_write_json, atomic_write_npz, write_tables

# -- units -------------------------------------------------------------------------


@pytest.mark.parametrize("value, text", [(0.30271, "0.303"), (5.2134, "5.21"), (150.3, "150"), (18432, "18.4k"),
                                         (2.1e6, "2.10M"), (999.6, "1.00k"), (9.996, "10.0"), (40.0, "40"),
                                         (0.0, "0"), (float("nan"), "–"), (None, "–")])
def test_number_three_significant_figures(value: float, text: str) -> None:
    assert units.number(value) == text


@pytest.mark.parametrize("name, value, text", [
    ("recommend_seconds", 2.326e-05, "23.3 µs"),  # the example: 2.326e-05 s
    ("throughput_users_per_s@batch=32", 1.844e04, "18.4k/s"),  # and 1.844e+04 users/s
    ("latency_p99_ms", 1.2, "1.20 ms"), ("latency_p50_ms", 0.0405, "40.5 µs"), ("fit_seconds", 150.0, "2.50 min"),
    ("model_bytes", 5 * 2**20, "5.00 MB"), ("fit_peak_rss_mb", 1536.0, "1.50 GB"),
    ("timer_overhead_ns", 45.0, "45.0 ns"),
    ("server_max_rate_at_p99", 1234.0, "1.23k/s"), ("prequential_hit_rate", 0.0734, "0.0734"), ("updates", 40.0, "40"),
])
def test_figures_in_human_units(name: str, value: float, text: str) -> None:
    assert units.figure(name, value) == text


# -- styles ------------------------------------------------------------------------


def test_every_model_gets_a_distinct_pair_grouped_by_family() -> None:
    labels = {name: (name, None) for name in KNOWN} | {f"custom-{i}": ("custom", None) for i in range(40)}
    labels |= {f"als-variant-{i}": ("als", None) for i in range(20)}
    styles = model_styles(labels)
    pairs = [(s.color, s.marker) for s in styles.values()]
    assert len(set(pairs)) == len(pairs)
    for label, style in styles.items():
        assert style.color in PALETTES[style.family] and style.marker in MARKERS
    assert styles["als-variant-3"].family == "CF/MF" and styles["custom-1"].family == "other"
    assert {styles[m].family for m in ("text-embed", "llm-rerank")} == {"language model"}
    assert {styles[m].family for m in ("lightgcn", "sasrec")} == {"neural"}
    assert len({c for f in FAMILIES for c in PALETTES[f]}) == sum(len(PALETTES[f]) for f in FAMILIES)  # hues apart


def test_style_depends_on_the_name_not_on_order_or_company() -> None:
    """A model looks the same in a report of 3 models and in one of 33, whatever the suite order.

    (An unknown label moves off its hashed slot only when another unknown label of its family hashed there
    first: the 30 companions here are ALS variants, family CF/MF, so "my-model" (other) keeps its slot.)"""
    small = model_styles({"als": ("als", None), "pop": ("pop", None), "my-model": ("x", None)})
    everyone = {f"als-{i}": ("als", None) for i in range(30)} | {"pop": ("pop", None), "als": ("als", None),
                                                               "my-model": ("x", None)}
    big = model_styles(everyone)
    assert model_styles(dict(reversed(list(everyone.items())))) == big
    for label in small:
        assert small[label] == big[label]


def test_declared_family_wins_over_the_table() -> None:
    assert model_family("my-gnn", "neural") == "neural"
    assert model_family("my-gnn") == "other"
    assert model_family("pop", "CF/MF") == "CF/MF" and model_family("llm-whatever") == "language model"
    assert model_styles({"my-gnn": ("my-gnn", "neural")})["my-gnn"].color in PALETTES["neural"]


# -- which model when --------------------------------------------------------------

N = 40


def _write_run(run_dir: Path, models: dict[str, tuple[np.ndarray | None, float | None, np.ndarray | None]],
               model_name: str = "pop") -> Path:
    """One warm segment: ``model -> (per-user ndcg@10 or None = not served, p99 ms, users scored or all)``."""
    rows = []
    for index, (model, (values, p99, users)) in enumerate(models.items()):
        cid = f"cell{index}"
        users = np.arange(N) if users is None else users
        base = {"run_id": "hand", "suite": "hand", "dataset": "toy", "conversion": "", "split": "random",
                "split_params": "{}", "split_fingerprint": "fp", "protocol": "full", "seed": 0, "model": model,
                "model_name": model_name, "params": "{}", "segment": "all", "cell_id": cid}
        if values is None or isinstance(values, str):  # not served, or another non-ok status by name
            rows.append(base | {"metric": "ndcg", "k": 10, "value": float("nan"), "ci_low": float("nan"),
                                "ci_high": float("nan"), "n": 0, "status": values or "unsupported"})
        else:
            atomic_write_npz(run_dir / "cells" / cid / "per_user-all.npz", users=users, values=values[:, None],
                             columns=np.array(["ndcg@10"]))
            rows.append(base | {"metric": "ndcg", "k": 10, "value": float(values.mean()), "ci_low": 0.0,
                                "ci_high": 1.0, "n": len(users), "status": "ok"})
        if p99 is not None:
            rows.append(base | {"metric": "latency_p99_ms", "k": 0, "value": p99, "ci_low": float("nan"),
                                "ci_high": float("nan"), "n": 20, "status": "ok"})
        atomic_write_json(run_dir / "cells" / cid / "cell.json", {"model": model, "status": "ok", "dataset": "toy",
                                                                   "split": "random", "seed": 0, "rows": []})
    atomic_write_json(run_dir / "config.json", {"name": "hand", "models": [{"label": m} for m in models],
                                                "splits": [{"kind": "random"}], "seeds": [0]})
    write_tables(run_dir, rows, {"created": "2026-01-01T00:00:00+00:00", "git": {"commit": "abc"},
                                 "machine": {"cpu": "hand", "cpu_count": 2}, "device": "cpu"})
    return run_dir


@pytest.fixture()
def budget_run(tmp_path: Path) -> Path:
    best = np.array([1.0] * 30 + [0.0] * 10)  # 0.75
    close = best.copy()
    close[:2] = 0.0  # 0.70: within noise of best (Holm p 0.16, tests/test_report.py works it by hand)
    sample = best[:20].copy()
    sample[0] = 0.0  # 0.95 on 20 users: the highest mean, but a sample
    return _write_run(tmp_path / "run", {
        "best": (best, 50.0, None), "close": (close, 5.0, None), "floor": (np.zeros(N), 2.0, None),
        "sample": (sample, 0.2, np.arange(20)), "cannot": (None, None, None)})


def test_choices_per_latency_budget(budget_run: Path) -> None:
    from scipy.stats import ttest_rel

    run = load_run(budget_run)
    boards = tables.leaderboards(run)
    which = which_model(run, boards, "ndcg@10")
    (row,) = which.rows
    le1, le10, le100, anything = row.choices
    # <= 1 ms: only the sampled model is that fast: nobody is called best
    assert le1.best == [] and le1.sampled_only == ["sample"] and "only sampled models" in le1.why
    assert set(le1.over_budget) == {"best", "close", "floor"}
    # <= 10 ms: close wins; floor is significantly worse; the sample is tested against close on its 20 users
    assert le10.best == ["close"] and le10.over_budget == ["best"]
    assert "better but over budget: best (50.0 ms)" in le10.why
    assert "3 models over budget" in le1.why  # nobody in budget: counted, not listed
    close = np.array([0.0, 0.0] + [1.0] * 28 + [0.0] * 10)
    sample = np.array([0.0] + [1.0] * 19)
    raw_sample = ttest_rel(close[:20], sample).pvalue
    raw_floor = ttest_rel(close, np.zeros(N)).pvalue
    holm_sample = min(1.0, raw_sample * (1 if raw_floor < raw_sample else 2))
    assert holm_sample >= 0.05  # so the sample is within noise of close, listed with its n
    assert le10.within_noise == ["sample"] and "sample (n = 20)" in le10.why
    # <= 100 ms and any latency: best leads, close within noise, same as the leaderboard's markers
    (board,) = boards
    for choice in (le100, anything):
        assert choice.best == ["best"] and choice.within_noise == ["close", "sample"]
        assert choice.not_served == ["cannot"] and "not served: cannot" in choice.why
    assert board.cell("best", "ndcg@10").best and board.cell("close", "ndcg@10").tied
    assert anything.cell.value == pytest.approx(0.75)


def test_no_latency_measured_shows_only_any(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run", {"a": (np.ones(N), None, None), "b": (np.zeros(N), None, None),
                                            "two-stage": ("first_stage", None, None)})
    run = load_run(run_dir)
    which = which_model(run, tables.leaderboards(run), "ndcg@10")
    assert [t[1] for t in which.tiers] == ["any latency"] and "no single-request latency" in which.notes[0]
    (choice,) = which.rows[0].choices
    assert choice.best == ["a"] and "significantly ahead of the 1 other" in choice.why
    assert "ranked by a first stage at this cut-off: two-stage" in choice.why  # shown as such, never scored
    files = write_report(run_dir)
    assert "Which model when" in files.html.read_text(encoding="utf-8")
    assert "| toy · warm users | **a** 1" in files.markdown.read_text(encoding="utf-8")


def test_update_policy_choice_hand_worked(tmp_path: Path) -> None:
    """incremental is freshest (8.1 hits per 100-event block), retrain (8.0) is within noise at a quarter of the
    update time, static (5.0) is significantly less fresh: retrain is the cheapest policy within noise."""
    from scipy.stats import ttest_rel

    hits = {"static": [5] * 10, "incremental/every=100": [8, 7, 9, 8, 7, 9, 8, 7, 9, 9],
            "retrain/every=100": [8] * 10}
    cost = {"static": 0.0, "incremental/every=100": 2.0, "retrain/every=100": 0.5}
    run_dir = tmp_path / "rt"
    rows = []
    for label, h in hits.items():
        base = {"run_id": "rt", "suite": "rt", "dataset": "toy", "conversion": "", "split": "temporal",
                "split_params": "{}", "split_fingerprint": "fp", "protocol": "full", "seed": 0, "model": "m",
                "model_name": "pop", "params": "{}", "segment": f"replay:{label}", "cell_id": "c0", "ci_low": 0.0,
                "ci_high": 0.0, "status": "ok"}
        rows.append(base | {"metric": "prequential_hit_rate", "k": 10, "value": sum(h) / 1000, "n": 1000})
        rows.append(base | {"metric": "update_seconds_total", "k": 0, "value": cost[label], "n": 10})
    atomic_write_json(run_dir / "cells" / "c0" / "realtime.json", {"policies": {
        label: {"status": "ok", "block_end": list(range(100, 1001, 100)), "events": [100] * 10, "hits": h}
        for label, h in hits.items()}})
    atomic_write_json(run_dir / "cells" / "c0" / "cell.json", {"model": "m", "status": "ok", "rows": []})
    atomic_write_json(run_dir / "config.json", {"name": "rt", "models": [{"label": "m"}]})
    write_tables(run_dir, rows, {"created": "2026-01-01T00:00:00+00:00"})
    (choice,) = policy_choices(load_run(run_dir))
    assert choice.freshest == "incremental/every=100" and choice.freshest_rate == pytest.approx(0.081)
    rates = {label: np.array(h) / 100 for label, h in hits.items()}
    p_retrain = ttest_rel(rates["incremental/every=100"], rates["retrain/every=100"]).pvalue
    p_static = ttest_rel(rates["incremental/every=100"], rates["static"]).pvalue
    assert p_static < p_retrain and min(1.0, 2 * p_static) < 0.05 <= p_retrain  # Holm: smallest p doubled
    assert choice.within_noise == ["retrain/every=100"] and choice.worse == ["static"]
    assert choice.cheapest == "retrain/every=100" and choice.cheapest_cost == 0.5
    assert "500 ms of updates instead of 2.00 s" in choice.why and "(10 replay blocks)" in choice.why
    assert json.loads((run_dir / "cells" / "c0" / "realtime.json").read_text())  # the curves were read, not rebuilt


def test_a_registered_plugin_family_is_read(tmp_path: Path) -> None:
    """A plug-in model the built-in table does not know declares ``family`` as a class attribute."""
    from baselines.simple import Pop
    from bench import registry
    from bench.report.style import run_styles

    from bench.protocol import Capabilities

    class Graph(Pop):
        name = "report-test-graph"
        family = "neural"
        capabilities = Capabilities()  # no optional capability: suites selecting by capability never pick it

    if Graph.name not in registry.models.names():
        registry.models.register(Graph.name, Graph)
    run_dir = _write_run(tmp_path / "run", {"g": (np.ones(N), None, None)}, model_name=Graph.name)
    styles = run_styles(load_run(run_dir))
    assert styles["g"].family == "neural" and styles["g"].color in PALETTES["neural"]
