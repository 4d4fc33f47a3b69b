"""Checks every model's output before it is scored; a violation fails the cell.

Nothing is silently "fixed": a list with a duplicate, a NaN score or a training
item that should have been excluded means the model is broken, and a number
computed from it would be a confident lie.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bench.errors import ModelOutputError


def validate_topk(model: str, items: object, scores: object, *, n_users: int, k: int, n_items: int,
                  exclude: sp.csr_matrix | None = None, candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(items, scores)`` as arrays if they are a valid top-k answer, else raise."""

    def fail(problem: str) -> ModelOutputError:
        return ModelOutputError(f"model '{model}' returned invalid recommendations: {problem}")

    try:
        items_arr = np.asarray(items)
        scores_arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise fail(f"output is not numeric arrays ({exc})") from None
    if items_arr.ndim != 2 or scores_arr.ndim != 2:
        raise fail(f"expected 2-D arrays [users, k], got items {items_arr.shape} and scores {scores_arr.shape}")
    if items_arr.shape != scores_arr.shape:
        raise fail(f"items {items_arr.shape} and scores {scores_arr.shape} differ in shape")
    if items_arr.shape[0] != n_users:
        raise fail(f"{items_arr.shape[0]} rows for {n_users} users")
    if items_arr.shape[1] < k:
        raise fail(f"{items_arr.shape[1]} items per user, {k} requested")
    items_arr, scores_arr = items_arr[:, :k], scores_arr[:, :k]
    if not np.issubdtype(items_arr.dtype, np.integer):
        if not np.all(np.isfinite(items_arr.astype(np.float64))) or np.any(items_arr != np.round(items_arr)):
            raise fail(f"item ids are not integers (dtype {items_arr.dtype})")
        items_arr = items_arr.astype(np.int64)
    if items_arr.size and (items_arr.min() < 0 or items_arr.max() >= n_items):
        raise fail(f"item id out of range [0, {n_items}) (min {items_arr.min()}, max {items_arr.max()}); "
                   f"a list shorter than k padded with -1 counts too")
    if not np.all(np.isfinite(scores_arr)):
        bad = int((~np.isfinite(scores_arr)).any(1).sum())
        raise fail(f"NaN or infinite scores for {bad} user(s)")
    if k > 1:
        if np.any(np.diff(scores_arr, axis=1) > 1e-9 * (1 + np.abs(scores_arr[:, :-1]))):
            raise fail("scores are not sorted best-first")
        sorted_items = np.sort(items_arr, axis=1)
        dup_rows = (sorted_items[:, 1:] == sorted_items[:, :-1]).any(1)
        if dup_rows.any():
            raise fail(f"duplicate items in the list of {int(dup_rows.sum())} user(s) (first row {int(np.argmax(dup_rows))})")
    if exclude is not None and exclude.nnz:
        flagged = np.asarray(exclude[np.arange(n_users)[:, None], items_arr].todense()) != 0
        if flagged.any():
            raise fail(f"{int(flagged.sum())} excluded item(s) recommended (e.g. training items) "
                       f"for {int(flagged.any(1).sum())} user(s)")
    if candidates is not None:
        cand = np.asarray(candidates)
        if cand.ndim == 1:
            ok = np.isin(items_arr, cand)
        else:  # per-user rows (padding < 0 never matches): compare (row, item) keys, not an [n, k, C] cube
            row = np.arange(n_users, dtype=np.int64)[:, None]
            ok = np.isin(row * n_items + items_arr, (row * n_items + cand)[cand >= 0])
        if not ok.all():
            raise fail(f"{int((~ok).sum())} item(s) outside the candidate set")
    return items_arr.astype(np.int64), scores_arr


def tied_list_warning(scores: np.ndarray) -> str | None:
    """A warning when some users' whole top-k has one score (k >= 2), else None.

    Such a list is not a ranking the model made: which items fill it and in what
    order is the tie-break's choice (bench.protocol.tie_keys), so its accuracy
    says little about the model. Valid output, so a warning (cell.json, report)
    rather than a failure.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2 or not len(scores):
        return None
    flat = int((scores == scores[:, :1]).all(axis=1).sum())
    if not flat:
        return None
    return (f"{flat} of {len(scores)} users' top-{scores.shape[1]} lists have all scores equal: "
            f"their items were picked by the random tie-break, not ranked by the model")
