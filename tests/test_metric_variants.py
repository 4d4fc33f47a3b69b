"""Each named metric variant against the framework it claims to match, on lists from a real model.

ranx and Cornac are installed (the [dev] extra) and called directly. LensKit
(pins pandas < 3), Microsoft Recommenders (pins pandas < 3 and cornac < 3) and
RecBole / Elliot (torch + heavy stacks; Elliot is not on PyPI) cannot be installed
beside this project, so their formulas are transcribed here from their source,
loop-for-loop, with the file and function cited; bench's vectorised code is not
used to compute any reference value.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from bench import metrics as M
from bench.errors import ConfigError

KS = [5, 10, 20]
VARIANTS = ["precision", "recall", "recall[denominator=test]", "recall[denominator=min]", "ndcg",
            "ndcg[discount=log2]", "ndcg[discount=lenskit]", "map", "map[denominator=min]", "map[denominator=test]",
            "map[denominator=hits]", "map[average=all_ranks]", "mrr", "hit_rate"]


@pytest.fixture(scope="module")
def real_lists(ml100k, als_top20):
    """Top-20 lists of implicit's ALS on ml-100k (random split, training items excluded), scored by bench."""
    users, items, scores, tu, ti = als_top20
    hits, n_rel = M.hit_matrix(items, users, tu, ti, ml100k.n_items)
    x = M.EvalInputs(items=items, hits=hits, n_relevant=n_rel, n_candidates=ml100k.n_items,
                     item_popularity=np.zeros(ml100k.n_items, dtype=np.int64), n_train_users=1, item_categories=None)
    table = M.compute(x, VARIANTS, KS)
    truth = {int(u): set() for u in users}
    for u, i in zip(tu, ti):
        truth[int(u)].add(int(i))
    return users, items, scores, truth, table


def ours(table: M.MetricTable, name: str, k: int) -> np.ndarray:
    return table.per_user[:, table.columns.index((name, k))]


# -- hand-worked ----------------------------------------------------------------

def test_hand_worked_variants():
    # list [3, 1, 7, 5], relevant {1, 7, 9, 8, 6}: hits at ranks 2 and 3; |T| = 5
    items = np.array([[3, 1, 7, 5]])
    hits, n_rel = M.hit_matrix(items, np.array([0]), np.zeros(5, int), np.array([1, 7, 9, 8, 6]), 10)
    x = M.EvalInputs(items, hits, n_rel, 10, np.zeros(10, int), 1, None)
    t = M.compute(x, VARIANTS, [4])
    p2, p3 = 1 / 2, 2 / 3
    assert ours(t, "recall", 4)[0] == pytest.approx(2 / 5)
    assert ours(t, "recall[denominator=min]", 4)[0] == pytest.approx(2 / 4)
    assert ours(t, "map", 4)[0] == pytest.approx((p2 + p3) / 4)
    assert ours(t, "map[denominator=test]", 4)[0] == pytest.approx((p2 + p3) / 5)
    assert ours(t, "map[denominator=hits]", 4)[0] == pytest.approx((p2 + p3) / 2)
    assert ours(t, "map[average=all_ranks]", 4)[0] == pytest.approx((0 + 1 / 2 + 2 / 3 + 2 / 4) / 4)
    # LensKit discount: ranks 1 and 2 both weigh 1/log2(2) = 1
    lk_dcg = 1 / 1 + 1 / math.log2(3)
    lk_idcg = 1 + 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ours(t, "ndcg[discount=lenskit]", 4)[0] == pytest.approx(lk_dcg / lk_idcg)
    std = (1 / math.log2(3) + 1 / math.log2(4)) / sum(1 / math.log2(r + 1) for r in range(1, 5))
    assert ours(t, "ndcg", 4)[0] == pytest.approx(std)
    assert ours(t, "ndcg[discount=log2]", 4)[0] == pytest.approx(std)


def test_cornac_style_map_is_zero_without_hits():
    items = np.array([[0, 1]])
    hits, n_rel = M.hit_matrix(items, np.array([0]), np.array([0]), np.array([5]), 10)
    t = M.compute(M.EvalInputs(items, hits, n_rel, 10, np.zeros(10, int), 1, None), ["map[denominator=hits]"], [2])
    assert t.per_user[0, 0] == 0.0


def test_parse_metric_entries_and_errors():
    assert M.parse_metric_entry("map@10[denominator=test]") == ("map[denominator=test]", 10)
    assert M.parse_metric_entry("map[denominator=test]@10") == ("map[denominator=test]", 10)
    assert M.parse_metric_entry("ndcg[discount=lenskit]") == ("ndcg[discount=lenskit]", None)
    assert M.parse_metric_entry("recall") == ("recall", None)
    with pytest.raises(ConfigError, match=r"valid: map, .*map\[denominator=test\]"):
        M.parse_metric_entry("map[denominator=foo]")
    with pytest.raises(ConfigError, match="did you mean 'ndcg'"):
        M.parse_metric_entry("ndgc@10")
    with pytest.raises(ConfigError, match="no named variants"):
        M.parse_metric_entry("precision[denominator=min]")
    with pytest.raises(ConfigError, match="malformed"):
        M.parse_metric_entry("map[denominator=test")
    assert M.metric_columns(["map@10[denominator=test]", "ndcg", "ndcg@5"], [5, 10]) == [
        ("map[denominator=test]", 10), ("ndcg", 5), ("ndcg", 10)]


def test_every_variant_is_listed_and_the_default_is_its_base():
    assert M.metric_variants("map") == ["map", "map[average=all_ranks]", "map[denominator=hits]",
                                        "map[denominator=min]", "map[denominator=test]"]
    assert M.get_metric("map[denominator=min]").fn is M.get_metric("map").fn
    assert M.get_metric("recall[denominator=test]").fn is M.get_metric("recall").fn
    assert M.get_metric("ndcg[discount=log2]").fn is M.get_metric("ndcg").fn


# -- ranx (installed) -------------------------------------------------------------

def test_ranx(real_lists):
    from ranx import Qrels, Run, evaluate

    users, items, _scores, truth, table = real_lists
    qrels = {str(u): {str(i): 1 for i in truth[int(u)]} for u in users}
    run = {str(u): {str(i): float(len(row) - r) for r, i in enumerate(row)} for u, row in zip(users, items)}
    names = [f"{m}@{k}" for m in ("recall", "ndcg", "map") for k in KS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranx_qrels = Qrels(qrels)
        theirs = evaluate(ranx_qrels, Run(run), names, return_mean=False)
    order = {str(u): n for n, u in enumerate(users)}
    rows = [order[u] for u in ranx_qrels.keys()]
    for k in KS:
        assert np.allclose(ours(table, "recall", k)[rows], theirs[f"recall@{k}"], atol=1e-12)
        assert np.allclose(ours(table, "ndcg", k)[rows], theirs[f"ndcg@{k}"], atol=1e-12)
        assert np.allclose(ours(table, "map[denominator=test]", k)[rows], theirs[f"map@{k}"], atol=1e-12)
        assert not np.allclose(ours(table, "map", k)[rows], theirs[f"map@{k}"])  # the default really differs


# -- Cornac (installed) -----------------------------------------------------------

def test_cornac(real_lists):
    from cornac.metrics import MAP, NDCG, Recall

    users, items, _scores, truth, table = real_lists
    for k in KS:
        recall, ndcg = Recall(k=k), NDCG(k=k)
        for j, u in enumerate(users):
            gt = np.array(sorted(truth[int(u)]))
            assert ours(table, "recall", k)[j] == pytest.approx(recall.compute(gt_pos=gt, pd_rank=items[j]))
            assert ours(table, "ndcg", k)[j] == pytest.approx(ndcg.compute(gt_pos=gt, pd_rank=items[j]))
    # Cornac's MAP has no cut-off: it averages precision over the relevant items present in the items it is
    # given. Given a top-k list that is "AP over the hits in the list" (NaN when there is none; bench: 0).
    ap = MAP()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mean of an empty slice for hitless lists
        for k in KS:
            for j, u in enumerate(users):
                gt = np.array(sorted(truth[int(u)]))
                theirs = ap.compute(item_indices=items[j, :k], pd_scores=np.arange(k, 0, -1, dtype=float),
                                    gt_pos=gt)
                expected = 0.0 if np.isnan(theirs) else theirs
                assert ours(table, "map[denominator=hits]", k)[j] == pytest.approx(expected)


def test_cornac_map_on_a_complete_ranking_is_uncut_ap(real_lists):
    """Where the list ranks every candidate, map[denominator=hits] and map[denominator=test] are Cornac's MAP."""
    from cornac.metrics import MAP

    users, items, _scores, truth, _table = real_lists
    ap = MAP()
    for j in range(0, len(users), 50):
        u = int(users[j])
        missed = np.setdiff1d(sorted(truth[u]), items[j])
        ranking = np.concatenate([items[j], missed])  # a complete ranking of a pool holding every test item
        hits, n_rel = M.hit_matrix(ranking[None, :], np.array([u]), np.full(len(truth[u]), u),
                                   np.array(sorted(truth[u])), 2000)
        x = M.EvalInputs(ranking[None, :], hits, n_rel, len(ranking), np.zeros(2000, int), 1, None)
        t = M.compute(x, ["map[denominator=hits]", "map[denominator=test]"], [len(ranking)])
        theirs = ap.compute(item_indices=ranking, pd_scores=np.arange(len(ranking), 0, -1, dtype=float),
                            gt_pos=np.array(sorted(truth[u])))
        assert t.per_user[0] == pytest.approx([theirs, theirs])


# -- LensKit (source transcribed: lenskit/lkpy src/lenskit/metrics/ranking/) --------

def lenskit_recall(recs: np.ndarray, test: set[int], n: int) -> float:
    """_pr.py Recall.measure_list: ngood / nrel, nrel = len(test) capped at n."""
    recs = recs[:n]
    ngood = np.isin(recs, list(test)).sum()
    nrel = len(test)
    if n is not None and n < nrel:
        nrel = n
    return ngood / nrel


def lenskit_weight(ranks: np.ndarray) -> np.ndarray:
    """_weighting.py LogRankWeight (default: clip, base 2): 1 / max(log2(rank), 1)."""
    return 1.0 / np.maximum(np.log2(ranks), 1)


def lenskit_ndcg(recs: np.ndarray, test: set[int], n: int) -> float:
    """_dcg.py NDCG.measure_list, binary gains: _binary_dcg / fixed_dcg(min(len(test), n))."""
    recs = recs[:n]
    good = np.isin(recs, list(test))
    ranks = np.arange(1, len(recs) + 1)
    realized = lenskit_weight(ranks[good]).sum()
    ideal_n = min(len(test), n)
    return realized / lenskit_weight(np.arange(1, ideal_n + 1)).sum()


def lenskit_ap(recs: np.ndarray, test: set[int], n: int) -> float:
    """_map.py AveragePrecision.measure_list: sum(cumgood/rank at good ranks) / min(len(test), len(recs))."""
    recs = recs[:n]
    good = np.isin(recs, list(test))
    sum_good = np.cumsum(good)
    ranks = np.arange(1, len(recs) + 1)
    return np.sum(sum_good[good] / ranks[good]) / min(len(test), len(recs))


def test_lenskit(real_lists):
    users, items, _scores, truth, table = real_lists
    for k in KS:
        for j, u in enumerate(users):
            t = truth[int(u)]
            assert ours(table, "recall[denominator=min]", k)[j] == pytest.approx(lenskit_recall(items[j], t, k))
            assert ours(table, "ndcg[discount=lenskit]", k)[j] == pytest.approx(lenskit_ndcg(items[j], t, k))
            assert ours(table, "map", k)[j] == pytest.approx(lenskit_ap(items[j], t, k))
    assert not np.allclose(ours(table, "ndcg[discount=lenskit]", 10), ours(table, "ndcg", 10))


# -- Microsoft Recommenders (source transcribed: recommenders/evaluation/python_evaluation.py) --

def recommenders_frames(users, items, truth, k):
    """merge_ranking_true_pred with relevancy_method=None (lists given): df_hit (user, item, rank) and
    df_hit_count (user, hit, actual), n_users = users in both frames."""
    import pandas as pd

    pred = pd.DataFrame({"userID": np.repeat(users, k), "itemID": items[:, :k].ravel(),
                         "rank": np.tile(np.arange(1, k + 1), len(users))})
    true = pd.DataFrame([(u, i) for u in users for i in truth[int(u)]], columns=["userID", "itemID"])
    df_hit = pd.merge(pred, true, on=["userID", "itemID"])
    actual = true.groupby("userID").size().rename("actual").reset_index()
    hit = df_hit.groupby("userID").size().rename("hit").reset_index()
    df_hit_count = pd.merge(hit, actual, on="userID")
    return df_hit, df_hit_count, len(set(pred.userID) & set(true.userID)), true


def test_microsoft_recommenders(real_lists):
    import pandas as pd

    users, items, _scores, truth, table = real_lists
    for k in KS:
        df_hit, df_hit_count, n_users, true = recommenders_frames(users, items, truth, k)
        # recall_at_k: (hit / actual).sum() / n_users
        recall_at_k = (df_hit_count["hit"] / df_hit_count["actual"]).sum() / n_users
        # _get_reciprocal_rank: rr = (cumcount + 1) / rank summed per user; map_at_k divides by min(actual, k),
        # map (no cut-off in its name, but computed on the same top-k) by actual
        rr = df_hit.sort_values(["userID", "rank"]).copy()
        rr["rr"] = (rr.groupby("userID").cumcount() + 1) / rr["rank"]
        merged = pd.merge(rr.groupby("userID").agg({"rr": "sum"}).reset_index(), df_hit_count, on="userID")
        map_at_k = (merged["rr"] / merged["actual"].apply(lambda x: min(x, k))).sum() / n_users
        map_plain = (merged["rr"] / merged["actual"]).sum() / n_users
        # ndcg_at_k, binary, natural-log discount: dcg = 1/ln(1+rank) over hits; idcg over the first k true items
        dcg = (1 / np.log(1 + df_hit["rank"])).groupby(df_hit["userID"]).sum()
        idcg = true.groupby("userID").size().map(lambda n: sum(1 / np.log(1 + r) for r in range(1, min(n, k) + 1)))
        ndcg_at_k = (dcg.reindex(idcg.index, fill_value=0.0) / idcg).mean()  # ndcg_at_k's outer merge keeps misses
        assert ours(table, "recall", k).mean() == pytest.approx(recall_at_k)
        assert ours(table, "map", k).mean() == pytest.approx(map_at_k)
        assert ours(table, "map[denominator=test]", k).mean() == pytest.approx(map_plain)
        assert ours(table, "ndcg", k).mean() == pytest.approx(ndcg_at_k)


# -- RecBole (source transcribed: RUCAIBox/RecBole recbole/evaluator/metrics.py) -------

def recbole_metric_info(pos_index: np.ndarray, pos_len: np.ndarray) -> dict[str, np.ndarray]:
    """Recall / NDCG / MAP metric_info: per-user values at every cut-off (column k-1 = @k)."""
    recall = np.cumsum(pos_index, axis=1) / pos_len.reshape(-1, 1)

    len_rank = np.full_like(pos_len, pos_index.shape[1])
    idcg_len = np.where(pos_len > len_rank, len_rank, pos_len)
    iranks = np.zeros_like(pos_index, dtype=float)
    iranks[:, :] = np.arange(1, pos_index.shape[1] + 1)
    idcg = np.cumsum(1.0 / np.log2(iranks + 1), axis=1)
    for row, idx in enumerate(idcg_len):
        idcg[row, idx:] = idcg[row, idx - 1]
    ranks = np.zeros_like(pos_index, dtype=float)
    ranks[:, :] = np.arange(1, pos_index.shape[1] + 1)
    dcg = np.cumsum(np.where(pos_index, 1.0 / np.log2(ranks + 1), 0), axis=1)
    ndcg = dcg / idcg

    pre = pos_index.cumsum(axis=1) / np.arange(1, pos_index.shape[1] + 1)
    sum_pre = np.cumsum(pre * pos_index.astype(float), axis=1)
    actual_len = np.where(pos_len > len_rank, len_rank, pos_len)
    ap = np.zeros_like(pos_index, dtype=float)
    for row, lens in enumerate(actual_len):
        ranges = np.arange(1, pos_index.shape[1] + 1)
        ranges[lens:] = ranges[lens - 1]
        ap[row] = sum_pre[row] / ranges
    return {"recall": recall, "ndcg": ndcg, "map": ap}


def test_recbole(real_lists):
    users, items, _scores, truth, table = real_lists
    pos_index = np.array([[int(i) in truth[int(u)] for i in row] for u, row in zip(users, items)])
    pos_len = np.array([len(truth[int(u)]) for u in users])
    theirs = recbole_metric_info(pos_index, pos_len)
    for k in KS:
        for name in ("recall", "ndcg", "map"):
            assert np.allclose(ours(table, name, k), theirs[name][:, k - 1], atol=1e-12), f"{name}@{k}"


# -- Elliot (source transcribed: sisinflab/elliot elliot/evaluation/metrics/accuracy/) ---

def elliot_map(recs: list[int], cutoff: int, relevant: set[int]) -> float:
    """map/map.py MAP.__user_ap: np.average of __user_precision(recs[:cutoff], n+1) for n in range(cutoff)."""
    def precision(user_recs: list[int], n: int) -> float:
        return sum(1 for i in user_recs[:n] if i in relevant) / n

    return float(np.average([precision(recs[:cutoff], n + 1) for n in range(cutoff)]))


def elliot_recall(recs: list[int], cutoff: int, relevant: set[int]) -> float:
    """recall/recall.py Recall.__user_recall."""
    return sum(1 for i in recs[:cutoff] if i in relevant) / len(relevant)


def elliot_ndcg(recs: list[int], cutoff: int, relevant: set[int]) -> float:
    """ndcg/ndcg.py nDCG.compute_user_ndcg with binary gains; discount 1/log(r+2)*log(2) for 0-based r."""
    discount = lambda r: 1 / math.log(r + 2) * math.log(2)  # noqa: E731
    idcg = sum(discount(r) for r in range(min(len(relevant), cutoff)))
    dcg = sum(discount(r) for r, x in enumerate(recs) if r < cutoff and x in relevant)
    return dcg / idcg if dcg > 0 else 0


def test_elliot(real_lists):
    users, items, _scores, truth, table = real_lists
    for k in KS:
        for j, u in enumerate(users):
            recs, rel = [int(i) for i in items[j]], truth[int(u)]
            assert ours(table, "map[average=all_ranks]", k)[j] == pytest.approx(elliot_map(recs, k, rel))
            assert ours(table, "recall", k)[j] == pytest.approx(elliot_recall(recs, k, rel))
            assert ours(table, "ndcg", k)[j] == pytest.approx(elliot_ndcg(recs, k, rel))
