"""Every built-in baseline passes the contract mixin."""

from bench.contract import RecommenderContract


class TestPop(RecommenderContract):
    model_name = "pop"


class TestRandom(RecommenderContract):
    model_name = "random"


class TestALS(RecommenderContract):
    model_name = "als"
    params = {"factors": 4, "iterations": 30, "regularization": 0.1, "alpha": 1.0}


class TestItemKNN(RecommenderContract):
    model_name = "itemknn"
    params = {"neighbours": 10, "shrink": 1.0}


class TestEASE(RecommenderContract):
    model_name = "ease"
    params = {"l2": 1.0}


class TestPureSVD(RecommenderContract):
    model_name = "puresvd"
    params = {"factors": 2}


class TestBPR(RecommenderContract):
    model_name = "bpr"
    params = {"factors": 8, "iterations": 200, "learning_rate": 0.05, "num_threads": 1}


class TestLMF(RecommenderContract):
    model_name = "lmf"
    params = {"factors": 8, "iterations": 100, "num_threads": 1}


class TestLightFM(RecommenderContract):
    model_name = "lightfm"
    params = {"no_components": 8, "epochs": 50}


class TestLightFMHybrid(RecommenderContract):
    model_name = "lightfm-hybrid"
    params = {"no_components": 8, "epochs": 50}


# -- the mixin itself: what a model does not claim is skipped, what it claims is tested ----------

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bench import registry  # noqa: E402
from bench.protocol import Capabilities, Recommender  # noqa: E402


class ConstantClaimsPersonalised(Recommender):
    """Claims to personalise (the default) but scores every item alike: must fail the known answer."""

    name = "contract_test_constant"

    def fit(self, train):
        self.n_items = train.n_items

    def score(self, user_ids, history=None):
        return np.zeros((len(user_ids), self.n_items))


if ConstantClaimsPersonalised.name not in registry.models:
    registry.models.register(ConstantClaimsPersonalised.name, ConstantClaimsPersonalised)


def test_absent_capability_is_skipped_with_its_reason() -> None:
    assert not registry.models.get("als").capabilities.cold_items
    with pytest.raises(pytest.skip.Exception, match="cold_items"):
        TestALS().test_cold_items_from_side_information()
    with pytest.raises(pytest.skip.Exception, match="personalised"):
        TestPop().test_known_answer_checkerboard()


def test_known_answer_applies_to_every_model_claiming_personalisation() -> None:
    class Contract(RecommenderContract):
        model_name = ConstantClaimsPersonalised.name
        learns_structure = False  # the old per-test-class opt-out: the model's claim decides now

    assert Capabilities().personalised and not registry.models.get("pop").capabilities.personalised
    with pytest.raises(AssertionError, match="held-out diagonal"):
        Contract().test_known_answer_checkerboard()


def test_instance_capabilities_decide() -> None:
    """BPR with one thread is deterministic though its class is not: the same-seed test runs for it."""
    assert not registry.models.get("bpr").capabilities.deterministic
    assert TestBPR().claims().deterministic
