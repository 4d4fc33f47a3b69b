"""Protocol "retrieved" (shared two-stage candidates) and the candidate-order probes (issue 17, points 1-2)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from bench import metrics as metric_lib
from bench import retrieved as R
from bench.config import parse_suite
from bench.errors import ConfigError
from bench.protocols import Protocol, cell_protocols

SYNTHETIC = {"name": "synthetic", "params": {"n_users": 120, "n_items": 90, "n_interactions": 3000, "seed": 0}}
RETRIEVER = {"name": "als", "params": {"factors": 8, "iterations": 5, "num_threads": 1}}


def suite(evaluation: dict, models: list[dict] | None = None, splits: list[dict] | None = None) -> dict:
    return {"name": "rt", "seeds": [0], "datasets": [copy.deepcopy(SYNTHETIC)],
            "splits": splits or [{"kind": "random"}],
            "models": models or [{"name": "pop"}, {"name": "als", "params": RETRIEVER["params"]}, {"name": "itemknn"}],
            "evaluation": {"k": [5, 10], "bootstrap": 20, "systems": {"enabled": False}} | evaluation,
            "execution": {"isolation": "none"}}


# -- hand-worked pieces ---------------------------------------------------------------------------

def test_kendall_tau_hand_cases_and_scipy():
    cands = np.array([[1, 2, 3]])
    assert R.kendall_tau(cands, np.array([[1, 2, 3]]), np.array([[1, 2, 3]]))[0] == 1.0
    assert R.kendall_tau(cands, np.array([[1, 2, 3]]), np.array([[3, 2, 1]]))[0] == -1.0
    # (1,2) and (1,3) agree, (2,3) swapped: (2 - 1) / 3
    assert R.kendall_tau(cands, np.array([[1, 2, 3]]), np.array([[1, 3, 2]]))[0] == pytest.approx(1 / 3)
    # top-2 of 4 candidates: 3 and 4 share last place in both lists (a tie in each): S = 4 - 1 = 3 over
    # sqrt((6 - 1) * (6 - 1)) = 5 pairs not tied
    four = np.array([[1, 2, 3, 4, -1]])  # -1: padding, ignored
    tau = R.kendall_tau(four, np.array([[1, 2]]), np.array([[2, 1]]))[0]
    assert tau == pytest.approx(0.6)
    assert tau == pytest.approx(scipy.stats.kendalltau([0, 1, 2, 2], [1, 0, 2, 2]).statistic)  # tau-b
    rng = np.random.default_rng(0)
    for _ in range(20):  # random full rankings against scipy's tau-b
        c = rng.permutation(30)[:8][None, :]
        a, b = rng.permutation(c[0])[None, :], rng.permutation(c[0])[None, :]
        pos_a = [list(a[0]).index(i) for i in c[0]]
        pos_b = [list(b[0]).index(i) for i in c[0]]
        assert R.kendall_tau(c, a, b)[0] == pytest.approx(scipy.stats.kendalltau(pos_a, pos_b).statistic)


def test_candidate_orders_keep_the_candidates_and_the_padding():
    cands = np.array([[7, 3, 9, -1], [4, 5, 6, 8]])
    given, reverse, shuffled = R.candidate_orders(cands, 3, seed=0)
    assert given is cands
    assert reverse.tolist() == [[9, 3, 7, -1], [8, 6, 5, 4]]
    assert shuffled[0, 3] == -1
    assert [sorted(r) for r in shuffled.tolist()] == [sorted(r) for r in cands.tolist()]
    again = R.candidate_orders(cands, 3, seed=0)[2]
    assert np.array_equal(shuffled, again)  # seeded


def test_llamarec_figures_hand_worked():
    """Three users, candidates and held-out items by hand: user 1's item was not retrieved."""
    users = np.array([0, 1, 2])
    cands = np.array([[5, 6, 7], [1, 2, 3], [4, 8, 9]])
    test_users, test_items = np.array([0, 1, 2, 2]), np.array([6, 9, 4, 10])
    found = R.found_mask(users, cands, test_users, test_items, n_items=11)
    assert found.tolist() == [True, False, True]
    lists = np.array([[6, 5], [1, 2], [8, 4]])  # a model's top-2 of each user's candidates
    hits, n_rel = metric_lib.hit_matrix(lists, users, test_users, test_items, 11)
    inputs = metric_lib.EvalInputs(items=lists, hits=hits, n_relevant=n_rel, n_candidates=11,
                                   item_popularity=np.zeros(11, int), n_train_users=3, item_categories=None)
    table = metric_lib.compute(inputs, ["ndcg", "coverage"], [2])
    user2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))  # hit at rank 2, two held-out items
    ndcg = table.columns.index(("ndcg", 2))
    assert table.per_user[:, ndcg].mean() == pytest.approx((1 + 0 + user2) / 3)  # over all users
    sub = R.found_table(table, found)
    assert sub.columns == [("ndcg", 2)]  # aggregate-only metrics describe all lists, not a subpopulation
    assert sub.per_user[:, 0].mean() == pytest.approx((1 + user2) / 2)  # over the retrieved users


# -- configuration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("evaluation, message", [
    ({"protocol": "retrieved", "n_candidates": 20}, "needs evaluation.retriever"),
    ({"protocol": "retrieved", "retriever": {"name": "alss"}, "n_candidates": 20},
     "unknown model 'alss'; did you mean 'als'.*available: .*itemknn"),
    ({"protocol": "retrieved", "retriever": {"name": "als", "params": {"factor": 8}}, "n_candidates": 20},
     "evaluation.retriever.params has unknown parameter 'factor'"),
    ({"protocol": "retrieved", "retriever": RETRIEVER, "n_candidates": 5}, "n_candidates >= 10"),
    ({"protocol": "retrieved", "retriever": RETRIEVER}, "n_candidates = 0"),
    ({"protocol": "retrieved", "retriever": RETRIEVER, "n_candidates": 20, "order_probes": 1}, "order_probes = 1"),
    ({"retriever": RETRIEVER, "n_candidates": 20}, "only used by the two-stage protocol"),
    ({"order_probes": 3}, "evaluation.order_probes is only used"),
    ({"extra_protocols": ["full"]}, "repeats a protocol"),
    ({"extra_protocols": ["uni"]}, "evaluation.protocol = 'uni' is not valid"),
    ({"metrics": ["order_ndcg_spread@10"]}, "set evaluation.order_probes"),
    ({"retrieved_splits": ["random"]}, "evaluation.retrieved_splits is only used"),
    ({"protocol": "retrieved", "retriever": RETRIEVER, "n_candidates": 20, "retrieved_splits": ["temporal"]},
     "retrieved_splits names 'temporal', which is not a kind in"),
])
def test_config_errors(evaluation, message):
    with pytest.raises(ConfigError, match=message):
        parse_suite(suite(evaluation), "s.toml")


def test_config_errors_exit_2_from_the_cli(tmp_path, capsys):
    from bench.cli import main

    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\n[evaluation]\nk = [5, 10]\nprotocol = "retrieved"\nn_candidates = 3\n'
                    'retriever = { name = "als" }\n[[datasets]]\nname = "synthetic"\n[[splits]]\nkind = "random"\n'
                    '[[models]]\nname = "pop"\n')
    assert main(["run", "--suite", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "n_candidates = 3" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("cell.json"))


def test_protocol_labels_and_cell_protocols():
    config = parse_suite(suite({"extra_protocols": ["retrieved"], "retriever": RETRIEVER, "n_candidates": 12}), "s")
    main, extra = cell_protocols(config.evaluation)
    assert main.label == "full" and extra.label == "retrieved12:als"
    assert extra == Protocol("retrieved", 12, retriever="als",
                             retriever_params='{"factors": 8, "iterations": 5, "num_threads": 1}')
    assert R.segment_label("shots=3", extra, True) == "shots=3@retrieved12:als"
    assert R.segment_label("all", extra, False) == "all"


# -- end to end ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Full ranking plus the retrieved protocol (ALS retriever, N = 12) with three order probes, on a random
    and a user cold-start split (ALS cannot serve zero-shot users)."""
    from bench.runner import run_suite

    config = parse_suite(suite({"extra_protocols": ["retrieved"], "retriever": RETRIEVER, "n_candidates": 12,
                                "order_probes": 3},
                               splits=[{"kind": "random"},
                                       {"kind": "user_coldstart", "params": {"user_fraction": 0.2, "shots": [0, 3]}}]),
                         "s")
    summary = run_suite(config, out_root=tmp_path_factory.mktemp("runs"), progress=None)
    assert summary.failed == 0, summary.failures
    return summary


def stored_rows(run_dir: Path, segment: str) -> dict[int, list[int]]:
    (path,) = (run_dir / "splits").glob(f"*-seed0-retrieved12-als-*-{segment}.npz")
    with np.load(path) as f:
        return {int(u): f["items"][f["indptr"][j]:f["indptr"][j + 1]].tolist() for j, u in enumerate(f["users"])}


def cell_dir(summary, model: str) -> list[Path]:
    cids = summary.frame[summary.frame["model"] == model]["cell_id"].unique()
    return [summary.run_dir / "cells" / c for c in cids]


def test_every_model_ranks_exactly_the_stored_candidates(run):
    for split_index, (segment, tag) in enumerate([("all@retrieved12:als", "all"),
                                                  ("shots=3@retrieved12:als", "shots_3")]):
        rows = stored_rows(run.run_dir, tag)
        assert all(len(r) == 12 for r in rows.values())
        for model in ("pop", "als", "itemknn", "als (retriever)"):
            with np.load(cell_dir(run, model)[split_index] / f"topk-{segment}.npz") as topk:
                for u, listed in zip(topk["users"], topk["items"]):
                    assert set(listed.tolist()) <= set(rows[int(u)])
    assert not list(run.run_dir.glob("splits/*shots_0*"))  # ALS cannot serve zero-shot users: nothing stored
    frame = run.frame
    zero = frame[frame["segment"].str.startswith("shots=0@")]
    assert len(zero) and set(zero["status"]) == {"unsupported"}


def test_retriever_row_is_the_retrievers_own_order_and_its_recall(run):
    rows = stored_rows(run.run_dir, "all")
    with np.load(cell_dir(run, "als (retriever)")[0] / "topk-all@retrieved12:als.npz") as topk:
        for u, listed in zip(topk["users"], topk["items"]):
            assert listed.tolist() == rows[int(u)][:10]
    from bench.data import load_dataset
    from bench.splits import make_split

    ds = load_dataset("synthetic", None, None, **SYNTHETIC["params"])
    split = make_split(ds, "random", 0)
    test: dict[int, set[int]] = {}
    for u, i in zip(ds.user[split.test], ds.item[split.test]):
        test.setdefault(int(u), set()).add(int(i))
    recall = np.mean([len(test[u] & set(r)) / len(test[u]) for u, r in rows.items()])
    found = sorted(u for u, r in rows.items() if test[u] & set(r))
    frame = run.frame
    mine = frame[(frame["model"] == "als (retriever)") & (frame["split"] == "random")]
    got = mine[(mine["metric"] == "recall") & (mine["k"] == 12) & (mine["segment"] == "all@retrieved12:als")]
    assert got["value"].iloc[0] == pytest.approx(recall)
    share = mine[(mine["metric"] == "hit_rate") & (mine["k"] == 12) & (mine["segment"] == "all@retrieved12:als")]
    assert share["value"].iloc[0] == pytest.approx(len(found) / len(rows))
    # the +found rows are over exactly those users, and every model's +found mean is its per-user mean on them
    for model in ("pop", "als (retriever)"):
        sub = frame[(frame["model"] == model) & (frame["split"] == "random")
                    & (frame["segment"] == "all@retrieved12:als+found") & (frame["metric"] == "ndcg")
                    & (frame["k"] == 10)]
        assert sub["n"].iloc[0] == len(found)
        from bench.rundir import RunDir

        per_user = RunDir(run.run_dir).read_per_user(sub["cell_id"].iloc[0], "all@retrieved12:als")
        column = per_user.values[:, per_user.columns.index("ndcg@10")]
        chosen = np.isin(per_user.users, found)
        assert sub["value"].iloc[0] == pytest.approx(column[chosen].mean())


def test_cf_models_are_order_invariant(run):
    frame = run.frame
    probes = frame[frame["metric"].isin(["order_ndcg_spread", "order_kendall_tau"])
                   & ~frame["segment"].str.endswith("+found")]
    assert set(probes["model"]) == {"pop", "als", "itemknn"}  # the retriever row is not probed
    assert len(probes) == 3 * 2 * 3  # models x served segments x (spread@5, spread@10, tau@12)
    assert (probes["status"] == "ok").all()
    spread = probes[probes["metric"] == "order_ndcg_spread"]
    tau = probes[probes["metric"] == "order_kendall_tau"]
    assert (spread["value"] == 0.0).all() and (tau["value"] == 1.0).all() and set(tau["k"]) == {12}
    assert set(spread["k"]) == {5, 10}


def test_main_protocol_rows_keep_their_segments(run):
    frame = run.frame
    full = frame[frame["protocol"] == "full"]
    assert set(full["segment"]) == {"all", "shots=0", "shots=3", "fit"}
    assert "als (retriever)" not in set(full["model"])
    systems = frame[(frame["metric"] == "recommend_seconds")]
    assert set(systems["protocol"]) == {"full", "retrieved12:als"}


def test_report_labels_the_two_figures(run):
    from bench.report import write_report

    html = write_report(run.run_dir).html.read_text(encoding="utf-8")
    assert "Two-stage protocol: every model ranks the same 12 candidates per user" in html
    assert "only the users with a held-out item among their candidates" in html


def test_retriever_is_fitted_once_per_split(tmp_path):
    import tests.plugins.counting_models  # noqa: F401  (registers counting-pop unless another import did)
    from bench import registry
    from bench.runner import run_suite

    counting = registry.models.get("counting-pop")  # the registered class, whichever import registered it
    counting.fits = 0
    config = parse_suite(suite({"protocol": "retrieved", "retriever": {"name": "counting-pop"}, "n_candidates": 10},
                               models=[{"name": "pop"}, {"name": "itemknn"}]), "s")
    summary = run_suite(config, out_root=tmp_path, progress=None)
    assert summary.failed == 0, summary.failures
    assert counting.fits == 1
    assert set(summary.frame["protocol"]) == {"retrieved10:counting-pop"}
    assert {"all", "all+found"} <= set(summary.frame["segment"])
    first_stage = summary.frame[summary.frame["status"] == "first_stage"]
    assert first_stage.empty


@pytest.mark.llm
@pytest.mark.slow
def test_llm_rerank_ranks_exactly_the_shared_candidates(tmp_path):
    pytest.importorskip("transformers")
    from bench.runner import run_suite

    params = {"model_name_or_path": "tiny-random", "num_threads": 1, "max_steps": 1, "train_batch_size": 2,
              "lora": False, "n_candidates": 3, "first_stage": "pop", "max_history_items": 2, "batch_size": 16}
    config = parse_suite(suite({"protocol": "retrieved", "retriever": RETRIEVER, "n_candidates": 10, "k": [5, 10],
                                "max_test_users": 8, "order_probes": 2},
                               models=[{"name": "llm-rerank", "params": params}]), "s")
    summary = run_suite(config, out_root=tmp_path, progress=None)
    assert summary.failed == 0, summary.failures
    rows = stored_rows_n(summary.run_dir, 10)
    with np.load(cell_dir(summary, "llm-rerank")[0] / "topk-all.npz") as topk:
        assert len(topk["users"]) == 8
        for u, listed in zip(topk["users"], topk["items"]):
            assert sorted(listed.tolist()) == sorted(rows[int(u)])  # all 10 shared candidates, none of its own
    frame = summary.frame
    llm = frame[frame["model"] == "llm-rerank"]
    assert not (llm["status"] == "first_stage").any()  # it ranked every position itself (ranked_depth = k)
    scored = llm[(llm["metric"] == "llm_candidates_scored") & (llm["segment"] == "all")]
    assert scored["value"].iloc[0] == 8 * 10  # the LM scored exactly the shared candidates
    assert set(llm[llm["metric"] == "order_kendall_tau"]["status"]) == {"ok"}


def stored_rows_n(run_dir: Path, n: int) -> dict[int, list[int]]:
    (path,) = (run_dir / "splits").glob(f"*-seed0-retrieved{n}-als-*-all.npz")
    with np.load(path) as f:
        return {int(u): f["items"][f["indptr"][j]:f["indptr"][j + 1]].tolist() for j, u in enumerate(f["users"])}


def test_order_metrics_are_listed_and_gated(run, tmp_path, capsys):
    """`bench list metrics` shows them with their direction; the gate reads their per-user values."""
    import json

    from bench.cli import main

    assert main(["list", "metrics"]) == 0
    listed = capsys.readouterr().out
    assert "order_ndcg_spread" in listed and "order_kendall_tau" in listed
    rules = tmp_path / "rules.toml"
    rules.write_text('[[accuracy]]\nmetric = "order_ndcg_spread@10"\nmax_drop = 0.01\n'
                     'segments = ["all@retrieved12:als", "shots=3@retrieved12:als"]\nmodels = ["pop", "als", "itemknn"]\n')
    base = tmp_path / "base.json"
    args = ["gate", "--current", str(run.run_dir), "--baseline", str(base), "--rules", str(rules)]
    assert main(args + ["--update-baseline"]) == 0
    assert main(args + ["--json", str(tmp_path / "verdict.json")]) == 0
    checks = [c for c in json.loads((tmp_path / "verdict.json").read_text())["checks"]
              if c["metric"] == "order_ndcg_spread@10"]
    assert len(checks) == 6 and {c["verdict"] for c in checks} == {"pass"}
    assert {c["detail"]["higher_is_better"] for c in checks} == {False}


def test_retrieved_splits_and_sampled_users(tmp_path):
    """The extra evaluation only on the listed split kinds, on a sample of the users for every model."""
    from bench.runner import run_suite

    config = parse_suite(suite({"extra_protocols": ["retrieved"], "retriever": RETRIEVER, "n_candidates": 10,
                                "retrieved_splits": ["random"], "retrieved_max_test_users": 7},
                               models=[{"name": "pop", "max_test_users": 30}, {"name": "itemknn"}],
                               splits=[{"kind": "random"},
                                       {"kind": "user_coldstart", "params": {"user_fraction": 0.2, "shots": [3]}}]),
                         "s")
    summary = run_suite(config, out_root=tmp_path, progress=None)
    assert summary.failed == 0, summary.failures
    frame = summary.frame
    two_stage = frame[frame["protocol"] == "retrieved10:als"]
    assert set(two_stage["split"]) == {"random"}  # no retriever cell, no rows on the cold-start split
    n = two_stage[(two_stage["metric"] == "ndcg") & (two_stage["segment"] == "all@retrieved10:als")]
    by_model = dict(zip(n["model"], n["n"]))
    full = frame[(frame["protocol"] == "full") & (frame["metric"] == "ndcg") & (frame["segment"] == "all")]
    assert by_model["pop"] == 7 and dict(zip(full["model"], full["n"]))["pop"] == 30
    assert by_model["itemknn"] == by_model["als (retriever)"] == 7
    full_knn = dict(zip(full["model"], full["n"]))["itemknn"]
    assert full_knn > 30  # the main protocol keeps every user
