"""Parameter grids: expansion in suite files, the validation carve, and selection on validation only."""

from __future__ import annotations

import numpy as np
import pytest

from bench import grid
from bench.config import parse_suite
from bench.data import load_dataset
from bench.errors import ConfigError
from bench.runner import run_suite
from bench.splits import make_split


def suite(models: list[dict], splits: list[dict] | None = None) -> dict:
    return {"name": "grid-test", "seeds": [0], "evaluation": {"k": [5, 10], "bootstrap": 0,
                                                              "metrics": ["ndcg", "recall"]},
            "datasets": [{"name": "synthetic", "params": {"n_users": 150, "n_items": 80, "n_interactions": 3000}}],
            "splits": splits or [{"kind": "random"}], "models": models}


def test_grid_expands_to_one_labelled_model_per_point() -> None:
    config = parse_suite(suite([{"name": "ease", "grid": {"l2": [1.0, 10.0]}}, {"name": "pop"}]), "test")
    labels = [m.label for m in config.models]
    assert labels == ["ease[l2=1.0]", "ease[l2=10.0]", "pop"]
    assert [m.params for m in config.models[:2]] == [{"l2": 1.0}, {"l2": 10.0}]
    assert {m.grid_of for m in config.models[:2]} == {"ease"} and config.models[2].grid_of == ""
    two = parse_suite(suite([{"name": "als", "params": {"iterations": 2},
                              "grid": {"factors": [4, 8], "alpha": [1.0, 2.0]}}]), "test")
    assert len(two.models) == 4 and all(m.params["iterations"] == 2 for m in two.models)


@pytest.mark.parametrize("table, culprit", [
    ({"name": "ease", "grid": {"l2": []}}, "grid.l2"),
    ({"name": "ease", "grid": {"l2": 5.0}}, "grid.l2"),
    ({"name": "ease", "params": {"l2": 1.0}, "grid": {"l2": [2.0]}}, "'l2' is both"),
    ({"name": "ease", "grid": {"l2": [1.0]}, "select_by": "ndgc@10"}, "select_by"),
    ({"name": "ease", "grid": {"l2": [1.0]}, "select_by": "coverage@10"}, "not a per-user metric"),
    ({"name": "ease", "select_by": "ndcg@10"}, "needs a models[0].grid"),
    ({"name": "ease", "refit": False}, "models[0].refit needs a models[0].grid"),
    ({"name": "ease", "grid": {"l2": [1.0]}, "refit": "no"}, "refit"),
    ({"name": "ease", "grid": {"l3": [1.0]}}, "unknown parameter 'l3'"),
])
def test_bad_grids_are_config_errors(table: dict, culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit.replace("[", r"\[").replace("]", r"\]")):
        parse_suite(suite([table]), "test")


def test_validation_carve_is_inside_train_and_mirrors_the_split() -> None:
    data = load_dataset("synthetic", None, None, n_users=200, n_items=100, n_interactions=5000)
    random_split = make_split(data, "random", 0)
    fit, valid = grid.validation_carve(data, random_split, 0)
    assert np.intersect1d(fit, valid).size == 0
    assert np.array_equal(np.sort(np.concatenate([fit, valid])), np.sort(random_split.train))
    assert 0.05 < len(valid) / len(random_split.train) < 0.15
    assert np.intersect1d(valid, random_split.test).size == 0

    temporal = make_split(data, "temporal", 0)
    fit, valid = grid.validation_carve(data, temporal, 0)
    assert np.isin(valid, temporal.train).all() and np.isin(fit, temporal.train).all()
    assert data.timestamp[valid].min() >= data.timestamp[fit].max()  # the carve is the latest training time

    lloo = make_split(data, "leave_last_out", 0)
    fit, valid = grid.validation_carve(data, lloo, 0)
    assert np.bincount(data.user[valid]).max() == 1  # one held-out interaction per user
    latest_fit = np.zeros(data.n_users, np.int64)
    np.maximum.at(latest_fit, data.user[fit], data.timestamp[fit])
    assert (data.timestamp[valid] >= latest_fit[data.user[valid]]).all()


def row(model: str, segment: str, metric: str, k: int, value: float) -> dict:
    return {"run_id": "r", "suite": "s", "dataset": "d", "conversion": "", "split": "random", "split_params": "{}",
            "split_fingerprint": "fp", "protocol": "full", "seed": 0, "model": model, "model_name": "ease",
            "params": "{}", "segment": segment, "metric": metric, "k": k, "value": value, "ci_low": float("nan"),
            "ci_high": float("nan"), "n": 10, "status": "ok", "cell_id": model}


def test_selection_uses_validation_never_test() -> None:
    config = parse_suite(suite([{"name": "ease", "grid": {"l2": [1.0, 2.0, 3.0]}}]), "test")
    labels = [m.label for m in config.models]
    valid = [0.10, 0.30, 0.20]
    test = [0.50, 0.05, 0.40]  # the test-best point is the validation-worst: it must not win
    rows = []
    for label, v, t in zip(labels, valid, test):
        rows += [row(label, "valid", "ndcg", 10, v), row(label, "all", "ndcg", 10, t)]
    out = grid.selection_rows(rows, config.models)
    chosen = [r for r in out if r["metric"] == "selected" and r["value"] == 1.0]
    assert [r["model"] for r in chosen] == ["ease[l2=2.0]"]
    assert sum(r["value"] for r in out if r["metric"] == "selected") == 1.0
    group = [r for r in out if r["model"] == "ease" and r["segment"] == "all"]
    assert [r["value"] for r in group] == [0.05]


def test_a_suite_with_a_grid_reports_every_point_and_the_selected_one(tmp_path) -> None:
    config = parse_suite(suite([{"name": "ease", "grid": {"l2": [0.5, 50.0]}}]), "test")
    summary = run_suite(config, out_root=tmp_path, progress=None)
    frame = summary.frame
    assert summary.failed == 0
    valid = frame[(frame["segment"] == "valid") & (frame["metric"] == "ndcg") & (frame["model"] != "ease")]
    assert len(valid) == 2 and valid["value"].between(0, 1).all()
    best = valid.sort_values("value", ascending=False)["model"].iloc[0]
    selected = frame[(frame["metric"] == "selected") & (frame["value"] == 1.0)]["model"].tolist()
    assert selected == [best]
    test_rows = frame[(frame["segment"] == "all") & (frame["metric"] == "ndcg") & (frame["k"] == 10)]
    by_model = dict(zip(test_rows["model"], test_rows["value"]))
    assert by_model["ease"] == by_model[best]


def test_refit_false_tests_the_model_that_was_selected(tmp_path) -> None:
    """refit = false (RecBole's early-stopping protocol): a point's test rows come from the model fitted on train
    minus the validation carve, with every training item (carve included) excluded from the ranking; checked
    against EASE fitted by hand on the carve and NDCG@10 computed here; the default refits on all of train."""
    from bench import registry
    from bench.data.dataset import train_data

    raw = suite([{"name": "ease", "grid": {"l2": [0.5, 50.0]}, "refit": False},
                 {"name": "ease", "label": "ease-refit", "grid": {"l2": [0.5, 50.0]}}])
    config = parse_suite(raw, "test")
    assert [m.refit for m in config.models] == [False, False, True, True]
    summary = run_suite(config, out_root=tmp_path, progress=None)
    assert summary.failed == 0, summary.failures
    frame = summary.frame
    value = {(r.model, r.segment): r.value for r in frame[(frame["metric"] == "ndcg") & (frame["k"] == 10)
                                                          & frame["segment"].isin(["all", "valid"])].itertuples()}

    dataset = load_dataset("synthetic", None, None, **config.datasets[0].params)
    split = make_split(dataset, "random", 0)
    fit_rows, _ = grid.validation_carve(dataset, split, 0)
    full = train_data(dataset, split.train).matrix.tocsr()
    test_users, test_items = dataset.user[split.test], dataset.item[split.test]
    users = np.unique(test_users)
    for l2 in (0.5, 50.0):
        model = registry.models.get("ease")(seed=0, l2=l2)
        model.fit(train_data(dataset, fit_rows))
        items, _ = model.recommend(users, 10, exclude=full[users])
        ndcg = []
        for row, u in enumerate(users):
            relevant = set(test_items[test_users == u].tolist())
            gains = [1.0 / np.log2(r + 2) for r, i in enumerate(items[row]) if i in relevant]
            ideal = sum(1.0 / np.log2(r + 2) for r in range(min(len(relevant), 10)))
            ndcg.append(sum(gains) / ideal)
        assert value[(f"ease[l2={l2}]", "all")] == pytest.approx(np.mean(ndcg), abs=1e-9)
        # the same carve-fitted model is what both settings score on validation
        assert value[(f"ease[l2={l2}]", "valid")] == pytest.approx(value[(f"ease-refit[l2={l2}]", "valid")], abs=1e-9)
        assert value[(f"ease[l2={l2}]", "all")] != pytest.approx(value[(f"ease-refit[l2={l2}]", "all")], abs=1e-6)
    cells = frame[frame["model"] == "ease[l2=0.5]"]["cell_id"].unique()
    import json
    info = json.loads((summary.run_dir / "cells" / cells[0] / "cell.json").read_text())
    assert "validation carve" in info["fit_data"]


def test_a_stored_config_keeps_refit_and_the_default_needs_no_grid() -> None:
    """config.json (SuiteConfig.as_dict) writes refit for every model: true must reload without a grid, false
    must stay false on the grid points (resume and bench score re-read it)."""
    from bench.config import config_from_dict

    config = parse_suite(suite([{"name": "ease", "grid": {"l2": [0.5, 50.0]}, "refit": False}, {"name": "pop"}]),
                         "test")
    again = config_from_dict(config.as_dict(), "stored/config.json")
    assert [(m.label, m.refit) for m in again.models] == [("ease[l2=0.5]", False), ("ease[l2=50.0]", False),
                                                          ("pop", True)]
