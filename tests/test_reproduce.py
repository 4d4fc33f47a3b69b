"""The reproduce file, the published-vs-ours table, the holdout_n split, and agreement with LightFM's own metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bench import metrics as metric_lib
from bench.data import load_dataset
from bench.errors import ConfigError
from bench.reproduce import Experiment, Published, compare, load_reproduce, run_reproduce, to_markdown
from bench.runner import train_data
from bench.splits import make_split


def test_builtin_reproduce_file_is_valid_and_cites_pinned_sources() -> None:
    spec = load_reproduce("reproduce")
    ids = [e.id for e in spec.experiments]
    assert {"lightfm-example-warp", "msrecommenders-bpr", "recbole-bpr"} <= set(ids)
    for experiment in spec.experiments:
        assert experiment.source.startswith("https://github.com/") and "/blob/" in experiment.source
        commit = experiment.source.split("/blob/")[1].split("/")[0]
        assert len(commit) == 40, f"{experiment.id}: cite a pinned commit, got {commit}"
        assert experiment.published and experiment.protocol and experiment.differences
        assert all(p.tolerance > 0 for p in experiment.published)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "repro.toml"
    path.write_text(text, encoding="utf-8")
    return path


SUITE = """
[experiments.suite]
name = "tiny"
seeds = [0, 1]
evaluation = { k = [5], metrics = ["precision", "ndcg"], bootstrap = 0 }
datasets = [{ name = "synthetic", params = { n_users = 120, n_items = 60, n_interactions = 2500 } }]
splits = [{ kind = "holdout_n", params = { test_items = 3 } }]
models = [{ name = "ease", label = "ease-x", params = { l2 = 10.0 } }]
"""


def experiment_header(model: str = "ease-x", metric: str = "precision") -> str:
    return f"""name = "tiny-repro"
[[experiments]]
id = "tiny"
title = "t"
source = "https://github.com/o/r/blob/{'a' * 40}/f"
model = "{model}"
protocol = "p"
differences = "d"
published = [{{ metric = "{metric}", k = 5, value = 0.2, tolerance = 0.01 }}]
"""


@pytest.mark.parametrize("header, culprit", [
    (experiment_header(model="nope"), "is not a model label"),
    (experiment_header(metric="recall"), "not computed by the suite"),
    (experiment_header().replace('title = "t"', 'title = "t"\ncolour = 1'), "unknown key"),
])
def test_bad_reproduce_files_are_config_errors(tmp_path: Path, header: str, culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit):
        load_reproduce(str(write(tmp_path, header + SUITE)))


def test_compare_puts_published_beside_the_mean_over_seeds() -> None:
    spec = load_reproduce("reproduce")
    suite = spec.experiments[0].suite
    experiment = Experiment("x", "t", "s", "m", "p", "d",
                            [Published("precision", 10, 0.11, 0.005), Published("ndcg", 10, 0.5, 0.01)], suite)
    rows = [{"model": "m", "status": "ok", "segment": "all", "metric": "precision", "k": 10, "seed": s, "value": v}
            for s, v in ((0, 0.10), (1, 0.12), (2, 0.11))]
    rows += [{"model": "other", "status": "ok", "segment": "all", "metric": "precision", "k": 10, "seed": 0,
              "value": 0.9}]
    table = compare(experiment, pd.DataFrame(rows))
    assert table[0]["ours"] == pytest.approx(0.11) and table[0]["ours_sd"] == pytest.approx(0.01)
    assert table[0]["within"] is True and table[0]["seeds"] == 3
    assert table[1]["seeds"] == 0 and table[1]["within"] is False  # a missing figure is never a pass
    assert "| x | precision@10 | 0.1100 | 0.1100 |" in to_markdown(pd.DataFrame(table))


def test_run_reproduce_writes_the_table(tmp_path: Path) -> None:
    path = write(tmp_path, experiment_header() + SUITE)
    table, folder = run_reproduce(str(path), out_root=tmp_path / "out", progress=lambda _m: None)
    assert list(table["metric"]) == ["precision@5"] and table["seeds"].iloc[0] == 2
    assert (folder / "reproduce.csv").is_file() and "published vs ours" in (folder / "reproduce.md").read_text()
    results = pd.read_csv(Path(table["run_dir"].iloc[0]) / "results.csv")
    mine = results[(results["metric"] == "precision") & (results["k"] == 5) & (results["segment"] == "all")]
    assert table["ours"].iloc[0] == pytest.approx(mine["value"].mean())


def test_holdout_n_holds_out_exactly_n_per_user() -> None:
    data = load_dataset("synthetic", None, None, n_users=200, n_items=80, n_interactions=4000)
    split = make_split(data, "holdout_n", 3, test_items=4)
    counts = np.bincount(data.user, minlength=data.n_users)
    per_user = np.bincount(data.user[split.test], minlength=data.n_users)
    assert np.array_equal(per_user, np.where(counts > 4, 4, 0))
    assert np.intersect1d(split.train, split.test).size == 0 and len(split.train) + len(split.test) == len(data.user)
    again = make_split(data, "holdout_n", 3, test_items=4)
    assert np.array_equal(again.test, split.test)
    with pytest.raises(ConfigError, match="test_items"):
        make_split(data, "holdout_n", 0, test_items=0)


def test_precision_agrees_with_lightfms_own_evaluation() -> None:
    """bench's precision@k without exclusion == lightfm.evaluation.precision_at_k on the same fitted model."""
    from lightfm.evaluation import precision_at_k

    from bench import registry

    data = load_dataset("synthetic", None, None, n_users=150, n_items=90, n_interactions=4000)
    split = make_split(data, "holdout_n", 0, test_items=5)
    train = train_data(data, split.train)
    model = registry.models.get("lightfm")(seed=0, no_components=8, epochs=5)
    model.fit(train)
    users = np.unique(data.user[split.test])
    items, _ = model.recommend(users, 10)
    hits, n_rel = metric_lib.hit_matrix(np.asarray(items), users, data.user[split.test], data.item[split.test],
                                        data.n_items)
    ours = metric_lib.precision(metric_lib.EvalInputs(np.asarray(items), hits, n_rel, data.n_items,
                                                      np.zeros(data.n_items), 1, None), 10)
    test = sp.coo_matrix((np.ones(len(split.test)), (data.user[split.test], data.item[split.test])),
                         shape=(data.n_users, data.n_items))
    theirs = precision_at_k(model.model, test, k=10)  # users with test items only, train items not excluded
    assert ours.mean() == pytest.approx(float(theirs.mean()), abs=1e-6)  # LightFM averages in float32


def test_bench_run_runs_a_reproduce_file_and_refuses_narrowing(tmp_path: Path, capsys) -> None:
    from bench.cli import main

    path = write(tmp_path, experiment_header() + SUITE)
    assert main(["run", "--suite", str(path), "--model", "ease", "--out", str(tmp_path / "o")]) == 2
    assert "drop --dataset/--model/--seed" in capsys.readouterr().err
    assert main(["run", "--suite", str(path), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "| tiny | precision@5 | 0.2000 |" in out and "reproduce.md" in out
