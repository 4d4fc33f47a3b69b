"""The pointwise (CTR-style) protocol: every model scores the same labelled (user, item) test pairs.

``[evaluation] protocol = "pointwise"`` judges a recommender the way click-through
and TALLRec-style LLM papers do: not by ranking a catalogue but by telling, for
each held-out rated pair, whether the user liked the item. Labels come from
explicit feedback: a pair is liked (1) when its value is ``>= label_threshold``
(MovieLens: rating >= 4), else 0.

- Test pairs are the split's test rows of the scored users (``max_test_users``
  samples users exactly as the ranking protocols do), sorted by (user, item): a pure
  function of the split, so every model of a run scores the very same pairs; each
  cell stores its pairs with its scores (``pairs-<segment>.npz``) and the pairs'
  digest in ``cell.json``, which tests compare across models.
- Models train on the liked training interactions (the data a top-N model sees
  under the cards' usual ``min_value = 4``), and models that learn from labels
  get every rated training pair in ``TrainData.labelled`` (llm-rerank's
  ``train_labels = "rating"``). The data set must therefore keep the low ratings:
  ``implicit = { min_value = 0 }``; a data set without ratings, or whose test
  pairs hold one label only, is a ConfigError before any cell runs.
- Scores come from ``Recommender.score_pairs`` (default: the model ranks each
  user's own pair items; LMs: P(yes) directly). Metrics: ``auc`` (all pairs),
  ``gauc`` (per-user AUC weighted by the user's pairs, one-class users skipped and
  counted in the row ``gauc_users_skipped``) and ``logloss`` for models declaring
  ``Capabilities.calibrated`` (others: status ``unsupported``, never a number made
  from scores that are not probabilities). CIs: a bootstrap over users (pairs of one
  user move together).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import metrics as metric_lib
from bench.data.dataset import Dataset, side_info
from bench.errors import ConfigError
from bench.protocol import LabelledPairs, Recommender, TrainData
from bench.splits import Split

# split kinds whose test users are warm (trained on): the pointwise protocol scores only those
WARM_SPLITS = ("random", "holdout_n", "leave_last_out", "temporal", "given")


def labels_of(dataset: Dataset, rows: np.ndarray, threshold: float) -> np.ndarray:
    """1 where the interaction's raw value (rating) is >= ``threshold``, else 0."""
    return (dataset.value[rows] >= threshold).astype(np.int8)


def check_dataset(dataset: Dataset, split: Split, threshold: float, where: str = "") -> None:
    """Refuse data that cannot give two labels: no ratings at all, or low ratings dropped by the conversion."""
    prefix = f"{where}: " if where else ""
    values = dataset.value
    if len(values) == 0 or float(values.min()) == float(values.max()):
        raise ConfigError(f"{prefix}dataset '{dataset.name}' has no explicit ratings (every value is "
                          f"{float(values[0]) if len(values) else 'missing'}), so its pairs cannot be labelled; the "
                          f"pointwise protocol needs rated data such as ml-100k or ml-latest-small")
    test_labels = labels_of(dataset, split.test, threshold)
    if test_labels.min() == test_labels.max():
        only = "liked" if test_labels[0] else "not liked"
        raise ConfigError(f"{prefix}every test pair of dataset '{dataset.name}' is {only} at label_threshold = "
                          f"{threshold:g} (values {float(values.min()):g}..{float(values.max()):g}, conversion: "
                          f"{dataset.info.get('conversion', '?')}); keep the low ratings with "
                          f"[[datasets]] implicit = {{ min_value = 0 }} or change evaluation.label_threshold")


def train_data(dataset: Dataset, rows: np.ndarray, threshold: float) -> TrainData:
    """The liked training interactions as the model's input, with every rated training pair as labels."""
    labels = labels_of(dataset, rows, threshold)
    liked = rows[labels == 1]
    ts = None if dataset.timestamp is None else dataset.timestamp[liked]
    labelled = LabelledPairs(dataset.user[rows].astype(np.int64), dataset.item[rows].astype(np.int64), labels)
    return TrainData(dataset.user[liked], dataset.item[liked], dataset.weight[liked], ts, side_info(dataset),
                     labelled=labelled)


@dataclass(frozen=True)
class TestPairs:
    """The labelled test pairs of one segment, sorted by (user, item)."""

    users: np.ndarray  # int64
    items: np.ndarray  # int64
    labels: np.ndarray  # int8

    @property
    def digest(self) -> str:
        """sha256 of the three arrays: equal in every cell of a split that scored the same pairs."""
        h = hashlib.sha256()
        for array in (self.users, self.items, self.labels):
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:16]


def test_pairs(dataset: Dataset, split: Split, users: np.ndarray, threshold: float) -> TestPairs:
    """The test rows of ``users`` as labelled pairs (deterministic in the split and the user sample)."""
    rows = split.test[np.isin(dataset.user[split.test], users)]
    u, i = dataset.user[rows].astype(np.int64), dataset.item[rows].astype(np.int64)
    labels = labels_of(dataset, rows, threshold)
    order = np.lexsort((i, u))
    return TestPairs(u[order], i[order], labels[order])


def score(model: Recommender, pairs: TestPairs, batch_users: int = 0) -> tuple[np.ndarray, float]:
    """The model's score of every pair (batches of ``batch_users`` users; 0 = all) and the seconds it took."""
    users = np.unique(pairs.users)
    step = batch_users or len(users) or 1
    bounds = np.searchsorted(pairs.users, users)
    bounds = np.append(bounds, len(pairs.users))
    parts: list[np.ndarray] = []
    seconds = 0.0
    for lo in range(0, len(users), step):
        a, b = bounds[lo], bounds[min(lo + step, len(users))]
        start = time.perf_counter()
        out = np.asarray(model.score_pairs(pairs.users[a:b], pairs.items[a:b]), dtype=np.float64)
        seconds += time.perf_counter() - start
        if out.shape != (b - a,):
            raise ValueError(f"score_pairs returned shape {out.shape} for {b - a} pairs")
        parts.append(out)
    scores = np.concatenate(parts) if parts else np.zeros(0)
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueError(f"score_pairs left {int(bad.sum())} of {len(scores)} pairs without a finite score "
                         f"(e.g. user {int(pairs.users[bad][0])}, item {int(pairs.items[bad][0])})")
    return scores, seconds


def metric_values(pairs: TestPairs, scores: np.ndarray, calibrated: bool) -> dict[str, float]:
    """auc, gauc and (calibrated models only) logloss through the registered metric records."""
    inputs = metric_lib.PairInputs(pairs.users, pairs.labels, scores, calibrated)
    out = {}
    for name in metric_lib.PAIR_METRICS:
        if name == "logloss" and not calibrated:
            continue
        out[name] = float(metric_lib.get_metric(name).fn(inputs, 0)[0])  # type: ignore[arg-type]
    return out


def bootstrap(pairs: TestPairs, scores: np.ndarray, calibrated: bool, n_resamples: int,
              seed: int, confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile CIs from resampling *users* (a user's pairs move together), one draw shared by the metrics.

    Each resample gives every user a count; a pair weighs its user's count. AUC is the weighted
    Mann-Whitney statistic (ties 1/2), GAUC the count-weighted mean of the users' own AUCs, log loss the
    weighted mean loss.
    """
    if n_resamples <= 0 or len(pairs.users) == 0:
        return {}
    users, owner = np.unique(pairs.users, return_inverse=True)
    n = len(users)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    counts = np.bincount((draws + (np.arange(n_resamples) * n)[:, None]).ravel(),
                         minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)
    weights = counts[:, owner]  # [resamples, pairs]
    labels = pairs.labels.astype(bool)
    # weighted AUC: for each pair in score order, negative weight strictly below + half the tied negative weight
    order = np.argsort(scores, kind="mergesort")
    s, lab, w = scores[order], labels[order], weights[:, order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    neg_w = np.add.reduceat(np.where(lab, 0.0, w), starts, axis=1)  # per tie group
    pos_w = np.add.reduceat(np.where(lab, w, 0.0), starts, axis=1)
    below = np.cumsum(neg_w, axis=1) - neg_w
    auc_num = (pos_w * (below + neg_w / 2.0)).sum(1)
    auc_den = pos_w.sum(1) * neg_w.sum(1)
    values: dict[str, np.ndarray] = {"auc": np.divide(auc_num, auc_den, out=np.full(n_resamples, np.nan),
                                                      where=auc_den > 0)}
    per_user = np.array([metric_lib.binary_auc(pairs.labels[owner == j], scores[owner == j]) for j in range(n)])
    size = np.bincount(owner, minlength=n).astype(np.float64)
    ok = np.isfinite(per_user)
    gauc_w = counts[:, ok] * size[ok]
    values["gauc"] = np.divide(gauc_w @ per_user[ok], gauc_w.sum(1), out=np.full(n_resamples, np.nan),
                               where=gauc_w.sum(1) > 0)
    if calibrated:
        p = np.clip(scores, metric_lib.LOGLOSS_EPS, 1.0 - metric_lib.LOGLOSS_EPS)
        loss = -np.where(labels, np.log(p), np.log1p(-p))
        values["logloss"] = (weights @ loss) / weights.sum(1)
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for name, v in values.items():
        v = v[np.isfinite(v)]
        out[name] = (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) if len(v) else (np.nan, np.nan)
    return out


def segment_rows(model: Recommender, pairs: TestPairs, base: dict[str, Any], segment: str, wanted: list[str],
                 n_bootstrap: int, seed: int, batch_users: int = 0) -> tuple[list[dict[str, Any]], np.ndarray,
                                                                             dict[str, Any]]:
    """Score one segment's pairs: the tidy rows (metrics at k = 0, plus pair counts and timing), the scores,
    and what cell.json records about it."""
    calibrated = bool(getattr(model.capabilities, "calibrated", False))
    scores, seconds = score(model, pairs, batch_users)
    values = metric_values(pairs, scores, calibrated)
    cis = bootstrap(pairs, scores, calibrated, n_bootstrap, seed)
    n_users = int(np.unique(pairs.users).size)
    _, counted, skipped = metric_lib.group_auc(pairs.users, pairs.labels, scores)
    nan = float("nan")

    def row(metric: str, value: float, n: int, status: str = "ok", ci: tuple[float, float] = (nan, nan)) -> dict:
        return base | {"segment": segment, "metric": metric, "k": 0, "value": float(value), "ci_low": ci[0],
                       "ci_high": ci[1], "n": n, "status": status}

    rows = []
    for name in wanted:
        if name not in values:  # logloss of a model whose scores are not probabilities
            rows.append(row(name, nan, 0, "unsupported"))
        else:
            rows.append(row(name, values[name], counted if name == "gauc" else n_users, ci=cis.get(name, (nan, nan))))
    rows += [row("test_pairs", len(pairs.users), n_users), row("test_pairs_liked_share", pairs.labels.mean(), n_users),
             row("gauc_users_skipped", skipped, n_users), row("score_pairs_seconds", seconds, n_users),
             row("pairs_per_second", len(pairs.users) / max(seconds, 1e-12), n_users)]
    info = {"status": "ok", "users": n_users, "pairs": int(len(pairs.users)), "pairs_digest": pairs.digest,
            "liked_share": float(pairs.labels.mean()), "gauc_users_skipped": int(skipped),
            "score_pairs_seconds": seconds, "calibrated": calibrated}
    return rows, scores, info
