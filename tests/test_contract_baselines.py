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
