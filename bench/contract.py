"""A contract-test mixin every registered model must pass.

Subclass it in a pytest module with ``model_name`` (and ``params`` for small,
fast settings); pytest collects the ``test_*`` methods. Third-party plug-ins
use it the same way::

    from bench.contract import RecommenderContract

    class TestMyModel(RecommenderContract):
        model_name = "my-model"
        params = {"factors": 8}

The known-answer test is implicit's checkerboard: users and items are split by
parity, each user likes every item of their parity except the diagonal item
``u``; a model that learns collaborative (or textual) structure must rank the
held-out item ``u`` first for user ``u``. It applies to every model whose
capabilities claim ``personalised`` (the default); only floors that give every
user the same kind of list (pop, random) declare ``personalised=False``. The
test class cannot opt out: what is checked follows what the model claims.

A test for a capability the model does not declare (cold users, cold items,
incremental update, determinism, personalisation, explanations) is *skipped* with the reason,
never reported as passed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import scipy.sparse as sp

from bench import registry
from bench.errors import ConfigError
from bench.protocol import Capabilities, Recommender, SideInfo, TrainData
from bench.validation import validate_topk

N = 20  # users == items; even so that both parities have N/2 members
WORDS = ("jazz saxophone album", "horror zombie film")


def checkerboard(n: int = N, drop_items: tuple[int, ...] = ()) -> TrainData:
    """Training data of the checkerboard; ``drop_items`` have no interactions (cold items)."""
    users, items = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    like = (users % 2 == items % 2) & (users != items) & ~np.isin(items, drop_items)
    u, i = users[like], items[like]
    parity = np.arange(n) % 2
    categories = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), parity)), shape=(n, 2))
    side = SideInfo(
        n_users=n, n_items=n,
        item_text=[f"{WORDS[p]} number {j}" for j, p in enumerate(parity)],
        item_categories=categories, category_names=["even", "odd"],
        item_features=categories.copy(), item_feature_names=["cat:even", "cat:odd"],
        user_features=sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), parity)), shape=(n, 2)),
        user_feature_names=["likes:even", "likes:odd"], dataset_name="checkerboard",
    )
    timestamps = np.arange(len(u), dtype=np.int64)
    return TrainData(u.astype(np.int32), i.astype(np.int32), np.ones(len(u), np.float32), timestamps, side)


class RecommenderContract:
    """Mixin of contract tests; see the module docstring."""

    model_name: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}

    # -- helpers -----------------------------------------------------------
    def make(self, seed: int = 0) -> Recommender:
        return registry.models.get(self.model_name)(seed=seed, **self.params)

    def claims(self) -> Capabilities:
        """The capabilities of the model as configured (an instance may differ from its class, e.g. BPR
        with one thread is deterministic, llm-rerank takes its first stage's)."""
        return self.make().capabilities

    def require(self, capability: str) -> Capabilities:
        """Skip the calling test, naming why, unless the model claims ``capability``."""
        caps = self.claims()
        if not getattr(caps, capability):
            pytest.skip(f"model '{self.model_name}' does not claim {capability}=True")
        return caps

    def fitted(self, seed: int = 0, train: TrainData | None = None) -> tuple[Recommender, TrainData]:
        train = train or checkerboard()
        model = self.make(seed)
        model.fit(train)
        return model, train

    def check(self, model: Recommender, items: Any, scores: Any, n_users: int, k: int,
              exclude: sp.csr_matrix | None = None, candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return validate_topk(self.model_name, items, scores, n_users=n_users, k=k, n_items=N, exclude=exclude,
                             candidates=candidates)

    # -- the contract ------------------------------------------------------
    def test_registered_and_declares_capabilities(self) -> None:
        cls = registry.models.get(self.model_name)
        assert issubclass(cls, Recommender)
        assert isinstance(cls.default_params, dict)
        assert "cpu" in cls.capabilities.devices

    def test_unknown_parameter_is_a_config_error(self) -> None:
        cls = registry.models.get(self.model_name)
        try:
            cls(seed=0, **{**self.params, "no_such_parameter_xyz": 1})
        except ConfigError as exc:
            assert "no_such_parameter_xyz" in str(exc)
        else:
            raise AssertionError("an unknown parameter was accepted silently")

    def test_output_is_valid_and_excludes_training_items(self) -> None:
        model, train = self.fitted()
        users = np.arange(N)
        exclude = train.matrix
        items, scores = model.recommend(users, 5, exclude=exclude)
        self.check(model, items, scores, N, 5, exclude=exclude)

    def test_known_answer_checkerboard(self) -> None:
        self.require("personalised")
        model, train = self.fitted()
        items, _ = model.recommend(np.arange(N), 1, exclude=train.matrix)
        assert np.array_equal(np.asarray(items)[:, 0], np.arange(N)), (
            f"held-out diagonal item not ranked first: got {np.asarray(items)[:, 0].tolist()}")

    def test_batch_equals_single_user(self) -> None:
        model, train = self.fitted()
        users = np.arange(N)
        batch_items, batch_scores = model.recommend(users, 5, exclude=train.matrix)
        for u in (0, 7, N - 1):
            one_items, one_scores = model.recommend(users[u:u + 1], 5, exclude=train.matrix[u:u + 1])
            assert np.array_equal(np.asarray(one_items)[0], np.asarray(batch_items)[u])
            assert np.allclose(np.asarray(one_scores)[0], np.asarray(batch_scores)[u], rtol=1e-4, atol=1e-5)

    def test_same_seed_same_output(self) -> None:
        self.require("deterministic")
        first, train = self.fitted(seed=3)
        second, _ = self.fitted(seed=3)
        a, _ = first.recommend(np.arange(N), 5, exclude=train.matrix)
        b, _ = second.recommend(np.arange(N), 5, exclude=train.matrix)
        assert np.array_equal(np.asarray(a), np.asarray(b))

    def test_shared_candidates_are_respected(self) -> None:
        model, _ = self.fitted()
        candidates = np.arange(0, N, 3)
        items, scores = model.recommend(np.arange(N), 3, candidates=candidates)
        self.check(model, items, scores, N, 3, candidates=candidates)

    def test_cold_users_from_history(self) -> None:
        caps = self.require("cold_users")
        model, _ = self.fitted()
        history = [np.array([0, 2, 4]), np.array([1, 3])]  # an even and an odd newcomer
        from bench.protocol import history_matrix

        exclude = history_matrix(history, N)
        items, scores = model.recommend(np.array([0, 1]), 3, history=history, exclude=exclude)
        items, _ = self.check(model, items, scores, 2, 3, exclude=exclude)
        if caps.personalised:
            assert np.all(items[0] % 2 == 0) and np.all(items[1] % 2 == 1), items
        if caps.cold_users_zero_shot:
            empty = [np.zeros(0, np.int64)]
            items, scores = model.recommend(np.array([0]), 3, history=empty)
            self.check(model, items, scores, 1, 3)

    def test_cold_items_from_side_information(self) -> None:
        caps = self.require("cold_items")
        cold = (4, 5)
        model, _ = self.fitted(train=checkerboard(drop_items=cold))
        candidates = np.array(cold)
        items, scores = model.recommend(np.array([0, 1]), 2, candidates=candidates)
        items, _ = self.check(model, items, scores, 2, 2, candidates=candidates)
        if caps.personalised:  # item 4 is even, item 5 odd: each user's own parity first
            assert items[0, 0] == 4 and items[1, 0] == 5, items

    def test_explanations_point_into_the_lists(self) -> None:
        """A model claiming ``explains`` returns (row, rank, text) within the lists it was given, rows in order."""
        self.require("explains")
        model, train = self.fitted()
        users = np.arange(4)
        items, _ = model.recommend(users, 3, exclude=train.matrix[users])
        reasons = model.explain(users, np.asarray(items))
        assert reasons, "claims explains but wrote no reason"
        for row, rank, text in reasons:
            assert 0 <= row < len(users) and 0 <= rank < 3 and isinstance(text, str), (row, rank, text)
        assert [r[:2] for r in reasons] == sorted(r[:2] for r in reasons)

    def test_incremental_update(self) -> None:
        self.require("update")
        model, train = self.fitted()
        new = checkerboard()
        keep = new.user == 0
        new = TrainData(new.user[keep][:2], new.item[keep][:2], new.weight[keep][:2], None, new.side)
        model.update(new)
        items, scores = model.recommend(np.arange(N), 3)
        self.check(model, items, scores, N, 3)
