"""llm-rerank's listwise prompt (LlamaRec's verbalizer): label probabilities, position bias, config errors.

CPU only: the tiny random LM for plumbing and the order probes, where a test needs logits to compare it computes
them independently with the LM's full vocabulary head.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from bench import registry  # noqa: E402
from bench.config import parse_suite  # noqa: E402
from bench.contract import checkerboard  # noqa: E402
from bench.errors import ConfigError  # noqa: E402
from llm_models.lm import LIST_LABELS  # noqa: E402

pytestmark = pytest.mark.llm

TINY = {"model_name_or_path": "tiny-random", "num_threads": 1, "lora": False, "max_history_items": 3,
        "batch_size": 3, "first_stage": "pop"}


@pytest.fixture(scope="module")
def listwise():
    model = registry.models.get("llm-rerank")(seed=0, max_steps=0, n_candidates=5, prompt="listwise", **TINY)
    model.fit(checkerboard())
    return model


def test_the_prompt_lists_candidates_in_the_order_given(listwise):
    text = listwise.tokenizer.decode(listwise.list_suffix_ids(np.array([7, 2, 9])))
    assert text.startswith("Candidates:\nA. ")
    lines = text.splitlines()
    assert [line[:3] for line in lines[1:4]] == ["A. ", "B. ", "C. "]
    assert lines[1][3:] == listwise.texts[7] and lines[2][3:] == listwise.texts[2] and lines[3][3:] == listwise.texts[9]
    assert lines[4] == "Which candidate will the user like next? Answer:"


def test_label_probabilities_equal_the_full_heads_softmax_over_the_shown_labels(listwise):
    """The label-rows-only head, batching and padding against one full forward pass per user (LM head over the
    whole vocabulary, then the shown labels picked and normalised)."""
    torch = listwise.torch
    histories = [listwise.histories[u] for u in (0, 1, 4, 7)]
    heads = [np.array([3, 5, 9]), np.array([2, 4, 6, 8, 10]), np.array([11, 13]), np.array([0, 12, 14, 16])]
    got = listwise.p_listed(histories, heads)  # batch_size 3: a full batch and a partial one, padded rows
    for history, head, probs in zip(histories, heads, got):
        ids = listwise.prefix_ids(history) + listwise.list_suffix_ids(head)
        with torch.inference_mode():
            logits = listwise.lm(input_ids=torch.tensor([ids])).logits[0, -1]
        labels = [listwise.tokenizer(f" {x}", add_special_tokens=False)["input_ids"][0] for x in LIST_LABELS]
        expected = torch.softmax(logits[labels[:len(head)]].double(), dim=-1).numpy()
        assert probs.shape == (len(head),) and probs.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.allclose(probs, expected, atol=1e-5), (probs, expected)


def test_listwise_reads_the_order_and_pointwise_does_not(listwise):
    assert listwise.capabilities.reads_candidate_order and not listwise.capabilities.calibrated
    pointwise = registry.models.get("llm-rerank")(seed=0, max_steps=0, **TINY)
    assert not pointwise.capabilities.reads_candidate_order and pointwise.capabilities.calibrated
    # the same candidates, reversed: the untrained LM prefers label positions, not items, so the probability an
    # item gets moves with its place in the list
    history = [listwise.histories[1]]
    head = np.array([2, 4, 6, 8, 10])
    forward = listwise.p_listed(history, [head])[0]
    backward = listwise.p_listed(history, [head[::-1]])[0][::-1]
    assert not np.allclose(forward, backward, atol=1e-4)


def test_listwise_fine_tuning_learns_and_keeps_its_loss_curve():
    model = registry.models.get("llm-rerank")(seed=0, max_steps=6, train_batch_size=4, n_candidates=4,
                                              prompt="listwise", **{**TINY, "learning_rate": 3e-3})
    model.fit(checkerboard())
    training = model.describe()["training"]
    assert training["steps"] == 6 and len(training["loss_curve"]) == 6
    assert all(np.isfinite(training["loss_curve"]))
    assert training["loss_curve"][0] == pytest.approx(np.log(4), abs=0.7)  # near chance over 4 labels at first


SUITE = {"name": "lw", "seeds": [0],
         "datasets": [{"name": "synthetic", "params": {"n_users": 120, "n_items": 90, "n_interactions": 3000}}],
         "splits": [{"kind": "random"}],
         "evaluation": {"k": [5, 10], "bootstrap": 0, "systems": {"enabled": False}},
         "execution": {"isolation": "none"}}


def suite_with(params: dict, evaluation: dict | None = None) -> dict:
    raw = copy.deepcopy(SUITE)
    raw["models"] = [{"name": "llm-rerank", "params": {**TINY, **params}}]
    raw["evaluation"].update(evaluation or {})
    return raw


@pytest.mark.parametrize("params, evaluation, message", [
    ({"prompt": "list"}, None, "prompt = 'list' is not valid"),
    ({"prompt": "listwise", "n_candidates": 30}, None, "n_candidates must be 2 to 26, got 30"),
    ({"prompt": "listwise", "train_labels": "rating"}, None, "train_labels = \"rating\" needs prompt = \"pointwise\""),
    ({"prompt": "listwise"}, {"protocol": "pointwise", "metrics": []}, "has no P(yes) per pair"),
    ({"prompt": "listwise"}, {"protocol": "retrieved", "retriever": {"name": "pop"}, "n_candidates": 30},
     "lists at most 26 candidates"),
])
def test_listwise_settings_it_cannot_serve_are_refused_before_any_cell(params, evaluation, message):
    with pytest.raises(ConfigError, match="llm-rerank") as error:
        parse_suite(suite_with(params, evaluation), "lw.toml")
    assert message in str(error.value) and "lw.toml" in str(error.value)


@pytest.mark.slow
def test_order_probes_measure_the_listwise_position_bias(tmp_path):
    """Under shared candidates the probes show the listwise prompt moving with the order (spread > 0, tau < 1)
    while the pointwise prompt of the same LM stays invariant (spread 0, tau 1)."""
    from bench.runner import run_suite

    raw = suite_with({"prompt": "listwise", "max_steps": 0},
                     {"protocol": "retrieved", "retriever": {"name": "pop"}, "n_candidates": 10, "order_probes": 3,
                      "max_test_users": 10})
    raw["models"].append({"name": "llm-rerank", "label": "pointwise", "params": {**TINY, "max_steps": 0}})
    summary = run_suite(parse_suite(raw, "lw.toml"), out_root=tmp_path, progress=None)
    assert summary.failed == 0, summary.failures
    frame = summary.frame
    probes = frame[frame["metric"].isin(["order_ndcg_spread", "order_kendall_tau"]) & (frame["segment"] == "all")]
    listwise = probes[probes["model"] == "llm-rerank"].set_index(["metric", "k"])["value"]
    pointwise = probes[probes["model"] == "pointwise"].set_index(["metric", "k"])["value"]
    assert listwise[("order_ndcg_spread", 10)] > 0 and listwise[("order_kendall_tau", 10)] < 1
    assert pointwise[("order_ndcg_spread", 10)] == 0 and pointwise[("order_kendall_tau", 10)] == pytest.approx(1.0)
