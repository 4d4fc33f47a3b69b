"""Ranking and beyond-accuracy metrics, one record per metric, all vectorised.

Every metric is computed per user from the same inputs (the top-K item matrix
and a boolean hit matrix), so one pass scores every metric at every k and the
per-user values are kept for confidence intervals and paired tests.

Definitions (binary relevance; rank r starts at 1; T = the user's test items;
hit(r) = the item at rank r is in T):

==============  =============================================================
precision@k     sum_{r<=k} hit(r) / k
recall@k        sum_{r<=k} hit(r) / |T|                (ranx, MS Recommenders, Cornac)
ndcg@k          DCG/IDCG, DCG = sum_{r<=k} hit(r)/log2(r+1), IDCG over min(|T|,k) hits
map@k           (1/min(k,|T|)) sum_{r<=k} hit(r) * precision@r   (LensKit, MS Recommenders)
mrr@k           1/r of the first hit within k, else 0
hit_rate@k      1 if any hit within k, else 0
coverage@k      |union of all users' top-k| / |candidate items|  (one value, no CI)
novelty@k       mean over the list of -log2((pop(i)+1)/(n_train_users+1)), pop = training users of i
arp@k           mean training popularity (user count) of the listed items (lower = less popularity bias)
ild@k           intra-list diversity: mean pairwise (1 - cosine) of the items' category vectors
==============  =============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from bench import registry
from bench.errors import ConfigError


@dataclass
class EvalInputs:
    """Everything a metric may look at, computed once per scored list set."""

    items: np.ndarray  # int [n_users, K] recommended item ids, best first
    hits: np.ndarray  # bool [n_users, K]
    n_relevant: np.ndarray  # int [n_users] |T| per user (>= 1)
    n_candidates: int  # catalogue size the lists were drawn from
    item_popularity: np.ndarray  # int [n_items] training users per item
    n_train_users: int
    item_categories: sp.csr_matrix | None  # [n_items, n_categories] or None

    @property
    def n_users(self) -> int:
        return self.items.shape[0]


@dataclass(frozen=True)
class Metric:
    """One metric: its function, direction and what it needs."""

    name: str
    fn: Callable[[EvalInputs, int], np.ndarray]  # per-user values, or a 1-element array if aggregate
    higher_is_better: bool
    needs: str = "topk"  # "topk", "popularity", "categories"
    per_user: bool = True
    description: str = ""


def _register(name: str, higher_is_better: bool, needs: str = "topk", per_user: bool = True, doc: str = ""):
    def add(fn: Callable[[EvalInputs, int], np.ndarray]) -> Callable[[EvalInputs, int], np.ndarray]:
        registry.metrics.register(name, Metric(name, fn, higher_is_better, needs, per_user, doc))
        return fn

    return add


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


@_register("precision", True, doc="hits in top-k / k")
def precision(x: EvalInputs, k: int) -> np.ndarray:
    return x.hits[:, :k].sum(1) / k


@_register("recall", True, doc="hits in top-k / |test items|")
def recall(x: EvalInputs, k: int) -> np.ndarray:
    return x.hits[:, :k].sum(1) / x.n_relevant


@_register("ndcg", True, doc="binary-gain NDCG, discount 1/log2(rank+1)")
def ndcg(x: EvalInputs, k: int) -> np.ndarray:
    disc = _discounts(k)
    dcg = x.hits[:, :k] @ disc
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.minimum(x.n_relevant, k)]
    return dcg / idcg


@_register("map", True, doc="average precision at k over min(k, |test|)")
def average_precision(x: EvalInputs, k: int) -> np.ndarray:
    hits = x.hits[:, :k]
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return (precision_at * hits).sum(1) / np.minimum(x.n_relevant, k)


@_register("mrr", True, doc="reciprocal rank of the first hit within k")
def reciprocal_rank(x: EvalInputs, k: int) -> np.ndarray:
    hits = x.hits[:, :k]
    first = hits.argmax(1)
    return np.where(hits.any(1), 1.0 / (first + 1), 0.0)


@_register("hit_rate", True, doc="1 if any test item is in the top-k")
def hit_rate(x: EvalInputs, k: int) -> np.ndarray:
    return x.hits[:, :k].any(1).astype(np.float64)


@_register("coverage", True, per_user=False, doc="share of candidate items in anyone's top-k")
def coverage(x: EvalInputs, k: int) -> np.ndarray:
    return np.array([np.unique(x.items[:, :k]).size / max(1, x.n_candidates)])


@_register("novelty", True, needs="popularity", doc="mean self-information of listed items")
def novelty(x: EvalInputs, k: int) -> np.ndarray:
    p = (x.item_popularity[x.items[:, :k]] + 1.0) / (x.n_train_users + 1.0)
    return (-np.log2(p)).mean(1)


@_register("arp", False, needs="popularity", doc="average training popularity of listed items")
def average_popularity(x: EvalInputs, k: int) -> np.ndarray:
    return x.item_popularity[x.items[:, :k]].mean(1).astype(np.float64)


@_register("ild", True, needs="categories", doc="mean pairwise (1 - cosine) of category vectors")
def intra_list_diversity(x: EvalInputs, k: int) -> np.ndarray:
    if k < 2:
        return np.zeros(x.n_users)
    assert x.item_categories is not None
    cats = x.item_categories.toarray().astype(np.float64)
    norms = np.linalg.norm(cats, axis=1, keepdims=True)
    unit = np.divide(cats, norms, out=np.zeros_like(cats), where=norms > 0)
    vectors = unit[x.items[:, :k]]  # [n, k, c]
    summed = vectors.sum(1)  # sum_i v_i; sum_{i,j} v_i.v_j = |sum|^2
    total = (summed * summed).sum(1) - (vectors * vectors).sum((1, 2))  # off-diagonal similarity
    return 1.0 - total / (k * (k - 1))


DEFAULT_METRICS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "coverage", "novelty", "arp", "ild")


def get_metric(name: str) -> Metric:
    metric = registry.metrics.get(name)
    if not isinstance(metric, Metric):
        raise ConfigError(f"metric '{name}' is registered but is not a bench.metrics.Metric")
    return metric


def hit_matrix(items: np.ndarray, query_users: np.ndarray, test_users: np.ndarray, test_items: np.ndarray,
               n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hits [n, K] of ``items`` against test pairs, and |T| per query user.

    ``query_users`` must be the sorted unique users of the test pairs;
    ``items[i]`` is the list of ``query_users[i]``. Vectorised through int64 pair
    keys; negative (padding) item ids never hit.
    """
    pair_keys = np.unique(test_users.astype(np.int64) * n_items + test_items)
    list_keys = query_users.astype(np.int64)[:, None] * n_items + items
    hits = np.isin(list_keys, pair_keys) & (items >= 0)
    owner = np.searchsorted(query_users, pair_keys // n_items)
    n_relevant = np.bincount(owner, minlength=len(query_users))
    return hits, n_relevant


@dataclass
class MetricTable:
    """Per-user values for every (metric, k) column, plus aggregate-only metrics."""

    columns: list[tuple[str, int]]
    per_user: np.ndarray  # float64 [n_users, n_columns] (NaN for aggregate-only columns)
    aggregate: dict[tuple[str, int], float]  # value for non-per-user metrics


def compute(inputs: EvalInputs, metric_names: list[str], ks: list[int]) -> MetricTable:
    """Score every metric at every k; per-user values kept."""
    K = inputs.items.shape[1]
    bad = [k for k in ks if k < 1 or k > K]
    if bad:
        raise ConfigError(f"cut-offs {bad} exceed the {K} items requested per user")
    columns: list[tuple[str, int]] = []
    values: list[np.ndarray] = []
    aggregate: dict[tuple[str, int], float] = {}
    for name in metric_names:
        metric = get_metric(name)
        if metric.needs == "categories" and (inputs.item_categories is None or inputs.item_categories.shape[1] == 0):
            continue  # the dataset has no categories: the metric is undefined, not zero
        for k in ks:
            out = metric.fn(inputs, k)
            columns.append((name, k))
            if metric.per_user:
                values.append(np.asarray(out, dtype=np.float64))
            else:
                aggregate[(name, k)] = float(out[0])
                values.append(np.full(inputs.n_users, np.nan))
    per_user = np.column_stack(values) if values else np.zeros((inputs.n_users, 0))
    return MetricTable(columns, per_user, aggregate)
