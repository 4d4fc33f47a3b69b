"""Does fine-tuning help? The llm-finetune suite's shape, [[models]] paired_with, and the report's paired
comparison of two arms, which must be computed on identical users.

The end-to-end test runs the two arms of the question (llm-rerank at 0 steps and after a few steps) on
``tiny-random`` with tiny budgets; the paired figures are checked against numpy and scipy.stats.ttest_rel
applied directly to the per-user files the cells wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.config import load_suite, parse_suite
from bench.errors import ConfigError


def test_llm_finetune_suite_is_a_paired_zero_shot_vs_finetuned_design() -> None:
    config = load_suite("llm-finetune")
    zero, tuned = config.models
    assert zero.name == tuned.name == "llm-rerank"
    assert tuned.paired_with == zero.label and not zero.paired_with
    assert zero.params["max_steps"] == 0 < tuned.params["max_steps"]
    differing = {k for k in set(zero.params) | set(tuned.params) if zero.params.get(k) != tuned.params.get(k)}
    assert differing == {"max_steps"}  # same seed, same first stage, same budget otherwise
    assert zero.max_test_users is None and config.evaluation.max_test_users > 0  # one sample for both arms
    n_candidates = zero.params["n_candidates"]
    assert n_candidates >= 10 and max(config.evaluation.k) <= n_candidates  # every metric is the reranker's own
    assert [d.name for d in config.datasets] == ["ml-100k"] and config.seeds == [0]


def _suite(models: list[dict]) -> dict:
    return {"name": "pairs", "execution": {"isolation": "none"},
            "evaluation": {"k": [3, 5], "metrics": ["ndcg", "recall"], "bootstrap": 0, "max_test_users": 12,
                           "systems": {"enabled": False}},
            "datasets": [{"name": "synthetic", "params": {"n_users": 60, "n_items": 30, "n_interactions": 900}}],
            "splits": [{"kind": "random"}], "models": models}


def test_paired_with_must_name_another_model() -> None:
    with pytest.raises(ConfigError, match="paired_with = 'nope' must name another model's label"):
        parse_suite(_suite([{"name": "pop"}, {"name": "random", "paired_with": "nope"}]), "test")
    with pytest.raises(ConfigError, match="paired_with = 'pop'"):
        parse_suite(_suite([{"name": "pop", "paired_with": "pop"}]), "test")


@pytest.mark.llm
@pytest.mark.slow
def test_report_pairs_zero_shot_and_finetuned_arms_on_identical_users(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from scipy.stats import ttest_rel

    from bench.report.render import write_report
    from bench.report.rundata import load_run
    from bench.report.tables import leaderboards, loss_table, paired_comparisons
    from bench.runner import run_suite

    params = {"model_name_or_path": "tiny-random", "num_threads": 1, "lora": False, "learning_rate": 3e-2,
              "train_batch_size": 8, "n_candidates": 5, "max_history_items": 3, "batch_size": 8,
              "first_stage_params": {"max_length": 16, "num_threads": 1}}
    suite = _suite([{"name": "llm-rerank", "label": "zero-shot", "params": params | {"max_steps": 0}},
                    {"name": "llm-rerank", "label": "fine-tuned", "paired_with": "zero-shot",
                     "params": params | {"max_steps": 4}}])
    summary = run_suite(parse_suite(suite, "test"), out_root=tmp_path, progress=None)
    assert summary.failed == 0
    run = load_run(summary.run_dir)
    (pc,) = paired_comparisons(run, leaderboards(run))
    assert (pc.model, pc.reference) == ("fine-tuned", "zero-shot")

    by_label = {c["model"]: c["cell_id"] for c in run.cells.values()}
    tuned = run.per_user(by_label["fine-tuned"], pc.board.segment)
    zero = run.per_user(by_label["zero-shot"], pc.board.segment)
    assert np.array_equal(tuned.users, zero.users) and len(tuned.users) == 12  # the same sampled users
    assert pc.same_users and pc.n_users == 12

    rows = {r.column: r for r in pc.rows}
    assert set(rows) == {"ndcg@3", "ndcg@5", "recall@3", "recall@5"}
    for column, row in rows.items():
        a, b = tuned.column(column), zero.column(column)
        assert row.diff == pytest.approx(float(np.mean(a - b)))
        assert row.model == pytest.approx(float(a.mean())) and row.reference == pytest.approx(float(b.mean()))
        if np.ptp(a - b) > 0:
            assert row.p == pytest.approx(float(ttest_rel(a, b).pvalue))
        assert row.ci_low <= row.diff <= row.ci_high
    assert any(np.any(tuned.column(c) != zero.column(c)) for c in rows)  # the fine-tune changed some ranking

    losses = loss_table(run)
    assert [r[0] for r in losses.rows] == ["fine-tuned"] and losses.rows[0][2] == "4"  # zero-shot has no curve
    files = write_report(summary.run_dir, metric="ndcg@5")
    markdown = files.markdown.read_text()
    assert "### Paired comparisons" in markdown and "fine-tuned − zero-shot" in markdown
    assert "12 users, the same for both" in markdown and "### Fine-tuning loss" in markdown
    html = files.html.read_text()
    assert 'id="paired"' in html and 'id="loss"' in html
