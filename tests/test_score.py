"""`bench score RUN_DIR`: metrics added from stored top-k lists equal a fresh run's, and nothing is refitted."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.config import config_from_dict, parse_suite
from bench.report import load_run
from bench.results import load_results
from bench.rundir import RunDir
from bench.runner import run_suite

sys.path.insert(0, str(Path(__file__).parent / "plugins"))
from counting_models import CountingPop  # noqa: E402  (registers counting-pop)

BASE_METRICS = ["ndcg", "recall"]
NEW_METRICS = ["ndcg[discount=lenskit]", "precision@5", "coverage"]  # a variant, an own cut-off, an aggregate
KEY = ["dataset", "split", "protocol", "seed", "model", "segment", "metric", "k"]


def suite(name: str, metrics: list[str], protocol: str = "full") -> dict:
    """A small synthetic suite: a warm split and a cold-user split (counting-pop does not serve the latter)."""
    return {
        "name": name, "seeds": [0],
        "execution": {"isolation": "none"},  # in-process, so CountingPop's counters see every fit
        "evaluation": {"k": [5, 10], "metrics": metrics, "bootstrap": 200, "protocol": protocol,
                       "systems": {"enabled": False}},
        "datasets": [{"name": "synthetic", "params": {"n_users": 150, "n_items": 120, "n_interactions": 3000,
                                                      "seed": 1}}],
        "splits": [{"kind": "random"}, {"kind": "user_coldstart", "params": {"user_fraction": 0.2, "shots": [0, 3]}}],
        "models": [{"name": "pop"}, {"name": "itemknn", "params": {"neighbours": 20}}, {"name": "counting-pop"}],
    }


def accuracy(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    rows = frame[frame["metric"].isin(metrics) & (frame["k"] > 0)]
    return rows.set_index(KEY)[["value", "ci_low", "ci_high", "n", "status"]].sort_index()


@pytest.mark.parametrize("protocol", ["full", "pop30"])
def test_scored_metrics_equal_a_fresh_run_and_nothing_is_fitted(tmp_path, protocol, capsys):
    first = run_suite(parse_suite(suite("scoreme", BASE_METRICS, protocol), "test"), out_root=tmp_path / "a",
                      progress=None)
    assert first.failed == 0 and CountingPop.fits > 0
    CountingPop.fits = CountingPop.built = 0

    code = main(["score", str(first.run_dir), "--metrics", ",".join(NEW_METRICS), "--k", "5,10"])
    assert code == 0, capsys.readouterr().err
    assert (CountingPop.fits, CountingPop.built) == (0, 0)  # no model built, let alone fitted
    assert "no model fitted" in capsys.readouterr().out

    fresh = run_suite(parse_suite(suite("scoreme", BASE_METRICS + NEW_METRICS, protocol), "test"),
                      out_root=tmp_path / "b", progress=None)
    scored, _ = load_results(first.run_dir)
    names = ["ndcg[discount=lenskit]", "precision", "coverage"]
    got, want = accuracy(scored, names), accuracy(fresh.frame, names)
    assert len(want) > 0 and set(want["status"]) == {"ok", "unsupported"}
    assert got.index.equals(want.index)
    pd.testing.assert_frame_equal(got, want, check_exact=True)  # values and bootstrap CIs, bit for bit
    # the rows the run had are untouched
    pd.testing.assert_frame_equal(accuracy(scored, BASE_METRICS), accuracy(first.frame, BASE_METRICS),
                                  check_exact=True)

    # per-user values land beside the old ones, equal to the fresh run's
    old, new = RunDir(first.run_dir), RunDir(fresh.run_dir)
    pairs = {(r.model, r.split, r.segment): r.cell_id for r in first.frame.itertuples() if r.status == "ok"}
    fresh_ids = {(r.model, r.split, r.segment): r.cell_id for r in fresh.frame.itertuples() if r.status == "ok"}
    checked = 0
    for key, cid in pairs.items():
        a, b = old.read_per_user(cid, key[2]), new.read_per_user(fresh_ids[key], key[2])
        if a is None:
            continue  # the fit/system rows' segment
        np.testing.assert_array_equal(a.users, b.users)
        for column in ("ndcg@10", "ndcg[discount=lenskit]@10", "precision@5"):
            np.testing.assert_array_equal(a.column(column), b.column(column))
        checked += 1
    assert checked >= 4


def test_beyond_the_stored_k_is_a_clear_error(tmp_path, capsys):
    run = run_suite(parse_suite(suite("scorek", BASE_METRICS), "test"), out_root=tmp_path, progress=None)
    before = (run.run_dir / "results.json").read_bytes()
    for args in (["--k", "5,50"], ["--metrics", "recall@50"]):
        assert main(["score", str(run.run_dir), *args]) == 2
        err = capsys.readouterr().err
        assert "k=50" in err and "stored its top-k lists at k=10" in err and "Traceback" not in err
    assert main(["score", str(run.run_dir), "--metrics", "ndcgg"]) == 2
    assert "unknown metric 'ndcgg'" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert (run.run_dir / "results.json").read_bytes() == before  # nothing written by a refused score


def test_scored_rows_reach_the_report_and_survive_resume(tmp_path, capsys):
    run = run_suite(parse_suite(suite("scorer", BASE_METRICS), "test"), out_root=tmp_path, progress=None)
    assert main(["score", str(run.run_dir), "--metrics", "mrr"]) == 0
    assert main(["report", str(run.run_dir)]) == 0
    html = (run.run_dir / "report.html").read_text(encoding="utf-8")
    assert "mrr" in html.lower()
    boards = load_run(run.run_dir)
    assert {"mrr"} <= set(boards.frame["metric"])
    # a resumed run rebuilds its table from the cells: the scored rows are kept there too
    resumed = run_suite(config_from_dict(RunDir(run.run_dir).read_config(), "resume"), run_dir=run.run_dir,
                        progress=None)
    assert resumed.skipped == resumed.cells
    assert (resumed.frame["metric"] == "mrr").sum() == (load_results(run.run_dir)[0]["metric"] == "mrr").sum() > 0
