"""Neural and sequential baselines in PyTorch: BPR-MF, LightGCN, SASRec, MeLU.

These are the conventional models LLM-for-recommendation papers compare with.
They are written here from their papers (no code copied from RecBole or the
authors); defaults are named with the file they come from. All four share the
LLM models' device path (:mod:`bench.torch_device`): ``device = cpu | cuda |
auto``, the runner's CUDA-synchronised timers and peak-GPU-memory rows, and
full-ranking scoring in user batches on the device with top-k on the device, so
only the [n, k] answer is copied back.

Early stopping on a validation metric (RecBole trains "up to" ``epochs`` and
keeps the best validation epoch) is not inside the models: a model sees only
its training data. Use a suite ``grid`` over ``epochs`` with ``select_by``
(bench/grid.py) for the same selection on a validation carve of train.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from bench import progress
from bench.protocol import Capabilities, Recommender, TrainData
from bench.torch_device import (batches, require_torch, seed_everything, serving_dtype, synchronize,
                                topk_on_device, use_threads)

_DEVICES = ("cpu", "cuda")
_CUDA_NONDETERMINISM = "CUDA sparse and scatter kernels accumulate with atomics; CPU runs repeat bit for bit"


class TorchRecommender(Recommender):
    """What the torch models share: seeding, threads, batched on-device scoring and top-k.

    Subclasses implement :meth:`_fit` and :meth:`_score_tensor` (scores [n, n_items]
    on the device). Deterministic on CPU for a fixed seed; on CUDA the instance
    declares itself non-deterministic (atomics in sparse/scatter kernels).
    """

    family = "neural"
    extra = "torch"

    capabilities = Capabilities(devices=_DEVICES)
    preload_modules = ("torch", "torch._dynamo")  # Adam imports torch._dynamo on first use: seconds
    needs_grad_to_serve = False  # MeLU adapts to each user with gradient steps at serving time

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.device.startswith("cuda"):
            caps = type(self).capabilities
            self.capabilities = Capabilities(**{**caps.__dict__, "deterministic": False,
                                                "nondeterminism": _CUDA_NONDETERMINISM})

    def fit(self, train: TrainData) -> None:
        torch = require_torch(self.name)
        use_threads(int(self.params["num_threads"]))
        seed_everything(self.seed)
        self.n_items = train.n_items
        self.rng = np.random.default_rng([self.seed, 16])
        self._fit(train, torch)
        synchronize(self.device)

    def _fit(self, train: TrainData, torch: Any) -> None:
        raise NotImplementedError

    def _score_tensor(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> Any:
        raise NotImplementedError

    def _scored_batches(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> Any:
        import torch

        grad = torch.enable_grad() if self.needs_grad_to_serve else torch.no_grad()
        with grad:
            for part in batches(len(user_ids), int(self.params["eval_batch_size"])):
                yield part, self._score_tensor(user_ids[part], None if history is None else history[part])

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        user_ids = np.asarray(user_ids)
        out = np.zeros((len(user_ids), self.n_items))
        for part, scores in self._scored_batches(user_ids, history):
            out[part] = scores.detach().cpu().numpy()
        return out

    def recommend(self, user_ids: np.ndarray, k: int, *, history: list[np.ndarray] | None = None,
                  candidates: np.ndarray | None = None,
                  exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Full ranking in batches of ``eval_batch_size`` users, top-k on the device."""
        user_ids = np.asarray(user_ids)
        width = min(k, self.n_items if candidates is None else np.shape(candidates)[-1])
        items, scores = [np.zeros((0, width), np.int64)], [np.zeros((0, width))]
        for part, dense in self._scored_batches(user_ids, history):
            cand = candidates if candidates is None or np.ndim(candidates) == 1 else candidates[part]
            i, s = topk_on_device(dense.detach(), k, candidates=cand,
                                  exclude=None if exclude is None else exclude[part])
            items.append(i)
            scores.append(s)
        synchronize(self.device)
        return np.concatenate(items), np.concatenate(scores)

    def _history_or_raise(self, history: list[np.ndarray] | None) -> None:
        if history is not None:
            raise NotImplementedError(f"model '{self.name}' cannot serve users absent from training")


# -- shared training helpers ----------------------------------------------------------------


def positive_pairs(train: TrainData) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) training pairs; weights are implicit feedback, so only presence counts."""
    coo = train.matrix.tocoo()
    return coo.row.astype(np.int64), coo.col.astype(np.int64)


def sample_negatives(rng: np.random.Generator, users: np.ndarray, known: np.ndarray, n_items: int,
                     rounds: int = 50) -> np.ndarray:
    """One uniform item per user that the user has not interacted with (RecBole's uniform sampler).

    ``known`` holds the sorted keys ``user * n_items + item`` of the training pairs;
    draws that hit one are redrawn (a user who has every item keeps a positive).
    """
    neg = rng.integers(0, n_items, len(users))
    for _ in range(rounds):
        keys = users * n_items + neg
        pos = np.searchsorted(known, keys)
        hit = (pos < len(known)) & (known[np.minimum(pos, len(known) - 1)] == keys)
        if not hit.any():
            break
        neg[hit] = rng.integers(0, n_items, int(hit.sum()))
    return neg


def _nbytes(*tensors: Any) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def bpr_loss(torch: Any, pos: Any, neg: Any) -> Any:
    """-log sigmoid(pos - neg), averaged (Rendle et al. 2009; RecBole's BPRLoss without its 1e-10 floor)."""
    return torch.nn.functional.softplus(neg - pos).mean()


class _DotProduct(TorchRecommender):
    """Models that score ``user_vector . item_vector``; vectors are kept on the device in serving precision."""

    def _freeze(self, users: Any, items: Any) -> None:
        dtype = serving_dtype(self.device)
        self.user_vectors = users.detach().to(dtype)
        self.item_vectors = items.detach().to(dtype)

    def _users(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> Any:
        self._history_or_raise(history)
        import torch

        return self.user_vectors[torch.as_tensor(user_ids, dtype=torch.long, device=self.device)]

    def _score_tensor(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> Any:
        return self._users(user_ids, history) @ self.item_vectors.T

    def size_bytes(self) -> int:
        return _nbytes(self.user_vectors, self.item_vectors)


# -- BPR-MF -------------------------------------------------------------------------------


class BPRMF(_DotProduct):
    """BPR matrix factorisation (Rendle et al., UAI 2009) trained the way RecBole trains it.

    Defaults are RecBole's: ``embedding_size`` 64 (recbole/properties/model/BPR.yaml);
    Adam, ``learning_rate`` 0.001, ``train_batch_size`` 2048, one uniform negative
    per positive, ``weight_decay`` 0, ``epochs`` 300 (recbole/properties/overall.yaml);
    Xavier-normal initialisation and no bias (recbole/model/general_recommender/bpr.py).
    Each epoch visits every training pair once in a seeded shuffled order.
    RecBole's ``epochs`` is a ceiling under early stopping on validation MRR@10;
    here it is the budget (grid over it with ``select_by`` to select it).
    """

    summary = "BPR matrix factorisation in PyTorch with RecBole's defaults (Adam, embedding 64)"

    name = "bpr-mf"
    default_params = {"embedding_size": 64, "learning_rate": 0.001, "train_batch_size": 2048, "epochs": 300,
                      "weight_decay": 0.0, "num_threads": 0, "eval_batch_size": 1024}

    def _fit(self, train: TrainData, torch: Any) -> None:
        p = self.params
        users, items = positive_pairs(train)
        known = np.sort(users * train.n_items + items)
        user_emb = torch.nn.Parameter(torch.empty(train.n_users, int(p["embedding_size"]), device=self.device))
        item_emb = torch.nn.Parameter(torch.empty(train.n_items, int(p["embedding_size"]), device=self.device))
        torch.nn.init.xavier_normal_(user_emb)
        torch.nn.init.xavier_normal_(item_emb)
        optimiser = torch.optim.Adam([user_emb, item_emb], lr=float(p["learning_rate"]),
                                     weight_decay=float(p["weight_decay"]))
        u_all = torch.as_tensor(users, device=self.device)
        i_all = torch.as_tensor(items, device=self.device)
        for epoch in range(int(p["epochs"])):
            progress.step(epoch + 1, int(p["epochs"]), "epoch")
            order = torch.as_tensor(self.rng.permutation(len(users)), device=self.device)
            neg_all = torch.as_tensor(sample_negatives(self.rng, users, known, train.n_items), device=self.device)
            for part in batches(len(users), int(p["train_batch_size"])):
                idx = order[part]
                u, i, j = u_all[idx], i_all[idx], neg_all[idx]
                ue = user_emb[u]
                loss = bpr_loss(torch, (ue * item_emb[i]).sum(1), (ue * item_emb[j]).sum(1))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        self._freeze(user_emb, item_emb)


# -- LightGCN -------------------------------------------------------------------------------


class LightGCN(_DotProduct):
    """LightGCN (He et al., SIGIR 2020): item/user embeddings smoothed over the interaction graph.

    ``E(k+1) = D^-1/2 A D^-1/2 E(k)`` on the bipartite user-item graph with a
    sparse adjacency (torch.sparse.mm), final embedding = mean of layers 0..K
    (the paper's alpha_k = 1/(K+1)); BPR loss plus ``reg_weight`` x the squared L2
    norm of the batch's layer-0 embeddings / 2 / batch size (paper eq. 15 and the
    authors' code). Defaults are RecBole's: ``embedding_size`` 64, ``n_layers`` 2,
    ``reg_weight`` 1e-5 (recbole/properties/model/LightGCN.yaml), Adam
    ``learning_rate`` 0.001, ``train_batch_size`` 2048, ``epochs`` 300
    (recbole/properties/overall.yaml), Xavier-uniform initialisation
    (recbole/model/general_recommender/lightgcn.py).

    ``sample_by = "interaction"`` (RecBole) visits every training pair once per
    epoch; ``"user"`` (the authors' and Microsoft Recommenders' sampler) draws
    ``n_pairs // batch + 1`` batches of uniformly drawn users with one random
    positive and one negative each.

    Cold users are folded in without refitting: a newcomer has no layer-0
    embedding, and its layer-k embedding is the normalised sum of its history
    items' layer-(k-1) embeddings, exactly one propagation step through the
    fixed graph (the newcomer's own effect on the items is ignored).
    """

    summary = "LightGCN graph convolution over the user-item graph (He 2020); cold users by fold-in"

    name = "lightgcn"
    capabilities = Capabilities(cold_users=True, devices=_DEVICES)
    default_params = {"embedding_size": 64, "n_layers": 2, "reg_weight": 1e-5, "learning_rate": 0.001,
                      "train_batch_size": 2048, "epochs": 300, "sample_by": "interaction", "num_threads": 0,
                      "eval_batch_size": 1024}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.params["sample_by"] not in ("interaction", "user"):
            from bench.errors import ConfigError

            raise ConfigError(f"model 'lightgcn': sample_by must be 'interaction' or 'user', "
                              f"got {self.params['sample_by']!r}")

    def _adjacency(self, torch: Any, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> Any:
        n = n_users + n_items
        rows = np.concatenate([users, items + n_users])
        cols = np.concatenate([items + n_users, users])
        degree = np.bincount(rows, minlength=n).astype(np.float64)
        inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1.0)), 0.0)
        values = inv_sqrt[rows] * inv_sqrt[cols]
        self.item_degree = degree[n_users:]
        index = torch.as_tensor(np.vstack([rows, cols]), dtype=torch.long)
        adj = torch.sparse_coo_tensor(index, torch.as_tensor(values, dtype=torch.float32), (n, n),
                                      check_invariants=False)
        return adj.coalesce().to(self.device)

    def _layers(self, torch: Any, adj: Any, ego: Any) -> list[Any]:
        layers = [ego]
        for _ in range(int(self.params["n_layers"])):
            layers.append(torch.sparse.mm(adj, layers[-1]))
        return layers

    def _fit(self, train: TrainData, torch: Any) -> None:
        p = self.params
        n_users, n_items = train.n_users, train.n_items
        users, items = positive_pairs(train)
        known = np.sort(users * n_items + items)
        adj = self._adjacency(torch, users, items, n_users, n_items)
        ego = torch.nn.Parameter(torch.empty(n_users + n_items, int(p["embedding_size"]), device=self.device))
        torch.nn.init.xavier_uniform_(ego)
        optimiser = torch.optim.Adam([ego], lr=float(p["learning_rate"]))
        batch = int(p["train_batch_size"])
        by_user = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))
        active = np.flatnonzero(np.diff(by_user.indptr))
        for epoch in range(int(p["epochs"])):
            progress.step(epoch + 1, int(p["epochs"]), "epoch")
            for u, i in self._epoch_batches(users, items, by_user, active, batch):
                j = sample_negatives(self.rng, u, known, n_items)
                final = torch.stack(self._layers(torch, adj, ego)).mean(0)
                ut, it, jt = (torch.as_tensor(a, device=self.device) for a in (u, i + n_users, j + n_users))
                ue = final[ut]
                loss = bpr_loss(torch, (ue * final[it]).sum(1), (ue * final[jt]).sum(1))
                reg = (ego[ut].pow(2).sum() + ego[it].pow(2).sum() + ego[jt].pow(2).sum()) / 2 / len(u)
                loss = loss + float(p["reg_weight"]) * reg
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        with torch.no_grad():
            layers = self._layers(torch, adj, ego.detach())
            final = torch.stack(layers).mean(0)
        dtype = serving_dtype(self.device)
        # layers 0..K-1 of the items, for folding in cold users
        self.item_layers = torch.stack([layer[n_users:] for layer in layers[:-1]]).to(dtype)
        self._freeze(final[:n_users], final[n_users:])

    def _epoch_batches(self, users: np.ndarray, items: np.ndarray, by_user: sp.csr_matrix, active: np.ndarray,
                       batch: int) -> Any:
        if self.params["sample_by"] == "interaction":
            order = self.rng.permutation(len(users))
            for part in batches(len(users), batch):
                yield users[order[part]], items[order[part]]
            return
        for _ in range(len(users) // batch + 1):
            u = (self.rng.choice(active, batch, replace=False) if batch <= len(active)
                 else self.rng.choice(active, batch, replace=True))
            lo, hi = by_user.indptr[u], by_user.indptr[u + 1]
            yield u, by_user.indices[lo + (self.rng.random(len(u)) * (hi - lo)).astype(np.int64)].astype(np.int64)

    def _users(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> Any:
        if history is None:
            return super()._users(user_ids, None)
        import torch

        n_items = self.item_vectors.shape[0]
        rows = np.repeat(np.arange(len(history)), [len(h) for h in history])
        cols = np.concatenate(history).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
        lengths = np.array([max(len(h), 1) for h in history], dtype=np.float64)
        weights = 1.0 / np.sqrt(lengths[rows] * np.maximum(self.item_degree[cols], 1.0))
        dtype = self.item_layers.dtype
        fold = torch.sparse_coo_tensor(torch.as_tensor(np.vstack([rows, cols]), dtype=torch.long),
                                       torch.as_tensor(weights, dtype=dtype), (len(history), n_items),
                                       check_invariants=False)
        fold = fold.coalesce().to(self.device)
        # layer 0 of a newcomer is zero; layer k (k >= 1) sums its items' layer k-1
        layers = [torch.sparse.mm(fold, item_layer) for item_layer in self.item_layers]
        return torch.stack(layers).sum(0) / (len(layers) + 1)

    def size_bytes(self) -> int:
        return super().size_bytes() + _nbytes(self.item_layers)


# -- SASRec -------------------------------------------------------------------------------


class SASRec(TorchRecommender):
    """SASRec (Kang & McAuley, ICDM 2018): causal self-attention over each user's time-ordered items.

    Architecture defaults are RecBole's (recbole/properties/model/SASRec.yaml):
    ``n_layers`` 2, ``n_heads`` 2, ``hidden_size`` 64, ``inner_size`` 256, GELU,
    ``hidden_dropout_prob`` = ``attn_dropout_prob`` = 0.5, ``layer_norm_eps`` 1e-12,
    ``initializer_range`` 0.02, cross-entropy over all items (``loss_type`` CE),
    ``max_seq_length`` 50 (RecBole's MAX_ITEM_LIST_LENGTH); post-LayerNorm blocks
    with learned positions. Training follows the paper: Adam ``learning_rate``
    0.001, batches of 128 sequences, 200 epochs, every position of a sequence
    predicts the next item. A history longer than ``max_seq_length`` is cut into
    windows from its end, overlapping by one item, so every training transition
    is a target exactly once.

    A user is served from the last ``max_seq_length`` items of their sequence:
    their training history if warm, the k-shot ``history`` if cold (no
    refitting). An empty sequence carries no information, so zero-shot cold
    users are not claimed.
    """

    summary = "SASRec self-attentive next-item model over time-ordered histories (Kang 2018)"

    name = "sasrec"
    capabilities = Capabilities(cold_users=True, devices=_DEVICES)
    default_params = {"hidden_size": 64, "n_layers": 2, "n_heads": 2, "inner_size": 256,
                      "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "layer_norm_eps": 1e-12,
                      "initializer_range": 0.02, "max_seq_length": 50, "learning_rate": 0.001,
                      "train_batch_size": 128, "epochs": 200, "num_threads": 0, "eval_batch_size": 256}

    def _windows(self, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded (input, target) windows; item ids are shifted by one, 0 is padding."""
        length = int(self.params["max_seq_length"])
        inputs, targets = [], []
        for h in histories:
            h = np.asarray(h, dtype=np.int64) + 1
            end = len(h)
            while end > 1:
                start = max(0, end - length - 1)
                chunk = h[start:end]
                x, y = np.zeros(length, np.int64), np.zeros(length, np.int64)
                x[length - len(chunk) + 1:] = chunk[:-1]
                y[length - len(chunk) + 1:] = chunk[1:]
                inputs.append(x)
                targets.append(y)
                end = start + 1
        if not inputs:
            return np.zeros((0, length), np.int64), np.zeros((0, length), np.int64)
        return np.stack(inputs), np.stack(targets)

    def _fit(self, train: TrainData, torch: Any) -> None:
        p = self.params
        if int(p["hidden_size"]) % int(p["n_heads"]):
            from bench.errors import ConfigError

            raise ConfigError(f"model 'sasrec': hidden_size ({p['hidden_size']}) must be divisible by "
                              f"n_heads ({p['n_heads']})")
        self.histories = train.histories()
        self.net = _SASRecNet(torch, train.n_items, p).to(self.device)
        inputs, targets = self._windows(self.histories)
        x_all = torch.as_tensor(inputs, device=self.device)
        y_all = torch.as_tensor(targets, device=self.device)
        optimiser = torch.optim.Adam(self.net.parameters(), lr=float(p["learning_rate"]))
        self.net.train()
        for epoch in range(int(p["epochs"])):
            progress.step(epoch + 1, int(p["epochs"]), "epoch")
            order = torch.as_tensor(self.rng.permutation(len(inputs)), device=self.device)
            for part in batches(len(inputs), int(p["train_batch_size"])):
                x, y = x_all[order[part]], y_all[order[part]]
                hidden = self.net(x)
                keep = y > 0
                logits = hidden[keep] @ self.net.item_emb.weight[1:].T
                loss = torch.nn.functional.cross_entropy(logits, y[keep] - 1)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        self.net.eval()
        self.net.to(serving_dtype(self.device))

    def _score_tensor(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> Any:
        import torch

        length = int(self.params["max_seq_length"])
        seqs = history if history is not None else [self.histories[int(u)] for u in user_ids]
        x = np.zeros((len(seqs), length), np.int64)
        for row, h in enumerate(seqs):
            recent = np.asarray(h, dtype=np.int64)[-length:] + 1
            if len(recent):
                x[row, length - len(recent):] = recent
        hidden = self.net(torch.as_tensor(x, device=self.device))[:, -1]
        return hidden @ self.net.item_emb.weight[1:].T

    def size_bytes(self) -> int:
        return _nbytes(*self.net.parameters())


def _SASRecNet(torch: Any, n_items: int, p: dict[str, Any]) -> Any:
    """Build the SASRec network (a function so torch is imported only when a model is fitted)."""
    nn = torch.nn
    hidden, eps = int(p["hidden_size"]), float(p["layer_norm_eps"])

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(hidden, int(p["n_heads"]), dropout=float(p["attn_dropout_prob"]),
                                              batch_first=True)
            self.drop = nn.Dropout(float(p["hidden_dropout_prob"]))
            self.norm1 = nn.LayerNorm(hidden, eps=eps)
            self.ffn = nn.Sequential(nn.Linear(hidden, int(p["inner_size"])), nn.GELU(),
                                     nn.Linear(int(p["inner_size"]), hidden))
            self.norm2 = nn.LayerNorm(hidden, eps=eps)

        def forward(self, x: Any, mask: Any) -> Any:
            attended, _ = self.attn(x, x, x, attn_mask=mask, need_weights=False)
            x = self.norm1(x + self.drop(attended))
            return self.norm2(x + self.drop(self.ffn(x)))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
            self.pos_emb = nn.Embedding(int(p["max_seq_length"]), hidden)
            self.norm = nn.LayerNorm(hidden, eps=eps)
            self.drop = nn.Dropout(float(p["hidden_dropout_prob"]))
            self.blocks = nn.ModuleList(Block() for _ in range(int(p["n_layers"])))
            self.apply(self._init)

        def _init(self, module: Any) -> None:
            std = float(p["initializer_range"])
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.data.normal_(0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
            if isinstance(module, nn.LayerNorm):
                module.weight.data.fill_(1.0)
                module.bias.data.zero_()

        def forward(self, seq: Any) -> Any:
            n, length = seq.shape
            positions = torch.arange(length, device=seq.device)
            x = self.drop(self.norm(self.item_emb(seq) + self.pos_emb(positions)[None]))
            # additive mask: a position sees itself and earlier non-padding positions (finite, so an
            # all-padding query row stays defined; its output is never used)
            future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seq.device), 1)
            blocked = future[None] | (seq == 0)[:, None, :]
            mask = torch.zeros(blocked.shape, dtype=x.dtype, device=seq.device).masked_fill(blocked, -1e9)
            mask = mask.repeat_interleave(int(p["n_heads"]), dim=0)
            for block in self.blocks:
                x = block(x, mask)
            return x

    return Net()


# -- MeLU -------------------------------------------------------------------------------


class MeLU(TorchRecommender):
    """MeLU (Lee et al., KDD 2019): MAML over users; each user adapts the decision layers to their shots.

    A user is a task. Global parameters are user/item embeddings and the
    initial decision layers (two hidden layers of 64, ReLU, one output, as in the
    paper); for a user, ``local_steps`` gradient steps with ``local_lr`` on their
    support items adapt only the decision layers ("local update"), and the
    adapted network scores every item. Meta-training draws ``meta_batch_size``
    users per step, splits each user's training items at random into a support
    set of 1..``max_support`` items and a query set of the rest, and updates the
    global parameters with Adam on the query loss after adaptation
    (second-order MAML unless ``first_order``).

    bench's data is implicit feedback, not MeLU's ratings, so the per-user loss is
    binary cross-entropy over the whole catalogue with positives and negatives
    weighted equally (MeLU regresses ratings with MSE). Users are represented
    by their side features when the dataset has them (MeLU's user embedding of
    demographics), otherwise by one learned vector; items by an id embedding plus
    a projection of their features. Embedding size 32, hidden 64/64, meta-batch 32
    and one local step follow ``config`` in the authors' options.py
    (hoyeoplee/MeLU); its learning rates (5e-5 / 5e-6) are for rating MSE and do
    not carry over, so ``meta_lr`` 0.001 and ``local_lr`` 0.5 are ours, set on the
    checkerboard and not on test data.

    Serving adapts on the user's history: the k shots of a cold user, the
    training history of a warm user (its most recent ``max_history`` items). With
    an empty history the un-adapted global model answers (zero-shot).
    """

    summary = "MeLU meta-learned (MAML) cold-start recommender adapting to a user's shots (Lee 2019)"

    name = "melu"
    capabilities = Capabilities(cold_users=True, cold_users_zero_shot=True, devices=_DEVICES)
    needs_grad_to_serve = True
    default_params = {"embedding_size": 32, "hidden_size": 64, "meta_lr": 0.001, "local_lr": 0.5,
                      "local_steps": 1, "meta_batch_size": 32, "epochs": 30, "max_support": 10,
                      "max_history": 100, "first_order": False, "num_threads": 0, "eval_batch_size": 32}

    def _fit(self, train: TrainData, torch: Any) -> None:
        p = self.params
        side = train.side
        e, h = int(p["embedding_size"]), int(p["hidden_size"])
        self.histories = train.histories()
        user_x = side.user_features if side.user_features is not None and side.user_features.shape[1] else None
        item_x = side.item_features if side.item_features is not None and side.item_features.shape[1] else None
        self.user_x = None if user_x is None else torch.as_tensor(user_x.toarray(), dtype=torch.float32,
                                                                  device=self.device)
        self.item_x = None if item_x is None else torch.as_tensor(item_x.toarray(), dtype=torch.float32,
                                                                  device=self.device)
        g = torch.Generator().manual_seed(self.seed)

        def param(*shape: int, fan_in: int = 0) -> Any:
            scale = 1.0 / np.sqrt(fan_in) if fan_in else 0.1
            return torch.nn.Parameter((torch.rand(*shape, generator=g) * 2 - 1).mul_(scale).to(self.device))

        n_in = 2 * e
        self.globals = {
            "item_id": param(train.n_items, e),
            "item_proj": param(item_x.shape[1] if item_x is not None else 1, e),
            "user_proj": param(user_x.shape[1] if user_x is not None else 1, e),
            "W1": param(n_in, h, fan_in=n_in), "b1": param(h, fan_in=n_in),
            "W2": param(h, h, fan_in=h), "b2": param(h, fan_in=h),
            "w3": param(h, fan_in=h), "b3": param(1, fan_in=h),
        }
        if item_x is None:
            self.globals["item_proj"].data.zero_()
        optimiser = torch.optim.Adam(list(self.globals.values()), lr=float(p["meta_lr"]))
        eligible = np.array([u for u, hist in enumerate(self.histories) if len(np.unique(hist)) >= 2], np.int64)
        for epoch in range(int(p["epochs"])):
            progress.step(epoch + 1, int(p["epochs"]), "epoch")
            order = self.rng.permutation(eligible)
            for part in batches(len(order), int(p["meta_batch_size"])):
                users = order[part]
                support, query = [], []
                for u in users:
                    items = self.rng.permutation(np.unique(self.histories[u]))
                    n_support = int(self.rng.integers(1, min(int(p["max_support"]), len(items) - 1) + 1))
                    support.append(items[:n_support])
                    query.append(items[n_support:])
                known = [np.unique(self.histories[u]) for u in users]
                weights = self._adapt(torch, self.globals, users, support, known,
                                      create_graph=not bool(p["first_order"]))
                logits = self._logits(torch, self.globals, weights, users)
                loss = self._loss(torch, logits, query, support)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        dtype = serving_dtype(self.device)
        self.serving = {k: v.detach().to(dtype) for k, v in self.globals.items()}
        if self.user_x is not None:
            self.user_x = self.user_x.to(dtype)
        if self.item_x is not None:
            self.item_x = self.item_x.to(dtype)

    # the network, written with explicit weights so each user can carry adapted copies
    def _user_repr(self, torch: Any, params: dict[str, Any], users: np.ndarray) -> Any:
        if self.user_x is None:
            return params["user_proj"].expand(len(users), -1)
        rows = torch.as_tensor(users, dtype=torch.long, device=self.device)
        return self.user_x[rows] @ params["user_proj"]

    def _item_repr(self, torch: Any, params: dict[str, Any]) -> Any:
        items = params["item_id"]
        if self.item_x is not None:
            items = items + self.item_x @ params["item_proj"]
        return items

    def _logits(self, torch: Any, params: dict[str, Any], local: dict[str, Any], users: np.ndarray) -> Any:
        """[B, n_items] logits with per-user decision layers ``local`` (each [B, ...])."""
        e = params["item_id"].shape[1]
        items = self._item_repr(torch, params)  # [m, e]
        user = self._user_repr(torch, params, users)  # [B, e]
        w1_item, w1_user = local["W1"][:, :e], local["W1"][:, e:]
        h1 = torch.einsum("me,beh->bmh", items, w1_item) + torch.einsum("be,beh->bh", user, w1_user)[:, None]
        h1 = torch.relu(h1 + local["b1"][:, None])
        h2 = torch.relu(torch.einsum("bmh,bhg->bmg", h1, local["W2"]) + local["b2"][:, None])
        return torch.einsum("bmg,bg->bm", h2, local["w3"]) + local["b3"]

    def _loss(self, torch: Any, logits: Any, positives: list[np.ndarray], ignore: list[np.ndarray] | None) -> Any:
        """Mean over users of balanced BCE: mean over positives + mean over non-positives (``ignore`` left out)."""
        n, m = logits.shape
        target = torch.zeros(n, m, dtype=logits.dtype, device=logits.device)
        weight = torch.ones(n, m, dtype=logits.dtype, device=logits.device)
        for row, items in enumerate(positives):
            target[row, torch.as_tensor(np.asarray(items, np.int64), device=logits.device)] = 1.0
        if ignore is not None:
            for row, items in enumerate(ignore):
                weight[row, torch.as_tensor(np.asarray(items, np.int64), device=logits.device)] = 0.0
        n_pos = target.sum(1, keepdim=True)
        n_neg = (weight * (1 - target)).sum(1, keepdim=True)
        has = (n_pos > 0).to(logits.dtype)  # a user without positives contributes nothing (no adaptation)
        w = weight * has * (target / n_pos.clamp(min=1) + (1 - target) / n_neg.clamp(min=1))
        per_entry = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (w * per_entry).sum() / max(n, 1)

    def _adapt(self, torch: Any, params: dict[str, Any], users: np.ndarray, support: list[np.ndarray],
               known: list[np.ndarray] | None, create_graph: bool) -> dict[str, Any]:
        """Per-user decision layers after ``local_steps`` steps on the support items."""
        local = {k: params[k].unsqueeze(0).expand(len(users), *params[k].shape)
                 for k in ("W1", "b1", "W2", "b2", "w3", "b3")}
        if not create_graph and not params["W1"].requires_grad:  # serving: the copies are the leaves
            local = {k: v.clone().requires_grad_(True) for k, v in local.items()}
        for _ in range(int(self.params["local_steps"])):
            # known items other than the support set are not negatives of the support loss
            ignore = None if known is None else [np.setdiff1d(k, s) for k, s in zip(known, support)]
            loss = self._loss(torch, self._logits(torch, params, local, users), support, ignore) * len(users)
            grads = torch.autograd.grad(loss, list(local.values()), create_graph=create_graph)
            local = {k: v - float(self.params["local_lr"]) * g for (k, v), g in zip(local.items(), grads)}
        return local

    def _score_tensor(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> Any:
        limit = int(self.params["max_history"])
        shots = history if history is not None else [self.histories[int(u)] for u in user_ids]
        support = [np.unique(np.asarray(h, np.int64)[-limit:]) for h in shots]
        params = {k: v.requires_grad_(False) for k, v in self.serving.items()}
        import torch

        local = self._adapt(torch, params, np.asarray(user_ids), support, None, create_graph=False)
        with torch.no_grad():
            return self._logits(torch, params, {k: v.detach() for k, v in local.items()}, np.asarray(user_ids))

    def size_bytes(self) -> int:
        return _nbytes(*self.serving.values())
