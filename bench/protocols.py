"""Evaluation protocols: full ranking, or each test item against sampled negatives.

Published numbers are only comparable under the same protocol, and frameworks
default differently (RecBole ranks everything unless told ``uni100``; many papers
rank 1 positive + 99 or 100 sampled negatives). A suite names its protocol in
``[evaluation] protocol = "full" | "uniN" | "popN" | "pointwise"``; the protocol is part of each
cell's identity and is written in the ``protocol`` column of every result row.

Sampled protocols (what bench implements, precisely):

- for every test user u with test items T_u, draw negatives from the items u never
  interacted with anywhere in the data set (training, test, validation, k-shot
  history), within the segment's candidate pool (the catalogue, or e.g. the cold
  items of an item-cold-start split);
- ``negatives_per = "test_item"`` (default): N * |T_u| negatives, like RecBole's
  ``uni100`` / ``pop100`` (100 per positive interaction, all of a user's positives
  and negatives ranked together); ``negatives_per = "user"``: N negatives per user,
  like Elliot's negative sampling (``num_items: N`` per user);
- ``uniN`` draws uniformly; ``popN`` draws with probability proportional to the
  item's number of training interactions (items never seen in training are never
  drawn), like RecBole's ``popularity`` distribution;
- draws are without replacement (RecBole draws each negative independently, so a
  heavy user may get the same negative twice; bench does not) and are capped at
  the items available (a user who has seen nearly everything gets fewer);
- the candidate row is the test items plus the negatives, sorted by item id, so
  score ties never favour the positives; test items that the protocol excludes
  (training items, with ``exclude_train``) are left out of the row, as they can
  never be recommended under full ranking either, and still count in |T_u|.

``pointwise`` is not a ranking protocol: each model scores the split's labelled test
pairs (explicit feedback, liked = value >= ``label_threshold``) and is judged by AUC,
GAUC and log loss (bench.pointwise).

Negatives depend only on the split (fingerprint and seed), the protocol and the
pool: they are drawn once, stored beside the split in the run folder
(``splits/<fingerprint>-seed<seed>-<protocol>-<pool>.npz``) and read back by every model, so
all models of a run rank exactly the same candidates.

``protocol = "retrieved"`` (two-stage, LlamaRec's protocol) takes its candidates from
one retriever model instead of random draws: see :mod:`bench.retrieved`, which
stores them in the same place and the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench.data.dataset import Dataset
from bench.errors import ConfigError
from bench.rundir import SplitStore
from bench.splits import Segment, Split

NEGATIVES_PER = ("test_item", "user")
_PATTERN = re.compile(r"^(full|uni|pop)(\d*)$")
RETRIEVED = "retrieved"


@dataclass(frozen=True)
class Protocol:
    """Which candidates each test user's items are ranked among."""

    kind: str = "full"  # "full", "uni", "pop" (sampled negatives), "retrieved" or "pointwise"
    n_negatives: int = 0  # N of uniN / popN; the retriever's N candidates per user for "retrieved"
    negatives_per: str = "test_item"  # "test_item" (RecBole) or "user" (Elliot)
    exclude_train: bool = True
    retriever: str = ""  # "retrieved": the registered model that proposes the candidates
    retriever_params: str = "{}"  # ... and its parameters, as sorted JSON (hashable, stable)
    label_threshold: float = 4.0  # pointwise: a test pair is liked (label 1) when its value is >= this

    @property
    def name(self) -> str:
        if self.kind == RETRIEVED:
            return f"{RETRIEVED}{self.n_negatives}:{self.retriever}"
        return self.kind if self.kind in ("full", "pointwise") else f"{self.kind}{self.n_negatives}"

    @property
    def sampled(self) -> bool:
        """Each user ranks a candidate row (sampled negatives, or a retriever's short list), not the catalogue."""
        return self.kind not in ("full", "pointwise")

    @property
    def pointwise(self) -> bool:
        """Labelled pairs scored one by one (bench.pointwise), not ranked lists."""
        return self.kind == "pointwise"

    @property
    def label(self) -> str:
        """The value of the results' ``protocol`` column, e.g. ``uni100``, ``uni99/user``, ``full+train``.

        ``/user`` marks N negatives per user rather than per test item; ``+train``
        marks that training items were *not* excluded from the rankings.
        """
        text = self.name
        if self.pointwise:
            return f"pointwise>={self.label_threshold:g}"
        if self.sampled and self.negatives_per == "user" and self.kind != RETRIEVED:
            text += "/user"
        if not self.exclude_train:
            text += "+train"
        return text

    def min_candidates(self) -> int:
        """Fewest candidates a user can have when enough negatives exist (bounds the usable k)."""
        return self.n_negatives if self.sampled else 0


def parse_protocol(text: str, *, negatives_per: str = "test_item", exclude_train: bool = True,
                   source: str = "", label_threshold: float = 4.0) -> Protocol:
    """``"full"``, ``"uni100"``, ``"pop50"`` or ``"pointwise"`` -> Protocol; anything else is a ConfigError
    naming the fix."""
    where = f"{source}: " if source else ""
    if str(text).strip().lower() == "pointwise":
        if isinstance(label_threshold, bool) or not isinstance(label_threshold, (int, float)):
            raise ConfigError(f"{where}evaluation.label_threshold = {label_threshold!r} must be a number "
                              f"(a pair is liked when its rating is >= it, e.g. 4)")
        return Protocol("pointwise", exclude_train=exclude_train, label_threshold=float(label_threshold))
    match = _PATTERN.match(str(text).strip().lower())
    if not match or (match.group(1) == "full" and match.group(2)) or (match.group(1) != "full" and not match.group(2)):
        raise ConfigError(f"{where}evaluation.protocol = {text!r} is not valid; use \"full\" (rank the whole "
                          f"catalogue), \"uniN\" (N uniform negatives, e.g. \"uni100\"), \"popN\" "
                          f"(N popularity-weighted negatives, e.g. \"pop100\") or \"pointwise\" "
                          f"(score labelled test pairs: AUC, GAUC, log loss)")
    kind, digits = match.group(1), match.group(2)
    n = int(digits) if digits else 0
    if kind != "full" and n < 1:
        raise ConfigError(f"{where}evaluation.protocol = {text!r} needs at least one negative (e.g. \"{kind}100\")")
    if negatives_per not in NEGATIVES_PER:
        raise ConfigError(f"{where}evaluation.negatives_per = {negatives_per!r} is not valid; use "
                          f"\"test_item\" (RecBole: N per test item) or \"user\" (Elliot: N per user)")
    return Protocol(kind, n, negatives_per, exclude_train)


def from_evaluation(evaluation: object, text: str | None = None) -> Protocol:
    """The protocol of an ``EvaluationSpec`` (duck-typed, so bench.config need not be imported here).

    ``text`` names another of its protocols (an entry of ``extra_protocols``) instead of the main one.
    """
    text = getattr(evaluation, "protocol", "full") if text is None else text
    if str(text).strip().lower() == RETRIEVED:
        return retrieved_protocol(evaluation)
    return parse_protocol(text, negatives_per=getattr(evaluation, "negatives_per", "test_item"),
                          exclude_train=getattr(evaluation, "exclude_train", True),
                          label_threshold=getattr(evaluation, "label_threshold", 4.0))


def retrieved_protocol(evaluation: object) -> Protocol:
    """The ``retrieved`` protocol of an ``EvaluationSpec`` (checked by bench.retrieved.check_evaluation)."""
    spec = getattr(evaluation, "retriever", None) or {}
    return Protocol(RETRIEVED, int(getattr(evaluation, "n_candidates", 0) or 0),
                    exclude_train=getattr(evaluation, "exclude_train", True), retriever=str(spec.get("name", "")),
                    retriever_params=json.dumps(spec.get("params", {}), sort_keys=True, default=str))


def cell_protocols(evaluation: object) -> list[Protocol]:
    """Every protocol a cell is scored under: the main one, then ``extra_protocols`` (same fit, more rows)."""
    return [from_evaluation(evaluation)] + [from_evaluation(evaluation, text)
                                            for text in getattr(evaluation, "extra_protocols", [])]


# -- drawing and storing negatives ---------------------------------------------

@dataclass
class Negatives:
    """Candidate rows (test items + sampled negatives) of every test user of a split, as CSR."""

    users: np.ndarray  # sorted test users
    indptr: np.ndarray  # row u: items[indptr[u]:indptr[u+1]]
    items: np.ndarray  # candidate item ids, sorted within each row
    n_negatives: np.ndarray  # negatives actually drawn per user (may be capped)

    def matrix(self, users: np.ndarray) -> np.ndarray:
        """Per-user candidate matrix [len(users), max row] for ``recommend(candidates=...)``, padded with -1."""
        rows = np.searchsorted(self.users, users)
        if np.any(rows >= len(self.users)) or np.any(self.users[np.minimum(rows, len(self.users) - 1)] != users):
            raise ConfigError("sampled candidates were drawn for other users than the ones scored; "
                              "delete the run folder's splits/*-<protocol>-*.npz files and run again")
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        width = int(lengths.max()) if len(lengths) else 0
        out = np.full((len(users), width), -1, dtype=np.int64)
        column = np.arange(width)
        inside = column[None, :] < lengths[:, None]
        out[inside] = self.items[(starts[:, None] + column[None, :])[inside]]
        return out


def _seed(split: Split, protocol: Protocol, pool_tag: str) -> np.random.Generator:
    key = f"{split.fingerprint}|{split.seed}|{protocol.name}|{protocol.negatives_per}|{pool_tag}"
    return np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))


def draw_negatives(dataset: Dataset, split: Split, protocol: Protocol, pool: np.ndarray | None = None,
                   pool_tag: str = "catalogue") -> Negatives:
    """Draw the candidate rows of every test user of ``split`` (deterministic in split, protocol and pool)."""
    if not protocol.sampled:
        raise ValueError("full ranking has no sampled negatives")
    rng = _seed(split, protocol, pool_tag)
    n_items = dataset.n_items
    seen = sp.csr_matrix((np.ones(len(dataset.user), dtype=np.int8), (dataset.user, dataset.item)),
                         shape=(dataset.n_users, n_items))
    test_u, test_i = dataset.user[split.test], dataset.item[split.test]
    order = np.lexsort((test_i, test_u))
    test_u, test_i = test_u[order], test_i[order]
    users = np.unique(test_u)
    bounds = np.searchsorted(test_u, np.concatenate([users, [np.iinfo(np.int64).max]]))
    in_pool = np.ones(n_items, dtype=bool) if pool is None else np.isin(np.arange(n_items), pool)
    weights = None
    if protocol.kind == "pop":
        weights = np.bincount(dataset.item[split.train], minlength=n_items).astype(np.float64)
        in_pool &= weights > 0
    rows: list[np.ndarray] = []
    drawn = np.zeros(len(users), dtype=np.int64)
    for j, u in enumerate(users):
        positives = np.unique(test_i[bounds[j]:bounds[j + 1]])
        available = in_pool.copy()
        available[seen.indices[seen.indptr[u]:seen.indptr[u + 1]]] = False
        choices = np.flatnonzero(available)
        want = protocol.n_negatives * (len(positives) if protocol.negatives_per == "test_item" else 1)
        take = min(want, len(choices))
        if take == len(choices):
            negatives = choices
        elif weights is None:
            negatives = choices[rng.choice(len(choices), take, replace=False)]
        else:
            p = weights[choices]
            negatives = rng.choice(choices, take, replace=False, p=p / p.sum())
        drawn[j] = take
        rows.append(np.union1d(positives, negatives))
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    items = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    return Negatives(users.astype(np.int64), indptr, items, drawn)


def stored_negatives(dataset: Dataset, split: Split, protocol: Protocol, segment: Segment,
                     store_dir: Path | None) -> Negatives:
    """The split's negatives for this protocol and pool: read from ``store_dir`` if drawn before, else drawn
    and stored there, so every model (and a resumed run) ranks the very same candidates."""
    pool_tag = "catalogue" if segment.candidates is None else re.sub(r"[^A-Za-z0-9_.-]", "_", segment.name)
    # the seed is part of the name: a split that ignores the seed (temporal) has one fingerprint for all seeds,
    # while its negatives are drawn per seed
    draw_tag = f"seed{split.seed}-" + protocol.name + ("-per-user" if protocol.negatives_per == "user" else "")
    store = None if store_dir is None else SplitStore(Path(store_dir))
    stored = None if store is None else store.read_negatives(split.fingerprint, draw_tag, pool_tag)
    if stored is not None:
        return Negatives(stored["users"], stored["indptr"], stored["items"], stored["n_negatives"])
    negatives = draw_negatives(dataset, split, protocol, segment.candidates, pool_tag)
    if store is not None:
        store.write_negatives(split.fingerprint, draw_tag, pool_tag, users=negatives.users, indptr=negatives.indptr,
                              items=negatives.items, n_negatives=negatives.n_negatives)
    return negatives


def segment_candidates(dataset: Dataset, split: Split, segment: Segment, users: np.ndarray,
                       exclude: sp.csr_matrix | None, protocol: Protocol, k: int,
                       store_dir: Path | None = None, rows: Negatives | None = None) -> np.ndarray | None:
    """What the runner passes as ``recommend(candidates=...)`` for one segment under ``protocol``.

    Full ranking: the segment's own candidates (None = the catalogue). Sampled:
    a per-user matrix of test items + negatives, -1-padded; excluded items are
    dropped from each row. Raises a ConfigError when some user would have fewer
    than ``k`` candidates, since the top-k would then not be a ranking of k items.
    ``rows``: the candidate rows when they come from elsewhere (a retriever's, bench.retrieved).
    """
    if not protocol.sampled:
        return segment.candidates
    if rows is None:
        rows = stored_negatives(dataset, split, protocol, segment, store_dir)
    matrix = rows.matrix(np.asarray(users))
    if exclude is not None and exclude.nnz:
        excluded = exclude.tocoo()
        n_items = np.int64(dataset.n_items)
        excluded_keys = excluded.row.astype(np.int64) * n_items + excluded.col
        keys = np.arange(len(users), dtype=np.int64)[:, None] * n_items + matrix
        flagged = np.isin(keys, excluded_keys) & (matrix >= 0)
        if flagged.any():
            matrix = np.where(flagged, -1, matrix)
            order = np.argsort(matrix < 0, axis=1, kind="stable")  # keep real candidates first, in their order
            matrix = np.take_along_axis(matrix, order, axis=1)
    counts = (matrix >= 0).sum(1)
    if len(counts) and counts.min() < k:
        short = int((counts < k).sum())
        raise ConfigError(f"protocol {protocol.label}: {short} user(s) have fewer than k={k} candidates "
                          f"(fewest: {int(counts.min())}); lower the largest evaluation.k or raise N")
    width = int(counts.max()) if len(counts) else 0
    return matrix[:, :width]
