"""LightFM (Kula 2015, package ``lightfm-next``): pure collaborative filtering and the hybrid.

``lightfm`` is LightFM with identity features only (pure CF); ``lightfm-hybrid``
represents each user and item as the sum of its features' embeddings: an
identity feature (only for users/items seen in training) plus side features
(items: genres, tags, title tokens; users: demographics and the like), rows
L1-normalised as LightFM's ``Dataset`` does.

Cold start, and what we do for it (LightFM cannot add rows after ``fit``):

- cold items (hybrid only): an item without training interactions never had an
  identity feature, so its representation is its side features' embeddings, the
  same representation it had during training;
- incremental ``update`` (both modes): ``fit_partial`` for ``update_epochs``
  epochs on the new interactions alone, with the same feature layout; users and
  items seen for the first time gain their identity feature (its embedding row
  already exists, untrained), and the fold-in map is refit on the new embeddings;
- cold users (both modes), *fold-in through item representations*: after fitting,
  a ridge regression maps a user's L1-normalised history row to (warm user
  embedding - the part their side features explain). A cold user gets
  side-feature embedding + history @ map; with an empty history that is the
  side-feature part alone (hybrid: zero-shot; pure: not claimed). No gradient
  step is taken at query time, so serving is deterministic and cheap.

``loss`` is LightFM's: ``warp``, ``bpr``, ``warp-kos`` or ``logistic``. Logistic
loss needs negatives, and implicit data has none, so for it each epoch adds
``negatives`` uniformly sampled unobserved items per positive as -1 labels
(seeded). Training is Hogwild SGD: deterministic only with ``num_threads = 1``
(the default); more threads are faster and not bit-reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from bench.errors import ConfigError
from bench.protocol import Capabilities, Recommender, TrainData, history_matrix

LIGHTFM_ARGS = ("no_components", "k", "n", "learning_schedule", "loss", "learning_rate", "rho", "epsilon",
                "item_alpha", "user_alpha", "max_sampled")
LOSSES = ("warp", "bpr", "warp-kos", "logistic")


class LightFMPure(Recommender):
    """LightFM with identity features only; see the module docstring."""

    name = "lightfm"
    family = "CF/MF"
    summary = "LightFM factorisation with identity features only (pure CF, WARP loss)"
    capabilities = Capabilities(cold_users=True, update=True)
    # LightFM's own defaults, except no_components/epochs from its MovieLens examples (30).
    default_params: dict[str, Any] = {
        "loss": "warp", "no_components": 30, "learning_rate": 0.05, "learning_schedule": "adagrad",
        "item_alpha": 0.0, "user_alpha": 0.0, "max_sampled": 10, "k": 5, "n": 10, "rho": 0.95,
        "epsilon": 1e-6, "epochs": 30, "num_threads": 1, "negatives": 1, "fold_in_l2": 1.0,
        "update_epochs": 1,  # fit_partial epochs over the new interactions in update()
    }
    hybrid = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.params["loss"] not in LOSSES:
            raise ConfigError(f"model '{self.name}': loss = '{self.params['loss']}' is not a LightFM loss; "
                              f"use one of {', '.join(LOSSES)}")
        if int(self.params["num_threads"]) != 1:
            self.capabilities = Capabilities(
                cold_users=self.capabilities.cold_users,
                cold_users_zero_shot=self.capabilities.cold_users_zero_shot,
                cold_items=self.capabilities.cold_items, update=self.capabilities.update, deterministic=False,
                nondeterminism="LightFM's Hogwild SGD with num_threads > 1 races; use num_threads = 1")

    # -- features ----------------------------------------------------------
    def feature_matrices(self, train: TrainData) -> tuple[sp.csr_matrix | None, sp.csr_matrix | None]:
        """(user_features, item_features) for LightFM, or (None, None) for pure CF."""
        return None, None

    # -- fitting -----------------------------------------------------------
    def fit(self, train: TrainData) -> None:
        from lightfm import LightFM

        p = self.params
        self.n_users, self.n_items = train.n_users, train.n_items
        self.user_items = train.matrix
        self.side = train.side
        self.user_features, self.item_features = self.feature_matrices(train)
        self.model = LightFM(random_state=self.seed, **{key: p[key] for key in LIGHTFM_ARGS})
        self.negative_rng = np.random.default_rng(self.seed)
        self.train_epochs(self.user_items, int(p["epochs"]))
        self.refresh_representations()

    def update(self, new: TrainData) -> None:
        """``fit_partial`` on the new interactions (``update_epochs`` epochs), then refresh the fold-in map."""
        self.user_items = (self.user_items + new.matrix).tocsr()
        if self.hybrid:  # first-seen users/items gain their identity feature; the column layout is unchanged
            self.user_features, self.item_features = self.feature_matrices(
                TrainData(*self.user_items.nonzero(), np.ones(self.user_items.nnz, np.float32), None, self.side))
        self.train_epochs(new.matrix, int(self.params["update_epochs"]))
        self.refresh_representations()

    def train_epochs(self, interactions: sp.csr_matrix, epochs: int) -> None:
        """``epochs`` passes of LightFM's SGD over ``interactions`` (as binary positives), continuing training."""
        positives = sp.coo_matrix(interactions)
        positives = sp.coo_matrix((np.ones(positives.nnz, np.float32), (positives.row, positives.col)),
                                  shape=positives.shape)
        fit_args = {"user_features": self.user_features, "item_features": self.item_features,
                    "num_threads": int(self.params["num_threads"])}
        if self.params["loss"] == "logistic":
            for _ in range(epochs):
                self.model.fit_partial(self.with_negatives(positives, self.negative_rng), epochs=1, **fit_args)
        elif epochs > 0:
            self.model.fit_partial(positives, epochs=epochs, **fit_args)

    def refresh_representations(self) -> None:
        """Cache the embeddings and biases that serving uses, and refit the cold-user fold-in on them."""
        self.item_bias, self.item_vectors = self.model.get_item_representations(self.item_features)
        self.user_bias, self.user_vectors = self.model.get_user_representations(self.user_features)
        self.fit_fold_in()

    def with_negatives(self, positives: sp.coo_matrix, rng: np.random.Generator) -> sp.coo_matrix:
        """Positives as +1 plus ``negatives`` sampled unobserved items per positive as -1."""
        n = positives.nnz * int(self.params["negatives"])
        users = np.repeat(positives.row, int(self.params["negatives"]))
        items = rng.integers(0, self.n_items, n)
        seen = np.asarray(self.user_items[users, items]).ravel() != 0
        users, items = users[~seen], items[~seen]
        matrix = sp.coo_matrix((np.concatenate([np.ones(positives.nnz), -np.ones(len(users))]).astype(np.float32),
                                (np.concatenate([positives.row, users]), np.concatenate([positives.col, items]))),
                               shape=positives.shape).tocsr()
        matrix.sum_duplicates()
        matrix.data = np.sign(matrix.data)  # a duplicated negative stays -1
        matrix.eliminate_zeros()
        return matrix.tocoo()

    # -- cold users: fold-in -------------------------------------------------
    def side_user_vectors(self, user_ids: np.ndarray) -> np.ndarray:
        """The part of a user's embedding explained by side features (zero in pure CF)."""
        return np.zeros((len(user_ids), self.user_vectors.shape[1]), dtype=np.float64)

    def fit_fold_in(self) -> None:
        """Ridge map: L1-normalised history row -> (embedding - side-feature part), over warm users."""
        counts = np.asarray(self.user_items.getnnz(axis=1))
        warm = np.flatnonzero(counts > 0)
        rows = _normalised(sp.csr_matrix(self.user_items[warm], dtype=np.float64))
        target = self.user_vectors[warm].astype(np.float64) - self.side_user_vectors(warm)
        scale = float(self.params["fold_in_l2"]) * float(rows.multiply(rows).sum() / max(1, len(warm)))
        if rows.shape[0] <= rows.shape[1]:  # dual ridge: a users x users system
            gram = np.asarray((rows @ rows.T).todense())
            gram[np.diag_indices_from(gram)] += scale
            self.fold_in_map = np.asarray(rows.T @ np.linalg.solve(gram, target))  # [n_items, dim]
        else:  # primal ridge: an items x items system
            gram = np.asarray((rows.T @ rows).todense())
            gram[np.diag_indices_from(gram)] += scale
            self.fold_in_map = np.linalg.solve(gram, np.asarray(rows.T @ target))

    def user_representation(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> np.ndarray:
        if history is None:
            return self.user_vectors[user_ids].astype(np.float64)
        rows = _normalised(history_matrix(history, self.n_items).astype(np.float64))
        return self.side_user_vectors(user_ids) + np.asarray(rows @ self.fold_in_map)

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        user_ids = np.asarray(user_ids)
        users = self.user_representation(user_ids, history)
        # einsum (no BLAS) keeps each user's scores identical whatever the batch size; the
        # user bias is constant per user and does not change a ranking.
        return np.einsum("uf,if->ui", users, self.item_vectors.astype(np.float64)) + self.item_bias[None, :]

    def size_bytes(self) -> int:
        return int(self.model.item_embeddings.nbytes + self.model.user_embeddings.nbytes
                   + self.model.item_biases.nbytes + self.model.user_biases.nbytes)


class LightFMHybrid(LightFMPure):
    """LightFM with identity + side features for users and items; see the module docstring."""

    name = "lightfm-hybrid"
    family = "CF/MF"
    summary = "LightFM hybrid: identity + item genres/tags/title and user demographics features"
    capabilities = Capabilities(cold_users=True, cold_users_zero_shot=True, cold_items=True, update=True)
    default_params = {**LightFMPure.default_params, "user_side_features": True, "item_side_features": True}
    hybrid = True

    def feature_matrices(self, train: TrainData) -> tuple[sp.csr_matrix | None, sp.csr_matrix | None]:
        side = train.side
        seen_items = np.bincount(train.item, minlength=train.n_items) > 0
        seen_users = np.bincount(train.user, minlength=train.n_users) > 0
        item_side = side.item_features if self.params["item_side_features"] else None
        user_side = side.user_features if self.params["user_side_features"] else None
        self.n_user_side = 0 if user_side is None else user_side.shape[1]
        return _with_identity(user_side, seen_users), _with_identity(item_side, seen_items)

    def side_user_vectors(self, user_ids: np.ndarray) -> np.ndarray:
        """Side-feature-only representation (no identity): what a newcomer has before any history."""
        dim = self.user_vectors.shape[1]
        if not self.n_user_side:
            return np.zeros((len(user_ids), dim))
        side = self.user_features[np.asarray(user_ids)][:, :self.n_user_side]
        side = _normalised(sp.csr_matrix(side, dtype=np.float64))
        return np.asarray(side @ self.model.user_embeddings[:self.n_user_side].astype(np.float64))


def _with_identity(side: sp.csr_matrix | None, seen: np.ndarray) -> sp.csr_matrix:
    """[side features | identity of seen rows], rows L1-normalised; unseen rows keep side features only."""
    n = len(seen)
    seen_idx = np.flatnonzero(seen)
    identity = sp.csr_matrix((np.ones(len(seen_idx), np.float32), (seen_idx, seen_idx)), shape=(n, n))
    parts = [identity] if side is None or side.shape[1] == 0 else [sp.csr_matrix(side, dtype=np.float32), identity]
    return _normalised(sp.hstack(parts, format="csr", dtype=np.float32)).astype(np.float32)


def _normalised(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Rows scaled to sum to 1 (empty rows stay empty)."""
    matrix = sp.csr_matrix(matrix, copy=True)
    sums = np.asarray(abs(matrix).sum(axis=1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums, dtype=np.float64), where=sums > 0)
    return sp.csr_matrix(sp.diags(scale) @ matrix)
