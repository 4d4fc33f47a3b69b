"""Neighbourhood and linear item-item models: ItemKNN, EASE and PureSVD.

All three score a user as ``history_row @ W`` for an item-item matrix ``W``
(sparse top-k cosine neighbours, EASE's closed-form weights, or the rank-f
projection ``V V^T`` of PureSVD). A user is therefore described only by their
history row, which is why these models serve cold users from a k-shot history
with exactly the same code path as warm users, and absorb new interactions of
known users (``update``) by editing that row; ``W`` itself is not refitted by
``update`` (refit to learn new item-item structure).

Everything is vectorised numpy/scipy. Scores are computed sparse-row @ dense,
row by row in scipy, so a user's scores do not depend on how users are batched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from bench.errors import ConfigError
from bench.protocol import Capabilities, Recommender, TrainData, history_matrix, mask_and_rank, top_k

HISTORY_CAPABILITIES = Capabilities(cold_users=True, update=True)


class HistoryModel(Recommender):
    """Base for models that score ``history_row @ W``; subclasses build ``W`` in :meth:`learn`."""

    capabilities = HISTORY_CAPABILITIES

    def fit(self, train: TrainData) -> None:
        self.user_items = _binary(train.matrix)
        self.learn(self.user_items)

    def learn(self, user_items: sp.csr_matrix) -> None:
        raise NotImplementedError

    def history_rows(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> sp.csr_matrix:
        if history is None:
            return self.user_items[np.asarray(user_ids)]
        return history_matrix(history, self.user_items.shape[1])

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        scores = self.history_rows(user_ids, history) @ self.weights
        return scores.toarray() if sp.issparse(scores) else np.asarray(scores, dtype=np.float64)

    def recommend(self, user_ids: np.ndarray, k: int, *, history: list[np.ndarray] | None = None,
                  candidates: np.ndarray | None = None,
                  exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As the base class, masking exclusions in place: ``score`` returns a fresh array we own."""
        user_ids = np.asarray(user_ids)
        scores = self.score(user_ids, history)
        if candidates is not None or exclude is None or not exclude.nnz:
            return mask_and_rank(scores, k, candidates=candidates, exclude=exclude, users=user_ids,
                                 salt=self.tie_salt)
        rows, cols = exclude.nonzero()
        scores[rows, cols] = -np.inf
        return top_k(scores, k, users=user_ids, salt=self.tie_salt)

    def update(self, new: TrainData) -> None:
        """New interactions of known users join their history rows (``W`` is kept)."""
        added = _binary(new.matrix)
        self.user_items = _binary(self.user_items + added)

    def size_bytes(self) -> int:
        w = self.weights
        if sp.issparse(w):
            return int(w.data.nbytes + w.indices.nbytes + w.indptr.nbytes)
        return int(np.asarray(w).nbytes)


def spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite matrix through Cholesky (LAPACK potrf/potri).

    About half the work of a general LU inverse; EASE's Gram matrix plus l2 is always SPD.
    """
    from scipy.linalg import lapack

    factor, info = lapack.dpotrf(matrix, lower=False, clean=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"matrix is not positive definite (potrf info={info})")
    inverse, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse failed (potri info={info})")
    inverse += np.triu(inverse, 1).T  # potri fills the upper triangle; the lower one is the cleaned zeros
    return inverse


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Implicit weights become 0/1: these models are defined on binary feedback."""
    out = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    out.sum_duplicates()
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


class ItemKNN(HistoryModel):
    """Item-based k-nearest neighbours with shrunk cosine similarity (Sarwar et al. 2001).

    ``sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrink)``; each item keeps
    its ``neighbours`` most similar items (self excluded), and a user's score
    for item ``j`` sums the similarities of ``j`` to the user's items.
    Defaults follow Dacrema et al. (RecSys 2019) ranges: k=100, shrink=10.
    Deterministic (ties broken by the lower item index).
    """

    name = "itemknn"
    family = "CF/MF"
    summary = "item-based k-nearest neighbours, shrunk cosine similarity (Sarwar 2001)"
    default_params: dict[str, Any] = {"neighbours": 100, "shrink": 10.0, "block_size": 2048}

    def learn(self, user_items: sp.csr_matrix) -> None:
        k = int(self.params["neighbours"])
        shrink = float(self.params["shrink"])
        if k < 1 or shrink < 0:
            raise ConfigError(f"itemknn: neighbours must be >= 1 and shrink >= 0, got {k} and {shrink}")
        item_users = user_items.T.tocsr()
        norms = np.sqrt(np.asarray(item_users.sum(axis=1)).ravel())
        n_items = item_users.shape[0]
        k = min(k, max(1, n_items - 1))
        block = max(1, int(self.params["block_size"]))
        rows, cols, vals = [], [], []
        for lo in range(0, n_items, block):
            hi = min(lo + block, n_items)
            co = np.asarray((item_users[lo:hi] @ item_users.T).todense(), dtype=np.float64)  # [b, n_items]
            sim = co / (norms[lo:hi, None] * norms[None, :] + shrink + 1e-12)
            sim[np.arange(hi - lo), np.arange(lo, hi)] = 0.0  # no self-similarity
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            top_vals = np.take_along_axis(sim, top, axis=1)
            keep = top_vals > 0
            rows.append(np.repeat(np.arange(lo, hi), k)[keep.ravel()])
            cols.append(top.ravel()[keep.ravel()])
            vals.append(top_vals.ravel()[keep.ravel()])
        # Row i of `neighbours` holds item i's neighbours j; scoring needs W[j, i] = sim(i, j)
        # summed over the user's items j, i.e. the transpose.
        neighbours = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                   shape=(n_items, n_items))
        self.weights = neighbours.T.tocsr()


class EASE(HistoryModel):
    """Embarrassingly Shallow Autoencoder (Steck, WWW 2019), closed form.

    ``P = (X^T X + l2 I)^-1``, ``B = I - P diag(1 / diag(P))``, so ``diag(B) = 0``.
    ``l2`` defaults to 250 (RecBole's default; Steck used 500 on ML-20M). Dense
    n_items x n_items: fine up to ~20k items. Deterministic.
    """

    name = "ease"
    family = "CF/MF"
    summary = "closed-form linear item-item autoencoder EASE (Steck 2019)"
    default_params: dict[str, Any] = {"l2": 250.0}

    def learn(self, user_items: sp.csr_matrix) -> None:
        l2 = float(self.params["l2"])
        if l2 <= 0:
            raise ConfigError(f"ease: l2 must be > 0, got {l2}")
        gram = np.asarray((user_items.T @ user_items).todense(), dtype=np.float64)
        gram[np.diag_indices_from(gram)] += l2
        weights = spd_inverse(gram)
        weights /= -np.diag(weights)  # B = -P / diag(P) off the diagonal (in place: n_items^2 floats)
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights


class PureSVD(HistoryModel):
    """PureSVD (Cremonesi, Koren & Turrin, RecSys 2010): truncated SVD of the binary matrix.

    ``X ≈ U S V^T`` with ``factors`` singular triplets from ``scipy.sparse.linalg.svds``
    (ARPACK, start vector drawn from the seed); a user scores ``x_u V V^T``
    (fold-in, so cold users need no refit). Default 50 factors (Cremonesi et al.
    on MovieLens). Deterministic for a fixed seed.
    """

    name = "puresvd"
    family = "CF/MF"
    summary = "truncated SVD of the binary interaction matrix, history fold-in (Cremonesi 2010)"
    default_params: dict[str, Any] = {"factors": 50}

    def learn(self, user_items: sp.csr_matrix) -> None:
        from scipy.sparse.linalg import svds

        factors = int(self.params["factors"])
        limit = min(user_items.shape) - 1
        if not 1 <= factors <= limit:
            raise ConfigError(f"puresvd: factors must lie in 1..{limit} for this data, got {factors}")
        start = np.random.default_rng(self.seed).random(min(user_items.shape))
        _, _, vt = svds(user_items, k=factors, v0=start, solver="arpack")
        self.item_factors = np.ascontiguousarray(vt.T)  # [n_items, factors]

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        rows = self.history_rows(user_ids, history)
        user_vectors = np.asarray(rows @ self.item_factors)
        # einsum (no BLAS) keeps each user's scores identical whatever the batch size.
        return np.einsum("uf,if->ui", user_vectors, self.item_factors)

    @property
    def weights(self) -> np.ndarray:  # for size_bytes: the learned state is V
        return self.item_factors
