"""A model scored on its own seeded sample of test users (``[[models]] max_test_users``).

Slow models (language-model rerankers on a CPU) join a suite on a sample while
every other model is scored on all test users. What must hold: every model
sampled at a size sees the same users, a smaller sample is inside a larger one
and inside the suite's own, and the report neither crowns a sample's mean nor
hides the like-for-like comparison on those users.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main, summary_table
from bench.report import load_run, tables

SUITE = """
name = "sampled-models"
seeds = [0]

[evaluation]
k = [10]
metrics = ["ndcg", "recall", "coverage"]
bootstrap = 50
{suite_sample}

[evaluation.systems]
enabled = false

[[datasets]]
name = "synthetic"
params = {{ n_users = 300, n_items = 120, n_interactions = 6000, seed = 3 }}

[[splits]]
kind = "random"

[[models]]
name = "pop"

[[models]]
name = "itemknn"
max_test_users = 40

[[models]]
name = "ease"
max_test_users = 40

[[models]]
name = "als"
label = "als-tiny-sample"
params = {{ factors = 8, iterations = 3 }}
max_test_users = 12
"""


def _run(tmp_path: Path, suite_sample: str = "") -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(suite_sample=suite_sample), encoding="utf-8")
    assert main(["run", "--suite", str(path), "--out", str(tmp_path / "runs"), "--no-download"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def _per_user(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    out = {}
    for cell in (run_dir / "cells").iterdir():
        info = json.loads((cell / "cell.json").read_text(encoding="utf-8"))
        with np.load(cell / "per_user-all.npz") as npz:
            out[info["model"]] = (npz["users"], npz["values"], [str(c) for c in npz["columns"]])
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("sampled"))


def test_models_sampled_at_one_size_share_users_and_smaller_samples_nest(run_dir: Path) -> None:
    per_user = _per_user(run_dir)
    everyone = per_user["pop"][0]
    assert len(everyone) > 100
    assert np.array_equal(per_user["itemknn"][0], per_user["ease"][0]) and len(per_user["ease"][0]) == 40
    assert len(per_user["als-tiny-sample"][0]) == 12
    assert np.isin(per_user["als-tiny-sample"][0], per_user["ease"][0]).all()
    assert np.isin(per_user["ease"][0], everyone).all()
    frame = pd.read_csv(run_dir / "results.csv")
    ndcg = frame[(frame["metric"] == "ndcg") & (frame["k"] == 10)].set_index("model")["n"]
    assert ndcg.to_dict() == {"pop": len(everyone), "itemknn": 40, "ease": 40, "als-tiny-sample": 12}
    header, _index_names, *lines = summary_table(frame).splitlines()
    columns = header.split()  # ndcg@10, recall@10, users, fit_s
    summary = {tokens[-len(columns) - 1]: dict(zip(columns, tokens[-len(columns):]))
               for tokens in map(str.split, lines)}
    assert summary["ease"]["users"] == "40" and summary["pop"]["users"] == str(len(everyone))


def test_report_never_crowns_a_sample_and_compares_on_the_same_users(run_dir: Path) -> None:
    (board,) = tables.leaderboards(load_run(run_dir))
    assert board.sampled == {"itemknn": 40, "ease": 40, "als-tiny-sample": 12}
    # pop is the weakest model here, yet the only one scored on every user: a sample's mean must not win
    assert max(board.cell(m, "ndcg@10").value for m in board.sampled) > board.cell("pop", "ndcg@10").value
    for column in ("ndcg@10", "recall@10"):
        best = [m for m in board.models if board.cell(m, column).best]
        assert best == ["pop"], (column, best)  # the only model scored on every user
        for model in board.sampled:  # tested against pop on the users both scored
            assert board.cell(model, column).tested
    same = board.same_users
    assert same is not None and same.n_users == 12  # the nested samples' intersection: the smallest
    assert same.models == board.models
    per_user = _per_user(run_dir)
    sample = per_user["als-tiny-sample"][0]
    for model, (users, values, columns) in per_user.items():
        at_sample = values[np.isin(users, sample), columns.index("ndcg@10")]
        assert same.cell(model, "ndcg@10").value == pytest.approx(at_sample.mean())
    best_there = max(same.models, key=lambda m: same.cell(m, "ndcg@10").value)
    assert same.cell(best_there, "ndcg@10").best
    assert "coverage@10" not in [c.key for c in same.columns]  # one aggregate value: nothing per user
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Same 12 users, every model" in html and "n = 40" in html and "not eligible for best" in html
    markdown = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "| ease (n = 40) |" in markdown and "Same 12 users, every model:" in markdown
    assert "*not served*" not in markdown.split("Same 12 users")[1]  # every listed model scored them all


def test_a_model_sample_only_shrinks_the_suites_own(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "max_test_users = 30")
    per_user = _per_user(run_dir)
    assert len(per_user["pop"][0]) == 30 and len(per_user["ease"][0]) == 30  # 40 > 30: the suite's sample
    assert len(per_user["als-tiny-sample"][0]) == 12
    assert np.isin(per_user["als-tiny-sample"][0], per_user["pop"][0]).all()
    (board,) = tables.leaderboards(load_run(run_dir))
    assert board.sampled == {"als-tiny-sample": 12}
