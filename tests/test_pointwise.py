"""The pointwise (CTR-style) protocol: auc / gauc / logloss against hand-worked cases and scikit-learn, the same
labelled pairs for every model, logloss only for calibrated models, and every mistake a ConfigError (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from bench import metrics as M
from bench import pointwise
from bench.cli import main
from bench.config import parse_suite
from bench.errors import ConfigError
from bench.rundir import RunDir

# -- the metrics ------------------------------------------------------------------------------


def test_auc_hand_worked_and_ties():
    # positives 0.9 and 0.4, negatives 0.8 and 0.1: of the 4 (pos, neg) pairs, 0.4 < 0.8 is the one misordered
    assert M.binary_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.4, 0.1])) == pytest.approx(0.75)
    assert M.binary_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # a tie counts 1/2
    assert np.isnan(M.binary_auc(np.array([1, 1]), np.array([0.1, 0.2])))  # one class: undefined, not 0.5


def test_auc_and_logloss_match_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 700)
    scores = np.round(rng.random(700) + 0.3 * labels, 1)  # rounded: many ties
    assert M.binary_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    p = rng.random(700)
    p[:3] = [0.0, 1.0, 1.0]  # clipped, as sklearn does, instead of an infinite loss
    assert M.log_loss(labels, p) == pytest.approx(sk_log_loss(labels, np.clip(p, 1e-15, 1 - 1e-15)), rel=1e-12)


def test_gauc_hand_worked_and_against_sklearn_per_user():
    users = np.array([7, 7, 7, 3, 3, 9, 9])
    labels = np.array([1, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.3, 0.4])
    # user 7: AUC 1 over 3 pairs; user 3: AUC 0 over 2; user 9 has one class: skipped -> (3*1 + 2*0) / 5
    gauc, counted, skipped = M.group_auc(users, labels, scores)
    assert (gauc, counted, skipped) == (pytest.approx(0.6), 2, 1)
    rng = np.random.default_rng(5)
    users = rng.integers(0, 30, 900)
    labels = rng.integers(0, 2, 900)
    scores = rng.random(900) + 0.2 * labels
    expected_num = expected_den = 0.0
    for u in np.unique(users):
        mine = users == u
        if len(set(labels[mine])) == 2:
            expected_num += roc_auc_score(labels[mine], scores[mine]) * mine.sum()
            expected_den += mine.sum()
    assert M.group_auc(users, labels, scores)[0] == pytest.approx(expected_num / expected_den, abs=1e-12)


def test_pair_metrics_are_listed_and_refused_by_ranking_scoring(capsys):
    from bench.listing import list_metrics

    listed = list_metrics().set_index("name")
    for name in ("auc", "gauc", "logloss"):
        assert listed.loc[name, "needs"] == "pairs"
    assert listed.loc["logloss", "direction"] == "lower is better"
    assert main(["list", "metrics"]) == 0
    printed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert {"auc", "gauc", "logloss"} <= printed
    with pytest.raises(ConfigError, match="protocol = \"pointwise\""):
        M.compute(M.EvalInputs(np.zeros((1, 1), int), np.zeros((1, 1), bool), np.ones(1, int), 1, np.ones(1, int),
                               1, None), ["auc"], [1])


def test_bootstrap_ci_brackets_the_value():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(40), 10)
    labels = rng.integers(0, 2, 400).astype(np.int8)
    scores = rng.random(400) * 0.5 + 0.4 * labels
    pairs = pointwise.TestPairs(users, np.arange(400), labels)
    values = pointwise.metric_values(pairs, scores, calibrated=True)
    cis = pointwise.bootstrap(pairs, scores, True, 300, seed=0)
    for name in ("auc", "gauc", "logloss"):
        low, high = cis[name]
        assert low < values[name] < high, name


# -- suites: config errors, then runs ---------------------------------------------------------

def suite(evaluation: dict, models: list | None = None, splits: list | None = None, dataset: dict | None = None) -> dict:
    return {"name": "ctr-test", "seeds": [0], "evaluation": {"bootstrap": 50, "protocol": "pointwise", **evaluation},
            "execution": {"isolation": "none"},
            "datasets": [dataset or {"name": "synthetic", "params": {"n_users": 60, "n_items": 80,
                                                                     "n_interactions": 1500, "seed": 0}}],
            "splits": splits or [{"kind": "random"}],
            "models": models or [{"name": "pop"}, {"name": "als", "params": {"factors": 8, "iterations": 3}}]}


@pytest.mark.parametrize("evaluation, splits, message", [
    ({"metrics": ["auc", "ndcg"]}, None, "can only hold auc, gauc, logloss; drop ndcg"),
    ({"protocol": "full", "metrics": ["gauc"]}, None, "set evaluation.protocol = \"pointwise\""),
    ({"label_threshold": "high"}, None, "label_threshold"),
    ({}, [{"kind": "user_coldstart"}], "does not score"),
])
def test_config_mistakes_are_one_message(evaluation, splits, message):
    with pytest.raises(ConfigError, match=message):
        parse_suite(suite(evaluation, splits=splits), "s.toml")


def test_grids_are_refused_under_pointwise():
    with pytest.raises(ConfigError, match="one \\[\\[models\\]\\] entry per setting"):
        parse_suite(suite({}, models=[{"name": "als", "grid": {"factors": [4, 8]}}]), "s.toml")


def test_data_without_two_labels_exits_2_before_any_cell(tmp_path, capsys, mirror):
    # ml-100k's card keeps ratings >= 4 only: every test pair would be liked
    config = suite({}, dataset={"name": "ml-100k"})
    path = tmp_path / "s.toml"
    path.write_text(_toml(config))
    argv = ["run", "--suite", str(path), "--out", str(tmp_path / "runs"), "--no-download"]
    for folder in mirror:
        argv += ["--mirror", str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "implicit = { min_value = 0 }" in err and "Traceback" not in err
    assert not list((tmp_path / "runs").glob("*/cells/*/cell.json"))
    # a file without a value column has no ratings at all
    data = tmp_path / "plays.csv"
    data.write_text("user,item\n" + "".join(f"{u},{i}\n" for u in range(20) for i in range(u % 5, u % 5 + 6)))
    config = suite({}, dataset={"name": "plays", "interactions": str(data), "columns": {"user": "user", "item": "item"}})
    path.write_text(_toml(config))
    assert main(["run", "--suite", str(path), "--out", str(tmp_path / "runs")]) == 2
    assert "has no explicit ratings" in capsys.readouterr().err


def _toml(config: dict) -> str:
    """A minimal TOML writer for these flat test suites (tomllib reads only)."""
    def value(v):  # noqa: ANN001, ANN202
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"

    lines = [f"{k} = {value(v)}" for k, v in config.items() if not isinstance(v, (dict, list)) or k == "seeds"]
    for table in ("evaluation", "execution"):
        lines.append(f"[{table}]")
        lines += [f"{k} = {value(v)}" for k, v in config[table].items()]
    for array in ("datasets", "splits", "models"):
        for entry in config[array]:
            lines.append(f"[[{array}]]")
            lines += [f"{k} = {value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def test_run_scores_the_same_pairs_for_every_model_and_logloss_only_when_calibrated(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bench.runner import run_suite

    lm = {"name": "llm-rerank", "label": "llm-rerank-16",
          "params": {"model_name_or_path": "tiny-random", "num_threads": 1, "lora": False, "max_steps": 2,
                     "train_batch_size": 4, "train_labels": "rating", "train_examples": 16, "max_history_items": 3,
                     "max_chars": 24, "max_prompt_tokens": 32, "batch_size": 16,
                     "first_stage": "pop"}}
    config = parse_suite(suite({"max_test_users": 12},
                               models=[{"name": "pop"}, {"name": "als", "params": {"factors": 8, "iterations": 3}},
                                       {"name": "itemknn"}, lm]), "s")
    summary = run_suite(config, out_root=tmp_path, progress=None)
    assert summary.failed == 0, summary.failures
    frame = summary.frame
    assert set(frame["protocol"]) == {"pointwise>=4"}
    from bench.cli import summary_table

    printed = summary_table(frame)  # the end-of-run summary shows the pair metrics, logloss "–" when unsupported
    assert "gauc" in printed and "pointwise>=4" in printed and "not probabilities" in printed
    folder = RunDir(summary.run_dir)
    cells = folder.cells()
    digests = {info["segments"]["all"]["pairs_digest"] for info in cells.values()}
    assert len(digests) == 1  # every model scored the very same labelled pairs
    for cid, info in cells.items():
        stored = folder.read_pairs(cid, "all")
        label = info["model"]
        rows = frame[(frame["model"] == label) & (frame["segment"] == "all")].set_index("metric")
        # the row is the independent library's AUC of the stored scores
        assert rows.loc["auc", "value"] == pytest.approx(roc_auc_score(stored["labels"], stored["scores"]), abs=1e-12)
        assert rows.loc["test_pairs", "value"] == len(stored["labels"])
        if label == "llm-rerank-16":  # P(yes): a probability, so logloss is scored (and matches sklearn)
            assert rows.loc["logloss", "status"] == "ok"
            assert rows.loc["logloss", "value"] == pytest.approx(sk_log_loss(stored["labels"], stored["scores"]))
            assert info["model_description"]["training"]["labelled_examples"] == 16
        else:
            assert rows.loc["logloss", "status"] == "unsupported" and np.isnan(rows.loc["logloss", "value"])
    users = np.unique(stored["users"])
    assert len(users) == 12  # max_test_users: the seeded sample, the same for every model

    # the report: the pair table (logloss "not a probability" for ALS) and the AUC-vs-examples curve
    from bench.report.pointwise import pointwise_tables
    from bench.report.render import write_report
    from bench.report.rundata import load_run

    table = pointwise_tables(load_run(summary.run_dir))[0]
    by_model = {row[0]: row for row in table.rows}
    assert by_model["als"][3] == "not a probability" and by_model["llm-rerank-16"][3][0].isdigit()
    auc_als = frame[(frame["model"] == "als") & (frame["metric"] == "auc")]["value"].iloc[0]
    assert by_model["als"][1].startswith(f"{auc_als:.3g}"[:4])
    html = write_report(summary.run_dir, markdown=False).html.read_text()
    assert 'id="pointwise"' in html and "AUC against labelled examples" in html
    assert 'see <a href="#pointwise">' in html  # "at a glance" points to the pair section, no empty leaderboard


def test_default_score_pairs_is_the_models_own_score():
    from bench import registry
    from bench.contract import checkerboard

    train = checkerboard()
    model = registry.models.get("itemknn")(seed=0)
    model.fit(train)
    users = np.array([0, 0, 3, 5, 5, 5])
    items = np.array([1, 4, 2, 0, 7, 3])
    dense = model.score(np.unique(users))
    expected = dense[np.searchsorted(np.unique(users), users), items]
    assert np.allclose(model.score_pairs(users, items), expected)


def test_rating_training_needs_the_pointwise_labels():
    pytest.importorskip("torch")
    from bench import registry
    from bench.contract import checkerboard

    model = registry.models.get("llm-rerank")(seed=0, model_name_or_path="tiny-random", num_threads=1,
                                              train_labels="rating", first_stage="pop", max_steps=1)
    with pytest.raises(ConfigError, match="protocol = \"pointwise\""):
        model.fit(checkerboard())
    with pytest.raises(ConfigError, match="train_labels"):
        registry.models.get("llm-rerank")(seed=0, train_labels="stars")
