"""Deterministic train/test splits shared by every model in a run.

A :class:`Split` holds *row indices* into the dataset's interaction arrays, so
the same object feeds every model and its fingerprint (a hash of the index
arrays, the parameters and the data) proves two results used the same split.
Every split passes :func:`check_leakage` before any model sees it.

Kinds (``kind`` in a suite file):

- ``random``: per user, a random ``test_fraction`` of interactions (at least one,
  for users with at least ``min_user_interactions``) is held out;
- ``holdout_n``: per user, exactly ``test_items`` random interactions are held out (MovieLens ua/ub);
- ``leave_last_out``: each user's latest interaction is held out (needs timestamps);
- ``temporal``: a global time cut at the ``test_fraction`` quantile; test keeps only
  users and items seen before the cut (the rest is counted, not scored);
- ``user_coldstart``: a ``user_fraction`` of users is removed from training; at test
  time a model gets each cold user's first ``n`` interactions for ``n`` in ``shots``
  and is scored on the interactions *after the first max(shots)*, so every point
  of the k-shot curve is scored on the same test set; all of the first max(shots)
  (shown or not) are excluded from the ranking at every n (bench.runner.segment_data);
- ``item_coldstart``: an ``item_fraction`` of items is removed from training
  (known only by side information); scored on their interactions by warm users,
  ranking among the cold items (``candidates = "cold"``) or the whole catalogue
  (``candidates = "all"``);
- ``given``: the user's own split: ``train``, ``test`` (and optional ``valid``)
  files in the dataset's format and columns, matched to the dataset's rows by
  (user, item) (:mod:`bench.data.given`).

"First n" means in time order; data without timestamps (Last.fm) uses a seeded
random order instead, recorded in the split's ``order`` field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bench.data.dataset import Dataset
from bench.errors import ConfigError

EMPTY = np.zeros(0, dtype=np.int64)


class LeakageError(RuntimeError):
    """A split lets test information into training: a bug, never a user error."""


@dataclass(frozen=True)
class Segment:
    """One scored scenario of a split: which history the model gets, which items it ranks."""

    name: str  # "all", "shots=3", "cold-items"
    history_rows: np.ndarray | None = None  # interaction rows passed as `history` (cold users)
    candidates: np.ndarray | None = None  # shared candidate item ids (cold items), None = catalogue
    needs: str = "warm"  # capability needed: "warm", "cold_users", "cold_users_zero_shot", "cold_items"


@dataclass
class Split:
    kind: str
    params: dict[str, Any]
    seed: int
    train: np.ndarray
    test: np.ndarray
    valid: np.ndarray = field(default_factory=lambda: EMPTY)
    history: np.ndarray = field(default_factory=lambda: EMPTY)  # cold users' shots, (user, order)-sorted
    cold_users: np.ndarray = field(default_factory=lambda: EMPTY)
    cold_items: np.ndarray = field(default_factory=lambda: EMPTY)
    stats: dict[str, int] = field(default_factory=dict)
    order: str = "time"
    # False when the index arrays do not depend on the seed (a temporal cut; a time order without ties):
    # the fingerprint then leaves the seed out, so identical splits of two seeds have one fingerprint.
    seeded: bool = True
    fingerprint: str = ""

    def segments(self, dataset: Dataset) -> list[Segment]:
        """The scenarios this split is scored under."""
        if self.kind == "user_coldstart":
            shots = sorted(self.params["shots"])
            rank = _rank_within_user(dataset.user[self.history], np.arange(len(self.history)))
            out = []
            for n in shots:
                needs = "cold_users_zero_shot" if n == 0 else "cold_users"
                out.append(Segment(f"shots={n}", history_rows=self.history[rank < n], needs=needs))
            return out
        if self.kind == "item_coldstart":
            cand = self.cold_items if self.params.get("candidates", "cold") == "cold" else None
            return [Segment("cold-items", candidates=cand, needs="cold_items")]
        return [Segment("all")]

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.kind}({params})"


SplitFn = Callable[..., Split]
SPLITS: dict[str, tuple[SplitFn, dict[str, Any]]] = {}


def segment_names(kind: str, params: dict[str, Any]) -> list[str]:
    """The names :meth:`Split.segments` gives a split of this kind, known before any data is read."""
    if kind == "user_coldstart":
        shots = params.get("shots", SPLITS[kind][1]["shots"]) if kind in SPLITS else params.get("shots", ())
        return [f"shots={int(n)}" for n in sorted(shots)]
    if kind == "item_coldstart":
        return ["cold-items"]
    return ["all"]


def split_kind(name: str, **defaults: Any) -> Callable[[SplitFn], SplitFn]:
    def add(fn: SplitFn) -> SplitFn:
        SPLITS[name] = (fn, defaults)
        return fn

    return add


def make_split(dataset: Dataset, kind: str, seed: int, **params: Any) -> Split:
    """Build, leakage-check and fingerprint a split."""
    if kind not in SPLITS:
        from bench.registry import suggest

        raise ConfigError(f"unknown split kind '{kind}'; {suggest(kind, list(SPLITS))}available: {', '.join(SPLITS)}")
    fn, defaults = SPLITS[kind]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"split '{kind}': unknown parameter(s) {unknown}; valid: {', '.join(sorted(defaults))}")
    full = defaults | params
    rng = np.random.default_rng(seed)
    split = fn(dataset, rng, **full)
    split.kind, split.params, split.seed = kind, full, seed
    if dataset.info.get("duplicates") == "keep":
        _drop_repeats(split, dataset)
    check_leakage(split, dataset)
    split.fingerprint = fingerprint(split, dataset)
    return split


def sample_test_users(split: Split, users: np.ndarray, max_users: int) -> np.ndarray:
    """At most ``max_users`` of the sorted ``users`` (0 = all): a prefix of one seeded permutation.

    The permutation depends on the split only: every model sampled at this size gets the same users
    (under every protocol), and a smaller sample is a subset of a larger one, so the report can compare
    a sampled model with every other model on exactly its users.
    """
    if not max_users or len(users) <= max_users:
        return users
    rng = np.random.default_rng([split.seed, int(split.fingerprint[:8], 16)])
    return np.sort(rng.permutation(users)[:max_users])


def _drop_repeats(split: Split, dataset: Dataset) -> None:
    """``duplicates = "keep"`` leaves repeated (user, item) rows: a test or validation row whose pair is
    also in train is a re-consumption, not a prediction target; drop it and count it."""
    train_pairs = dataset.user[split.train].astype(np.int64) * dataset.n_items + dataset.item[split.train]
    for name in ("test", "valid"):
        rows = getattr(split, name)
        pairs = dataset.user[rows].astype(np.int64) * dataset.n_items + dataset.item[rows]
        repeat = np.isin(pairs, train_pairs)
        if repeat.any():
            setattr(split, name, rows[~repeat])
            split.stats[f"{name}_repeats_of_train_dropped"] = int(repeat.sum())
    if split.valid.size:
        valid_pairs = dataset.user[split.valid].astype(np.int64) * dataset.n_items + dataset.item[split.valid]
        test_pairs = dataset.user[split.test].astype(np.int64) * dataset.n_items + dataset.item[split.test]
        split.valid = split.valid[~np.isin(valid_pairs, test_pairs)]


# -- parameter checks (before anything runs) -------------------------------------

def _int_at_least(low: int) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} = {value!r} must be an integer >= {low}")
        return value
    return check


def _unit_interval(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} = {value!r} must be a number strictly between 0 and 1")
    return _fraction(name, value)


def _boolean(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} = {value!r} must be true or false")
    return value


def _shots(name: str, value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise ConfigError(f"{name} = {value!r} must be a non-empty list of integers >= 0, e.g. [0, 1, 3]")
    return value


def _candidates(name: str, value: Any) -> Any:
    if value not in ("cold", "all"):
        raise ConfigError(f"{name} = {value!r} must be \"cold\" or \"all\"")
    return value


PARAM_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "test_fraction": _unit_interval, "user_fraction": _unit_interval, "item_fraction": _unit_interval,
    "min_user_interactions": _int_at_least(1), "test_items": _int_at_least(1), "min_test": _int_at_least(0),
    "validation": _boolean, "shots": _shots, "candidates": _candidates,
}


def check_params(kind: str, params: dict[str, Any], base_dir: Any = None) -> dict[str, Any]:
    """Check every parameter of a split table without data; returns the params to store.

    Data-dependent checks (enough users for the cold fraction, a non-empty test set)
    happen when the split is built, which the runner does before the first cell.
    """
    if kind == "given":
        from bench.data.given import check_given_params

        return check_given_params(params, base_dir)
    for name, value in params.items():
        if name in PARAM_CHECKS:
            PARAM_CHECKS[name](name, value)
    return params


# -- helpers -------------------------------------------------------------------

def _rank_within_user(users: np.ndarray, order_key_rows: np.ndarray) -> np.ndarray:
    """Rank of each row among its user's rows, rows assumed grouped in the given order."""
    order = np.lexsort((order_key_rows, users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, len(sorted_users)])
    rank_sorted = np.arange(len(users)) - np.repeat(starts, counts)
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = rank_sorted
    return rank


def _user_order(dataset: Dataset, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A per-row sort key: timestamp (ties broken randomly) or a seeded random order."""
    tiebreak = rng.random(dataset.n_interactions)
    if dataset.timestamp is None:
        return np.argsort(np.argsort(tiebreak)), "random (no timestamps)"
    return np.lexsort((tiebreak, dataset.timestamp)).argsort(), "time"


def _ties_at_cut(users: np.ndarray, timestamp: np.ndarray, rank_from_end: np.ndarray, eligible: np.ndarray,
                 cuts: int) -> bool:
    """Whether the seed decides a per-user "last n" cut: some eligible user has equal timestamps on both
    sides of a cut (ranks from the end c - 1 and c, for c = 1..cuts); otherwise time alone orders it."""
    for c in range(1, cuts + 1):
        before = eligible & (rank_from_end == c - 1)
        after = eligible & (rank_from_end == c)
        ts_before = np.full(int(users.max()) + 1, -1, dtype=np.int64)
        ts_before[users[before]] = timestamp[before]
        if np.any(ts_before[users[after]] == timestamp[after]):
            return True
    return False


def _require_time(dataset: Dataset, kind: str) -> None:
    if dataset.timestamp is None:
        raise ConfigError(f"split '{kind}' needs timestamps, and dataset '{dataset.name}' has none; "
                          f"use kind = 'random' (or user_coldstart/item_coldstart, which fall back to a seeded order)")


def _fraction(name: str, value: float) -> float:
    if not 0.0 < float(value) < 1.0:
        raise ConfigError(f"split parameter {name} = {value} must lie strictly between 0 and 1")
    return float(value)


# -- split kinds ---------------------------------------------------------------

@split_kind("random", test_fraction=0.2, min_user_interactions=2)
def random_holdout(dataset: Dataset, rng: np.random.Generator, test_fraction: float,
                   min_user_interactions: int) -> Split:
    frac = _fraction("test_fraction", test_fraction)
    rank = _rank_within_user(dataset.user, rng.random(dataset.n_interactions))
    counts = np.bincount(dataset.user, minlength=dataset.n_users)
    n_test = np.where(counts >= max(2, min_user_interactions), np.maximum(1, np.round(frac * counts)), 0)
    is_test = rank < n_test[dataset.user]
    rows = np.arange(dataset.n_interactions)
    return Split("random", {}, 0, train=rows[~is_test], test=rows[is_test])


@split_kind("holdout_n", test_items=10)
def holdout_n(dataset: Dataset, rng: np.random.Generator, test_items: int) -> Split:
    """Per user, exactly ``test_items`` random interactions are held out (MovieLens' ua/ub files,
    made by ``allbut.pl`` from the randomly ordered u.data); users with fewer than
    ``test_items + 1`` interactions stay entirely in training."""
    n = int(test_items)
    if n < 1:
        raise ConfigError(f"split 'holdout_n': test_items = {test_items} must be >= 1")
    rank = _rank_within_user(dataset.user, rng.random(dataset.n_interactions))
    counts = np.bincount(dataset.user, minlength=dataset.n_users)
    is_test = (rank < n) & (counts[dataset.user] > n)
    rows = np.arange(dataset.n_interactions)
    return Split("holdout_n", {}, 0, train=rows[~is_test], test=rows[is_test])


@split_kind("leave_last_out", min_user_interactions=2, validation=False)
def leave_last_out(dataset: Dataset, rng: np.random.Generator, min_user_interactions: int,
                   validation: bool) -> Split:
    _require_time(dataset, "leave_last_out")
    key, order = _user_order(dataset, rng)
    assert dataset.timestamp is not None
    rank_from_end = _rank_within_user(dataset.user, -key)
    counts = np.bincount(dataset.user, minlength=dataset.n_users)
    needed = max(2 + int(validation), min_user_interactions)
    eligible = counts[dataset.user] >= needed
    is_test = eligible & (rank_from_end == 0)
    is_valid = eligible & (rank_from_end == 1) if validation else np.zeros_like(is_test)
    rows = np.arange(dataset.n_interactions)
    return Split("leave_last_out", {}, 0, train=rows[~is_test & ~is_valid], test=rows[is_test],
                 valid=rows[is_valid], order=order,
                 seeded=_ties_at_cut(dataset.user, dataset.timestamp, rank_from_end, eligible, 1 + int(validation)))


@split_kind("temporal", test_fraction=0.2)
def temporal(dataset: Dataset, rng: np.random.Generator, test_fraction: float) -> Split:
    _require_time(dataset, "temporal")
    frac = _fraction("test_fraction", test_fraction)
    assert dataset.timestamp is not None
    cut = np.quantile(dataset.timestamp, 1.0 - frac)
    rows = np.arange(dataset.n_interactions)
    train = rows[dataset.timestamp < cut]
    after = rows[dataset.timestamp >= cut]
    known_users = np.zeros(dataset.n_users, bool)
    known_users[dataset.user[train]] = True
    known_items = np.zeros(dataset.n_items, bool)
    known_items[dataset.item[train]] = True
    warm = known_users[dataset.user[after]] & known_items[dataset.item[after]]
    return Split("temporal", {}, 0, train=train, test=after[warm], seeded=False,
                 stats={"cut_timestamp": int(cut), "dropped_unseen_user_or_item": int((~warm).sum())})


@split_kind("user_coldstart", user_fraction=0.2, shots=(0, 1, 3, 5, 10), min_test=1)
def user_coldstart(dataset: Dataset, rng: np.random.Generator, user_fraction: float, shots: Any,
                   min_test: int) -> Split:
    frac = _fraction("user_fraction", user_fraction)
    try:
        shot_list = sorted({int(s) for s in shots})
    except (TypeError, ValueError):
        raise ConfigError(f"split 'user_coldstart': shots = {shots!r} must be a list of integers") from None
    if not shot_list or shot_list[0] < 0:
        raise ConfigError("split 'user_coldstart': shots must be a non-empty list of integers >= 0")
    max_shots = shot_list[-1]
    counts = np.bincount(dataset.user, minlength=dataset.n_users)
    eligible = np.flatnonzero(counts >= max_shots + max(1, min_test))
    n_cold = int(round(frac * dataset.n_users))
    if n_cold < 1 or len(eligible) < n_cold:
        raise ConfigError(f"split 'user_coldstart': want {n_cold} cold users with >= {max_shots + min_test} "
                          f"interactions, dataset '{dataset.name}' has {len(eligible)}; lower user_fraction or shots")
    cold_users = np.sort(rng.choice(eligible, n_cold, replace=False))
    is_cold = np.isin(dataset.user, cold_users)
    rows = np.arange(dataset.n_interactions)
    train = rows[~is_cold]
    known_items = np.zeros(dataset.n_items, bool)
    known_items[dataset.item[train]] = True
    cold_rows = rows[is_cold & known_items[dataset.item]]  # items unseen in training cannot be scored warm
    key, order = _user_order(dataset, rng)
    rank = _rank_within_user(dataset.user[cold_rows], key[cold_rows])
    by_user_then_order = np.lexsort((key[cold_rows], dataset.user[cold_rows]))
    history = cold_rows[by_user_then_order][rank[by_user_then_order] < max_shots]
    test = cold_rows[rank >= max_shots]
    return Split("user_coldstart", {}, 0, train=train, test=np.sort(test), history=history,
                 cold_users=cold_users, order=order,
                 stats={"dropped_unseen_items": int((is_cold & ~known_items[dataset.item]).sum())})


@split_kind("item_coldstart", item_fraction=0.2, candidates="cold")
def item_coldstart(dataset: Dataset, rng: np.random.Generator, item_fraction: float, candidates: str) -> Split:
    frac = _fraction("item_fraction", item_fraction)
    if candidates not in ("cold", "all"):
        raise ConfigError(f"split 'item_coldstart': candidates = '{candidates}' must be 'cold' or 'all'")
    n_cold = max(1, int(round(frac * dataset.n_items)))
    cold_items = np.sort(rng.choice(dataset.n_items, n_cold, replace=False))
    is_cold = np.isin(dataset.item, cold_items)
    rows = np.arange(dataset.n_interactions)
    train = rows[~is_cold]
    known_users = np.zeros(dataset.n_users, bool)
    known_users[dataset.user[train]] = True
    test = rows[is_cold & known_users[dataset.user]]
    return Split("item_coldstart", {}, 0, train=train, test=test, cold_items=cold_items,
                 stats={"dropped_users_without_training": int((is_cold & ~known_users[dataset.user]).sum())})


@split_kind("given", train="", test="", valid="", sha256={})
def given(dataset: Dataset, rng: np.random.Generator, train: str, test: str, valid: str,
          sha256: dict[str, str]) -> Split:
    """The user's own train/test(/valid) files (bench.data.given)."""
    from bench.data.given import given_rows

    rows, stats = given_rows(dataset, {"train": train, "test": test, "valid": valid})
    return Split("given", {}, 0, train=rows["train"], test=rows["test"], valid=rows.get("valid", EMPTY),
                 order="given", stats=stats)


# -- checks --------------------------------------------------------------------

def check_leakage(split: Split, dataset: Dataset) -> None:
    """Raise :class:`LeakageError` if any test information reaches training."""
    parts = {"train": split.train, "test": split.test, "valid": split.valid, "history": split.history}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if np.intersect1d(parts[a], parts[b]).size:
                raise LeakageError(f"split {split.kind}: {a} and {b} share interaction rows")
    train_pairs = dataset.user[split.train].astype(np.int64) * dataset.n_items + dataset.item[split.train]
    for name in ("test", "valid"):
        rows = parts[name]
        pairs = dataset.user[rows].astype(np.int64) * dataset.n_items + dataset.item[rows]
        if np.isin(pairs, train_pairs).any():
            raise LeakageError(f"split {split.kind}: a (user, item) pair of {name} is also in train")
    if split.cold_users.size and np.isin(dataset.user[split.train], split.cold_users).any():
        raise LeakageError(f"split {split.kind}: a cold user has training interactions")
    if split.cold_items.size and np.isin(dataset.item[split.train], split.cold_items).any():
        raise LeakageError(f"split {split.kind}: a cold item has training interactions")
    if split.test.size == 0:
        raise ConfigError(f"split {split.kind} on '{dataset.name}' has an empty test set; check its parameters")


def data_digest(dataset: Dataset) -> str:
    digest = hashlib.sha256()
    for array in (dataset.user, dataset.item, dataset.weight):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def fingerprint(split: Split, dataset: Dataset) -> str:
    """Hash of what determines the split: kind, parameters, the data, the index arrays, and the seed
    only when the arrays depend on it (``split.seeded``): a temporal cut is the same split whatever the
    seed, so it has one fingerprint, and a report cannot suggest seeds that never varied anything."""
    digest = hashlib.sha256()
    identity: dict[str, Any] = {"kind": split.kind, "params": split.params}
    if split.seeded:
        identity["seed"] = split.seed
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    digest.update(data_digest(dataset).encode())
    if dataset.info.get("files_sha256"):  # a user's files: their content, as the canonical cache keys them
        digest.update(json.dumps(dataset.info["files_sha256"], sort_keys=True).encode())
    for array in (split.train, split.test, split.valid, split.history, split.cold_users, split.cold_items):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]
