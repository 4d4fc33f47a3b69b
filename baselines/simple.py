"""Floors every benchmark needs: popularity and uniform random."""

from __future__ import annotations

import numpy as np

from bench.protocol import Capabilities, Recommender, TrainData


class Pop(Recommender):
    """Most popular items by number of training users; the same list for everyone.

    Serves cold users trivially (history is ignored). Cold items have no
    popularity, so they are not claimed.
    """

    name = "pop"
    family = "floor"
    summary = "most popular items by number of training users; the same list for everyone"
    capabilities = Capabilities(cold_users=True, cold_users_zero_shot=True, update=True, personalised=False)

    def fit(self, train: TrainData) -> None:
        self.popularity = np.bincount(train.item, minlength=train.n_items).astype(np.float64)

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(user_ids), len(self.popularity)))

    def update(self, new: TrainData) -> None:
        self.popularity += np.bincount(new.item, minlength=len(self.popularity))

    def size_bytes(self) -> int:
        return int(self.popularity.nbytes)


class Random(Recommender):
    """Uniform random scores, reproducible per (seed, user) whatever the batching."""

    name = "random"
    family = "floor"
    summary = "uniform random scores, reproducible per (seed, user): the chance level"
    capabilities = Capabilities(cold_users=True, cold_users_zero_shot=True, cold_items=True, update=True,
                                personalised=False)

    def fit(self, train: TrainData) -> None:
        self.n_items = train.n_items

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        return np.stack([np.random.default_rng((self.seed, int(u))).random(self.n_items) for u in user_ids]) \
            if len(user_ids) else np.zeros((0, self.n_items))

    def update(self, new: TrainData) -> None:
        """Nothing to learn."""
