"""Causal-LM recommenders: a yes/no reranker over a first stage, and a generator of the next item's text.

Both fine-tune the LM on prompts built from the training split only (LoRA via
``peft`` by default, or every weight with ``lora = false``) and keep the loss
of every step. Budgets (steps, users, candidates, history items, tokens) are
parameters, so the same model runs a CPU smoke test in seconds and a GPU suite
at full size; ``describe()["training"]`` records the budget actually used.

Prompt shape (shared by training and serving, so they cannot drift apart)::

    A user liked these items:
    <title>; <title>; ...          <- the user's most recent history, oldest first
    Will the user like "<title>"? Answer:  Yes | No        (llm-rerank, prompt = "pointwise")
    Candidates:                                            (llm-rerank, prompt = "listwise")
    A. <title>
    B. <title> ...
    Which candidate will the user like next? Answer:  A | B | ...
    The next item they liked: <title><eos>                 (llm-generate)
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from bench import progress, registry
from bench.errors import ConfigError
from bench.protocol import Capabilities, Recommender, TrainData, mask_and_rank
from llm_models import explain as explain_lib
from llm_models import runtime

HEADER = "A user liked these items:\n"
# Listwise prompts label candidates A, B, ... (LlamaRec's verbalizer): one next token scores every candidate
LIST_LABELS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
EMPTY_HISTORY = "(nothing yet)"

LM_PARAMS: dict[str, Any] = {
    "model_name_or_path": runtime.DEFAULT_LM,  # any causal-LM directory, .gguf file or hub name
    "max_history_items": 10,  # most recent items in a prompt
    "max_chars": 60,  # characters of each item's text
    "max_prompt_tokens": 256,  # history tokens kept (the most recent), header excluded
    "max_steps": 200,  # fine-tuning steps (0 = zero-shot)
    "train_batch_size": 16,
    "learning_rate": 2e-4,
    "max_users": 0,  # training users sampled for prompts (0 = all)
    "lora": True,  # False = fine-tune every weight
    "lora_r": 8,
    "batch_size": 32,  # sequences per LM call at inference
    "num_threads": 0,  # torch CPU threads for this process (0 = torch's default)
}


class LMRecommender(Recommender):
    """Shared fitting machinery: prompts, the seeded fine-tuning loop, devices and bookkeeping."""

    default_params = LM_PARAMS
    preload_modules = runtime.LM_PRELOAD

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gpu_peak = runtime.GpuPeak(self.device)
        self.counters: dict[str, float] = {}

    # -- prompts -----------------------------------------------------------------
    def prepare(self, train: TrainData) -> None:
        p = self.params
        self.torch = runtime.require_torch(self.name)
        runtime.use_threads(p["num_threads"])
        self.texts = runtime.item_texts(train.side, p["max_chars"])
        self.full_texts = runtime.item_texts(train.side, 1000)  # explanation prompts: title, genres, tags
        self.histories = train.histories()
        self.n_items = train.n_items
        self.tokenizer, self.lm = runtime.load_lm(p["model_name_or_path"], self.name)
        self.lm.to(self.device)
        self.header_ids = self.encode(HEADER)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix_ids(self, items: np.ndarray) -> list[int]:
        """Header + the most recent history (cut to max_prompt_tokens from the left) + newline."""
        p = self.params
        text = runtime.history_text(self.texts, np.asarray(items), p["max_history_items"]) or EMPTY_HISTORY
        history = self.encode(text)[-p["max_prompt_tokens"]:]
        return self.header_ids + history + self.encode("\n")

    def user_histories(self, user_ids: np.ndarray, history: list[np.ndarray] | None) -> list[np.ndarray]:
        if history is not None:
            return [np.asarray(h, dtype=np.int64) for h in history]
        return [self.histories[int(u)] for u in user_ids]

    def training_users(self, rng: np.random.Generator) -> np.ndarray:
        users = np.array([u for u, h in enumerate(self.histories) if len(h) >= 2], dtype=np.int64)
        if self.params["max_users"] and len(users) > self.params["max_users"]:
            users = np.sort(rng.choice(users, self.params["max_users"], replace=False))
        return users

    def pad(self, sequences: list[list[int]]) -> tuple[Any, Any, Any]:
        """Right-padded ids, attention mask and each row's last real position."""
        torch = self.torch
        width = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        last = torch.tensor([len(s) - 1 for s in sequences], dtype=torch.long)
        return ids.to(self.device), mask.to(self.device), last.to(self.device)

    # -- fine-tuning ---------------------------------------------------------------
    def finetune(self, rng: np.random.Generator) -> None:
        """Seeded LoRA (or full) fine-tuning; ``self.batch_loss(rng)`` defines the task."""
        torch, p = self.torch, self.params
        runtime.seed_everything(self.seed)
        self.users = self.training_users(rng)
        losses: list[float] = []
        start = time.perf_counter()
        if p["max_steps"] > 0 and len(self.users):
            model = self.lm
            if p["lora"]:
                from peft import LoraConfig, get_peft_model

                config = LoraConfig(r=p["lora_r"], lora_alpha=2 * p["lora_r"], lora_dropout=0.0,
                                    target_modules="all-linear", task_type="CAUSAL_LM")
                with warnings.catch_warnings():  # peft asks transformers a deprecated question: noise in every cell
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                    model = get_peft_model(self.lm, config)
            else:
                for weight in model.parameters():
                    weight.requires_grad_(True)
            trainable = [w for w in model.parameters() if w.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=p["learning_rate"])
            model.train()
            self.train_model = model
            for step in range(p["max_steps"]):
                with runtime.autocast(self.device):
                    loss = self.batch_loss(rng)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                progress.step(step + 1, p["max_steps"], "fine-tune step", f"loss {losses[-1]:.3f}")
            model.eval()
            if p["lora"]:
                self.lm = model.merge_and_unload()
            del self.train_model
            for weight in self.lm.parameters():
                weight.requires_grad_(False)
        self.training = {"steps": len(losses), "users_sampled": int(len(self.users)),
                         "examples": len(losses) * p["train_batch_size"], "seconds": time.perf_counter() - start,
                         "lora": bool(p["lora"]), "loss_curve": [round(v, 5) for v in losses]}
        peak = self.gpu_peak.take()
        if peak is not None:
            self.training["peak_gpu_mb"] = peak

    def batch_loss(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def sample_cut(self, rng: np.random.Generator, n: int) -> list[tuple[int, np.ndarray, int]]:
        """``n`` (user, history before a random cut, item at the cut) from the sampled training users."""
        out = []
        for u in rng.choice(self.users, n, replace=len(self.users) < n):
            items = self.histories[int(u)]
            cut = int(rng.integers(1, len(items)))
            out.append((int(u), items[:cut], int(items[cut])))
        return out

    # -- generation and explanations ---------------------------------------------------
    def greedy(self, prompts: list[list[int]], max_new_tokens: int, what: str = "prompts generated for") -> list[str]:
        """Greedy continuations of token-id prompts, in batches (left padding, as generation needs), decoded;
        ``what`` names the batches in the cell's progress line (bench.progress)."""
        torch, p = self.torch, self.params
        texts: list[str] = []
        pad_id = self.tokenizer.pad_token_id
        for part in runtime.batches(len(prompts), p["batch_size"]):
            progress.step(len(texts), len(prompts), what)
            batch = prompts[part]
            width = max(len(x) for x in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prompt in enumerate(batch):
                ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
                mask[row, width - len(prompt):] = 1
            with torch.inference_mode(), runtime.autocast(self.device):
                out = self.lm.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                       max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                       pad_token_id=pad_id, eos_token_id=self.tokenizer.eos_token_id)
            texts.extend(self.tokenizer.decode(row, skip_special_tokens=True).strip()
                         for row in out[:, width:].cpu().tolist())
        return texts

    @classmethod
    def check_param_values(cls, params: dict[str, Any]) -> None:
        """Explanation budgets, checked when a suite is read (bench.config), before any cell runs."""
        explain_lib.check_params(cls.name, params)

    def explains(self) -> bool:
        """Whether this instance writes reasons (subclasses say when); the ``explains`` capability follows it."""
        return False

    def explain(self, user_ids: np.ndarray, items: np.ndarray, *,
                history: list[np.ndarray] | None = None) -> list[tuple[int, int, str]]:
        """One-sentence reasons for the top listed items of the first users, by this fitted LM (llm_models.explain)."""
        if not self.explains():
            return super().explain(user_ids, items, history=history)
        runtime.seed_everything(self.seed)
        out = explain_lib.explain(self, np.asarray(user_ids), np.asarray(items), history)
        runtime.synchronize(self.device)
        return out

    # -- bookkeeping -------------------------------------------------------------------
    def extra_metrics(self) -> dict[str, float]:
        out = dict(self.counters)
        self.counters = {}
        return out

    def size_bytes(self) -> int:
        if not hasattr(self, "lm"):
            return 0
        return int(sum(t.numel() * t.element_size() for t in self.lm.parameters()))

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if hasattr(self, "training"):
            out["training"] = self.training
        return out


class LLMRerank(LMRecommender):
    """A causal LM scores P(yes | history, candidate) for the top candidates of a first-stage model.

    The first stage (any registered model, default ``text-embed``) proposes
    ``max(k, n_candidates)`` items; the LM reranks the first ``n_candidates`` of
    them and those come first, scored ``1 + P(yes)``; any remaining positions keep
    the first-stage order with scores ``1 / (2 + rank)``. Those are the first
    stage's, not this model's: :meth:`ranked_depth` says so, and the runner
    marks metrics at k > ``n_candidates`` as ``first_stage`` rather than
    crediting them to the reranker (rank k candidates to be scored at k). Under the
    ``retrieved`` protocol (bench.retrieved) the harness's shared candidates replace the
    private first stage: the LM scores every one of them and ranks every position. Each
    candidate is scored on its own (its own prompt), so the candidates' order is not read
    (``reads_candidate_order`` is False; only equal P(yes) keep the order given). The user's history
    prefix is run once and its KV cache shared by every candidate
    (``share_prefix = false`` re-encodes it per candidate: same numbers, slower).
    Cold users and cold items are served when the first stage serves them.

    ``prompt = "listwise"`` (LlamaRec's verbalizer, Yue et al. 2023) instead lists every candidate in one
    prompt under the labels A, B, ... (at most 26) and scores each candidate by the probability of its label
    as the next token (a softmax over the labels shown): one forward pass per user rather than one suffix
    per candidate, but the ranking can now depend on the order the candidates are listed in, so this mode
    declares ``reads_candidate_order`` and the order probes (bench.retrieved) measure that position bias.
    It fine-tunes on lists of one held-out positive among ``n_candidates - 1`` random unseen items in a
    random order (cross-entropy over the labels; LlamaRec draws the negatives from its retriever instead).

    Under the pointwise protocol (bench.pointwise) :meth:`score_pairs` returns P(yes) for each labelled
    pair straight from the LM (no first stage), a probability (``Capabilities.calibrated``), and
    ``train_labels = "rating"`` fine-tunes TALLRec-style on ``train_examples`` labelled training
    pairs (liked = " Yes") instead of liked-versus-random items.
    """

    name = "llm-rerank"
    family = "language model"
    summary = "LoRA fine-tuned causal LM reranking candidates by P(yes) each, or listwise in one prompt"
    extra = "llm"
    capabilities = Capabilities(cold_users=True, cold_users_zero_shot=True, cold_items=True,
                                devices=("cpu", "cuda"))
    default_params: dict[str, Any] = {
        **LM_PARAMS,
        "first_stage": "text-embed",
        "first_stage_params": {},
        "n_candidates": 20,  # candidates the LM reranks per user
        "negatives_per_positive": 1,  # random non-history items per positive in training
        "share_prefix": True,
        "explain": False,  # write a one-sentence reason for the top items of a few users (llm_models.explain)
        **explain_lib.EXPLAIN_PARAMS,
        # "implicit": liked items (Yes) vs random unseen items (No); "rating": TALLRec's labelled yes/no
        # examples, one per rated training pair (liked = Yes), which needs the pointwise protocol's labels
        "train_labels": "implicit",
        "train_examples": 0,  # "rating": a seeded sample of this many labelled pairs, cycled (0 = every pair)
        # "pointwise": P(yes) of each candidate in its own prompt; "listwise": every candidate in one prompt,
        # labelled A, B, ..., scored by its label's next-token probability (reads the candidates' order)
        "prompt": "pointwise",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        p = self.params
        if p["first_stage"] == self.name:
            raise ConfigError("model 'llm-rerank': first_stage cannot be 'llm-rerank' itself")
        stage_cls = registry.models.get(p["first_stage"])
        if not isinstance(p["first_stage_params"], dict):
            raise ConfigError("model 'llm-rerank': first_stage_params must be a table, e.g. { factors = 64 }")
        stage_device = self.device if self.device.split(":")[0] in stage_cls.capabilities.devices else "cpu"
        self.first_stage: Recommender = stage_cls(seed=self.seed, device=stage_device, **p["first_stage_params"])
        self.check_param_values(p)
        self.shared_candidates = False  # rank_shared_candidates: the protocol's candidates replace the first stage
        self.listwise = p["prompt"] == "listwise"
        own, stage = type(self).capabilities, stage_cls.capabilities
        self.capabilities = Capabilities(cold_users=stage.cold_users, cold_users_zero_shot=stage.cold_users_zero_shot,
                                         cold_items=stage.cold_items, devices=own.devices,
                                         deterministic=stage.deterministic, nondeterminism=stage.nondeterminism,
                                         explains=self.explains(),
                                         reads_candidate_order=self.listwise,
                                         calibrated=not self.listwise)  # score_pairs: P(yes), a probability
        if p["train_labels"] not in ("implicit", "rating"):
            raise ConfigError(f"model 'llm-rerank': train_labels = {p['train_labels']!r} is not valid; use "
                              f"\"implicit\" (liked vs random items) or \"rating\" (labelled pairs, pointwise protocol)")
        if isinstance(p["train_examples"], bool) or not isinstance(p["train_examples"], int) or p["train_examples"] < 0:
            raise ConfigError(f"model 'llm-rerank': train_examples must be an integer >= 0, got {p['train_examples']!r}")

    @classmethod
    def check_param_values(cls, params: dict[str, Any]) -> None:
        """Value rules (prompt kind, listwise bounds, explanation budgets), checked before any cell runs."""
        super().check_param_values(params)
        if params["prompt"] not in ("pointwise", "listwise"):
            raise ConfigError(f"model 'llm-rerank': prompt = {params['prompt']!r} is not valid; use \"pointwise\" "
                              f"(P(yes) per candidate) or \"listwise\" (every candidate in one prompt)")
        if params["prompt"] != "listwise":
            return
        n = params["n_candidates"]
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= len(LIST_LABELS):
            raise ConfigError(f"model 'llm-rerank': prompt = \"listwise\" labels candidates A-Z, so n_candidates "
                              f"must be 2 to {len(LIST_LABELS)}, got {n!r}")
        if params["train_labels"] != "implicit":
            raise ConfigError("model 'llm-rerank': prompt = \"listwise\" learns from lists with one liked item; "
                              "train_labels = \"rating\" needs prompt = \"pointwise\"")

    @classmethod
    def check_evaluation(cls, params: dict[str, Any], evaluation: Any) -> None:
        """A listwise prompt has no P(yes) per pair (no pointwise protocol) and lists at most 26 shared candidates."""
        if params.get("prompt") != "listwise":
            return
        protocols = [str(p).strip().lower() for p in [evaluation.protocol, *evaluation.extra_protocols]]
        if "pointwise" in protocols:
            raise ConfigError("prompt = \"listwise\" ranks candidates against each other and has no P(yes) per "
                              "pair; under protocol \"pointwise\" use prompt = \"pointwise\"")
        if "retrieved" in protocols and evaluation.n_candidates > len(LIST_LABELS):
            raise ConfigError(f"prompt = \"listwise\" lists at most {len(LIST_LABELS)} candidates (labels A-Z), "
                              f"but evaluation.n_candidates = {evaluation.n_candidates}; use at most "
                              f"{len(LIST_LABELS)}")

    def explains(self) -> bool:
        """Only on request (``explain = true``): reranking does not need the LM to write anything."""
        return bool(self.params["explain"]) and self.params["explain_users"] > 0

    def fit(self, train: TrainData) -> None:
        self.prepare(train)
        self.first_stage.fit(train)
        self.answer_ids = [self.encode(" Yes")[0], self.encode(" No")[0]]
        self.label_ids = [self.encode(f" {label}")[0] for label in LIST_LABELS]
        answers, told = (self.label_ids, "' A' ... ' Z'") if self.listwise else (self.answer_ids, "' Yes' from ' No'")
        if len(set(answers)) < len(answers):
            raise ConfigError(f"model '{self.name}': the tokenizer of '{self.params['model_name_or_path']}' "
                              f"does not tell {told} by their first token")
        self.seen = [set(h.tolist()) for h in self.histories]
        if self.params["train_labels"] == "rating":
            self.examples = self.labelled_examples(train)
        self.finetune(np.random.default_rng(self.seed))
        if self.params["train_labels"] == "rating":
            # examples learnt from: none without a step (max_steps = 0 is the untuned checkpoint)
            self.training["labelled_examples"] = int(len(self.examples[0])) if self.training["steps"] else 0
            self.training["labelled_liked_share"] = float(self.examples[2].mean()) if len(self.examples[0]) else 0.0
        runtime.synchronize(self.device)

    def rank_shared_candidates(self, shared: bool) -> None:
        self.shared_candidates = shared

    def labelled_examples(self, train: TrainData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, items, labels) of the rated training pairs this fit learns from: ``train_examples`` of them,
        a sample seeded by the model's seed alone, so 16 examples of one seed are the same in every run."""
        if train.labelled is None:
            raise ConfigError("model 'llm-rerank': train_labels = \"rating\" learns from labelled (user, item) pairs, "
                              "which only [evaluation] protocol = \"pointwise\" provides (ratings >= "
                              "label_threshold = Yes); use train_labels = \"implicit\" under ranking protocols")
        pairs = train.labelled
        n = int(self.params["train_examples"]) or len(pairs.label)
        if n > len(pairs.label):
            raise ConfigError(f"model 'llm-rerank': train_examples = {n} exceeds the {len(pairs.label)} labelled "
                              f"training pairs")
        chosen = np.sort(np.random.default_rng([self.seed, 17]).choice(len(pairs.label), n, replace=False))
        return pairs.user[chosen], pairs.item[chosen], pairs.label[chosen]

    def ranked_depth(self, k: int) -> int:
        """The LM orders only the first ``n_candidates`` positions; the tail is the first stage's order
        (every position when it ranks the protocol's shared candidates)."""
        return k if self.shared_candidates else min(k, int(self.params["n_candidates"]))

    def suffix_ids(self, item: int) -> list[int]:
        return self.encode(f'Will the user like "{self.texts[item]}"? Answer:')

    def answer_logits(self, ids: Any, mask: Any, last: Any, **kwargs: Any) -> Any:
        """[rows, 2] logits of (Yes, No) at each row's last real position."""
        return self.token_logits(ids, mask, last, self.answer_ids, **kwargs)

    def token_logits(self, ids: Any, mask: Any, last: Any, token_ids: list[int], **kwargs: Any) -> Any:
        """[rows, len(token_ids)] next-token logits of ``token_ids`` at each row's last real position.

        Runs the transformer body and multiplies by those output-embedding rows
        only: the full-vocabulary head would cost more than a small body on CPU.
        """
        torch = self.torch
        body = self.lm.base_model  # LoRA layers (when training) are injected into it in place
        hidden = body(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
        last_hidden = hidden[torch.arange(len(last), device=last.device), last]
        head = self.lm.get_output_embeddings()
        logits = last_hidden @ head.weight[token_ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[token_ids]
        return logits.float()

    def list_suffix_ids(self, candidates: np.ndarray) -> list[int]:
        """The listwise prompt's candidate block and question (candidates labelled A, B, ... in the order given)."""
        lines = "".join(f"{label}. {self.texts[int(c)]}\n" for label, c in zip(LIST_LABELS, candidates))
        return self.encode(f"Candidates:\n{lines}Which candidate will the user like next? Answer:")

    def shown_label_logits(self, ids: Any, mask: Any, last: Any, counts: list[int]) -> Any:
        """[rows, max(counts)] logits of the labels A, B, ...; labels beyond a row's own count of listed
        candidates are -inf, so a softmax or cross-entropy covers only the labels that row shows."""
        torch = self.torch
        logits = self.token_logits(ids, mask, last, self.label_ids[:max(counts)])
        positions = torch.arange(logits.shape[1], device=logits.device)[None, :]
        shown = positions < torch.tensor(counts, device=logits.device)[:, None]
        return logits.masked_fill(~shown, float("-inf"))

    def p_listed(self, histories: list[np.ndarray], heads: list[np.ndarray]) -> list[np.ndarray]:
        """Listwise: per user, the softmax over the shown labels' next-token logits, one prompt per user, in
        batches of ``batch_size`` users."""
        torch = self.torch
        out: list[np.ndarray] = [np.zeros(0, np.float64) for _ in heads]
        todo = [row for row, head in enumerate(heads) if len(head)]
        with torch.inference_mode(), runtime.autocast(self.device):
            for part in runtime.batches(len(todo), self.params["batch_size"]):
                rows = todo[part]
                progress.step(part.start, len(todo), "users scored")
                ids, mask, last = self.pad([self.prefix_ids(histories[r]) + self.list_suffix_ids(heads[r])
                                            for r in rows])
                logits = self.shown_label_logits(ids, mask, last, [len(heads[r]) for r in rows])
                probs = torch.softmax(logits, dim=-1).cpu().numpy()
                for i, r in enumerate(rows):
                    out[r] = probs[i, :len(heads[r])].astype(np.float64)
        return out

    def candidate_probs(self, histories: list[np.ndarray], heads: list[np.ndarray]) -> list[np.ndarray]:
        """Per user, the LM's probability for each of its candidates: P(yes) (pointwise) or P(label) (listwise)."""
        if self.listwise:
            return self.p_listed(histories, heads)
        out = []
        for row, (hist, head) in enumerate(zip(histories, heads)):
            progress.step(row, len(histories), "users scored")
            out.append(self.p_yes(self.prefix_ids(hist), head))
        return out

    def training_users(self, rng: np.random.Generator) -> np.ndarray:
        if self.params["train_labels"] == "rating":  # the labelled examples' users, whatever their history
            self.example_order = rng.permutation(len(self.examples[0]))
            self.example_cursor = 0
            return np.unique(self.examples[0])
        return super().training_users(rng)

    def rating_batch(self) -> tuple[list[list[int]], list[int]]:
        """The next ``train_batch_size`` labelled examples, cycling through one seeded order (epochs).

        The prompt's history is the user's liked training items without the example's own item, so a
        liked example never finds its answer in its prompt (test items are never in the history either).
        """
        users, items, labels = self.examples
        sequences, targets = [], []
        for _ in range(self.params["train_batch_size"]):
            j = self.example_order[self.example_cursor % len(self.example_order)]
            self.example_cursor += 1
            history = self.histories[int(users[j])]
            sequences.append(self.prefix_ids(history[history != items[j]]) + self.suffix_ids(int(items[j])))
            targets.append(0 if labels[j] else 1)  # class 0 = " Yes"
        return sequences, targets

    def list_batch_loss(self, rng: np.random.Generator) -> Any:
        """Listwise: each prompt lists one held-out positive among ``n_candidates - 1`` random unseen items in a
        random order; cross-entropy over the shown labels."""
        torch, p = self.torch, self.params
        n = int(p["n_candidates"])
        sequences, targets, counts = [], [], []
        for user, history, positive in self.sample_cut(rng, p["train_batch_size"]):
            seen, listed = self.seen[user], [positive]
            while len(listed) < min(n, self.n_items - len(seen) + 1):  # a user who has seen nearly everything
                negative = int(rng.integers(self.n_items))
                if negative not in seen and negative not in listed:
                    listed.append(negative)
            order = rng.permutation(len(listed))
            sequences.append(self.prefix_ids(history) + self.list_suffix_ids(np.asarray(listed)[order]))
            targets.append(int(np.flatnonzero(order == 0)[0]))
            counts.append(len(listed))
        ids, mask, last = self.pad(sequences)
        logits = self.shown_label_logits(ids, mask, last, counts)
        return torch.nn.functional.cross_entropy(logits, torch.tensor(targets, device=logits.device))

    def batch_loss(self, rng: np.random.Generator) -> Any:
        torch, p = self.torch, self.params
        if self.listwise:
            return self.list_batch_loss(rng)
        if p["train_labels"] == "rating":
            sequences, targets = self.rating_batch()
            ids, mask, last = self.pad(sequences)
            logits = self.answer_logits(ids, mask, last)
            return torch.nn.functional.cross_entropy(logits, torch.tensor(targets, device=logits.device))
        per = 1 + p["negatives_per_positive"]
        n_pos = max(1, p["train_batch_size"] // per)
        sequences, labels = [], []
        for user, history, positive in self.sample_cut(rng, n_pos):
            prefix = self.prefix_ids(history)
            sequences.append(prefix + self.suffix_ids(positive))
            labels.append(0)
            seen = self.seen[user]  # negatives: never an item the user has in training
            for _ in range(p["negatives_per_positive"]):
                negative = int(rng.integers(self.n_items))
                while negative in seen and len(seen) < self.n_items:
                    negative = int(rng.integers(self.n_items))
                sequences.append(prefix + self.suffix_ids(negative))
                labels.append(1)
        ids, mask, last = self.pad(sequences)
        logits = self.answer_logits(ids, mask, last)
        return torch.nn.functional.cross_entropy(logits, torch.tensor(labels, device=logits.device))

    def p_yes(self, prefix: list[int], candidates: np.ndarray) -> np.ndarray:
        """P(yes) of each candidate after one shared prefix (KV cache) or, without sharing, full prompts."""
        torch, p = self.torch, self.params
        out = np.zeros(len(candidates), np.float64)
        if len(candidates) == 0:
            return out
        with torch.inference_mode(), runtime.autocast(self.device):
            cache = None
            if p["share_prefix"]:
                prefix_ids = torch.tensor([prefix], dtype=torch.long, device=self.device)
                cache = runtime.kv_cache_of(self.lm.base_model(input_ids=prefix_ids, use_cache=True))
            for part in runtime.batches(len(candidates), p["batch_size"]):
                suffixes = [self.suffix_ids(int(c)) for c in candidates[part]]
                if cache is None:
                    ids, mask, last = self.pad([prefix + s for s in suffixes])
                    logits = self.answer_logits(ids, mask, last)
                else:
                    ids, mask, last = self.pad(suffixes)
                    rows, width = ids.shape
                    shared = copy.deepcopy(cache)
                    shared.batch_repeat_interleave(rows)
                    full_mask = torch.cat([torch.ones((rows, len(prefix)), dtype=mask.dtype, device=mask.device),
                                          mask], dim=1)
                    positions = torch.arange(len(prefix), len(prefix) + width, device=ids.device).expand(rows, -1)
                    logits = self.answer_logits(ids, full_mask, last, position_ids=positions,
                                                use_cache=True, **{runtime.kv_cache_kwarg(self.lm.base_model): shared})
                out[part] = torch.softmax(logits, dim=-1)[:, 0].cpu().numpy()
        return out

    def score_pairs(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """P(yes) of each (user, item) pair, straight from the LM (no first stage): one shared history prefix per
        user, its items scored in batches, as in recommend."""
        if self.listwise:
            raise ConfigError("model 'llm-rerank': prompt = \"listwise\" ranks candidates against each other and has "
                              "no P(yes) per pair; the pointwise protocol needs prompt = \"pointwise\"")
        user_ids, item_ids = np.asarray(user_ids, dtype=np.int64), np.asarray(item_ids, dtype=np.int64)
        out = np.zeros(len(user_ids), np.float64)
        for user in np.unique(user_ids):
            rows = np.flatnonzero(user_ids == user)
            out[rows] = self.p_yes(self.prefix_ids(self.histories[int(user)]), item_ids[rows])
        self.counters["llm_pairs_scored"] = self.counters.get("llm_pairs_scored", 0.0) + float(len(user_ids))
        runtime.synchronize(self.device)
        return out

    def recommend(self, user_ids: np.ndarray, k: int, *, history: list[np.ndarray] | None = None,
                  candidates: np.ndarray | None = None,
                  exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        user_ids = np.asarray(user_ids)
        if self.shared_candidates and candidates is not None and np.ndim(candidates) == 2:
            return self.rank_given(user_ids, k, np.asarray(candidates), history, exclude)
        n_rerank = self.params["n_candidates"]
        stage_items, _ = self.first_stage.recommend(user_ids, max(k, n_rerank), history=history,
                                                    candidates=candidates, exclude=exclude)
        stage_items = np.asarray(stage_items)
        histories = self.user_histories(user_ids, history)
        width = min(k, stage_items.shape[1])
        items = np.zeros((len(user_ids), width), np.int64)
        scores = np.zeros((len(user_ids), width), np.float64)
        heads = [stage_items[row, :n_rerank] for row in range(len(user_ids))]
        for row, (head, prob) in enumerate(zip(heads, self.candidate_probs(histories, heads))):
            tail = stage_items[row, n_rerank:]
            order = np.lexsort((np.arange(len(head)), -prob))  # ties keep first-stage order
            ranked = np.concatenate([head[order], tail])[:width]
            ranked_scores = np.concatenate([1.0 + prob[order], 1.0 / (2.0 + np.arange(len(tail)))])[:width]
            items[row], scores[row] = ranked, ranked_scores
        self.counters["llm_candidates_scored"] = self.counters.get("llm_candidates_scored", 0.0) + float(
            len(user_ids) * min(n_rerank, stage_items.shape[1]))
        runtime.synchronize(self.device)
        return items, scores


    def rank_given(self, user_ids: np.ndarray, k: int, candidates: np.ndarray, history: list[np.ndarray] | None,
                   exclude: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
        """Every candidate of each user's row (-1 padding and excluded items left out) scored by the LM,
        scores ``1 + P`` (P(yes), or P(label) listwise, where the prompt lists them in the row's order);
        equal P keep the row's order."""
        histories = self.user_histories(user_ids, history)
        items = np.zeros((len(user_ids), k), np.int64)
        scores = np.zeros((len(user_ids), k), np.float64)
        heads = []
        for row in range(len(user_ids)):
            head = candidates[row][candidates[row] >= 0]
            if exclude is not None and exclude.nnz:
                head = head[~np.isin(head, exclude[row].indices)]
            heads.append(head)
        if self.listwise and max((len(h) for h in heads), default=0) > len(LIST_LABELS):
            raise ConfigError(f"model 'llm-rerank': prompt = \"listwise\" lists at most {len(LIST_LABELS)} "
                              f"candidates (labels A-Z), but the protocol gives {max(len(h) for h in heads)} per "
                              f"user; set [evaluation] n_candidates <= {len(LIST_LABELS)}")
        scored = 0
        for row, (head, prob) in enumerate(zip(heads, self.candidate_probs(histories, heads))):
            order = np.lexsort((np.arange(len(head)), -prob))[:k]
            items[row], scores[row] = head[order], 1.0 + prob[order]
            scored += len(head)
        self.counters["llm_candidates_scored"] = self.counters.get("llm_candidates_scored", 0.0) + float(scored)
        runtime.synchronize(self.device)
        return items, scores


class LLMGenerate(LMRecommender):
    """The LM writes the next item's text; a text encoder matches it to the catalogue (cosine over all items).

    LLM-specific failures are counted and reported beside accuracy through
    ``extra_metrics()``: ``gen_not_in_catalogue_rate`` (the generated text is no
    catalogue item's text, compared case- and space-insensitively) and
    ``gen_repeat_history_rate`` (the best-matching item is one the user already
    has). Greedy decoding, so the output is deterministic.
    """

    name = "llm-generate"
    family = "language model"
    summary = "LoRA fine-tuned causal LM writes the next item; a text encoder maps it to the catalogue"
    extra = "llm"
    capabilities = Capabilities(cold_users=True, cold_users_zero_shot=True, cold_items=True,
                                devices=("cpu", "cuda"))
    default_params: dict[str, Any] = {
        **LM_PARAMS,
        "max_new_tokens": 24,
        "matcher_name_or_path": runtime.DEFAULT_ENCODER,  # text encoder that maps generated text to items
        "matcher_max_length": 64,
        **explain_lib.EXPLAIN_PARAMS,  # always on, within a small budget (explain_users = 0 turns it off)
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        explain_lib.check_params(self.name, self.params)
        self.capabilities = dataclasses.replace(type(self).capabilities, explains=self.explains())

    def explains(self) -> bool:
        return self.params["explain_users"] > 0

    def fit(self, train: TrainData) -> None:
        self.prepare(train)
        self.eos_id = self.tokenizer.eos_token_id
        self.finetune(np.random.default_rng(self.seed))
        p = self.params
        tokenizer, encoder = runtime.load_encoder(p["matcher_name_or_path"], self.name)
        self.matcher = runtime.Encoder(tokenizer, encoder, self.device, p["matcher_max_length"])
        full_texts = runtime.item_texts(train.side, 200)  # the matcher sees the whole text (shared cache with text-embed)
        self.item_embeddings = runtime.pretrained_item_embeddings(
            p["matcher_name_or_path"], self.name, full_texts, p["matcher_max_length"], 256, self.device)
        self.catalogue = {normalise(t): i for i, t in enumerate(self.texts)}
        self.generated: dict[str, str] = {}
        runtime.synchronize(self.device)

    def target_ids(self, item: int) -> list[int]:
        return self.encode(" " + self.texts[item]) + [self.eos_id]

    def prompt_ids(self, history: np.ndarray) -> list[int]:
        return self.prefix_ids(history) + self.encode("The next item they liked:")

    def batch_loss(self, rng: np.random.Generator) -> Any:
        torch = self.torch
        sequences, starts = [], []
        for _user, history, target in self.sample_cut(rng, self.params["train_batch_size"]):
            prompt = self.prompt_ids(history)
            sequences.append(prompt + self.target_ids(target))
            starts.append(len(prompt))
        ids, mask, _ = self.pad(sequences)
        labels = ids.clone()
        labels[mask == 0] = -100
        for row, start in enumerate(starts):
            labels[row, :start] = -100
        return self.train_model(input_ids=ids, attention_mask=mask, labels=labels).loss

    def generate(self, histories: list[np.ndarray]) -> list[str]:
        """Greedy continuation of each user's prompt: its first line, the next item's text."""
        texts = self.greedy([self.prompt_ids(h) for h in histories], self.params["max_new_tokens"],
                            "users generated for")
        return [t.split("\n")[0].strip() for t in texts]

    def score(self, user_ids: np.ndarray, history: list[np.ndarray] | None = None) -> np.ndarray:
        histories = self.user_histories(np.asarray(user_ids), history)
        generated = self.generate(histories)
        vectors = self.matcher.encode(generated, self.params["batch_size"])
        scores = (vectors @ self.item_embeddings.T).astype(np.float64)
        best = scores.argmax(1) if scores.size else np.zeros(0, np.int64)
        not_in_catalogue = sum(normalise(g) not in self.catalogue for g in generated)
        repeated = sum(int(b) in set(h.tolist()) for b, h in zip(best, histories))
        c = self.counters
        c["gen_users"] = c.get("gen_users", 0.0) + len(generated)
        c["gen_not_in_catalogue"] = c.get("gen_not_in_catalogue", 0.0) + not_in_catalogue
        c["gen_repeat_history"] = c.get("gen_repeat_history", 0.0) + repeated
        for u, g in zip(user_ids[:5], generated[:5]):  # a few examples for cell.json
            if len(self.generated) < 20:
                self.generated[str(int(u))] = g
        runtime.synchronize(self.device)
        return scores

    def extra_metrics(self) -> dict[str, float]:
        out = super().extra_metrics()
        n = out.pop("gen_users", 0.0)
        if n:
            out["gen_not_in_catalogue_rate"] = out.pop("gen_not_in_catalogue") / n
            out["gen_repeat_history_rate"] = out.pop("gen_repeat_history") / n
        return out

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if getattr(self, "generated", None):
            out["generated_examples"] = dict(self.generated)
        return out


def normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .\"'")
