"""The command line and suite-file validation: every mistake is one clear message and exit 2."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest

from bench.cli import main
from bench.results import COLUMNS

GOOD = """
name = "tiny"
seeds = [0]
[evaluation]
k = [5, 10]
bootstrap = 50
[[datasets]]
name = "synthetic"
params = { n_users = 200, n_items = 120, n_interactions = 4000 }
[[splits]]
kind = "random"
[[models]]
name = "pop"
[[models]]
name = "als"
params = { factors = 8, iterations = 3 }
"""


def write(tmp_path, text, name="suite.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_list_models_shows_entry_point_plugins(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "als" in out and "pop" in out and "entry point from bench-recsys" in out


@pytest.mark.parametrize("what", ["datasets", "metrics", "suites"])
def test_list_other_registries(capsys, what):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    expected = {"datasets": "ml-100k", "metrics": "ndcg", "suites": "coldstart"}[what]
    assert expected in out


def test_misspelt_model_gets_did_you_mean_and_exit_2(capsys):
    assert main(["run", "--suite", "smoke", "--model", "alss"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'als'" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [[], ["run"], ["list"], ["list", "modles"], ["run", "--suite", "smoke", "--seed", "x"],
                                  ["frobnicate"]])
def test_command_line_misuse_is_usage_and_exit_2(capsys, argv):
    assert main(argv) == 2
    assert "usage" in capsys.readouterr().err.lower()


MISTAKES = [
    ("unknown top-level key", GOOD.replace('seeds = [0]', 'seeds = [0]\nsedes = [1]'), "unknown key 'sedes'"),
    ("unknown model key", GOOD.replace('name = "pop"', 'name = "pop"\nparms = {}'), "did you mean 'params'"),
    ("wrong type", GOOD.replace("seeds = [0]", 'seeds = "0"'), "'seeds' must be a list"),
    ("unknown model", GOOD.replace('name = "pop"', 'name = "popp"'), "did you mean 'pop'"),
    ("unknown dataset", GOOD.replace('name = "synthetic"', 'name = "ml100k"'), "did you mean 'ml-100k'"),
    ("unknown metric", GOOD.replace("bootstrap = 50", 'metrics = ["ndgc"]'), "did you mean 'ndcg'"),
    ("unknown split kind", GOOD.replace('kind = "random"', 'kind = "temporl"'), "did you mean 'temporal'"),
    ("unknown model parameter", GOOD.replace("factors = 8", "factor = 8"), "did you mean 'factors'"),
    ("bad value", GOOD.replace("k = [5, 10]", "k = [0]"), "evaluation.k"),
    ("bad device", GOOD.replace("seeds = [0]", 'seeds = [0]\ndevice = "tpu"'), "device = 'tpu'"),
    ("negative model sample", GOOD.replace('name = "pop"', 'name = "pop"\nmax_test_users = -5'),
     "models[0].max_test_users must be >= 0"),
    ("model sample not an integer", GOOD.replace('name = "pop"', 'name = "pop"\nmax_test_users = "10"'),
     "max_test_users"),
    ("not toml", GOOD + "\n[[models\n", "not valid TOML"),
    ("no models", GOOD.split("[[models]]")[0], "at least one entry in [[models]]"),
]


@pytest.mark.parametrize("label,text,message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_suite_file_mistakes(tmp_path, capsys, label, text, message):
    path = write(tmp_path, text)
    assert main(["run", "--suite", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert str(path) in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_missing_suite_file(tmp_path, capsys):
    assert main(["run", "--suite", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_writes_tidy_results_with_provenance(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert main(["run", "--suite", str(path), "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    frame = pd.read_csv(run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS
    ndcg = frame[(frame.metric == "ndcg") & (frame.k == 10)]
    assert set(ndcg.model) == {"pop", "als"}
    assert ndcg.split_fingerprint.nunique() == 1  # both models on the same split
    assert (ndcg.ci_low <= ndcg.value).all() and (ndcg.value <= ndcg.ci_high).all()
    assert {"fit_seconds", "recommend_seconds", "model_bytes"} <= set(frame.metric)
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert {"git", "packages", "machine", "device", "created"} <= set(prov)
    assert prov["packages"]["implicit"] is not None
    assert len(list((run_dir / "cells").glob("*/topk-all.npz"))) == 2
    out = capsys.readouterr().out
    assert "ndcg@10" in out and "results:" in out


def test_a_model_can_be_limited_to_some_split_kinds(tmp_path):
    from bench.config import load_suite
    from bench.errors import ConfigError
    from bench.runner import plan_cells

    two_splits = GOOD.replace('[[models]]\nname = "pop"', '[[splits]]\nkind = "user_coldstart"\n[[models]]\nname = "pop"')
    limited = two_splits.replace('name = "als"', 'name = "als"\nsplits = ["random"]')
    cells = plan_cells(load_suite(str(write(tmp_path, limited))))
    assert sorted((s.kind, m.label) for _, _, s, m in cells) == [
        ("random", "als"), ("random", "pop"), ("user_coldstart", "pop")]
    with pytest.raises(ConfigError, match="models\\[1\\].splits names 'temporal'"):
        load_suite(str(write(tmp_path, two_splits.replace('name = "als"', 'name = "als"\nsplits = ["temporal"]'),
                             "bad.toml")))


def test_every_built_in_suite_loads_and_plans_cells():
    """A shipped suite file that no longer parses (renamed key, removed model) fails here, not in a user's run."""
    from bench.config import builtin_suites, load_suite
    from bench.reproduce import is_reproduce_file, load_reproduce
    from bench.runner import plan_cells

    names = list(builtin_suites())
    assert {"smoke", "coldstart", "llm", "accuracy", "realtime", "reproduce"} <= set(names)
    for name in names:
        if is_reproduce_file(name):  # [[experiments]], each holding a complete suite
            assert all(plan_cells(e.suite) for e in load_reproduce(name).experiments), name
        else:
            assert plan_cells(load_suite(name)), name
    coldstart = {m.label: m for m in load_suite("coldstart").models}
    # the language-model recommenders join coldstart; the two slow LMs on a shared 12-user sample, nested in
    # the two-tower's 300 (one seeded permutation), text-embed on everyone
    assert {"text-embed", "text-twotower", "llm-rerank", "llm-generate"} <= set(coldstart)
    assert coldstart["llm-rerank"].max_test_users == coldstart["llm-generate"].max_test_users == 12
    assert coldstart["text-twotower"].max_test_users == 300 and not coldstart["text-embed"].max_test_users
