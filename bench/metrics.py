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
revenue@k       sum_{r<=k} hit(r) * value(item at r)   (needs item values, e.g. a price column)
revenue_share@k revenue@k / sum of value(i) over T     (share of the user's test value recovered)
==============  =============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

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
    item_value: np.ndarray | None = None  # float [n_items] price / value per item (revenue metrics), or None
    relevant_value: np.ndarray | None = None  # float [n_users] summed value of each user's test items
    # intermediate arrays shared by several metrics (hit counts, precision curves...), filled on first use
    cache: dict[Any, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_users(self) -> int:
        return self.items.shape[0]

    def shared(self, key: Any, make: Callable[[], np.ndarray]) -> np.ndarray:
        """``make()`` computed once per inputs: one scoring pass over many metrics and variants stays cheap."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


def _hit_counts(x: EvalInputs, k: int) -> np.ndarray:
    return x.shared(("hit_counts", k), lambda: np.count_nonzero(x.hits[:, :k], axis=1))


def _precision_curve(x: EvalInputs, k: int) -> np.ndarray:
    """precision@r for r = 1..k, per user [n, k]."""
    return x.shared(("precision_curve", k), lambda: np.cumsum(x.hits[:, :k], axis=1) / np.arange(1, k + 1))


@dataclass(frozen=True)
class Metric:
    """One metric: its function, direction and what it needs."""

    name: str
    fn: Callable[[EvalInputs, int], np.ndarray]  # per-user values, or a 1-element array if aggregate
    higher_is_better: bool | None  # None: descriptive, no better direction (explanation_length)
    needs: str = "topk"  # "topk", "popularity", "categories", "explanations" (written by the runner, bench.explanations)
    per_user: bool = True
    description: str = ""
    variant_of: str = ""  # for a named variant such as "map[denominator=test]": its base metric, "map"


def _register(name: str, higher_is_better: bool, needs: str = "topk", per_user: bool = True, doc: str = ""):
    def add(fn: Callable[[EvalInputs, int], np.ndarray]) -> Callable[[EvalInputs, int], np.ndarray]:
        registry.metrics.register(name, Metric(name, fn, higher_is_better, needs, per_user, doc))
        return fn

    return add


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


@_register("precision", True, doc="hits in top-k / k")
def precision(x: EvalInputs, k: int) -> np.ndarray:
    return _hit_counts(x, k) / k


@_register("recall", True, doc="hits in top-k / |test items|")
def recall(x: EvalInputs, k: int) -> np.ndarray:
    return _hit_counts(x, k) / x.n_relevant


@_register("ndcg", True, doc="binary-gain NDCG, discount 1/log2(rank+1)")
def ndcg(x: EvalInputs, k: int) -> np.ndarray:
    disc = _discounts(k)
    dcg = x.hits[:, :k] @ disc
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.minimum(x.n_relevant, k)]
    return dcg / idcg


@_register("map", True, doc="average precision at k over min(k, |test|)")
def average_precision(x: EvalInputs, k: int) -> np.ndarray:
    summed, _ = _precision_at_hits(x, k)
    return summed / np.minimum(x.n_relevant, k)


@_register("mrr", True, doc="reciprocal rank of the first hit within k")
def reciprocal_rank(x: EvalInputs, k: int) -> np.ndarray:
    hits = x.hits[:, :k]
    first = hits.argmax(1)
    return np.where(hits.any(1), 1.0 / (first + 1), 0.0)


@_register("hit_rate", True, doc="1 if any test item is in the top-k")
def hit_rate(x: EvalInputs, k: int) -> np.ndarray:
    return (_hit_counts(x, k) > 0).astype(np.float64)


@_register("coverage", True, per_user=False, doc="share of candidate items in anyone's top-k")
def coverage(x: EvalInputs, k: int) -> np.ndarray:
    listed = x.items[:, :k].ravel()
    distinct = np.count_nonzero(np.bincount(listed[listed >= 0])) if listed.size else 0
    return np.array([distinct / max(1, x.n_candidates)])


@_register("novelty", True, needs="popularity", doc="mean self-information of listed items")
def novelty(x: EvalInputs, k: int) -> np.ndarray:
    information = x.shared("self_information", lambda: -np.log2((x.item_popularity + 1.0) / (x.n_train_users + 1.0)))
    return information[x.items[:, :k]].mean(1)


@_register("arp", False, needs="popularity", doc="average training popularity of listed items")
def average_popularity(x: EvalInputs, k: int) -> np.ndarray:
    return x.item_popularity[x.items[:, :k]].mean(1).astype(np.float64)


_unit_vectors_of: list[tuple[sp.csr_matrix, np.ndarray]] = []  # (matrix, its unit rows): the last one seen


def _unit_category_vectors(categories: sp.csr_matrix) -> np.ndarray:
    """Dense L2-normalised category rows, remembered for the matrix last asked about.

    Every segment and cell of a dataset shares one category matrix, so the dense
    copy is made once, not once per scoring pass (identity check: never stale).
    """
    if _unit_vectors_of and _unit_vectors_of[0][0] is categories:
        return _unit_vectors_of[0][1]
    cats = categories.toarray().astype(np.float64)
    norms = np.linalg.norm(cats, axis=1, keepdims=True)
    unit = np.divide(cats, norms, out=np.zeros_like(cats), where=norms > 0)
    _unit_vectors_of[:] = [(categories, unit)]
    return unit


@_register("ild", True, needs="categories", doc="mean pairwise (1 - cosine) of category vectors")
def intra_list_diversity(x: EvalInputs, k: int) -> np.ndarray:
    if k < 2:
        return np.zeros(x.n_users)
    assert x.item_categories is not None

    unit = x.shared("unit_categories", lambda: _unit_category_vectors(x.item_categories))
    self_similarity = x.shared("unit_norms", lambda: (unit * unit).sum(1))  # 1, or 0 without categories
    # sum_i v_i over each list as one sparse (lists x items) product: no [n, k, c] temporary;
    # then sum_{i != j} v_i.v_j = |sum_i v_i|^2 - sum_i |v_i|^2
    listed = x.items[:, :k]
    membership = sp.csr_matrix((np.ones(listed.size), listed.ravel(), np.arange(0, listed.size + 1, k)),
                               shape=(x.n_users, unit.shape[0]))
    summed = membership @ unit
    total = np.einsum("ij,ij->i", summed, summed) - self_similarity[listed].sum(1)  # off-diagonal similarity
    return 1.0 - total / (k * (k - 1))


def _listed_value(x: EvalInputs, k: int) -> np.ndarray:
    assert x.item_value is not None
    listed = x.items[:, :k]
    return np.where(x.hits[:, :k], x.item_value[np.maximum(listed, 0)], 0.0).sum(1)


@_register("revenue", True, needs="value", doc="summed item value (e.g. price) of the hits in the top-k")
def revenue(x: EvalInputs, k: int) -> np.ndarray:
    return _listed_value(x, k)


@_register("revenue_share", True, needs="value", doc="revenue@k / the summed value of the user's test items")
def revenue_share(x: EvalInputs, k: int) -> np.ndarray:
    assert x.relevant_value is not None
    return np.divide(_listed_value(x, k), x.relevant_value, out=np.zeros(x.n_users), where=x.relevant_value > 0)


VALUE_METRICS = ("revenue", "revenue_share")  # scored by default when the dataset has item values


# -- order probes ------------------------------------------------------------------
# Not a function of one top-k list: they compare the model's lists for the same candidates presented in
# several orders, so bench.retrieved computes them (evaluation.order_probes). Registered here all the same:
# one record with the direction the gate and the report read, and `bench list metrics` shows them.

def _needs_order_probes(x: EvalInputs, k: int) -> np.ndarray:
    raise ConfigError("order metrics compare several lists of the same candidates; they are computed by "
                      "evaluation.order_probes (protocol \"retrieved\"), not listed in evaluation.metrics")


ORDER_PROBES = "order_probes"  # the `needs` of metrics computed by bench.retrieved's order probes
_register("order_ndcg_spread", False, needs=ORDER_PROBES,
          doc="max - min of ndcg@k over the candidate orders probed (retriever's, reversed, shuffled); "
              "0 = the order does not matter")(_needs_order_probes)
_register("order_kendall_tau", True, needs=ORDER_PROBES,
          doc="mean Kendall tau-b between the model's rankings of the same candidates in each pair of "
              "probed orders; 1 = identical rankings")(_needs_order_probes)


def relevant_value(query_users: np.ndarray, test_users: np.ndarray, test_items: np.ndarray,
                   item_value: np.ndarray, n_items: int) -> np.ndarray:
    """Summed value of each query user's distinct test items (the denominator of revenue_share)."""
    keys = np.unique(test_users.astype(np.int64) * n_items + test_items)
    owners, items = np.divmod(keys, n_items)
    mine = np.isin(owners, query_users)
    owners, items = owners[mine], items[mine]
    sums = np.bincount(np.searchsorted(query_users, owners), weights=item_value[items], minlength=len(query_users))
    return sums[:len(query_users)]


# -- named variants ------------------------------------------------------------
# Frameworks disagree on denominators and discounts; each variant reproduces one
# of them exactly (docs/metrics.md has the table with formulas and sources). A
# variant is a metric record of its own, named "base[key=value]", so it is chosen
# in a suite file by name and lands in the results under that name. The base name
# ("map") is always the documented default; its explicit spelling is an alias.

def _register_variant(base: str, variant: str, fn: Callable[[EvalInputs, int], np.ndarray], doc: str) -> None:
    parent = registry.metrics.get(base)
    name = f"{base}[{variant}]"
    registry.metrics.register(name, Metric(name, fn, parent.higher_is_better, parent.needs, parent.per_user, doc,
                                           variant_of=base))


def recall_min_denominator(x: EvalInputs, k: int) -> np.ndarray:
    return _hit_counts(x, k) / np.minimum(x.n_relevant, k)


def _lenskit_discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.maximum(np.arange(1, k + 1), 2))


def ndcg_lenskit(x: EvalInputs, k: int) -> np.ndarray:
    disc = _lenskit_discounts(k)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    return (x.hits[:, :k] @ disc) / ideal_cum[np.minimum(x.n_relevant, k)]


def _precision_at_hits(x: EvalInputs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum over hit ranks r <= k of precision@r, and the hit count: the two parts of every AP."""
    summed = x.shared(("precision_at_hits", k), lambda: np.where(x.hits[:, :k], _precision_curve(x, k), 0.0).sum(1))
    return summed, _hit_counts(x, k)


def map_test_denominator(x: EvalInputs, k: int) -> np.ndarray:
    summed, _ = _precision_at_hits(x, k)
    return summed / x.n_relevant


def map_hits_denominator(x: EvalInputs, k: int) -> np.ndarray:
    summed, n_hits = _precision_at_hits(x, k)
    return np.divide(summed, n_hits, out=np.zeros(len(summed)), where=n_hits > 0)


def map_all_ranks(x: EvalInputs, k: int) -> np.ndarray:
    return _precision_curve(x, k).mean(1)


_register_variant("recall", "denominator=test", recall, "hits in top-k / |test| (the default; RecBole, ranx, "
                  "MS Recommenders, Cornac, Elliot)")
_register_variant("recall", "denominator=min", recall_min_denominator, "hits in top-k / min(k, |test|) (LensKit)")
_register_variant("ndcg", "discount=log2", ndcg, "discount 1/log2(rank+1) (the default; RecBole, ranx, "
                  "MS Recommenders, Cornac, Elliot)")
_register_variant("ndcg", "discount=lenskit", ndcg_lenskit, "discount 1/log2(max(rank, 2)) (LensKit)")
_register_variant("map", "denominator=min", average_precision, "AP@k over min(k, |test|) (the default; RecBole, "
                  "LensKit, MS Recommenders map_at_k)")
_register_variant("map", "denominator=test", map_test_denominator, "AP@k over |test| (ranx, MS Recommenders map)")
_register_variant("map", "denominator=hits", map_hits_denominator, "AP over the hits in the list (Cornac; equals "
                  "uncut AP when the list ranks every candidate)")
_register_variant("map", "average=all_ranks", map_all_ranks, "mean of precision@1..k (Elliot's MAP code)")


def metric_variants(base: str) -> list[str]:
    """Every name ``base`` can be asked for: the default, then its named variants."""
    return [base] + [n for n in registry.metrics.names()
                     if isinstance(m := registry.metrics.get(n), Metric) and m.variant_of == base]


def parse_metric_entry(entry: str) -> tuple[str, int | None]:
    """Split a suite entry ``"map@10[denominator=test]"`` (or ``"map[denominator=test]@10"``, ``"ndcg"``)
    into the registered metric name and its own cut-off (None = every ``evaluation.k``).

    Unknown bases or variants raise a ConfigError that lists what exists.
    """
    text = entry.strip()
    variant = ""
    k: int | None = None
    if "[" in text:
        head, _, rest = text.partition("[")
        variant, closing, tail = rest.partition("]")
        if not closing or (tail and not tail.startswith("@")):
            raise ConfigError(f"metric '{entry}' is malformed; write name[@k][key=value], e.g. 'map@10[denominator=test]'")
        text = head + tail
    if "@" in text:
        text, _, k_text = text.partition("@")
        if not k_text.isdigit() or int(k_text) < 1:
            raise ConfigError(f"metric '{entry}': the cut-off after '@' must be an integer >= 1")
        k = int(k_text)
    base = text.strip()
    if base not in registry.metrics:
        from bench.registry import suggest

        bases = [n for n in registry.metrics.names() if "[" not in n]
        raise ConfigError(f"unknown metric '{base}' in '{entry}'; {suggest(base, bases)}available: {', '.join(bases)}")
    if not variant:
        return base, k
    name = f"{base}[{variant.strip().replace(' ', '')}]"
    if name not in registry.metrics:
        valid = metric_variants(base)
        if len(valid) == 1:
            raise ConfigError(f"metric '{base}' has no named variants (asked for '{entry}'); use '{base}'")
        raise ConfigError(f"unknown variant '[{variant}]' of metric '{base}' in '{entry}'; valid: {', '.join(valid)} "
                          f"(see docs/metrics.md)")
    return name, k


def metric_columns(entries: list[str], ks: list[int]) -> list[tuple[str, int]]:
    """The (metric, k) columns a list of suite entries asks for, in order, without duplicates."""
    columns: list[tuple[str, int]] = []
    for entry in entries:
        name, own_k = parse_metric_entry(entry)
        for k in ([own_k] if own_k is not None else ks):
            if (name, k) not in columns:
                columns.append((name, k))
    return columns


DEFAULT_METRICS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "coverage", "novelty", "arp", "ild")


def get_metric(name: str) -> Metric:
    metric = registry.metrics.get(name)
    if not isinstance(metric, Metric):
        raise ConfigError(f"metric '{name}' is registered but is not a bench.metrics.Metric")
    return metric


DENSE_LOOKUP_MAX_KEYS = 1 << 26  # hit_matrix builds a boolean lookup table of at most 64 MB


def hit_matrix(items: np.ndarray, query_users: np.ndarray, test_users: np.ndarray, test_items: np.ndarray,
               n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hits [n, K] of ``items`` against test pairs, and |T| per query user.

    ``query_users`` must be the sorted unique users of the test pairs;
    ``items[i]`` is the list of ``query_users[i]``. Vectorised through int64 pair
    keys; negative (padding) item ids never hit.
    """
    # sort + dedupe + binary search: several times faster than np.unique / np.isin at this size
    pair_keys = np.sort(test_users.astype(np.int64) * n_items + test_items)
    if len(pair_keys) > 1:
        pair_keys = pair_keys[np.concatenate([[True], pair_keys[1:] != pair_keys[:-1]])]
    list_keys = query_users.astype(np.int64)[:, None] * n_items + items
    if len(pair_keys) == 0:
        return np.zeros(items.shape, dtype=bool), np.zeros(len(query_users), dtype=np.int64)
    if pair_keys[-1] - pair_keys[0] < DENSE_LOOKUP_MAX_KEYS:
        # a boolean table over the key range: a gather per listed item, ~3x faster than a binary search
        hits = np.isin(list_keys, pair_keys, kind="table") & (items >= 0)
    else:  # huge users x items ranges: binary search in the sorted keys, memory O(test pairs)
        found = pair_keys[np.minimum(np.searchsorted(pair_keys, list_keys), len(pair_keys) - 1)]
        hits = (found == list_keys) & (items >= 0)
    owners = pair_keys // n_items
    n_relevant = np.searchsorted(owners, query_users, side="right") - np.searchsorted(owners, query_users)
    return hits, n_relevant


@dataclass
class MetricTable:
    """Per-user values for every (metric, k) column, plus aggregate-only metrics."""

    columns: list[tuple[str, int]]
    per_user: np.ndarray  # float64 [n_users, n_columns] (NaN for aggregate-only columns)
    aggregate: dict[tuple[str, int], float]  # value for non-per-user metrics


def compute(inputs: EvalInputs, metric_names: list[str], ks: list[int]) -> MetricTable:
    """Score every metric at every k; per-user values kept.

    ``metric_names`` are suite entries: a name, a named variant (``"map[denominator=test]"``)
    and an optional own cut-off (``"map@10[denominator=test]"``, scored at that k only).
    """
    K = inputs.items.shape[1]
    wanted = metric_columns(metric_names, ks)
    bad = sorted({k for k in ks + [k for _, k in wanted] if k < 1 or k > K})
    if bad:
        raise ConfigError(f"cut-offs {bad} exceed the {K} items requested per user")
    columns: list[tuple[str, int]] = []
    values: list[np.ndarray] = []
    aggregate: dict[tuple[str, int], float] = {}
    for name, k in wanted:
        metric = get_metric(name)
        if metric.needs == "pairs":
            raise ConfigError(f"metric '{name}' scores labelled (user, item) pairs, not ranked lists; "
                              f"use it with [evaluation] protocol = \"pointwise\" (see docs/metrics.md)")
        if metric.needs == "categories" and (inputs.item_categories is None or inputs.item_categories.shape[1] == 0):
            continue  # the dataset has no categories: the metric is undefined, not zero
        if metric.needs == "value" and (inputs.item_value is None or inputs.relevant_value is None):
            continue  # no item values (no price column): revenue is undefined, not zero
        if metric.needs == "explanations":
            continue  # not from top-k lists: the runner scores a model's reasons (bench.explanations)
        if metric.needs == ORDER_PROBES:
            continue  # not a function of one list: bench.retrieved's order probes compute it (the config refuses it)
        out = metric.fn(inputs, k)
        columns.append((name, k))
        if metric.per_user:
            values.append(np.asarray(out, dtype=np.float64))
        else:
            aggregate[(name, k)] = float(out[0])
            values.append(np.full(inputs.n_users, np.nan))
    per_user = np.column_stack(values) if values else np.zeros((inputs.n_users, 0))
    return MetricTable(columns, per_user, aggregate)


# Scored from a model's reasons, not from top-k lists; registered here so `bench list metrics` shows them.
for _name, _record in (("explanation_grounding", "GROUNDING"), ("explanation_history_grounding", "HISTORY_GROUNDING"),
                       ("explanation_hallucination", "HALLUCINATION"), ("explanation_length", "LENGTH")):
    registry.metrics.add_lazy(_name, f"bench.explanations:{_record}")
# -- pointwise (CTR-style) metrics ---------------------------------------------------
# Under ``[evaluation] protocol = "pointwise"`` (bench.pointwise) a model scores labelled (user, item)
# pairs instead of ranking a catalogue, and these three metrics read the labels and scores of every pair.
# They have no cut-off: their rows carry k = 0 and ``needs = "pairs"`` keeps them out of ranking runs.

PAIR_METRICS = ("auc", "gauc", "logloss")


@dataclass
class PairInputs:
    """The scored test pairs of one segment: row j is (users[j], items[j]) with its 0/1 label and score."""

    users: np.ndarray  # int [n_pairs]
    labels: np.ndarray  # int8 [n_pairs], 1 = liked (value >= the protocol's threshold)
    scores: np.ndarray  # float64 [n_pairs], higher = more likely liked
    calibrated: bool = False  # scores are probabilities P(label = 1) (Capabilities.calibrated)


def binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney rank sum; tied scores share their mean rank (count 1/2).

    NaN when the labels hold one class only (the AUC is undefined, not 0.5).
    """
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (scipy.stats.rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [len(values)]]) - 1
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def group_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int, int]:
    """GAUC: each user's AUC over their own pairs, weighted by their number of pairs.

    Users whose pairs hold one class only have no AUC and are skipped (as in DIN's and most CTR code).
    Returns (gauc, users counted, users skipped); gauc is NaN when every user is skipped.
    """
    users = np.asarray(users)
    order = np.argsort(users, kind="stable")
    users, labels, scores = users[order], np.asarray(labels)[order], np.asarray(scores)[order]
    bounds = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1], [True]]))
    total = weight = 0.0
    counted = skipped = 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        auc = binary_auc(labels[lo:hi], scores[lo:hi])
        if np.isnan(auc):
            skipped += 1
            continue
        counted += 1
        total += auc * (hi - lo)
        weight += hi - lo
    return (total / weight if weight else float("nan")), counted, skipped


LOGLOSS_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps], so a confident mistake costs ~34.5, not inf


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy -[y log p + (1 - y) log(1 - p)] of probabilities P(label = 1)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    y = np.asarray(labels).astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _pair_metric(name: str, higher_is_better: bool, doc: str):
    def add(fn: Callable[[PairInputs, int], np.ndarray]) -> Callable[[PairInputs, int], np.ndarray]:
        registry.metrics.register(name, Metric(name, fn, higher_is_better, "pairs", False, doc))  # type: ignore[arg-type]
        return fn

    return add


@_pair_metric("auc", True, "pointwise protocol: ROC AUC over every labelled test pair (ties count 1/2)")
def auc_metric(x: PairInputs, k: int = 0) -> np.ndarray:
    return np.array([binary_auc(x.labels, x.scores)])


@_pair_metric("gauc", True, "pointwise protocol: per-user AUC weighted by the user's pairs; one-class users "
                            "skipped (counted in the row gauc_users_skipped)")
def gauc_metric(x: PairInputs, k: int = 0) -> np.ndarray:
    return np.array([group_auc(x.users, x.labels, x.scores)[0]])


@_pair_metric("logloss", False, "pointwise protocol: mean binary cross-entropy of P(liked); only for models "
                                "declaring calibrated probabilities, 'unsupported' otherwise")
def logloss_metric(x: PairInputs, k: int = 0) -> np.ndarray:
    if not x.calibrated:
        raise ValueError("logloss needs calibrated probabilities (Capabilities.calibrated)")
    return np.array([log_loss(x.labels, x.scores)])
