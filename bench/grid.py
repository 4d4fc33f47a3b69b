"""Parameter grids with selection on a validation split carved from train (never test).

A model table in a suite may carry a grid::

    [[models]]
    name = "als"
    params = { iterations = 15 }
    grid = { factors = [32, 64], regularization = [0.01, 0.1] }
    select_by = "ndcg@10"          # optional; the default

The suite then holds one model per grid point, labelled ``als[factors=32,regularization=0.01]``
and so on; each is fitted on the split's training data and reported on test like any
other model. Each grid point also gets a second fit on *train minus a validation
carve* and is scored on that carve (rows with ``segment = "valid"``). When the suite
ends, the point with the best validation score is copied under the group label
(``als``) with ``segment``/``metric`` rows identical to its test rows, and a
``segment = "selection", metric = "selected"`` row (value 1 for the winner, 0 for
the others) records the choice. Test numbers never influence the choice.

``refit = false`` in the model table changes which model is tested: each point's test rows
come from the model fitted on train minus the carve (the one scored on validation, fitted
once), as in early-stopping protocols (RecBole reports the model trained on the 80% of an
80/10/10 split), instead of a refit on all of train. Training items of the carve stay
excluded from the test ranking either way.

The carve mirrors the split: ``temporal`` cuts the latest ``VALID_FRACTION`` of
training time (scored on users and items seen before the cut), ``leave_last_out``
holds out each user's latest training interaction (or uses the split's own
``validation = true`` rows), every other kind holds out a seeded random
``VALID_FRACTION`` of each user's training interactions (warm users only, so
cold-start splits select on warm validation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bench import metrics as metric_lib
from bench import registry
from bench.data.dataset import train_data
from bench.errors import ConfigError
from bench.specs import DEFAULT_SELECT_BY, ModelSpec  # noqa: F401  (DEFAULT_SELECT_BY re-exported)

if TYPE_CHECKING:
    from bench.data import Dataset
    from bench.protocol import Recommender, TrainData
    from bench.splits import Split

VALID_FRACTION = 0.1


# -- the runner: validation carve and scoring ----------------------------------------

def validation_carve(dataset: Dataset, split: Split, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows to fit on, validation rows), both subsets of the split's training rows."""
    train = split.train
    if split.valid.size:
        return train, split.valid
    users, items = dataset.user[train], dataset.item[train]
    if split.kind == "temporal" and dataset.timestamp is not None:
        times = dataset.timestamp[train]
        cut = np.quantile(times, 1.0 - VALID_FRACTION)
        fit, later = train[times < cut], train[times >= cut]
        seen_users = np.zeros(dataset.n_users, bool)
        seen_users[dataset.user[fit]] = True
        seen_items = np.zeros(dataset.n_items, bool)
        seen_items[dataset.item[fit]] = True
        warm = seen_users[dataset.user[later]] & seen_items[dataset.item[later]]
        return fit, later[warm]
    rng = np.random.default_rng([seed, 7919])  # a stream of its own: the split's rng is untouched
    if split.kind == "leave_last_out" and dataset.timestamp is not None:
        key = np.lexsort((rng.random(len(train)), dataset.timestamp[train]))
        rank_key = np.empty(len(train), np.int64)
        rank_key[key] = np.arange(len(train))
        rank = _rank_within_user(users, -rank_key)  # 0 = latest
        n_valid = np.ones(dataset.n_users, np.int64)
    else:
        rank = _rank_within_user(users, rng.random(len(train)))
        counts = np.bincount(users, minlength=dataset.n_users)
        n_valid = np.round(VALID_FRACTION * counts).astype(np.int64)
    counts = np.bincount(users, minlength=dataset.n_users)
    n_valid = np.where(counts >= 2, np.clip(n_valid, 1, counts - 1), 0)
    is_valid = rank < n_valid[users]
    del items
    return train[~is_valid], train[is_valid]


def _rank_within_user(users: np.ndarray, key: np.ndarray) -> np.ndarray:
    order = np.lexsort((key, users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, len(sorted_users)])
    rank = np.empty(len(users), np.int64)
    rank[order] = np.arange(len(users)) - np.repeat(starts, counts)
    return rank


def _carve_data(dataset: Dataset, split: Split, seed: int, label: str) -> tuple[TrainData, np.ndarray]:
    """(training data without the carve, validation rows), refusing an empty carve."""
    fit_rows, valid_rows = validation_carve(dataset, split, seed)
    if valid_rows.size == 0:
        raise ConfigError(f"grid selection for '{label}': the validation carve of split "
                          f"'{split.kind}' is empty; the split leaves too little training data")
    return train_data(dataset, fit_rows), valid_rows


def carve_train(dataset: Dataset, split: Split, seed: int, label: str) -> TrainData:
    """Training data without the validation carve: what a grid point with ``refit = false`` is fitted on."""
    return _carve_data(dataset, split, seed, label)[0]


def validation_rows(dataset: Dataset, split: Split, seed: int, device: str, mspec: ModelSpec,
                    base: dict[str, Any], fitted: Recommender | None = None) -> list[dict[str, Any]]:
    """Score ``select_by`` on the carve: of a fresh model fitted on train minus the carve, or of ``fitted``,
    a model already fitted on exactly that (``refit = false``)."""
    if not mspec.grid_of:
        return []
    name, k = mspec.select_metric()
    fit_data, valid_rows = _carve_data(dataset, split, seed, mspec.label)
    model = fitted or registry.models.get(mspec.name)(seed=seed, device=device, **mspec.params)
    if k > model.ranked_depth(k):  # a two-stage point that ranks fewer than k: its first stage would be chosen
        return [base | {"segment": "valid", "metric": name, "k": k, "value": float("nan"), "ci_low": float("nan"),
                        "ci_high": float("nan"), "n": 0, "status": "first_stage"}]
    if fitted is None:
        model.fit(fit_data)
    users = np.unique(dataset.user[valid_rows])
    exclude = fit_data.matrix[users]
    items, _ = model.recommend(users, k, exclude=exclude)
    items = np.asarray(items)
    hits, n_rel = metric_lib.hit_matrix(items, users, dataset.user[valid_rows], dataset.item[valid_rows],
                                        dataset.n_items)
    inputs = metric_lib.EvalInputs(items=items, hits=hits, n_relevant=n_rel, n_candidates=dataset.n_items,
                                   item_popularity=np.bincount(fit_data.item, minlength=dataset.n_items),
                                   n_train_users=int(np.unique(fit_data.user).size),
                                   item_categories=dataset.item_categories)
    values = metric_lib.get_metric(name).fn(inputs, k)
    return [base | {"segment": "valid", "metric": name, "k": k, "value": float(np.mean(values)),
                    "ci_low": float("nan"), "ci_high": float("nan"), "n": int(len(users)), "status": "ok"}]


# -- the suite: choosing ----------------------------------------------------------

def selection_rows(rows: list[dict[str, Any]], models: list[ModelSpec]) -> list[dict[str, Any]]:
    """For each grid group and (dataset, split, seed): mark the best point and copy its test rows."""
    groups = {m.label: m for m in models if m.grid_of}
    if not groups:
        return []
    scores: dict[tuple[Any, ...], list[tuple[float, str]]] = {}
    for row in rows:
        spec = groups.get(row["model"])
        if spec is None or row["segment"] != "valid" or row["status"] != "ok":
            continue
        name, k = spec.select_metric()
        if row["metric"] != name or row["k"] != k:
            continue
        key = (row["dataset"], row["split"], row["split_fingerprint"], row["seed"], spec.grid_of)
        scores.setdefault(key, []).append((row["value"], row["model"]))
    out: list[dict[str, Any]] = []
    for key, candidates in scores.items():
        higher = metric_lib.get_metric(groups[candidates[0][1]].select_metric()[0]).higher_is_better
        best = sorted(candidates, key=lambda c: (-c[0] if higher else c[0], c[1]))[0][1]
        dataset, split, fingerprint, seed, group = key
        for row in rows:
            if (row["dataset"], row["split"], row["split_fingerprint"], row["seed"]) != (dataset, split, fingerprint,
                                                                                        seed):
                continue
            if row["model"] not in {c[1] for c in candidates}:
                continue
            if row["segment"] == "valid" and row["metric"] != "selected":
                if row["model"] == best:
                    out.append(row | {"model": group})
                continue
            if row["model"] == best and row["segment"] not in ("selection",):
                out.append(row | {"model": group})
        for _value, label in candidates:
            template = next(r for r in rows if r["model"] == label and r["split_fingerprint"] == fingerprint
                            and r["seed"] == seed)
            out.append(template | {"segment": "selection", "metric": "selected", "k": 0,
                                   "value": 1.0 if label == best else 0.0, "ci_low": float("nan"),
                                   "ci_high": float("nan"), "n": len(candidates), "status": "ok"})
    return out

