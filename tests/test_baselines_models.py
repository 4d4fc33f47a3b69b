"""The CF/MF baselines against independent computations on small data (numpy/scipy written out here)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bench import registry
from bench.contract import checkerboard
from bench.data import load_dataset
from bench.errors import ConfigError
from bench.protocol import TrainData
from bench.runner import train_data
from bench.splits import make_split


def small_train(seed: int = 0, n_users: int = 30, n_items: int = 12) -> TrainData:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.3
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = True  # nobody is empty
    u, i = np.nonzero(dense)
    base = checkerboard(4)
    side = base.side.__class__(**{**base.side.__dict__, "n_users": n_users, "n_items": n_items,
                                  "item_text": [""] * n_items, "item_categories": sp.csr_matrix((n_items, 0)),
                                  "item_features": sp.csr_matrix((n_items, 0)), "user_features": None})
    return TrainData(u.astype(np.int32), i.astype(np.int32), np.ones(len(u), np.float32), None, side)


def fitted(name: str, train: TrainData, **params):
    model = registry.models.get(name)(seed=0, **params)
    model.fit(train)
    return model


def test_ease_matches_the_closed_form_written_out() -> None:
    train = small_train()
    x = train.matrix.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)  # Steck's B = I - P diag(1/diag(P))
    model = fitted("ease", train, l2=5.0)
    assert np.allclose(model.weights, b, atol=1e-10) and np.allclose(np.diag(model.weights), 0)
    assert np.allclose(model.score(np.arange(5)), x[:5] @ b)


def test_itemknn_keeps_the_top_k_shrunk_cosine_neighbours() -> None:
    train = small_train(1)
    x = train.matrix.toarray().astype(np.float64)
    co = x.T @ x
    norms = np.sqrt(np.diag(co))
    sim = co / (np.outer(norms, norms) + 2.0)
    np.fill_diagonal(sim, 0)
    k = 3
    kept = np.zeros_like(sim)
    for i in range(len(sim)):  # item i keeps its k most similar items j (sim[i, j])
        top = np.argsort(-sim[i], kind="stable")[:k]
        kept[i, top] = sim[i, top]
    model = fitted("itemknn", train, neighbours=k, shrink=2.0)
    assert np.allclose(model.weights.toarray(), kept.T, atol=1e-9)  # W[j, i]: a user's item j votes for i
    assert np.allclose(model.score(np.arange(4)), x[:4] @ kept.T)


def test_puresvd_scores_are_the_projection_on_the_top_singular_vectors() -> None:
    train = small_train(2)
    x = train.matrix.toarray().astype(np.float64)
    _, _, vt = np.linalg.svd(x)
    v = vt[:4].T
    model = fitted("puresvd", train, factors=4)
    assert np.allclose(model.score(np.arange(len(x))), x @ v @ v.T, atol=1e-8)
    history = [np.array([0, 3]), np.array([5])]
    cold = np.zeros((2, x.shape[1]))
    cold[0, [0, 3]] = cold[1, 5] = 1
    assert np.allclose(model.score(np.array([0, 1]), history), cold @ v @ v.T, atol=1e-8)


def test_history_models_update_their_users_rows() -> None:
    train = small_train(3)
    model = fitted("ease", train, l2=1.0)
    user = 0
    new_item = int(np.flatnonzero(train.matrix.toarray()[user] == 0)[0])
    new = TrainData(np.array([user], np.int32), np.array([new_item], np.int32), np.ones(1, np.float32), None,
                    train.side)
    before = model.score(np.array([user]))
    model.update(new)
    row = train.matrix.toarray()[user].astype(float)
    row[new_item] = 1
    assert np.allclose(model.score(np.array([user])), row @ model.weights)
    assert not np.allclose(before, model.score(np.array([user])))


@pytest.mark.parametrize("name, params", [("bpr", {"factors": 8, "iterations": 20}),
                                          ("lmf", {"factors": 8, "iterations": 10}),
                                          ("lightfm", {"no_components": 8, "epochs": 3})])
def test_single_thread_sgd_is_reproducible_and_declared_so(name: str, params: dict) -> None:
    cls = registry.models.get(name)
    threads = {"num_threads": 1}
    assert cls(seed=0, **params, **threads).capabilities.deterministic
    assert not cls(seed=0, **params, num_threads=2).capabilities.deterministic
    assert cls(seed=0, **params, num_threads=2).capabilities.nondeterminism
    train = small_train(4)
    a = fitted(name, train, **params, **threads).score(np.arange(10))
    b = fitted(name, train, **params, **threads).score(np.arange(10))
    c = registry.models.get(name)(seed=1, **params, **threads)
    c.fit(train)
    assert np.array_equal(a, b) and not np.allclose(a, c.score(np.arange(10)))


def test_lightfm_logistic_trains_on_sampled_negatives_and_bad_loss_is_named() -> None:
    data = load_dataset("synthetic", None, None, n_users=150, n_items=60, n_interactions=3000)
    train = train_data(data, make_split(data, "random", 0).train)
    model = fitted("lightfm", train, loss="logistic", no_components=8, epochs=5)
    positives = model.user_items.tocoo()
    labelled = model.with_negatives(sp.coo_matrix((np.ones(positives.nnz), (positives.row, positives.col)),
                                                  shape=positives.shape), np.random.default_rng(0))
    seen = model.user_items.toarray() > 0
    dense = labelled.toarray()
    assert (dense[seen] == 1).all() and (dense[~seen] <= 0).all() and (dense == -1).sum() > 0.5 * positives.nnz
    with pytest.raises(ConfigError, match="loss = 'hinge'"):
        registry.models.get("lightfm")(seed=0, loss="hinge")


def test_lightfm_hybrid_cold_items_and_zero_shot_users_use_side_features_only() -> None:
    train = checkerboard(drop_items=(4, 5))
    model = fitted("lightfm-hybrid", train, no_components=8, epochs=20)
    features = model.item_features.toarray()
    n_side = train.side.item_features.shape[1]
    assert (features[[4, 5], n_side:] == 0).all()  # cold items never get an identity feature
    assert np.allclose(features.sum(1), 1.0)  # rows L1-normalised as LightFM's Dataset does
    side = model.model.item_embeddings[:n_side]
    assert np.allclose(model.item_vectors[4], side[0] * 1.0, atol=1e-6)  # item 4 is "cat:even" only
    zero_shot = model.user_representation(np.array([0]), [np.zeros(0, np.int64)])
    assert np.allclose(zero_shot, model.side_user_vectors(np.array([0])))
