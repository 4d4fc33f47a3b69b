"""Two-stage evaluation on shared retrieved candidates (LlamaRec's protocol), and candidate-order probes.

``[evaluation] protocol = "retrieved"`` (or ``extra_protocols = ["retrieved"]``: the same
cells, scored a second time) with ``retriever = { name = "als", params = {...} }`` and
``n_candidates = N``:

- one retriever (any registered model) is fitted once per split and seed, on the
  split's training data, and recommends its top-N for every test user of every
  segment (excluding what full ranking excludes: a warm user's training items, a
  cold user's known history; within the segment's pool, e.g. the cold items);
- those lists, in the retriever's order, are stored beside the split in the run
  folder (``splits/<fingerprint>-seed<S>-retrievedN-<name>-<params digest>-<segment>.npz``,
  like sampled negatives) and every model of the run ranks exactly them
  (``recommend(candidates=...)``, per-user rows in the retriever's order);
- a segment the retriever cannot serve (ALS and zero-shot cold users, say) is
  ``unsupported`` for every model under this protocol;
- two figures per model, as LlamaRec reports them: segment ``<seg>`` over all
  test users (a user whose held-out items were not retrieved scores 0, so the
  retriever's recall bounds it) and ``<seg>+found`` over the users with at least
  one held-out item among their candidates;
- the retriever's own ranking is a row of its own, model ``<name> (retriever)``
  (its top-k of the N), with ``recall@N`` and ``hit_rate@N``: the retriever's
  recall and the share of users ``+found`` keeps.

``order_probes = P`` (P >= 2) scores the same candidates presented in P orders: the
retriever's, reversed, then P - 2 seeded shuffles. Per user, ``order_ndcg_spread@k``
is max - min of ndcg@k over the orders and ``order_kendall_tau@K`` the mean Kendall
tau-b over every pair of orders between the model's rankings of the candidates
(K = the positions ranked: every candidate of the user when possible). An
order-invariant model gives 0 and 1.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench import metrics as metric_lib
from bench import registry
from bench.data.dataset import Dataset, train_data
from bench.errors import ConfigError
from bench.protocol import Capabilities, Recommender
from bench.protocols import RETRIEVED, Negatives, Protocol
from bench.registry import suggest
from bench.rundir import SplitStore
from bench.splits import Segment, Split

FOUND = "+found"  # segment suffix: only users with a held-out item among their retrieved candidates
SPREAD, TAU = "order_ndcg_spread", "order_kendall_tau"
_RETRIEVER_KEYS = ("name", "params")


# -- configuration -------------------------------------------------------------------------------

def uses_retrieved(evaluation: object) -> bool:
    texts = [getattr(evaluation, "protocol", "full"), *getattr(evaluation, "extra_protocols", [])]
    return any(str(t).strip().lower() == RETRIEVED for t in texts)


def check_evaluation(evaluation: Any, source: str, check_params: Callable[[str, dict[str, Any], str], None]) -> None:
    """``extra_protocols``, ``retriever``, ``n_candidates`` and ``order_probes``, before anything runs.

    ``check_params(model, params, where)`` is the config's own check of a model's parameters.
    """
    from bench.protocols import parse_protocol

    extras = evaluation.extra_protocols
    if not isinstance(extras, list) or not all(isinstance(t, str) for t in extras):
        raise ConfigError(f"{source}: evaluation.extra_protocols must be a list of protocol names, e.g. [\"retrieved\"]")
    main = str(evaluation.protocol).strip().lower()
    for text in extras:
        if text.strip().lower() != RETRIEVED:
            parse_protocol(text, negatives_per=evaluation.negatives_per, source=source + " (extra_protocols)")
    names = [main] + [t.strip().lower() for t in extras]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: evaluation.extra_protocols {extras!r} repeats a protocol (the main one is "
                          f"{evaluation.protocol!r}); list each protocol once")
    retriever, n = evaluation.retriever, evaluation.n_candidates
    if not uses_retrieved(evaluation):
        for key, value in (("retriever", retriever), ("n_candidates", n), ("order_probes", evaluation.order_probes),
                           ("retrieved_splits", evaluation.retrieved_splits),
                           ("retrieved_max_test_users", evaluation.retrieved_max_test_users)):
            if value:
                raise ConfigError(f"{source}: evaluation.{key} is only used by the two-stage protocol; set "
                                  f"evaluation.protocol = \"retrieved\" or extra_protocols = [\"retrieved\"]")
        return
    if not isinstance(retriever, dict) or "name" not in retriever or set(retriever) - set(_RETRIEVER_KEYS):
        raise ConfigError(f"{source}: protocol \"retrieved\" needs evaluation.retriever = {{ name = \"MODEL\", "
                          f"params = {{...}} }} (the model whose top-N every model ranks), got {retriever!r}")
    name, params = retriever["name"], retriever.get("params", {})
    if name not in registry.models:
        names = registry.models.names()
        raise ConfigError(f"{source}: evaluation.retriever names unknown model '{name}'; "
                          f"{suggest(str(name), names)}available: {', '.join(names)}")
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: evaluation.retriever.params must be a table, e.g. {{ factors = 64 }}")
    check_params(name, params, "evaluation.retriever.params")
    k_max = max(evaluation.k)
    if isinstance(n, bool) or not isinstance(n, int) or n < k_max:
        raise ConfigError(f"{source}: evaluation.n_candidates = {n!r}: the retriever must propose at least the "
                          f"largest evaluation.k ({k_max}) candidates per user; set n_candidates >= {k_max}")
    if evaluation.retrieved_max_test_users < 0:
        raise ConfigError(f"{source}: evaluation.retrieved_max_test_users must be >= 0 (0 = no further sample)")
    probes = evaluation.order_probes
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0 or probes == 1:
        raise ConfigError(f"{source}: evaluation.order_probes = {probes!r}: use 0 (off) or the number of candidate "
                          f"orders to compare, >= 2 (3 = retriever's order, reversed, one seeded shuffle)")


def applies(evaluation: Any, protocol: Protocol, split_kind: str) -> bool:
    """Whether a cell of a ``split_kind`` split is scored under ``protocol`` (``retrieved_splits``)."""
    only = getattr(evaluation, "retrieved_splits", None)
    return protocol.kind != RETRIEVED or not only or split_kind in only


def user_limit(evaluation: Any, own: int | None, protocol: Protocol) -> int:
    """Most test users a model is scored on per segment (0 = all): the suite's and the model's own
    ``max_test_users``, and under "retrieved" ``retrieved_max_test_users`` (every model, the retriever's row
    too: the extra evaluation stays cheap for models whose every call is costly). Every limit takes a prefix
    of the same seeded permutation (bench.runner.segment_data), so a smaller sample is a subset of a larger
    one and the report compares models on the users they share."""
    limits = [n for n in (evaluation.max_test_users, own) if n]  # a model's own can only shrink it
    if protocol.kind == RETRIEVED and getattr(evaluation, "retrieved_max_test_users", 0):
        limits.append(evaluation.retrieved_max_test_users)
    return min(limits) if limits else 0


def segment_label(segment: str, protocol: Protocol, extra: bool) -> str:
    """The ``segment`` column (and per-user file) of a segment scored under ``protocol``: an extra protocol's
    segments carry its label, so they never collide with the main protocol's in the gate or the files."""
    return f"{segment}@{protocol.label}" if extra else segment


# -- the retriever and its stored candidates -----------------------------------------------------

_FITTED: dict[tuple[str, int, str, str], Recommender] = {}  # this process's fitted retrievers, one per split


def retriever_label(protocol: Protocol) -> str:
    return f"{protocol.retriever} (retriever)"


def _make(protocol: Protocol, seed: int) -> Recommender:
    return registry.models.get(protocol.retriever)(seed=seed, device="cpu", **json.loads(protocol.retriever_params))


def capabilities(protocol: Protocol) -> Capabilities:
    """The retriever's capabilities (an instance's: some depend on the parameters)."""
    return _make(protocol, 0).capabilities


def serves(protocol: Protocol, segment: Segment) -> bool:
    """Whether the retriever can propose candidates for ``segment`` (else it is unsupported for every model)."""
    return capabilities(protocol).supports(segment.needs)


def fitted_retriever(dataset: Dataset, split: Split, protocol: Protocol) -> Recommender:
    """The retriever fitted on ``split``'s training data, once per process, split and seed."""
    key = (split.fingerprint, split.seed, protocol.name, protocol.retriever_params)
    if key not in _FITTED:
        model = _make(protocol, split.seed)
        model.fit(train_data(dataset, split.train))
        _FITTED.clear()  # one split at a time: a suite's splits are prepared one after another
        _FITTED[key] = model
    return _FITTED[key]


def _tags(split: Split, protocol: Protocol, segment: Segment) -> tuple[str, str]:
    digest = hashlib.sha256(protocol.retriever_params.encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", protocol.retriever)
    draw_tag = f"seed{split.seed}-{RETRIEVED}{protocol.n_negatives}-{name}-{digest}"
    return draw_tag, re.sub(r"[^A-Za-z0-9_.-]", "_", segment.name)


def retrieve(dataset: Dataset, split: Split, segment: Segment, protocol: Protocol, segment_data: Callable[..., Any],
             batch: int = 256) -> Negatives:
    """The retriever's top-N of every test user of ``segment``, in its order (rows of a :class:`Negatives`).

    ``segment_data`` is :func:`bench.runner.segment_data` (passed in: the runner imports this module), which
    gives the segment's users, their history and exclusions exactly as every model gets them.
    """
    from bench.validation import validate_topk

    if not serves(protocol, segment):
        raise ConfigError(f"retriever '{protocol.retriever}' cannot serve segment '{segment.name}' "
                          f"(it needs {segment.needs})")
    model = fitted_retriever(dataset, split, protocol)
    train = train_data(dataset, split.train)
    data = segment_data(dataset, split, segment, train.matrix, protocol.exclude_train, 0)
    n = protocol.n_negatives
    if data.candidates is not None and np.ndim(data.candidates) == 1:
        n = min(n, len(data.candidates))
    parts = []
    for lo in range(0, len(data.users), batch):
        hist = None if data.history is None else data.history[lo:lo + batch]
        excl = None if data.exclude is None else data.exclude[lo:lo + batch]
        items, scores = model.recommend(data.users[lo:lo + batch], n, history=hist,
                                        candidates=data.batch_candidates(lo, lo + batch), exclude=excl)
        items, _ = validate_topk(retriever_label(protocol), items, scores, n_users=len(data.users[lo:lo + batch]),
                                 k=n, n_items=dataset.n_items, exclude=excl,
                                 candidates=data.batch_candidates(lo, lo + batch))
        parts.append(np.asarray(items, dtype=np.int64))
    items = np.concatenate(parts) if parts else np.zeros((0, n), np.int64)
    lengths = (items >= 0).sum(1)
    flat = items[items >= 0]  # row-major: each user's candidates stay in the retriever's order
    return Negatives(data.users.astype(np.int64), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                     flat, lengths.astype(np.int64))


def stored_candidates(dataset: Dataset, split: Split, segment: Segment, protocol: Protocol,
                      store_dir: Path | None, segment_data: Callable[..., Any]) -> Negatives:
    """The segment's retrieved candidates: read from ``store_dir`` when retrieved before, else retrieved and
    stored there, so every model (and a resumed run) ranks the very same candidates in the same order."""
    draw_tag, pool_tag = _tags(split, protocol, segment)
    store = None if store_dir is None else SplitStore(Path(store_dir))
    stored = None if store is None else store.read_negatives(split.fingerprint, draw_tag, pool_tag)
    if stored is not None:
        return Negatives(stored["users"], stored["indptr"], stored["items"], stored["n_negatives"])
    found = retrieve(dataset, split, segment, protocol, segment_data)
    if store is not None:
        store.write_negatives(split.fingerprint, draw_tag, pool_tag, users=found.users, indptr=found.indptr,
                              items=found.items, n_negatives=found.n_negatives)
    return found


# -- scoring: the two LlamaRec figures and the order probes -------------------------------------------

def found_mask(users: np.ndarray, candidates: np.ndarray, test_users: np.ndarray, test_items: np.ndarray,
               n_items: int) -> np.ndarray:
    """Per user: is at least one of their held-out items among their candidates (row of ``candidates``)?"""
    hits, _ = metric_lib.hit_matrix(candidates, users, test_users, test_items, n_items)
    return hits.any(axis=1)


def found_table(table: metric_lib.MetricTable, found: np.ndarray) -> metric_lib.MetricTable:
    """The per-user columns of ``table`` over the ``found`` users only (aggregate metrics are left out:
    they describe all lists together, not a subpopulation)."""
    keep = [j for j, column in enumerate(table.columns) if column not in table.aggregate]
    return metric_lib.MetricTable([table.columns[j] for j in keep], table.per_user[found][:, keep], {})


def candidate_orders(candidates: np.ndarray, n_orders: int, seed: int) -> list[np.ndarray]:
    """The same per-user candidates in ``n_orders`` orders: as given (the retriever's), reversed, then seeded
    shuffles. -1 padding stays at the end of each row."""
    real = candidates >= 0
    lengths = real.sum(1)
    position = np.arange(candidates.shape[1])[None, :]
    orders = [candidates]
    if n_orders >= 2:
        source = np.where(real, lengths[:, None] - 1 - position, position)  # reverse the real part of each row
        orders.append(np.take_along_axis(candidates, source, axis=1))
    rng = np.random.default_rng([seed, 20_17])
    for _ in range(n_orders - 2):
        keys = np.where(real, rng.random(candidates.shape), np.inf)
        orders.append(np.take_along_axis(candidates, np.argsort(keys, axis=1, kind="stable"), axis=1))
    return orders


def kendall_tau(candidates: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per user, Kendall's tau-b between two rankings of the user's candidates.

    ``first`` and ``second`` are top-K lists (rows); a candidate a list leaves out shares that list's last
    place (K), as ties. -1 padding of ``candidates`` is ignored. Same ranking: 1; reversed: -1.
    """
    def positions(lists: np.ndarray) -> np.ndarray:
        match = lists[:, :, None] == candidates[:, None, :]  # [n, K, C]
        return np.where(match.any(1), match.argmax(1), lists.shape[1])

    valid = candidates >= 0
    pa, pb = positions(first), positions(second)
    da = np.sign(pa[:, :, None] - pa[:, None, :])
    db = np.sign(pb[:, :, None] - pb[:, None, :])
    upper = np.triu(np.ones((candidates.shape[1],) * 2, dtype=bool), 1)[None]
    pairs = valid[:, :, None] & valid[:, None, :] & upper
    n0 = pairs.sum((1, 2))
    ties_a, ties_b = ((da == 0) & pairs).sum((1, 2)), ((db == 0) & pairs).sum((1, 2))
    s = (da * db * pairs).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / np.sqrt((n0 - ties_a).astype(float) * (n0 - ties_b))


def probe_table(candidates: np.ndarray, rank: Callable[[np.ndarray], np.ndarray],
                ndcg: Callable[[np.ndarray], np.ndarray], ks: list[int], n_orders: int,
                seed: int, given: np.ndarray | None = None) -> metric_lib.MetricTable:
    """Order-probe columns for one segment: ``order_ndcg_spread@k`` for each k, ``order_kendall_tau@K``.

    ``rank(candidates)`` returns the model's top-K lists for candidates in a given order; ``ndcg(lists)``
    the per-user ndcg at every k in ``ks`` ([n, len(ks)]). ``given``: the lists already ranked in the
    first (retriever's) order, at the same depth, so that order is not ranked twice.
    """
    orders = candidate_orders(candidates, n_orders, seed)
    lists = [given if given is not None else rank(orders[0])] + [rank(order) for order in orders[1:]]
    ndcgs = np.stack([ndcg(items) for items in lists])  # [orders, n, len(ks)]
    spread = ndcgs.max(0) - ndcgs.min(0)
    taus = np.stack([kendall_tau(candidates, a, b) for a, b in itertools.combinations(lists, 2)])
    depth = lists[0].shape[1]
    columns = [(SPREAD, k) for k in ks] + [(TAU, depth)]
    return metric_lib.MetricTable(columns, np.column_stack([spread, taus.mean(0)]), {})


def probe_depth(candidates: np.ndarray, k: int) -> int:
    """Positions a probe asks for: every candidate of the user with the fewest (at least ``k``)."""
    counts = (candidates >= 0).sum(1)
    return max(k, int(counts.min())) if len(counts) else k


def board_note(protocol: str, segment: str) -> str | None:
    """What a report leaderboard under protocol "retrieved" shows, in words (None for other protocols)."""
    match = re.fullmatch(rf"{RETRIEVED}(\d+):(.+)", protocol)
    if not match:
        return None
    n, name = match.groups()
    if segment.endswith(FOUND):
        who = ("only the users with a held-out item among their candidates (LlamaRec's figure over retrieved "
               "users: how well a model reranks when the retriever did its part)")
    else:
        who = ("all test users; a user whose held-out items were not retrieved scores 0, so the retriever's "
               f"recall@{n} (row {name} (retriever)) bounds every model here; '{segment}{FOUND}' has the "
               "retrieved users only")
    return (f"Two-stage protocol: every model ranks the same {n} candidates per user, the top-{n} of retriever "
            f"'{name}' (row '{name} (retriever)': its own order). Users: {who}. order_ndcg_spread / "
            f"order_kendall_tau (when probed): the same candidates shown in the retriever's order, reversed and "
            f"shuffled; 0 / 1 = the order does not matter.")
