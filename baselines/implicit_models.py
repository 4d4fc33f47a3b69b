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
    family = "CF/MF"
    summary = "implicit's alternating least squares matrix factorisation (Hu, Koren & Volinsky 2008)"
    capabilities = Capabilities(cold_users=True, update=True)
    preload_modules = ("implicit.cpu.als",)  # ~0.4 s of imports (scipy.linalg): a cold load, not fit time
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
            return mask_and_rank(self.score(user_ids, history), k, candidates=candidates, exclude=exclude,
                                 users=user_ids, salt=self.tie_salt)
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


class _ImplicitSGD(Recommender):
    """Shared code of implicit's SGD-trained factor models (BPR, LMF).

    Neither supports ``recalculate_user`` in implicit, so cold users are not
    claimed. Training is Hogwild-style SGD: with several threads the updates
    race and two runs with the same seed differ slightly, hence
    ``deterministic=False`` by default; ``num_threads = 1`` gives bit-identical
    runs (see :meth:`__init__`).
    """

    capabilities = Capabilities(
        deterministic=False,
        nondeterminism="implicit trains BPR/LMF with lock-free parallel SGD; set num_threads = 1 for identical runs")
    preload_modules = ("implicit.cpu.bpr", "implicit.cpu.lmf")  # imports are a cold load, not fit time
    library_class = ""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if int(self.params.get("num_threads", 0)) == 1:  # single-threaded SGD is reproducible
            self.capabilities = Capabilities(deterministic=True)

    def make_model(self) -> object:
        raise NotImplementedError

    def fit(self, train: TrainData) -> None:
        self.user_items = train.matrix
        with threadpool_limits(1, "blas"):
            self.model = self.make_model()
            self.model.fit(self.user_items, show_progress=False)
        self.user_factors = np.asarray(self.model.user_factors)
        self.item_factors = np.asarray(self.model.item_factors)

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        if history is not None:
            raise NotImplementedError(f"model '{self.name}' cannot fold in cold users (implicit has no "
                                      f"recalculate_user for it)")
        users = self.user_factors[np.asarray(user_ids)].astype(np.float64)
        # einsum (no BLAS) keeps each user's scores identical whatever the batch size.
        return np.einsum("uf,if->ui", users, self.item_factors.astype(np.float64))

    def size_bytes(self) -> int:
        return int(self.user_factors.nbytes + self.item_factors.nbytes)


class BPR(_ImplicitSGD):
    """implicit's BayesianPersonalizedRanking (Rendle et al. 2009), implicit's own parameter names.

    Defaults are implicit's (factors 100, lr 0.01, reg 0.01, 100 iterations).
    implicit adds an item-bias column to the factors, so scores include it.
    """

    name = "bpr"
    family = "CF/MF"
    summary = "implicit's Bayesian personalised ranking, pairwise SGD matrix factorisation (Rendle 2009)"
    default_params = {"factors": 100, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100,
                      "verify_negative_samples": True, "num_threads": 0}

    def make_model(self) -> object:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(random_state=self.seed, **self.params)


class LMF(_ImplicitSGD):
    """implicit's LogisticMatrixFactorization (Johnson 2014), implicit's own parameter names.

    Defaults are implicit's (factors 30, lr 1.0, reg 0.6, 30 iterations, neg_prop 30).
    """

    name = "lmf"
    family = "CF/MF"
    summary = "implicit's logistic matrix factorisation (Johnson 2014)"
    default_params = {"factors": 30, "learning_rate": 1.0, "regularization": 0.6, "iterations": 30,
                      "neg_prop": 30, "num_threads": 0}

    def make_model(self) -> object:
        from implicit.cpu.lmf import LogisticMatrixFactorization

        return LogisticMatrixFactorization(random_state=self.seed, **self.params)
