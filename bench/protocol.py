"""The narrow, batch-first model protocol every recommender implements.

``fit(train)`` once, then ``recommend(user_ids, k, *, history, candidates,
exclude) -> (items[n, k], scores[n, k])`` as often as the harness likes (fit once,
sweep query-time settings). Optional abilities are declared in
:class:`Capabilities`; the harness only asks for what a model declares, and a
model asked for something it cannot do raises ``NotImplementedError``.

Models see training interactions and side information only (:class:`TrainData`):
never the dataset object, so test interactions cannot leak in by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from bench.errors import ConfigError


@dataclass(frozen=True)
class Capabilities:
    """What a model can serve beyond warm users and warm items."""

    cold_users: bool = False  # users absent from training, served from `history` (k-shot)
    cold_users_zero_shot: bool = False  # ... even with an empty history
    cold_items: bool = False  # items without training interactions, from side information
    update: bool = False  # incremental update(new interactions) without refitting
    devices: tuple[str, ...] = ("cpu",)
    deterministic: bool = True  # same seed and params -> identical output
    nondeterminism: str = ""  # why not, when deterministic is False
    # Lists depend on the user's own interactions. Floors (pop, random) say False; every model that
    # says True must pass the contract's known-answer checkerboard test (bench.contract).
    personalised: bool = True
    explains: bool = False  # writes a one-sentence reason for some listed items (explain(), bench.explanations)
    # Its ranking of given candidates can depend on the order they are presented in (e.g. an LLM that
    # reads them as one list in its prompt). Order probes (bench.retrieved) measure it for every model.
    reads_candidate_order: bool = False
    # score_pairs returns probabilities P(liked) (e.g. an LM's P(yes)), so logloss applies (bench.pointwise);
    # models without it get logloss rows marked unsupported rather than a number from arbitrary scores
    calibrated: bool = False

    def supports(self, need: str) -> bool:
        """Whether a segment needing ``need`` (see bench.splits.Segment) can be served."""
        return need == "warm" or bool(getattr(self, need))

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class SideInfo:
    """Everything about users and items except their interactions."""

    n_users: int
    n_items: int
    item_text: list[str]
    item_categories: sp.csr_matrix
    category_names: list[str]
    item_features: sp.csr_matrix
    item_feature_names: list[str]
    user_features: sp.csr_matrix | None
    user_feature_names: list[str]
    dataset_name: str = ""


@dataclass(frozen=True)
class LabelledPairs:
    """Training (user, item) pairs with a 0/1 label from explicit feedback (the pointwise protocol).

    Every rated training pair, liked (value >= the protocol's threshold) or not, so a model that learns
    from labels (llm-rerank's ``train_labels = "rating"``) sees disliked items too; row-aligned, in the
    training split's order.
    """

    user: np.ndarray
    item: np.ndarray
    label: np.ndarray  # int8, 1 = liked


@dataclass
class TrainData:
    """The training interactions (row-aligned arrays) plus side information."""

    user: np.ndarray
    item: np.ndarray
    weight: np.ndarray
    timestamp: np.ndarray | None
    side: SideInfo
    _matrix: sp.csr_matrix | None = field(default=None, repr=False)
    # the pointwise protocol only: every rated training pair with its label (the interactions above are
    # then the liked ones); None under ranking protocols
    labelled: LabelledPairs | None = None

    @property
    def n_users(self) -> int:
        return self.side.n_users

    @property
    def n_items(self) -> int:
        return self.side.n_items

    @property
    def matrix(self) -> sp.csr_matrix:
        """User x item CSR of implicit weights (cached)."""
        if self._matrix is None:
            self._matrix = sp.csr_matrix((self.weight, (self.user, self.item)),
                                         shape=(self.n_users, self.n_items), dtype=np.float32)
            self._matrix.sum_duplicates()
        return self._matrix

    def histories(self) -> list[np.ndarray]:
        """Each user's training items in time order (insertion order without timestamps)."""
        key = self.timestamp if self.timestamp is not None else np.arange(len(self.user))
        order = np.lexsort((key, self.user))
        bounds = np.searchsorted(self.user[order], np.arange(self.n_users + 1))
        items = self.item[order]
        return [items[bounds[u]:bounds[u + 1]] for u in range(self.n_users)]


def history_matrix(history: list[np.ndarray], n_items: int, weight: float = 1.0) -> sp.csr_matrix:
    """CSR [len(history), n_items] with ``weight`` at each history item."""
    lengths = np.array([len(h) for h in history], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate(history).astype(np.int32) if lengths.sum() else np.zeros(0, np.int32)
    data = np.full(len(indices), weight, dtype=np.float32)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(len(history), n_items))
    matrix.sum_duplicates()
    matrix.data[:] = weight
    return matrix


_MIX1, _MIX2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters neighbouring inputs."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def tie_keys(salt: int, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """A pseudo-random uint64 per (salt, user, item): the order in which equal scores are listed.

    A pure function of its arguments, so a user's tie order is the same in any batch and for every
    model given the same salt, and unrelated to item ids (low ids are older, more popular films).
    """
    with np.errstate(over="ignore"):
        x = _mix(np.full(np.shape(users), np.uint64(salt % (1 << 64))) + _GOLDEN)
        x = _mix(x ^ (np.asarray(users).astype(np.int64).astype(np.uint64) * _GOLDEN))
        return _mix(x ^ (np.asarray(items).astype(np.int64).astype(np.uint64) * _MIX1))


def top_k(scores: np.ndarray, k: int, *, users: np.ndarray | None = None, items: np.ndarray | None = None,
          salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the k largest entries of each row, best first.

    Equal scores are ordered by :func:`tie_keys` of (``salt``, the row's user, the column's item), so
    which of several tied items make the list is a reproducible coin toss, not the lowest item id, and
    does not depend on how users are batched. ``users`` labels the rows (required for that); ``items``
    maps columns to item ids (1-D shared, or 2-D per row; default: the column index). Without
    ``users`` ties go to the lower column index (kept for callers that do not know their users).
    """
    n, m = scores.shape
    k = min(k, m)
    if k < m:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(m), (n, m)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    if users is None:
        order = np.lexsort((part, -part_scores), axis=1)
        idx = np.take_along_axis(part, order, axis=1)
        return idx, np.take_along_axis(scores, idx, axis=1)
    users = np.asarray(users)
    if users.shape != (n,):
        raise ValueError(f"top_k: {users.shape} user ids for {n} rows of scores")

    def item_ids(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if items is None:
            return cols
        mapping = np.asarray(items)
        return mapping[cols] if mapping.ndim == 1 else mapping[rows, cols]

    if 0 < k < m:
        # Rows where an item left out by argpartition ties the k-th score: choose among the tied by key.
        kth = part_scores.min(axis=1)
        boundary = np.flatnonzero((scores == kth[:, None]).sum(1) > (part_scores == kth[:, None]).sum(1))
        if boundary.size:
            sub, kb = scores[boundary], kth[boundary, None]
            rows = np.broadcast_to(boundary[:, None], sub.shape)
            keys = tie_keys(salt, users[rows], item_ids(rows, np.broadcast_to(np.arange(m), sub.shape)))
            # one sortable rank: every item above the k-th score, then the tied ones by key, then the rest
            rank = np.where(sub > kb, np.uint64(0), np.where(sub == kb, (keys >> np.uint64(1)) + np.uint64(1),
                                                              np.uint64(np.iinfo(np.uint64).max)))
            part[boundary] = np.argpartition(rank, k - 1, axis=1)[:, :k]
            part_scores[boundary] = np.take_along_axis(sub, part[boundary], axis=1)
    row_ids = np.broadcast_to(np.arange(n)[:, None], part.shape)
    keys = tie_keys(salt, users[row_ids], item_ids(row_ids, part))
    order = np.lexsort((keys, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(scores, idx, axis=1)


def mask_and_rank(scores: np.ndarray, k: int, *, candidates: np.ndarray | None = None,
                  exclude: sp.csr_matrix | None = None, users: np.ndarray | None = None,
                  salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Turn dense scores [n, n_items] into top-k, honouring candidates and exclusions.

    ``candidates`` is a shared 1-D item array or a per-user 2-D array (entries < 0
    are padding, never returned); excluded items and non-candidates can never be
    returned. ``users`` and ``salt`` decide the order of equal scores (:func:`top_k`).
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    if exclude is not None and exclude.nnz:
        coo = exclude.tocoo()
        scores[coo.row, coo.col] = -np.inf
    if candidates is None:
        return top_k(scores, k, users=users, salt=salt)
    cand = np.asarray(candidates)
    if cand.ndim == 1:
        cand = np.broadcast_to(cand, (scores.shape[0], cand.size))
    padding = cand < 0  # rows of unequal length are padded with -1 (sampled protocols, bench.protocols)
    sub = np.take_along_axis(scores, np.where(padding, 0, cand), axis=1)
    if padding.any():
        sub[padding] = -np.inf
    idx, vals = top_k(sub, k, users=users, items=cand, salt=salt)
    return np.take_along_axis(cand, idx, axis=1), vals


# Model families shown by `bench list models` (the ``family`` attribute of a Recommender):
FAMILIES: dict[str, str] = {
    "floor": "non-personalised reference (popularity, random): what any model must beat",
    "CF/MF": "collaborative filtering / matrix factorisation on the interaction matrix",
    "neural": "neural network trained on interactions (torch), e.g. sequence or autoencoder models",
    "language model": "pretrained text encoder or causal language model over item text",
}


class Recommender:
    """Base class for plug-ins. Subclasses set ``capabilities`` and ``default_params``,
    and ``family`` (a key of :data:`FAMILIES`), ``summary`` (one line) and ``extra`` for `bench list`.

    The simplest model implements :meth:`fit` and :meth:`score` (dense scores for
    all items); :meth:`recommend` then handles candidates, exclusions and top-k.
    Models with their own fast top-k (implicit, ANN indexes) override
    :meth:`recommend` instead.
    """

    name: ClassVar[str] = ""
    # What `bench list models` tells a newcomer (bench.listing); every plug-in sets both:
    # ``family`` is one of FAMILIES, ``summary`` one line saying what the model does and how (set it on each
    # class: a subclass without its own summary is described by its docstring's first line).
    family: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # The pip extra of the plug-in's distribution that fit/recommend need ("llm" -> bench-recsys[llm]),
    # or "" when the core dependencies suffice; `bench list models NAME` says when it is missing.
    extra: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    default_params: ClassVar[dict[str, Any]] = {}
    # Modules worth importing once in the cell forkserver rather than in every cell
    # (e.g. torch and transformers, seconds each); see bench.execution.
    preload_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, seed: int = 0, device: str = "cpu", **params: Any) -> None:
        unknown = sorted(set(params) - set(self.default_params))
        if unknown:
            valid = ", ".join(sorted(self.default_params)) or "(none)"
            raise ConfigError(f"model '{self.name or type(self).__name__}': unknown parameter(s) "
                              f"{', '.join(unknown)}; valid: {valid}")
        self.seed = seed
        self.device = resolve_device(device, self.capabilities)
        self.params: dict[str, Any] = {**self.default_params, **params}

    # -- required --------------------------------------------------------------
    def fit(self, train: TrainData) -> None:
        raise NotImplementedError

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        """Dense scores [len(user_ids), n_items]; ``history`` replaces training data for cold users."""
        raise NotImplementedError

    # -- provided --------------------------------------------------------------
    def recommend(self, user_ids: np.ndarray, k: int, *, history: list[np.ndarray] | None = None,
                  candidates: np.ndarray | None = None,
                  exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and scores per user, best first; equal scores in this user's tie order."""
        user_ids = np.asarray(user_ids)
        return mask_and_rank(self.score(user_ids, history), k, candidates=candidates, exclude=exclude,
                             users=user_ids, salt=self.tie_salt)

    def score_pairs(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """One score per (user_ids[j], item_ids[j]) pair, higher = more likely liked (the pointwise protocol).

        Batch-first like :meth:`recommend`, which this default is built on: each user ranks exactly their
        own pairs' items (``candidates`` rows) and each pair gets the score the model listed it with, so
        every model scores pairs with no code of its own. Models with a cheaper direct path (an LM's
        P(yes)) override it; with ``Capabilities.calibrated`` the scores are probabilities.
        """
        user_ids, item_ids = np.asarray(user_ids, dtype=np.int64), np.asarray(item_ids, dtype=np.int64)
        out = np.full(len(user_ids), np.nan)
        if not len(user_ids):
            return out
        users, owner = np.unique(user_ids, return_inverse=True)
        order = np.lexsort((item_ids, owner))
        counts = np.bincount(owner, minlength=len(users))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        width = int(counts.max())
        column = np.arange(len(order)) - np.repeat(starts, counts)
        candidates = np.full((len(users), width), -1, dtype=np.int64)
        candidates[owner[order], column] = item_ids[order]
        items, scores = self.recommend(users, width, candidates=candidates)
        items, scores = np.asarray(items), np.asarray(scores, dtype=np.float64)
        n_items = np.int64(max(int(item_ids.max()), int(items.max(initial=0))) + 1)
        listed = np.arange(len(users))[:, None] * n_items + items
        valid = items >= 0
        sorter = np.argsort(listed[valid])
        keys, values = listed[valid][sorter], scores[valid][sorter]
        if len(keys):  # a pair the model did not list stays NaN: bench.pointwise refuses such output
            wanted = owner.astype(np.int64) * n_items + item_ids
            at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
            hit = keys[at] == wanted
            out[hit] = values[at][hit]
        return out

    @property
    def tie_salt(self) -> int:
        """Salt of :func:`tie_keys`: the run's seed, which also drew the split, so every model of a split
        lists a user's equal-score items in the same order (pass it to mask_and_rank / top_k)."""
        return int(self.seed)

    def ranked_depth(self, k: int) -> int:
        """How many leading positions of a top-``k`` list this model ranks itself.

        A two-stage model that reranks only its first stage's top n returns ``min(k, n)``: positions
        below it are the first stage's order, so the runner marks every metric at a cut-off above it
        ``status = "first_stage"`` (not credited to this model; the lists and per-user values are
        kept). Models that rank every position they return keep this default.
        """
        return k

    def explain(self, user_ids: np.ndarray, items: np.ndarray, *,
                history: list[np.ndarray] | None = None) -> list[tuple[int, int, str]]:
        """Reasons for some of the listed ``items[row, rank]`` (capability ``explains``): ``(row, rank, text)``.

        Called once per segment after its lists are made and timed (never inside the recommend timers),
        with the same users and history; the model's own budget decides how many rows and ranks it
        explains. The runner stores and scores the reasons (bench.explanations).
        """
        raise NotImplementedError(f"model '{self.name}' does not explain its recommendations")

    def rank_shared_candidates(self, shared: bool) -> None:
        """Told ``True`` while the protocol's candidates are a retriever's short list shared by every model
        (protocol "retrieved", bench.retrieved): a two-stage model then ranks all of them itself instead
        of passing them through its own first stage, and :meth:`ranked_depth` covers every position.
        One-stage models rank the candidates they are given either way (this default)."""

    def update(self, new: TrainData) -> None:
        """Absorb new interactions without a full refit (capability ``update``)."""
        raise NotImplementedError(f"model '{self.name}' cannot update incrementally")

    def size_bytes(self) -> int:
        """Bytes of learned state (factors, index...), for the systems table."""
        return 0

    def extra_metrics(self) -> dict[str, float]:
        """Model-specific figures about the recommend() calls since the previous call, then reset.

        The runner reads them after each segment and stores them as k=0 rows
        (e.g. an LLM generator's rate of items not in the catalogue).
        """
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "seed": self.seed, "device": self.device,
                "capabilities": self.capabilities.as_dict()}


def resolve_device(device: str, capabilities: Capabilities) -> str:
    """Map ``auto`` to CUDA when present and supported, else CPU; refuse unsupported devices."""
    if device == "auto":
        if "cuda" in capabilities.devices:
            try:
                import torch

                if torch.cuda.is_available():
                    return "cuda"
            except ImportError:
                pass
        return "cpu"
    base = device.split(":")[0]
    if base not in capabilities.devices:
        raise ConfigError(f"device '{device}' is not supported by this model; supported: "
                          f"{', '.join(capabilities.devices)} or auto")
    return device
