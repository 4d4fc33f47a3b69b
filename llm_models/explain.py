"""One-sentence reasons from the recommender's own causal LM (``Recommender.explain`` for the LM plug-ins).

After a segment's lists are made, the fitted LM is asked, per explained user and
listed item, why the user may like it; greedy decoding (deterministic) with a
bounded number of new tokens, and the answer is cut to its first sentence. The
budget is the model's parameters: the first ``explain_users`` users of the
segment (its users are sorted and, under ``max_test_users``, the seeded sample
every model shares, so every explaining model explains the same users) and the
top ``explain_items`` of each list. What the reasons name is checked by
``bench.explanations`` in the runner, which stores them with the verdicts.

Prompt (the tokenizer's chat template when it has one, as SmolLM2-Instruct does;
the plain text otherwise)::

    A user liked these items: <title>; <title>; ... (or: nothing yet)
    We recommend: <item text: title, genres, tags>
    In one sentence, tell the user why they may like it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.errors import ConfigError
from bench.explanations import title_of

if TYPE_CHECKING:
    from llm_models.lm import LMRecommender

EXPLAIN_PARAMS: dict[str, Any] = {
    "explain_users": 2,  # users per segment whose lists are explained (0 = none)
    "explain_items": 1,  # top items of each explained list
    "explain_max_new_tokens": 32,  # tokens generated per reason (greedy)
}
RECOMMENDED_CHARS = 200  # characters of the recommended item's text in the prompt
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def check_params(name: str, params: dict[str, Any]) -> None:
    """Budgets are non-negative integers and ``explain`` (where a model has it) a boolean; else a ConfigError."""
    if "explain" in params and not isinstance(params["explain"], bool):
        raise ConfigError(f"model '{name}': explain must be true or false, got {params['explain']!r}")
    for key in EXPLAIN_PARAMS:
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"model '{name}': {key} must be an integer >= 0, got {value!r}")
    if params["explain_max_new_tokens"] < 1 and params["explain_users"] > 0:
        raise ConfigError(f"model '{name}': explain_max_new_tokens must be >= 1 when explain_users > 0")


def one_sentence(text: str) -> str:
    """The first line, cut after its first sentence end (., ! or ? followed by a space)."""
    line = text.strip().split("\n")[0].strip()
    return _SENTENCE_END.split(line, maxsplit=1)[0].strip()


def prompt_text(model: LMRecommender, history: np.ndarray, item: int) -> str:
    recent = history[-model.params["max_history_items"]:] if model.params["max_history_items"] > 0 else history[:0]
    liked = "; ".join(title_of(model.full_texts[int(i)]) for i in recent) or "nothing yet"
    return (f"A user liked these items: {liked}\nWe recommend: {model.full_texts[item][:RECOMMENDED_CHARS]}\n"
            f"In one sentence, tell the user why they may like it.")


def prompt_ids(model: LMRecommender, history: np.ndarray, item: int) -> list[int]:
    text = prompt_text(model, history, item)
    tokenizer = model.tokenizer
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # some transformers versions return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return model.encode(text + "\nReason:")


def explain(model: LMRecommender, user_ids: np.ndarray, items: np.ndarray,
            history: list[np.ndarray] | None) -> list[tuple[int, int, str]]:
    """``(row, rank, reason)`` for the top ``explain_items`` of the first ``explain_users`` rows."""
    p = model.params
    histories = model.user_histories(np.asarray(user_ids)[:p["explain_users"]],
                                     None if history is None else history[:p["explain_users"]])
    wanted: list[tuple[int, int]] = []
    for row in range(len(histories)):
        for rank in range(min(p["explain_items"], items.shape[1])):
            if items[row, rank] >= 0:
                wanted.append((row, rank))
    if not wanted:
        return []
    prompts = [prompt_ids(model, histories[row], int(items[row, rank])) for row, rank in wanted]
    texts = model.greedy(prompts, p["explain_max_new_tokens"], "reasons written for")
    return [(row, rank, one_sentence(text)) for (row, rank), text in zip(wanted, texts)]
