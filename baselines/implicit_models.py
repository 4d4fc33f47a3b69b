"""Models from the `implicit` library (Ben Frederickson), used as users use them."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from bench.protocol import Capabilities, Recommender, TrainData, history_matrix, mask_and_rank


class ALS(Recommender):
    """implicit's AlternatingLeastSquares (Hu, Koren & Volinsky 2008), conjugate-gradient solver.

    Parameters are implicit's own names. Cold users are folded in from their
    k-shot history with implicit's ``recalculate_user`` (one least-squares solve
    against the fixed item factors); an empty history cannot be folded in.
    Deterministic for a fixed ``random_state``: each user/item solve is
    independent, so thread scheduling does not change the result.
    """

    name = "als"
    capabilities = Capabilities(cold_users=True, update=True)
    default_params = {"factors": 64, "regularization": 0.05, "alpha": 2.0, "iterations": 15, "num_threads": 0}

    def fit(self, train: TrainData) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        p = self.params
        self.user_items = train.matrix
        with threadpool_limits(1, "blas"):  # implicit parallelises itself; nested BLAS threads thrash
            self.model = AlternatingLeastSquares(
                factors=p["factors"], regularization=p["regularization"], alpha=p["alpha"],
                iterations=p["iterations"], num_threads=p["num_threads"], random_state=self.seed,
            )
            self.model.fit(self.user_items, show_progress=False)

    def _user_factors(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> np.ndarray:
        if history is None:
            return self.model.user_factors[user_ids]
        rows = history_matrix(history, self.user_items.shape[1])
        return np.asarray(self.model.recalculate_user(np.arange(len(history)), rows))

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        return self._user_factors(user_ids, history) @ self.model.item_factors.T

    def recommend(self, user_ids: np.ndarray, k: int, *, history: list[np.ndarray] | None = None,
                  candidates: np.ndarray | None = None,
                  exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        user_ids = np.asarray(user_ids)
        if history is not None or (candidates is not None and np.ndim(candidates) == 2):
            return mask_and_rank(self.score(user_ids, history), k, candidates=candidates, exclude=exclude)
        # Warm users: implicit's own batched top-k, with its own filtering.
        filter_matrix = exclude if exclude is not None else sp.csr_matrix((len(user_ids), self.user_items.shape[1]))
        ids, scores = self.model.recommend(
            user_ids, filter_matrix.tocsr().astype(np.float32), N=k,
            filter_already_liked_items=exclude is not None, items=candidates,
        )
        return np.atleast_2d(ids), np.atleast_2d(scores)

    def update(self, new: TrainData) -> None:
        """Partial refit of the users and items the new interactions touch (implicit's partial_fit_*)."""
        self.user_items = (self.user_items + new.matrix).tocsr()
        users = np.unique(new.user)
        items = np.unique(new.item)
        self.model.partial_fit_users(users, self.user_items[users])
        self.model.partial_fit_items(items, self.user_items.T.tocsr()[items])

    def size_bytes(self) -> int:
        return int(self.model.user_factors.nbytes + self.model.item_factors.nbytes)
