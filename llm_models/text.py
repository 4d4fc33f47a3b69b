"""Text-encoder recommenders: zero-shot sentence embeddings, and the same encoder fine-tuned as a two-tower.

Items are their text (title, genres / artist name); nothing is learned per item
id, so an item with no interactions is served like any other (cold items), and
a newcomer is served from whatever k-shot history they have (cold users).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench import progress
from bench.protocol import Capabilities, Recommender, TrainData
from llm_models import runtime

ENCODER_PARAMS: dict[str, Any] = {
    "model_name_or_path": runtime.DEFAULT_ENCODER,  # any Hugging Face encoder directory or name
    "batch_size": 256,  # texts per encoder call at inference
    "max_length": 64,  # tokens per item text
    "max_chars": 200,  # characters of item text kept
    "num_threads": 0,  # torch CPU threads for this process (0 = torch's default)
}


class TextEmbed(Recommender):
    """Zero-shot: cosine between item text embeddings and a recency-weighted mean of the user's history.

    Users with no history at all have no text to embed: ``score`` returns training
    popularity for them, but the model does not claim zero-shot cold users, so the
    harness reports that case as "not served" instead of crediting a popularity
    fallback to a text model.
    ``update`` is exact when the new interactions are later than the old ones
    (the state a refit on all of them gives): new
    interactions join the histories and popularity, and only items beyond the
    embedded catalogue are encoded. The whole catalogue's text is known at
    ``fit``, so in bench an update usually encodes nothing.
    """

    name = "text-embed"
    family = "language model"
    summary = "zero-shot sentence-encoder similarity between item text and the user's history"
    extra = "llm"
    preload_modules = runtime.ENCODER_PRELOAD  # imported once in the cell forkserver (bench.execution)
    capabilities = Capabilities(cold_users=True, cold_users_zero_shot=False, cold_items=True, update=True,
                                devices=("cpu", "cuda"))
    default_params: dict[str, Any] = {
        **ENCODER_PARAMS,
        "recency_decay": 0.9,  # weight of the j-th most recent item is decay**j
        "max_history": 50,  # most recent items that make the user vector
    }

    def fit(self, train: TrainData) -> None:
        runtime.require_torch(self.name)
        p = self.params
        runtime.use_threads(p["num_threads"])
        self.texts = runtime.item_texts(train.side, p["max_chars"])
        self.histories = train.histories()
        self.count_items(train)
        self.item_embeddings = self.embed_items()
        runtime.synchronize(self.device)

    def count_items(self, train: TrainData, add: bool = False) -> None:
        """Interactions per item (kept for updates; ``add`` to the kept ones) and the popularity fallback."""
        counts = np.bincount(train.item, minlength=train.n_items).astype(np.float64)
        if add:
            counts[:len(self.item_counts)] += self.item_counts
        self.item_counts = counts
        self.popularity = counts / max(counts.max(), 1.0)

    def embed_items(self) -> np.ndarray:
        p = self.params
        return runtime.pretrained_item_embeddings(p["model_name_or_path"], self.name, self.texts, p["max_length"],
                                                  p["batch_size"], self.device)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Embeddings of item texts the fitted item encoder has not seen yet."""
        p = self.params
        return runtime.pretrained_item_embeddings(p["model_name_or_path"], self.name, texts, p["max_length"],
                                                  p["batch_size"], self.device)

    def update(self, new: TrainData) -> None:
        """New interactions extend each user's time-ordered history; items not embedded yet are encoded."""
        if new.n_items > len(self.item_embeddings):
            self.texts = runtime.item_texts(new.side, self.params["max_chars"])
            fresh = self.encode_texts(self.texts[len(self.item_embeddings):])
            self.item_embeddings = np.vstack([self.item_embeddings, fresh])
        self.histories += [np.zeros(0, np.int64)] * (new.n_users - len(self.histories))
        added = new.histories()
        for user in np.unique(new.user):
            self.histories[user] = np.concatenate([self.histories[user], added[user]])
        self.count_items(new, add=True)
        runtime.synchronize(self.device)

    def user_histories(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> list[np.ndarray]:
        if history is not None:
            return [np.asarray(h, dtype=np.int64) for h in history]
        return [self.histories[int(u)] for u in user_ids]

    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        """Recency-weighted mean of history embeddings, normalised; zeros for an empty history."""
        p = self.params
        out = np.zeros((len(histories), self.item_embeddings.shape[1]), np.float32)
        for row, items in enumerate(histories):
            recent = items[-p["max_history"]:]
            if len(recent) == 0:
                continue
            weights = p["recency_decay"] ** np.arange(len(recent) - 1, -1, -1, dtype=np.float64)
            vector = (weights[:, None] * self.item_embeddings[recent]).sum(0)
            out[row] = vector / max(np.linalg.norm(vector), 1e-12)
        return out

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        histories = self.user_histories(np.asarray(user_ids), history)
        scores = (self.user_vectors(histories) @ self.item_embeddings.T).astype(np.float64)
        empty = np.array([len(h) == 0 for h in histories], dtype=bool)
        if empty.any():
            scores[empty] = self.popularity
        return scores

    def size_bytes(self) -> int:
        return int(self.item_embeddings.nbytes) if hasattr(self, "item_embeddings") else 0


class TextTwoTower(TextEmbed):
    """The encoder fine-tuned on the training split: user-history text -> next item text, in-batch negatives.

    A training example cuts a user's time-ordered history at a random point; the
    query is the text of the ``max_history_items`` items before the cut, the
    positive the item at the cut, and the other positives of the batch are the
    negatives (InfoNCE, temperature ``temperature``). At serving time the user is
    the same history text, so query and training distributions match. The loss
    of every step is kept (``describe()["training"]["loss_curve"]``).

    No ``update`` capability: the towers learn only from the interactions seen
    at fit, so absorbing new ones without gradient steps (history append, which
    the inherited ``update`` would do) is a stale model, not an incremental
    one; its honest freshness point is a retrain.
    """

    name = "text-twotower"
    family = "language model"
    summary = "the sentence encoder fine-tuned contrastively: history text -> next item text"
    extra = "llm"
    preload_modules = (*runtime.ENCODER_PRELOAD, *runtime.TRAINING_PRELOAD)
    capabilities = Capabilities(cold_users=True, cold_users_zero_shot=False, cold_items=True,
                                devices=("cpu", "cuda"))
    default_params: dict[str, Any] = {
        **ENCODER_PARAMS,
        "max_history_items": 10,  # items in a user's query text
        "query_max_length": 128,  # tokens per query
        "max_steps": 100,
        "train_batch_size": 32,
        "learning_rate": 5e-5,
        "temperature": 0.05,
        "max_users": 0,  # training users sampled (0 = all)
    }

    def fit(self, train: TrainData) -> None:
        torch = runtime.require_torch(self.name)
        p = self.params
        runtime.use_threads(p["num_threads"])
        self.texts = runtime.item_texts(train.side, p["max_chars"])
        self.histories = train.histories()
        self.count_items(train)
        runtime.seed_everything(self.seed)
        rng = np.random.default_rng(self.seed)
        tokenizer, model = runtime.load_encoder(p["model_name_or_path"], self.name)
        self.item_encoder = runtime.Encoder(tokenizer, model, self.device, p["max_length"])
        self.query_encoder = runtime.Encoder(tokenizer, model, self.device, p["query_max_length"])
        users = np.array([u for u, h in enumerate(self.histories) if len(h) >= 2], dtype=np.int64)
        if p["max_users"] and len(users) > p["max_users"]:
            users = np.sort(rng.choice(users, p["max_users"], replace=False))
        losses: list[float] = []
        start = time.perf_counter()
        if len(users) and p["max_steps"] > 0:
            optimizer = torch.optim.AdamW(model.parameters(), lr=p["learning_rate"])
            for p_ in model.parameters():
                p_.requires_grad_(True)
            model.train()
            for step in range(p["max_steps"]):
                progress.step(step + 1, p["max_steps"], "fine-tune step")
                queries, positives = self.sample_batch(users, rng)
                q = self.query_encoder.forward(queries)
                d = self.item_encoder.forward([self.texts[i] for i in positives])
                logits = q @ d.T / p["temperature"]
                same = torch.as_tensor(positives[:, None] == positives[None, :], device=logits.device)
                eye = torch.eye(len(positives), dtype=torch.bool, device=logits.device)
                logits = logits.masked_fill(same & ~eye, float("-inf"))  # a duplicate positive is not a negative
                loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(positives), device=logits.device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            model.eval()
            for p_ in model.parameters():
                p_.requires_grad_(False)
        self.training = {"steps": len(losses), "users_sampled": int(len(users)), "examples": len(losses) *
                         p["train_batch_size"], "seconds": time.perf_counter() - start,
                         "loss_curve": [round(v, 5) for v in losses]}
        self.item_embeddings = self.item_encoder.encode(self.texts, p["batch_size"])
        runtime.synchronize(self.device)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.item_encoder.encode(texts, self.params["batch_size"])

    def sample_batch(self, users: np.ndarray, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
        p = self.params
        chosen = rng.choice(users, min(p["train_batch_size"], len(users)), replace=False)
        queries, positives = [], []
        for u in chosen:
            items = self.histories[int(u)]
            cut = int(rng.integers(1, len(items)))
            queries.append(runtime.history_text(self.texts, items[:cut], p["max_history_items"]))
            positives.append(int(items[cut]))
        return queries, np.array(positives, dtype=np.int64)

    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(histories), self.item_embeddings.shape[1]), np.float32)
        rows = [r for r, h in enumerate(histories) if len(h)]
        if rows:
            queries = [runtime.history_text(self.texts, histories[r], self.params["max_history_items"]) for r in rows]
            out[rows] = self.query_encoder.encode(queries, self.params["batch_size"])
        return out

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        scores = super().score(user_ids, history)
        runtime.synchronize(self.device)
        return scores

    def size_bytes(self) -> int:
        encoder = sum(t.numel() * t.element_size() for t in self.item_encoder.model.parameters()) \
            if hasattr(self, "item_encoder") else 0
        return int(encoder + super().size_bytes())

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if hasattr(self, "training"):
            out["training"] = self.training
        return out
