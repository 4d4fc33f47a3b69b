"""Freshness: how quickly and how cheaply a model absorbs new behaviour.

Two measurements per model cell on a ``temporal`` split (needs timestamps):

**Incremental update cost.** A fresh model is fit on the training data minus
``update_cost_users`` held-out users and ``update_cost_items`` held-out items;
then ``model.update()`` absorbs the held-out users' interactions (timed, divided
by the number of users) and then the held-out items' interactions (timed,
divided by the number of items). Only models declaring the ``update``
capability take part (implicit ALS: partial fit of users and items; Pop:
counts; LightFM ``fit_partial`` and text models' "embed a new item" when they
declare it).

**Prequential replay** (test-then-train). The model fit on the data before the
time cut replays the events after it in time order, in blocks of ``block``
events: before each block, every user with an event in the block gets a top-k
list (items the user consumed before the block are excluded, as a serving
filter would), and each event counts a hit if its item is in its user's list.
A user the model has not learnt (new since the cut, not yet absorbed by an
update or retrain) is served only as its capabilities allow, exactly as in a
``user_coldstart`` segment: from their events so far as ``history`` when it
declares ``cold_users``, from an empty history when it declares
``cold_users_zero_shot``; otherwise their events are *not served*: counted in
``unserved_events`` and left out of every hit rate, never answered by a
fallback (an all-zero or popularity list).
After every ``every`` events a policy acts:

- ``static``: nothing (the model never learns after the cut);
- ``incremental``: ``model.update(events since the last update)``;
- ``retrain``: a fresh model is fit on everything seen so far.

The model is constant within a block, so scoring a block in one batched
``recommend`` call is exact; ``every`` must be a multiple of ``block``.
Output per policy: hit rate over time and total update cost, i.e. one point of
the freshness-versus-cost curve per (policy, every). Hit rates are over served
events (their count is the row's ``n``); ``prequential_new_user_hit_rate`` is
``unsupported`` (NaN, n = 0) when no event of a user unseen before the cut
could be served.

Results go to the tidy table (``segment = "replay:<policy>/every=<n>"``:
``prequential_hit_rate`` at ``k``, ``update_seconds_total`` and ``updates`` at
k = 0; ``segment = "update-cost"``: ``update_seconds_per_new_user`` and
``update_seconds_per_new_item``) and, with the curves, to
``cells/<cell-id>/realtime.json``::

    {
      "k": 10, "block": 500, "cut_timestamp": 893286638, "train_events": 80000,
      "replay_events": 20000,
      "policies": {
        "incremental/every=500": {
          "policy": "incremental", "every": 500,
          "block_end":   [500, 1000, ...],   # events replayed after each block
          "events":      [500, 500, ...],    # events served and scored in the block
          "hits":        [37, 41, ...],      # of which hits
          "unserved_events": [0, 0, ...],    # events of users the model could not serve (not scored)
          "new_user_events": [...], "new_user_hits": [...],  # served events of users unseen before the cut
          "update_seconds": [0.012, ...],    # spent updating after the block (0 = no update)
          "hit_rate": 0.071, "new_user_hit_rate": 0.05, "updates": 40,
          "total_update_seconds": 0.48, "recommend_seconds": 0.9
        }, ...
      },
      "update_cost": {"new_users": 50, "new_items": 50, "seconds_per_new_user": 1.2e-4,
                      "seconds_per_new_item": 3.1e-4}    # null when the model cannot update
    }
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from bench.errors import ConfigError
from bench.protocol import Recommender, SideInfo, TrainData
from bench.specs import POLICIES, PolicySpec, RealtimeSpec, parse_realtime  # noqa: F401  (specs: config layer)


def applies(spec: RealtimeSpec, split_kind: str) -> bool:
    """Replay runs on temporal splits of suites that enable it."""
    return spec.enabled and split_kind == "temporal"


# -- data helpers --------------------------------------------------------------------


def subset(user: np.ndarray, item: np.ndarray, weight: np.ndarray, timestamp: np.ndarray | None,
           side: SideInfo, rows: np.ndarray) -> TrainData:
    ts = None if timestamp is None else timestamp[rows]
    return TrainData(user[rows], item[rows], weight[rows], ts, side)


@dataclass
class EventLog:
    """All interactions in row arrays, plus the training rows and the replay rows in time order."""

    user: np.ndarray
    item: np.ndarray
    weight: np.ndarray
    timestamp: np.ndarray
    side: SideInfo
    train_rows: np.ndarray
    replay_rows: np.ndarray  # in time order (ties by row index)

    def data(self, rows: np.ndarray) -> TrainData:
        return subset(self.user, self.item, self.weight, self.timestamp, self.side, rows)

    def matrix(self, rows: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (self.user[rows], self.item[rows])),
                          shape=(self.side.n_users, self.side.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m


def event_log(user: np.ndarray, item: np.ndarray, weight: np.ndarray, timestamp: np.ndarray | None, side: SideInfo,
              train_rows: np.ndarray, cut_timestamp: float, max_events: int = 0) -> EventLog:
    """Training rows as given; replay = every other row at or after the cut, in time order."""
    if timestamp is None:
        raise ConfigError(f"prequential replay needs timestamps; dataset '{side.dataset_name}' has none. "
                          f"Disable evaluation.realtime for it or use a dataset with timestamps")
    in_train = np.zeros(len(user), bool)
    in_train[train_rows] = True
    after = np.flatnonzero((timestamp >= cut_timestamp) & ~in_train)
    after = after[np.lexsort((after, timestamp[after]))]
    if max_events:
        after = after[:max_events]
    return EventLog(user, item, weight, timestamp, side, np.asarray(train_rows), after)


# -- incremental update cost ---------------------------------------------------------------


@dataclass
class UpdateCost:
    new_users: int
    new_items: int
    seconds_per_new_user: float | None
    seconds_per_new_item: float | None


def update_cost(make_model: Callable[[], Recommender], log: EventLog, n_users: int, n_items: int,
                seed: int) -> UpdateCost:
    """Seconds ``update()`` takes per new user and per new item (see the module docstring)."""
    rows = log.train_rows
    rng = np.random.default_rng([seed, 11])
    user_counts = np.bincount(log.user[rows], minlength=log.side.n_users)
    item_counts = np.bincount(log.item[rows], minlength=log.side.n_items)
    users = rng.permutation(np.flatnonzero(user_counts >= 2))[:n_users]
    items = rng.permutation(np.flatnonzero(item_counts >= 2))[:n_items]
    of_users = np.isin(log.user[rows], users)
    of_items = np.isin(log.item[rows], items) & ~of_users
    base_rows = rows[~of_users & ~of_items]
    model = make_model()
    model.fit(log.data(base_rows))
    per_user = per_item = None
    if len(users):
        start = time.perf_counter()
        model.update(log.data(rows[of_users]))
        per_user = (time.perf_counter() - start) / len(users)
    if of_items.any():
        start = time.perf_counter()
        model.update(log.data(rows[of_items]))
        per_item = (time.perf_counter() - start) / len(items)
    return UpdateCost(len(users), len(items), per_user, per_item)


# -- prequential replay ----------------------------------------------------------------------


@dataclass
class PolicyTrace:
    policy: str
    every: int
    block_end: list[int] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)
    unserved_events: list[int] = field(default_factory=list)
    new_user_events: list[int] = field(default_factory=list)
    new_user_hits: list[int] = field(default_factory=list)
    new_user_unserved: int = 0
    update_seconds: list[float] = field(default_factory=list)
    recommend_seconds: float = 0.0

    @property
    def hit_rate(self) -> float | None:
        total = sum(self.events)
        return sum(self.hits) / total if total else None

    @property
    def new_user_hit_rate(self) -> float | None:
        total = sum(self.new_user_events)
        return sum(self.new_user_hits) / total if total else None

    @property
    def updates(self) -> int:
        return int(sum(1 for s in self.update_seconds if s > 0))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(hit_rate=self.hit_rate, new_user_hit_rate=self.new_user_hit_rate, updates=self.updates,
                   total_update_seconds=float(sum(self.update_seconds)))
        return out


def serve_block(model: Recommender, users: np.ndarray, k: int, exclude: sp.csr_matrix, learnt: np.ndarray,
                histories: dict[int, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Top-k lists for ``users`` as the model's capabilities allow, and which users were served.

    Users the model has learnt (``learnt``) are asked as warm users. Any other user is a cold user
    for this model: asked with their events so far (``histories``) only if it declares
    ``cold_users`` (an empty history needs ``cold_users_zero_shot``), else not served, so no
    fallback list (all-zero scores, popularity) is ever scored as the model's.
    """
    caps = model.capabilities
    items = np.full((len(users), k), -1, dtype=np.int64)
    served = learnt[users].copy()
    if served.any():
        got, _ = model.recommend(users[served], k, exclude=exclude[served])
        items[served] = np.asarray(got)[:, :k]
    cold = np.flatnonzero(~served)
    history = [np.asarray(histories.get(int(users[i]), []), dtype=np.int64) for i in cold]
    can = np.array([caps.cold_users_zero_shot if len(h) == 0 else caps.cold_users for h in history], dtype=bool)
    if can.any():
        rows = cold[can]
        got, _ = model.recommend(users[rows], k, history=[h for h, c in zip(history, can) if c],
                                 exclude=exclude[rows])
        items[rows] = np.asarray(got)[:, :k]
        served[rows] = True
    return items, served


def replay(model: Recommender, make_model: Callable[[], Recommender], log: EventLog, policy: PolicySpec, k: int,
           block: int) -> PolicyTrace:
    """Test-then-train over ``log.replay_rows`` under one policy; ``model`` may be modified in place."""
    trace = PolicyTrace(policy.name, policy.every)
    seen = log.matrix(log.train_rows)
    known_users = np.zeros(log.side.n_users, bool)  # seen before the cut: "new user" means not in here
    known_users[log.user[log.train_rows]] = True
    learnt = known_users.copy()  # users the current model was fitted or updated on
    histories: dict[int, list[int]] = {}  # replayed events of users new since the cut, in time order
    replay_rows = log.replay_rows
    pending_from = 0  # first replay position not yet absorbed by the model
    for lo in range(0, len(replay_rows), block):
        rows = replay_rows[lo:lo + block]
        users, inverse = np.unique(log.user[rows], return_inverse=True)
        start = time.perf_counter()
        items, served_user = serve_block(model, users, k, seen[users], learnt, histories)
        trace.recommend_seconds += time.perf_counter() - start
        served = served_user[inverse]
        hit = served & (items[inverse] == log.item[rows][:, None]).any(1)
        new = ~known_users[log.user[rows]]
        trace.block_end.append(lo + len(rows))
        trace.events.append(int(served.sum()))
        trace.hits.append(int(hit.sum()))
        trace.unserved_events.append(int((~served).sum()))
        trace.new_user_events.append(int((new & served).sum()))
        trace.new_user_hits.append(int((hit & new).sum()))
        trace.new_user_unserved += int((new & ~served).sum())
        seen = (seen + log.matrix(rows)).tocsr()
        seen.data[:] = 1.0
        for user, item in zip(log.user[rows][new], log.item[rows][new]):
            histories.setdefault(int(user), []).append(int(item))
        end = lo + len(rows)
        spent = 0.0
        if policy.name != "static" and end - pending_from >= policy.every and end < len(replay_rows):
            start = time.perf_counter()
            if policy.name == "incremental":
                model.update(log.data(replay_rows[pending_from:end]))
            else:
                model = make_model()
                model.fit(log.data(np.concatenate([log.train_rows, replay_rows[:end]])))
            spent = max(time.perf_counter() - start, 1e-9)  # > 0 marks "an update happened"
            learnt[log.user[replay_rows[pending_from:end]]] = True
            pending_from = end
        trace.update_seconds.append(spent)
    return trace


def fresh_copy(model: Recommender, make_model: Callable[[], Recommender], log: EventLog) -> Recommender:
    """An independent copy of the fitted model (deep copy, or a refit when the model cannot be copied)."""
    try:
        return copy.deepcopy(model)
    except Exception:  # e.g. GPU handles or open files: refitting gives the same state
        fresh = make_model()
        fresh.fit(log.data(log.train_rows))
        return fresh


# -- the cell hook ------------------------------------------------------------------------------


def run_cell(model: Recommender, make_model: Callable[[], Recommender], log: EventLog, spec: RealtimeSpec,
             base: dict[str, Any], info: dict[str, Any], seed: int,
             cut_timestamp: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Update cost + replay under every policy: the tidy rows, and the traces the runner keeps in the
    cell's ``realtime.json`` (:meth:`bench.rundir.RunDir.write_realtime`) for the report's plots."""
    rows: list[dict[str, Any]] = []

    def row(segment: str, metric: str, k: int, value: float | None, n: int, status: str = "ok") -> dict[str, Any]:
        return base | {"segment": segment, "metric": metric, "k": k,
                       "value": float("nan") if value is None else float(value),
                       "ci_low": float("nan"), "ci_high": float("nan"), "n": n, "status": status}

    can_update = model.capabilities.update
    payload: dict[str, Any] = {"k": spec.k, "block": spec.block, "cut_timestamp": float(cut_timestamp),
                               "train_events": int(len(log.train_rows)), "replay_events": int(len(log.replay_rows)),
                               "policies": {}, "update_cost": None}
    if can_update and (spec.update_cost_users or spec.update_cost_items):
        cost = update_cost(make_model, log, spec.update_cost_users, spec.update_cost_items, seed)
        payload["update_cost"] = asdict(cost)
        rows.append(row("update-cost", "update_seconds_per_new_user", 0, cost.seconds_per_new_user, cost.new_users))
        rows.append(row("update-cost", "update_seconds_per_new_item", 0, cost.seconds_per_new_item, cost.new_items))
    for policy in spec.policies:
        segment = f"replay:{policy.label}"
        if policy.name == "incremental" and not can_update:
            payload["policies"][policy.label] = {"status": "unsupported", "needs": "update"}
            rows.append(row(segment, "prequential_hit_rate", spec.k, None, 0, "unsupported"))
            continue
        # static never touches the model and retrain replaces it; only incremental mutates it
        working = fresh_copy(model, make_model, log) if policy.name == "incremental" else model
        trace = replay(working, make_model, log, policy, spec.k, spec.block)
        payload["policies"][policy.label] = trace.as_dict() | {"status": "ok"}
        n_events = int(sum(trace.events))  # served events: a hit rate is over these only
        rows.append(row(segment, "prequential_hit_rate", spec.k, trace.hit_rate, n_events,
                        "ok" if n_events else "unsupported"))
        n_new = int(sum(trace.new_user_events))
        if n_new:
            rows.append(row(segment, "prequential_new_user_hit_rate", spec.k, trace.new_user_hit_rate, n_new))
        elif trace.new_user_unserved:  # new users replayed, none servable: not served, never a fallback
            rows.append(row(segment, "prequential_new_user_hit_rate", spec.k, None, 0, "unsupported"))
        rows.append(row(segment, "update_seconds_total", 0, float(sum(trace.update_seconds)), trace.updates))
        rows.append(row(segment, "updates", 0, float(trace.updates), trace.updates))
        rows.append(row(segment, "replay_recommend_seconds", 0, trace.recommend_seconds, n_events))
    info["realtime"] = {label: {"hit_rate": p.get("hit_rate"), "total_update_seconds": p.get("total_update_seconds"),
                                "status": p["status"]} for label, p in payload["policies"].items()}
    return rows, payload
