"""Sampled-candidate protocols: the draw, its storage, the suite syntax and a run end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bench import protocols as P
from bench.config import parse_suite
from bench.errors import ConfigError
from bench.protocol import mask_and_rank, tie_keys
from bench.splits import Segment, make_split


def seen_sets(dataset) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for u, i in zip(dataset.user, dataset.item):
        out.setdefault(int(u), set()).add(int(i))
    return out


def test_protocol_names_and_errors():
    assert P.parse_protocol("full").label == "full"
    assert P.parse_protocol("uni100").n_negatives == 100
    assert P.parse_protocol("POP50").kind == "pop"
    assert P.parse_protocol("uni99", negatives_per="user").label == "uni99/user"
    assert P.parse_protocol("full", exclude_train=False).label == "full+train"
    for bad in ("uni", "pop0", "full10", "random100", "uni-5", ""):
        with pytest.raises(ConfigError, match="evaluation.protocol"):
            P.parse_protocol(bad, source="suite.toml")
    with pytest.raises(ConfigError, match="negatives_per"):
        P.parse_protocol("uni100", negatives_per="item")


@pytest.fixture(scope="module")
def ml100k_split(ml100k):
    return make_split(ml100k, "random", 0)


def test_uniform_negatives_per_test_item_on_ml100k(ml100k, ml100k_split):
    protocol = P.parse_protocol("uni100")
    drawn = P.draw_negatives(ml100k, ml100k_split, protocol)
    again = P.draw_negatives(ml100k, ml100k_split, protocol)
    assert np.array_equal(drawn.items, again.items) and np.array_equal(drawn.indptr, again.indptr)
    other_seed = P.draw_negatives(ml100k, make_split(ml100k, "random", 1), protocol)
    assert not np.array_equal(other_seed.items[:500], drawn.items[:500])

    seen = seen_sets(ml100k)
    test = {}
    for u, i in zip(ml100k.user[ml100k_split.test], ml100k.item[ml100k_split.test]):
        test.setdefault(int(u), set()).add(int(i))
    assert drawn.users.tolist() == sorted(test)
    capped = 0
    for j, u in enumerate(drawn.users.tolist()):
        row = drawn.items[drawn.indptr[j]:drawn.indptr[j + 1]]
        assert np.all(np.diff(row) > 0)  # sorted by item id, no duplicates: ties never favour positives
        negatives = set(row.tolist()) - test[u]
        assert not negatives & seen[u]  # never an item the user interacted with, anywhere
        assert test[u] <= set(row.tolist())
        available = ml100k.n_items - len(seen[u])
        assert len(negatives) == min(100 * len(test[u]), available) == drawn.n_negatives[j]
        capped += 100 * len(test[u]) > available
    assert 0 < capped < len(drawn.users)  # heavy users get every unseen item, the rest exactly 100 per test item


def test_popularity_negatives_follow_training_popularity(ml100k, ml100k_split):
    popularity = np.bincount(ml100k.item[ml100k_split.train], minlength=ml100k.n_items)
    test_items = set(map(int, ml100k.item[ml100k_split.test]))

    def negative_popularity(protocol: str) -> tuple[float, int]:
        drawn = P.draw_negatives(ml100k, ml100k_split, P.parse_protocol(protocol, negatives_per="user"))
        negatives = []
        for j, u in enumerate(drawn.users):
            row = drawn.items[drawn.indptr[j]:drawn.indptr[j + 1]]
            user_test = set(map(int, ml100k.item[ml100k_split.test][ml100k.user[ml100k_split.test] == u]))
            negatives += [i for i in row.tolist() if i not in user_test]
        assert set(drawn.n_negatives.tolist()) == {50}  # Elliot-style: N per user, whatever |T|
        return float(popularity[negatives].mean()), int((popularity[negatives] == 0).sum())

    uniform_mean, _ = negative_popularity("uni50")
    pop_mean, never_trained = negative_popularity("pop50")
    assert pop_mean > 2 * uniform_mean
    assert never_trained == 0
    assert test_items  # (the split has test items at all)


def test_negatives_are_drawn_once_then_read_back(ml100k, ml100k_split, tmp_path):
    protocol = P.parse_protocol("uni10")
    first = P.stored_negatives(ml100k, ml100k_split, protocol, Segment("all"), tmp_path)
    (path,) = tmp_path.glob(f"{ml100k_split.fingerprint}-seed{ml100k_split.seed}-uni10-catalogue.npz")
    with np.load(path) as stored:
        assert np.array_equal(stored["items"], first.items)
        tampered = {name: stored[name] for name in stored.files}
    tampered["items"] = tampered["items"][::-1].copy()  # a later model must rank what is stored, not a new draw
    np.savez(path, **tampered)
    again = P.stored_negatives(ml100k, ml100k_split, protocol, Segment("all"), tmp_path)
    assert np.array_equal(again.items, tampered["items"])


def test_matrix_pads_and_mask_and_rank_never_returns_padding():
    negatives = P.Negatives(users=np.array([2, 5, 9]), indptr=np.array([0, 3, 5, 9]),
                            items=np.array([1, 4, 7, 0, 2, 3, 5, 6, 8]), n_negatives=np.array([2, 1, 3]))
    matrix = negatives.matrix(np.array([5, 9]))
    assert matrix.tolist() == [[0, 2, -1, -1], [3, 5, 6, 8]]
    rng = np.random.default_rng(0)
    scores = rng.random((2, 10))
    scores[0, 9] = 5.0  # item 9 scores best for user 5 but is not a candidate
    items, vals = mask_and_rank(scores, 2, candidates=matrix)
    for row, cand in enumerate(([0, 2], [3, 5, 6, 8])):
        expected = sorted(cand, key=lambda i: -scores[row, i])[:2]
        assert items[row].tolist() == expected
    with pytest.raises(ConfigError, match="other users"):
        negatives.matrix(np.array([3]))


def test_segment_candidates_drop_excluded_items_and_guard_k(ml100k, ml100k_split):
    protocol = P.parse_protocol("uni5")
    users = np.unique(ml100k.user[ml100k_split.test])[:40]
    train = sp.csr_matrix((np.ones(len(ml100k_split.train)), (ml100k.user[ml100k_split.train],
                                                               ml100k.item[ml100k_split.train])),
                          shape=(ml100k.n_users, ml100k.n_items))
    # pretend the first test item of every user was also a training item: it must leave the candidate row
    first_test = {int(u): int(ml100k.item[ml100k_split.test][ml100k.user[ml100k_split.test] == u].min())
                  for u in users}
    exclude = train[users].tolil()
    for r, u in enumerate(users):
        exclude[r, first_test[int(u)]] = 1
    cand = P.segment_candidates(ml100k, ml100k_split, Segment("all"), users, exclude.tocsr(), protocol, 5)
    for r, u in enumerate(users):
        row = cand[r][cand[r] >= 0]
        assert first_test[int(u)] not in row and np.all(np.diff(row) > 0)
    with pytest.raises(ConfigError, match="fewer than k=200"):
        P.segment_candidates(ml100k, ml100k_split, Segment("all"), users, None, protocol, 200)
    assert P.segment_candidates(ml100k, ml100k_split, Segment("all"), users, None, P.parse_protocol("full"),
                                10) is None


def suite(evaluation: dict) -> dict:
    # cells run in this process: a forked child can deadlock on thread-pool locks (OpenMP, numba) that
    # earlier tests of the same pytest process left behind; isolation itself is tested elsewhere
    return {"name": "t", "seeds": [0], "evaluation": {"bootstrap": 20, **evaluation},
            "execution": {"isolation": "none"},
            "datasets": [{"name": "synthetic", "params": {"n_users": 150, "n_items": 200, "n_interactions": 4000,
                                                         "seed": 0}}],
            "splits": [{"kind": "random"}],
            "models": [{"name": "pop"}, {"name": "als", "params": {"factors": 8, "iterations": 3}}]}


def test_suite_syntax_and_errors():
    config = parse_suite(suite({"k": [5, 10], "protocol": "uni100",
                                "metrics": ["ndcg", "map@10[denominator=test]", "ndcg[discount=lenskit]"]}), "s.toml")
    assert config.evaluation.protocol == "uni100"
    with pytest.raises(ConfigError, match=r"s.toml: evaluation.metrics: unknown variant .*valid: map, "):
        parse_suite(suite({"metrics": ["map[denominator=everything]"]}), "s.toml")
    with pytest.raises(ConfigError, match="add 50 to evaluation.k"):
        parse_suite(suite({"k": [10], "metrics": ["map@50"]}), "s.toml")
    with pytest.raises(ConfigError, match="s.toml: evaluation.protocol = 'uni' is not valid"):
        parse_suite(suite({"protocol": "uni"}), "s.toml")
    with pytest.raises(ConfigError, match="use k <= 5"):
        parse_suite(suite({"k": [10], "protocol": "uni5"}), "s.toml")


def test_protocol_is_part_of_the_cell_identity():
    from bench.runner import cell_id

    full = parse_suite(suite({}), "s")
    sampled = parse_suite(suite({"protocol": "uni100"}), "s")
    ids = {cell_id(c.datasets[0], c.splits[0], c.models[0], 0, c) for c in (full, sampled)}
    assert len(ids) == 2


def test_sampled_run_end_to_end(tmp_path):
    from bench.cli import summary_table
    from bench.data import load_dataset
    from bench.runner import run_suite

    config = parse_suite(suite({"k": [5, 10], "protocol": "uni20",
                                "metrics": ["hit_rate", "ndcg", "map@10[denominator=test]"]}), "s")
    summary = run_suite(config, out_root=tmp_path, progress=None)
    assert summary.failed == 0, summary.failures
    frame = summary.frame
    assert set(frame["protocol"]) == {"uni20"}  # on every row, accuracy and systems alike
    assert set(frame[frame["k"] > 0]["metric"]) == {"hit_rate", "ndcg", "map[denominator=test]"}
    assert set(frame[frame["metric"] == "map[denominator=test]"]["k"]) == {10}
    assert "uni20" in summary_table(frame)

    stored = list((summary.run_dir / "splits").glob("*-uni20-catalogue.npz"))
    assert len(stored) == 1
    with np.load(stored[0]) as f:
        users, indptr, row_items = f["users"], f["indptr"], f["items"]
    rows = {int(u): set(row_items[indptr[j]:indptr[j + 1]].tolist()) for j, u in enumerate(users)}
    for cell in (summary.run_dir / "cells").iterdir():  # every model ranked exactly the stored candidates
        with np.load(cell / "topk-all.npz") as topk:
            for u, listed in zip(topk["users"], topk["items"]):
                assert set(listed.tolist()) <= rows[int(u)]

    # Pop's hit rate recomputed by hand from the stored rows: rank each row by training popularity,
    # ties in the user's tie order (bench.protocol.tie_keys, salted by the seed), minus training items
    dataset = load_dataset("synthetic", None, None, n_users=150, n_items=200, n_interactions=4000, seed=0)
    split = make_split(dataset, "random", 0)
    popularity = np.bincount(dataset.item[split.train], minlength=dataset.n_items)
    trained = {(int(u), int(i)) for u, i in zip(dataset.user[split.train], dataset.item[split.train])}
    test = pd.DataFrame({"u": dataset.user[split.test], "i": dataset.item[split.test]}).groupby("u")["i"].agg(set)
    hit = []
    for u, row in rows.items():
        ranked = sorted((i for i in row if (u, i) not in trained),
                        key=lambda i: (-popularity[i], int(tie_keys(0, np.array(u), np.array(i)))))[:5]
        hit.append(bool(set(ranked) & test[u]))
    pop_hit = frame[(frame["model"] == "pop") & (frame["metric"] == "hit_rate") & (frame["k"] == 5)]["value"]
    assert pop_hit.iloc[0] == pytest.approx(np.mean(hit))
