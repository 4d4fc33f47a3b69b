"""Every built-in baseline passes the contract mixin."""

from bench.contract import RecommenderContract


class TestPop(RecommenderContract):
    model_name = "pop"
    learns_structure = False


class TestRandom(RecommenderContract):
    model_name = "random"
    learns_structure = False


class TestALS(RecommenderContract):
    model_name = "als"
    params = {"factors": 4, "iterations": 30, "regularization": 0.1, "alpha": 1.0}
