"""The in-memory dataset every model and split works on.

Users and items are re-indexed densely (0..n-1) over the interactions that
survive the explicit-to-implicit conversion, as RecBole and LensKit do: the
catalogue ranked at evaluation time is every item that has at least one
interaction. Raw publisher ids are kept for reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bench.errors import ConfigError
from bench.protocol import SideInfo, TrainData

# What happens to repeated (user, item) rows: keep the latest, the earliest, sum their values
# (timestamp = the latest), or keep every row (repeat consumption; see bench.splits.make_split).
DUPLICATE_POLICIES = ("last", "first", "sum", "keep")


@dataclass(frozen=True)
class ImplicitConfig:
    """How explicit feedback becomes implicit: keep ``value >= min_value``.

    ``weight`` is the confidence given to a kept interaction: ``binary`` (1.0),
    ``value`` (the rating / play count) or ``log1p`` (log(1 + value)), the usual
    choice for play counts. Recorded verbatim in every result.
    """

    min_value: float | None = None
    weight: str = "binary"

    def __post_init__(self) -> None:
        if self.weight not in ("binary", "value", "log1p"):
            raise ConfigError(
                f"implicit.weight = '{self.weight}' is not valid; use 'binary', 'value' or 'log1p'"
            )

    def describe(self) -> str:
        keep = "all interactions" if self.min_value is None else f"value >= {self.min_value:g}"
        return f"{keep}; weight={self.weight}"


@dataclass
class Dataset:
    """Interactions plus side information, with dense integer ids."""

    name: str
    user: np.ndarray  # int32 [n_interactions]
    item: np.ndarray  # int32 [n_interactions]
    value: np.ndarray  # float32 raw explicit value (rating / play count)
    weight: np.ndarray  # float32 implicit confidence after conversion
    timestamp: np.ndarray | None  # int64 seconds, None when the data has none
    user_ids: np.ndarray  # raw publisher id per dense user index
    item_ids: np.ndarray  # raw publisher id per dense item index
    item_text: list[str]  # one human-readable text per item (title, genres, tags...)
    item_categories: sp.csr_matrix  # binary [n_items, n_categories], e.g. genres
    category_names: list[str]
    item_features: sp.csr_matrix  # binary [n_items, n_item_features] for hybrid models
    item_feature_names: list[str]
    user_features: sp.csr_matrix | None = None
    user_feature_names: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # card metadata, conversion, counts
    item_value: np.ndarray | None = None  # float64 [n_items] price / value per item (revenue metrics), if known

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.user)

    @property
    def has_timestamps(self) -> bool:
        return self.timestamp is not None

    def matrix(self, rows: np.ndarray | None = None) -> sp.csr_matrix:
        """User x item CSR of implicit weights for the given interaction rows."""
        idx = slice(None) if rows is None else rows
        return sp.csr_matrix(
            (self.weight[idx], (self.user[idx], self.item[idx])),
            shape=(self.n_users, self.n_items),
            dtype=np.float32,
        )

    def summary(self) -> dict[str, Any]:
        density = self.n_interactions / max(1, self.n_users * self.n_items)
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": round(density, 6),
            "timestamps": self.has_timestamps,
            "conversion": self.info.get("conversion", ""),
        }


def side_info(dataset: Dataset) -> SideInfo:
    """What a model may know besides interactions: the dataset's side information, no test rows."""
    return SideInfo(
        n_users=dataset.n_users, n_items=dataset.n_items, item_text=dataset.item_text,
        item_categories=dataset.item_categories, category_names=dataset.category_names,
        item_features=dataset.item_features, item_feature_names=dataset.item_feature_names,
        user_features=dataset.user_features, user_feature_names=dataset.user_feature_names,
        dataset_name=dataset.name,
    )


def train_data(dataset: Dataset, rows: np.ndarray) -> TrainData:
    """The interactions ``rows`` of ``dataset`` (a split's train, or a carve of it) as a model's input."""
    ts = None if dataset.timestamp is None else dataset.timestamp[rows]
    return TrainData(dataset.user[rows], dataset.item[rows], dataset.weight[rows], ts, side_info(dataset))


def build_dataset(
    name: str,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    implicit: ImplicitConfig,
    users: pd.DataFrame | None = None,
    info: dict[str, Any] | None = None,
    duplicates: str | None = None,
) -> Dataset:
    """Encode raw frames into a :class:`Dataset`.

    ``interactions``: columns ``user``, ``item``, ``value`` and optional ``timestamp``.
    ``items``: indexed by raw item id with columns ``text`` (str), ``categories``
    (list[str]) and ``tokens`` (list[str], extra feature tokens such as tags).
    ``users``: indexed by raw user id with a ``features`` column (list[str]).
    An optional numeric ``value`` column of ``items`` becomes ``item_value``.
    Duplicate (user, item) pairs follow ``duplicates`` (one of :data:`DUPLICATE_POLICIES`);
    ``None`` is the cards' rule, "last", left out of the recorded conversion.
    """
    df = interactions
    policy = duplicates or "last"
    has_ts = "timestamp" in df.columns
    if policy == "sum":  # summed before the threshold: three purchases of one unit count as 3
        df = df.assign(value=df.groupby(["user", "item"], sort=False)["value"].transform("sum"))
    if implicit.min_value is not None:
        df = df[df["value"] >= implicit.min_value]
    if has_ts:
        df = df.sort_values(["timestamp"], kind="stable")
    if policy != "keep":
        df = df.drop_duplicates(["user", "item"], keep="first" if policy == "first" else "last")
    if df.empty:
        raise ConfigError(f"dataset '{name}': no interaction left after conversion ({implicit.describe()}); "
                          f"lower implicit.min_value or check the value column")

    user_codes, user_ids = pd.factorize(df["user"], sort=True)
    item_codes, item_ids = pd.factorize(df["item"], sort=True)
    value = df["value"].to_numpy(np.float32)
    if implicit.weight == "binary":
        weight = np.ones_like(value)
    elif implicit.weight == "value":
        weight = value.copy()
    else:
        weight = np.log1p(value).astype(np.float32)

    item_meta = items.reindex(item_ids)
    texts = [t if isinstance(t, str) else f"item {raw}" for raw, t in zip(item_ids, item_meta["text"])]
    cats = [c if isinstance(c, list) else [] for c in item_meta["categories"]]
    toks = [t if isinstance(t, list) else [] for t in item_meta.get("tokens", pd.Series([None] * len(item_ids)))]
    item_categories, category_names = _one_hot(cats)
    feature_lists = [[f"cat:{c}" for c in cs] + [f"tok:{t}" for t in ts] for cs, ts in zip(cats, toks)]
    item_features, item_feature_names = _one_hot(feature_lists)

    user_features = None
    user_feature_names: list[str] = []
    if users is not None:
        user_meta = users.reindex(user_ids)
        lists = [f if isinstance(f, list) else [] for f in user_meta["features"]]
        user_features, user_feature_names = _one_hot(lists)

    item_value = None
    if "value" in item_meta.columns:
        item_value = item_meta["value"].to_numpy(np.float64, na_value=0.0)  # items without a row: no value

    meta = dict(info or {})
    meta["conversion"] = implicit.describe() + (f"; duplicates={duplicates}" if duplicates else "")
    return Dataset(
        name=name,
        user=user_codes.astype(np.int32),
        item=item_codes.astype(np.int32),
        value=value,
        weight=weight,
        timestamp=df["timestamp"].to_numpy(np.int64) if has_ts else None,
        user_ids=np.asarray(user_ids),
        item_ids=np.asarray(item_ids),
        item_text=texts,
        item_categories=item_categories,
        category_names=category_names,
        item_features=item_features,
        item_feature_names=item_feature_names,
        user_features=user_features,
        user_feature_names=user_feature_names,
        info=meta,
        item_value=item_value,
    )


def _one_hot(lists: list[list[str]]) -> tuple[sp.csr_matrix, list[str]]:
    """Binary CSR with one row per list and one column per distinct string."""
    vocab = sorted({v for values in lists for v in values})
    index = {v: j for j, v in enumerate(vocab)}
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    cols: list[int] = []
    for i, values in enumerate(lists):
        unique = sorted({index[v] for v in values})
        cols.extend(unique)
        indptr[i + 1] = len(cols)
    data = np.ones(len(cols), dtype=np.float32)
    matrix = sp.csr_matrix((data, np.asarray(cols, dtype=np.int32), indptr), shape=(len(lists), len(vocab)))
    return matrix, vocab
