"""Metrics against hand-worked cases and against ranx (an independent library, tests only)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats

from bench import metrics as M
from bench.stats import bootstrap_ci, paired_bootstrap_pvalue

ALL = list(M.DEFAULT_METRICS)


def inputs(items, test_pairs, n_items=10, popularity=None, categories=None, n_train_users=4):
    items = np.asarray(items)
    users = np.arange(items.shape[0])
    tu = np.array([u for u, _ in test_pairs])
    ti = np.array([i for _, i in test_pairs])
    hits, n_rel = M.hit_matrix(items, users, tu, ti, n_items)
    pop = np.zeros(n_items, dtype=np.int64) if popularity is None else np.asarray(popularity)
    return M.EvalInputs(items=items, hits=hits, n_relevant=n_rel, n_candidates=n_items, item_popularity=pop,
                        n_train_users=n_train_users, item_categories=categories)


def value(table, name, k):
    j = table.columns.index((name, k))
    return table.aggregate.get((name, k), table.per_user[:, j])


def test_hand_worked_ranking_metrics():
    # user 0: list [3, 1, 7], relevant {1, 7, 9}; user 1: list [2, 4, 5], relevant {6}
    x = inputs([[3, 1, 7], [2, 4, 5]], [(0, 1), (0, 7), (0, 9), (1, 6)])
    t = M.compute(x, ["precision", "recall", "ndcg", "map", "mrr", "hit_rate"], [1, 3])
    assert np.allclose(value(t, "precision", 3), [2 / 3, 0])
    assert np.allclose(value(t, "precision", 1), [0, 0])
    assert np.allclose(value(t, "recall", 3), [2 / 3, 0])
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert np.allclose(value(t, "ndcg", 3), [dcg / idcg, 0])
    # AP@3 = (P@2 * 1 + P@3 * 1) / min(3, 3) = (1/2 + 2/3) / 3
    assert np.allclose(value(t, "map", 3), [(1 / 2 + 2 / 3) / 3, 0])
    assert np.allclose(value(t, "mrr", 3), [1 / 2, 0])
    assert np.allclose(value(t, "hit_rate", 3), [1, 0])


def test_hand_worked_beyond_accuracy():
    popularity = np.array([4, 3, 2, 1, 0, 0])
    categories = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1], [1, 1], [0, 0], [0, 1]], dtype=np.float32))
    x = inputs([[0, 1, 2], [0, 3, 5]], [(0, 2), (1, 4)], n_items=6, popularity=popularity,
               categories=categories, n_train_users=4)
    t = M.compute(x, ["coverage", "novelty", "arp", "ild"], [2, 3])
    assert value(t, "coverage", 2) == pytest.approx(3 / 6)  # {0, 1, 3}
    assert value(t, "coverage", 3) == pytest.approx(5 / 6)  # {0, 1, 2, 3, 5}
    assert np.allclose(value(t, "arp", 3), [(4 + 3 + 2) / 3, (4 + 1 + 0) / 3])
    info = lambda p: -math.log2((p + 1) / 5)  # noqa: E731
    assert np.allclose(value(t, "novelty", 2), [(info(4) + info(3)) / 2, (info(4) + info(1)) / 2])
    # ILD user 0 @3: cos(0,1)=1, cos(0,2)=0, cos(1,2)=0 -> mean distance (0+1+1)/3
    # user 1 @3: cos(0,3)=1/sqrt2, cos(0,5)=0, cos(3,5)=1/sqrt2 -> distances 1-0.7071, 1, 1-0.7071
    s = 1 / math.sqrt(2)
    assert np.allclose(value(t, "ild", 3), [2 / 3, ((1 - s) * 2 + 1) / 3])


def test_category_metric_is_absent_not_zero_without_categories():
    x = inputs([[0, 1]], [(0, 1)], n_items=3, categories=sp.csr_matrix((3, 0)))
    t = M.compute(x, ["ild", "ndcg"], [2])
    assert ("ild", 2) not in t.columns and ("ndcg", 2) in t.columns


@pytest.fixture(scope="module")
def als_lists(ml100k, als_top20):
    return (*als_top20, ml100k.n_items)


def test_matches_ranx_on_real_als_lists(als_lists):
    from ranx import Qrels, Run, evaluate

    users, items, scores, tu, ti, n_items = als_lists
    hits, n_rel = M.hit_matrix(items, users, tu, ti, n_items)
    x = M.EvalInputs(items=items, hits=hits, n_relevant=n_rel, n_candidates=n_items,
                     item_popularity=np.zeros(n_items, dtype=np.int64), n_train_users=1, item_categories=None)
    ks = [5, 10, 20]
    table = M.compute(x, ["precision", "recall", "ndcg", "map", "mrr", "hit_rate"], ks)

    qrels = {str(u): {} for u in users}
    for u, i in zip(tu, ti):
        qrels[str(u)][str(i)] = 1
    run = {str(u): {str(i): float(len(row) - r) for r, i in enumerate(row)} for u, row in zip(users, items)}
    names = [f"{m}@{k}" for m in ("precision", "recall", "ndcg", "map", "mrr", "hit_rate") for k in ks]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranx_qrels = Qrels(qrels)
        theirs = evaluate(ranx_qrels, Run(run), names, return_mean=False, make_comparable=True)
    order = {str(u): n for n, u in enumerate(users)}
    ranx_users = list(ranx_qrels.keys())  # ranx's per-query arrays follow its own query order
    for m in ("precision", "recall", "ndcg", "mrr", "hit_rate"):
        for k in ks:
            ours = value(table, m, k)[[order[u] for u in ranx_users]]
            assert np.allclose(ours, theirs[f"{m}@{k}"], atol=1e-9), f"{m}@{k}"
    # ranx's AP divides by |T|; ours by min(k, |T|) (LensKit / MS Recommenders): rescale to compare
    for k in ks:
        ours = value(table, "map", k)[[order[u] for u in ranx_users]]
        rel = n_rel[[order[u] for u in ranx_users]]
        assert np.allclose(ours * np.minimum(rel, k) / rel, theirs[f"map@{k}"], atol=1e-9)


def test_bootstrap_ci_matches_scipy():
    rng = np.random.default_rng(1)
    values = rng.exponential(size=800)
    low, high = bootstrap_ci(values[:, None], n_resamples=4000, seed=0)
    ref = scipy.stats.bootstrap((values,), np.mean, n_resamples=4000, method="percentile", random_state=0)
    assert low[0] == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert high[0] == pytest.approx(ref.confidence_interval.high, abs=0.01)
    const_low, const_high = bootstrap_ci(np.full((50, 1), 0.3))
    assert const_low[0] == pytest.approx(0.3) and const_high[0] == pytest.approx(0.3)


def test_paired_bootstrap_pvalue_separates_signal_from_noise():
    rng = np.random.default_rng(0)
    a = rng.random(500)
    assert paired_bootstrap_pvalue(a + 0.1, a) < 0.001
    noise = a + rng.normal(0, 0.01, 500)
    p = paired_bootstrap_pvalue(noise, a)
    ref = scipy.stats.ttest_rel(noise, a).pvalue
    assert abs(p - ref) < 0.1


def test_hit_matrix_lookup_table_and_binary_search_agree(als_lists, monkeypatch):
    """Small users x items ranges use a boolean table, huge ones a binary search: same hits, same |T|."""
    users, items, _scores, tu, ti, n_items = als_lists
    items = items.copy()
    items[::7, -1] = -1  # padding never hits, whatever path
    tu, ti = np.concatenate([tu, tu[:50]]), np.concatenate([ti, ti[:50]])  # duplicate test pairs count once
    table_hits, table_rel = M.hit_matrix(items, users, tu, ti, n_items)
    monkeypatch.setattr(M, "DENSE_LOOKUP_MAX_KEYS", 1)
    search_hits, search_rel = M.hit_matrix(items, users, tu, ti, n_items)
    assert table_hits.any() and not table_hits[::7, -1].any()
    assert np.array_equal(table_hits, search_hits) and np.array_equal(table_rel, search_rel)
    expected_rel = np.array([len(set(ti[tu == u])) for u in users])
    assert np.array_equal(table_rel, expected_rel)
