"""Incremental ``update`` moves the updated user the way their new interactions say (LightFM, text-embed).

Hand-reasoned on the checkerboard (bench.contract): fit without user 0, then
``update`` with user 0's interactions, all with even items. Even items are one
cluster (collaboratively, and by their "jazz saxophone album" text), so user 0's
top-5 must become even items, which it is not before the update for LightFM (an
untrained or empty user row). text-embed does not claim zero-shot users, so
before the update user 0 is one it must not be asked about (the harness reports
"not served", bench.realtime); after it, the warm list must equal what the model
serves that user as a cold user from the same history.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import registry
from bench.contract import checkerboard
from bench.protocol import Recommender, TrainData


def split_off_user_zero() -> tuple[TrainData, TrainData]:
    full = checkerboard()
    mine = full.user == 0
    part = lambda rows: TrainData(full.user[rows], full.item[rows], full.weight[rows],  # noqa: E731
                                  full.timestamp[rows], full.side)
    return part(~mine), part(mine)


def even_in_top5(model: Recommender) -> int:
    items, _ = model.recommend(np.array([0]), 5)
    return int(np.sum(items[0] % 2 == 0))


@pytest.mark.parametrize("name, params", [
    ("lightfm", {}),
    # without user side features user 0 has no feature at all before the update: it must gain its identity
    ("lightfm-hybrid", {"user_side_features": False}),
])
def test_lightfm_update_moves_new_user_to_their_cluster(name: str, params: dict) -> None:
    base, new = split_off_user_zero()
    model = registry.models.get(name)(seed=0, no_components=8, epochs=50, update_epochs=20, **params)
    assert model.capabilities.update  # so the contract's update test and the realtime suite include it
    model.fit(base)
    before = even_in_top5(model)
    model.update(new)
    assert model.user_items[0].nnz == new.matrix[0].nnz
    assert even_in_top5(model) == 5 > before


@pytest.mark.llm
def test_text_embed_update_extends_history() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    base, new = split_off_user_zero()
    model = registry.models.get("text-embed")(seed=0, num_threads=1, batch_size=64)
    assert model.capabilities.update  # so the contract's update test and the realtime suite include it
    model.fit(base)
    assert len(model.histories[0]) == 0 and not model.capabilities.cold_users_zero_shot
    model.update(new)
    np.testing.assert_array_equal(model.histories[0], new.item)
    assert even_in_top5(model) == 5
    warm, _ = model.recommend(np.array([0]), 5)
    cold, _ = model.recommend(np.array([0]), 5, history=[new.item])
    np.testing.assert_array_equal(warm, cold)
