"""Any model of the Cornac library (Salah, Truong & Lauw, JMLR 2020), by name, on bench's splits and metrics.

``params = { model = "BPR", k = 200, max_iter = 15 }``: ``model`` names a class of
``cornac.models`` and every other key is passed to its constructor, checked
against the constructor's own signature before anything runs. bench's ``seed``
becomes Cornac's ``seed`` (when the model takes one) and ``verbose`` is off.
Cornac is an optional extra: ``pip install -e '.[cornac]'``.

Cornac models are fitted on a ``cornac.data.Dataset`` built from the training
triplets (user, item, weight) and scored with ``model.score(user_idx)``, Cornac's
own scores over the items it saw. Items without training interactions are
unknown to Cornac; they get a score below every known item's, so they rank
last. Users without training interactions get all-zero scores (ties, so the
lowest item ids): a Cornac model cannot fold in a newcomer, and cold users are
not claimed. Sequential Cornac models (``NextItemRecommender``, baskets) need
session data and are refused with a message.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from bench.errors import ConfigError
from bench.protocol import Capabilities, Recommender, TrainData, resolve_device

INSTALL_HINT = "install the Cornac extra: pip install -e '.[cornac]'"
_RESERVED = {"name", "seed", "verbose", "trainable", "init_params"}


def _cornac() -> Any:
    try:
        import cornac
    except ImportError:
        raise ConfigError(f"model 'cornac' needs the cornac package, which is not installed; {INSTALL_HINT}") from None
    return cornac


class Cornac(Recommender):
    """One adapter for Cornac's collaborative models (see the module docstring)."""

    family = "CF/MF"
    summary = "any Cornac collaborative model by name (params = { model = \"BPR\", ... })"
    extra = "cornac"

    name = "cornac"
    capabilities = Capabilities(
        deterministic=False,
        nondeterminism="depends on the Cornac model: several (BPR, WMF, ...) train with multi-threaded SGD "
                       "whose updates race; see the model's num_threads")
    default_params: dict[str, Any] = {"model": "BPR"}  # every other key goes to the Cornac class

    def __init__(self, *, seed: int = 0, device: str = "cpu", **params: Any) -> None:
        self.seed = seed
        self.device = resolve_device(device, self.capabilities)
        self.params = {**self.default_params, **params}
        self.model_class = self.check_params(self.params)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> Any:
        """The Cornac class named by ``params['model']``, after checking every other key against it.

        bench.config calls this while validating a suite, so a typo stops the run
        before the first cell.
        """
        cornac = _cornac()
        wanted = params.get("model", cls.default_params["model"])
        available = sorted(n for n in dir(cornac.models)
                           if isinstance(getattr(cornac.models, n), type)
                           and issubclass(getattr(cornac.models, n), cornac.models.Recommender)
                           and n not in ("Recommender", "NextItemRecommender", "NextBasketRecommender"))
        if not isinstance(wanted, str) or wanted not in available:
            from bench.registry import suggest

            raise ConfigError(f"model 'cornac': params.model = {wanted!r} is not a Cornac model; "
                              f"{suggest(str(wanted), available)}available: {', '.join(available)}")
        model_class = getattr(cornac.models, wanted)
        sequential = tuple(getattr(cornac.models, n) for n in ("NextItemRecommender", "NextBasketRecommender")
                           if hasattr(cornac.models, n))
        if sequential and issubclass(model_class, sequential):
            raise ConfigError(f"model 'cornac': {wanted} is a session/basket model of Cornac and needs session "
                              f"data; use bench's 'sasrec' for next-item recommendation")
        accepted = set(inspect.signature(model_class.__init__).parameters) - {"self"}
        given = set(params) - {"model"}
        bad = sorted(given & _RESERVED) + sorted(given - accepted)
        if bad:
            valid = ", ".join(sorted(accepted - _RESERVED)) or "(none)"
            raise ConfigError(f"model 'cornac' ({wanted}): unknown or reserved parameter(s) {', '.join(bad)} "
                              f"(bench sets seed and verbose itself); valid: model, {valid}")
        return model_class

    def _make(self) -> Any:
        kwargs = {k: v for k, v in self.params.items() if k != "model"}
        accepted = inspect.signature(self.model_class.__init__).parameters
        if "seed" in accepted:
            kwargs["seed"] = self.seed
        if "verbose" in accepted:
            kwargs["verbose"] = False
        return self.model_class(**kwargs)

    def fit(self, train: TrainData) -> None:
        cornac = _cornac()
        matrix = train.matrix.tocoo()
        triplets = list(zip(matrix.row.tolist(), matrix.col.tolist(), matrix.data.astype(float).tolist()))
        self.dataset = cornac.data.Dataset.from_uir(triplets, seed=self.seed)
        self.n_items = train.n_items
        self.user_index = self.dataset.uid_map  # bench id -> Cornac index
        known = np.array(list(self.dataset.iid_map.keys()), dtype=np.int64)
        self.item_columns = (known, np.array([self.dataset.iid_map[i] for i in known], dtype=np.int64))
        self.model = self._make()
        self.model.fit(self.dataset)

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        if history is not None:
            raise NotImplementedError("model 'cornac' cannot serve users absent from training (Cornac has no fold-in)")
        ours, theirs = self.item_columns
        out = np.zeros((len(user_ids), self.n_items))
        for row, user in enumerate(np.asarray(user_ids).tolist()):
            index = self.user_index.get(user)
            if index is None:
                continue
            scores = np.asarray(self.model.score(index), dtype=np.float64).ravel()
            floor = scores.min() - 1.0 if len(scores) else 0.0
            out[row] = floor  # items Cornac never saw rank below every item it scored
            out[row, ours] = scores[theirs]
        return out

    def size_bytes(self) -> int:
        arrays = [v for v in vars(self.model).values() if isinstance(v, np.ndarray)]
        return int(sum(a.nbytes for a in arrays))
