"""Explanations: hand-worked grounding / hallucination / length verdicts, the stored file, the rows, the report.

The verdicts are checked on fixed strings against a four-item catalogue whose
answers are worked out by hand in each test; the end-to-end test runs the LM
plug-ins on ``tiny-random`` (plumbing only: its reasons are noise) and checks
the file, the result rows and the report section, including that a reason
holding markup is shown as text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bench import explanations as ex
from bench.errors import ConfigError

TEXTS = ["Toy Story (1995). Genres: Animation, Comedy",
         "Usual Suspects, The (1995). Genres: Crime, Thriller",
         "Heat (1995). Genres: Action",
         "City of Lost Children, The (Cité des enfants perdus, La) (1995). Genres: Sci-Fi",
         "Underworld (2003). Genres: Action",
         "Underworld: Awakening (2012). Genres: Action",
         "The Hunger Games: Mockingjay - Part 1 (2014). Genres: Sci-Fi"]
GENRES = ["Action", "Animation", "Comedy", "Crime", "Sci-Fi", "Thriller"]
ITEM_GENRES = [[1, 2], [3, 5], [0], [4], [0], [0], [4]]


def catalogue() -> ex.Catalogue:
    rows = [i for i, gs in enumerate(ITEM_GENRES) for _ in gs]
    cols = [g for gs in ITEM_GENRES for g in gs]
    cats = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(TEXTS), len(GENRES)))
    feature_names = ["cat:Action", "tok:tag=heist", "tok:heat"]
    feats = sp.csr_matrix(([1.0, 1.0, 1.0], ([2, 2, 2], [0, 1, 2])), shape=(len(TEXTS), 3))  # only Heat has the tag
    return ex.Catalogue.from_side(TEXTS, cats, GENRES, feats, feature_names)


def test_normalised_word_boundary_matching() -> None:
    assert ex.normalise("  Amélie's  CAFÉ—crème! ") == "amelie s cafe creme"
    assert ex.names(ex.normalise("The heat is on."), "heat")
    assert not ex.names(ex.normalise("A great theatre night"), "heat")  # inside a word: no
    assert not ex.names("anything", "")


def test_title_variants_strip_year_alternate_title_and_move_the_article() -> None:
    assert ex.title_of(TEXTS[1]) == "Usual Suspects, The (1995)"
    assert ex.title_variants("Usual Suspects, The (1995)") == {
        "usual suspects the 1995", "usual suspects the", "the usual suspects", "usual suspects"}
    city = ex.title_variants(ex.title_of(TEXTS[3]))
    assert {"the city of lost children", "city of lost children",
            "city of lost children the cite des enfants perdus la"} <= city
    # shorter than MIN_TITLE_CHARS after normalisation: never matched ("It" would match the word "it")
    assert ex.title_variants("It (1990)") == {"it 1990"}
    assert ex.term_forms("Comedy") >= {"comedy", "comedies"} and "thrillers" in ex.term_forms("Thriller")
    assert "sci fi" in ex.term_forms("Sci-Fi")


def test_mentions_are_capitalised_quotes_and_titles_before_a_year() -> None:
    assert ex.mentions('Fans of "Star Wars" and “Heat” like Toy Story (1995).') == [
        "Star Wars", "Heat", "Toy Story (1995)"]
    assert ex.mentions('It has a "feel-good" vibe.') == []  # a quoted lower-case phrase is no item
    # the walk back takes title words and connectors; a capitalised first word comes along (suffixes match)
    assert ex.mentions("Because Lord of the Rings (2001) is long.") == ["Because Lord of the Rings (2001)"]
    cat = catalogue()
    assert cat.in_catalogue("Like Toy Story (1995)") and cat.in_catalogue("The Usual Suspects")
    assert not cat.in_catalogue("Star Wars") and not cat.in_catalogue("Heat (1995) 2")


@pytest.mark.parametrize("reason, item, history, grounded_by, unknown, n_words", [
    # history title with the article moved to the front, and the recommended item's tag
    ("Like The Usual Suspects, this is a tense heist movie.", 2, [1],
     ["history: Usual Suspects, The (1995)", "genre/tag: heist"], [], 10),
    # a plural of the item's genre grounds it; the quoted title is in no catalogue
    ('Fans of "Star Wars" will love its comedies.', 0, [2], ["genre/tag: Comedy"], ["Star Wars"], 8),
    # "heat" inside "theatre" names nothing; the recommended item's own title is not the user's history
    ("A great theatre experience.", 2, [], [], [], 4),
    ("Heat is a classic.", 2, [0], [], [], 4),
    # history by title with year; a quoted genre name is no item mention
    ('You loved Toy Story (1995) and "Action".', 1, [0], ["history: Toy Story (1995)"], [], 7),
    # a history item named twice (and listed twice) is one ground
    ("Toy Story and toy story again.", 3, [0, 0], ["history: Toy Story (1995)"], [], 6),
    ("", 0, [1], [], [], 0),
    # the recommended item's own title holds a history title: no history ground, only the genre
    ("Underworld: Awakening is more action.", 5, [4], ["genre/tag: Action"], [], 5),
    ("After Underworld, Underworld: Awakening.", 5, [4], ["history: Underworld (2003)"], [], 4),
    # inner punctuation cuts the shown span short; the lookup reads the words before the year
    ("The Hunger Games: Mockingjay - Part 1 (2014) is epic.", 0, [], [], [], 9),  # "-" is no word
    ("then watch Mockingjay - Part 9 (2014) next.", 0, [], [], ["Mockingjay - Part 9 (2014)"], 7),
])
def test_verdicts_hand_worked(reason: str, item: int, history: list[int], grounded_by: list[str],
                              unknown: list[str], n_words: int) -> None:
    verdict = ex.check(reason, item, history, catalogue())
    assert verdict == {"grounded": bool(grounded_by), "grounded_by": grounded_by,
                       "history_grounded": any(g.startswith("history: ") for g in grounded_by),
                       "hallucinated": bool(unknown), "unknown_mentions": unknown, "words": n_words}


def test_summary_is_the_share_of_reasons_with_a_cluster_bootstrap_over_users() -> None:
    cat = catalogue()
    items = np.array([[2, 0], [0, 1]])
    reasons = [(0, 0, "A heist film."), (0, 1, "Pure fun."), (1, 0, 'Like "Star Wars" and comedies.')]
    recs = ex.records(reasons, np.array([5, 9]), items, [np.array([1]), np.array([2])], cat)
    assert [r["rank"] for r in recs] == [1, 2, 1] and [r["user"] for r in recs] == [5, 5, 9]
    assert recs[0]["title"] == "Heat (1995)" and recs[2]["title"] == "Toy Story (1995)"
    figures = ex.summarise(recs, n_resamples=500, seed=0)
    value, low, high, n = figures["explanation_grounding"]
    assert (value, n) == (pytest.approx(2 / 3), 3)
    # users drawn with replacement: {5, 5} -> 1/2, {9, 9} -> 1, mixed -> 2/3: every bound lies in [1/2, 1]
    assert 0.5 <= low <= value <= high <= 1.0
    assert figures["explanation_hallucination"][0] == pytest.approx(1 / 3)
    assert figures["explanation_history_grounding"][0] == 0.0  # histories [Usual Suspects], [Heat]: never named
    assert figures["explanation_length"][0] == pytest.approx((3 + 2 + 5) / 3)
    assert ex.summarise([], 100, 0) == {}


def test_one_sentence_cut() -> None:
    from llm_models.explain import one_sentence

    assert one_sentence(" It is fun. And more.") == "It is fun."
    assert one_sentence("First line\nsecond line") == "First line"
    assert one_sentence("Version 2.0 rocks!") == "Version 2.0 rocks!"


def test_metrics_are_listed_and_refused_as_top_k_metrics(tmp_path: Path) -> None:
    from bench.config import load_suite
    from bench.listing import list_metrics

    listed = list_metrics().set_index("name")
    assert listed.loc["explanation_grounding", "direction"] == "higher is better"
    assert listed.loc["explanation_history_grounding", "direction"] == "higher is better"
    assert listed.loc["explanation_hallucination", "direction"] == "lower is better"
    assert listed.loc["explanation_length", "direction"] == "descriptive"
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[evaluation]\nk = [5]\nmetrics = ["ndcg", "explanation_grounding"]\n'
                     '[[datasets]]\nname = "synthetic"\n[[splits]]\nkind = "random"\n[[models]]\nname = "pop"\n',
                     encoding="utf-8")
    with pytest.raises(ConfigError, match="explanation_grounding.*not scored from top-k lists"):
        load_suite(str(suite))


@pytest.mark.llm
@pytest.mark.parametrize("params, culprit", [({"explain_users": -1}, "explain_users"),
                                             ({"explain_items": 1.5}, "explain_items"),
                                             ({"explain": "yes"}, "explain must be true or false")])
def test_bad_budgets_are_config_errors_before_any_cell(tmp_path: Path, params: dict, culprit: str) -> None:
    pytest.importorskip("torch")
    from bench.config import load_suite

    name = "llm-rerank" if "explain" in params else "llm-generate"
    inline = ", ".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in params.items())
    suite = tmp_path / "s.toml"
    suite.write_text(f'name = "s"\n[[datasets]]\nname = "synthetic"\n[[splits]]\nkind = "random"\n'
                     f'[[models]]\nname = "{name}"\nparams = {{ {inline} }}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=culprit):
        load_suite(str(suite))


@pytest.mark.llm
def test_lm_explains_within_its_budget_deterministically() -> None:
    pytest.importorskip("torch")
    from bench import registry
    from bench.contract import checkerboard
    from llm_models.explain import prompt_text

    tiny = {"num_threads": 1, "model_name_or_path": "tiny-random", "max_steps": 0, "max_history_items": 2,
            "explain_max_new_tokens": 4}
    generate = registry.models.get("llm-generate")
    assert not generate(seed=0, explain_users=0, **tiny).capabilities.explains
    rerank = registry.models.get("llm-rerank")
    assert not rerank(seed=0, **tiny).capabilities.explains  # only on request
    assert rerank(seed=0, explain=True, **tiny).capabilities.explains
    model = generate(seed=0, explain_users=3, explain_items=2, **tiny)
    assert model.capabilities.explains
    train = checkerboard()
    model.fit(train)
    users = np.arange(5)
    items, _ = model.recommend(users, 4)
    reasons = model.explain(users, items)
    assert [(row, rank) for row, rank, _ in reasons] == [(r, k) for r in range(3) for k in range(2)]
    assert model.explain(users, items) == reasons  # greedy: the same text again
    # a cold user's shown history, not training, is what the prompt names
    shown = [np.array([4, 6]), np.array([], dtype=np.int64)]
    text = prompt_text(model, shown[0], int(items[0, 0]))
    assert train.side.item_text[4] in text and train.side.item_text[6] in text
    assert f"We recommend: {train.side.item_text[int(items[0, 0])]}" in text
    assert "nothing yet" in prompt_text(model, shown[1], 0)
    assert len(model.explain(users[:2], items[:2], history=shown)) == 4


TINY_SUITE = """
name = "explain-e2e"
seeds = [0]
[evaluation]
k = [5]
metrics = ["ndcg"]
bootstrap = 50
max_test_users = 8
[evaluation.systems]
enabled = false
[[datasets]]
name = "synthetic"
params = { n_users = 60, n_items = 40, n_interactions = 900, seed = 0 }
[[splits]]
kind = "random"
[[models]]
name = "pop"
[[models]]
name = "llm-generate"
params = { num_threads = 1, model_name_or_path = "tiny-random", max_steps = 1, train_batch_size = 2, max_new_tokens = 2, explain_users = 2, explain_items = 2, explain_max_new_tokens = 6 }
[[models]]
name = "llm-rerank"
params = { num_threads = 1, model_name_or_path = "tiny-random", max_steps = 1, train_batch_size = 2, n_candidates = 3, explain = true, explain_users = 1, explain_items = 1, explain_max_new_tokens = 6 }
"""


@pytest.mark.llm
@pytest.mark.slow
def test_run_stores_scores_and_reports_explanations(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from bench.cli import main
    from bench.report import write_report
    from bench.results import load_results
    from bench.rundir import RunDir

    suite = tmp_path / "explain.toml"
    suite.write_text(TINY_SUITE, encoding="utf-8")
    assert main(["run", "--suite", str(suite), "--out", str(tmp_path / "runs"), "--no-report"]) == 0
    (run_dir,) = list((tmp_path / "runs").iterdir())
    frame, _ = load_results(run_dir)
    folder = RunDir(run_dir)
    by_model = {info["model"]: cid for cid, info in folder.cells().items()}
    expected = {"llm-generate": 4, "llm-rerank": 1, "pop": 0}
    for model, n in expected.items():
        stored = folder.read_explanations(by_model[model])
        assert sum(len(v) for v in stored.values()) == n, model
        rows = frame[(frame["model"] == model) & frame["metric"].str.startswith("explanation_")]
        if not n:
            assert rows.empty
            continue
        (records,) = stored.values()
        assert set(rows["metric"]) == {"explanation_grounding", "explanation_history_grounding",
                                       "explanation_hallucination", "explanation_length"}
        assert (rows["k"] == 0).all() and (rows["n"] == n).all()
        # the rows are the stored verdicts' means
        value = rows.set_index("metric")["value"]
        assert value["explanation_grounding"] == pytest.approx(np.mean([r["grounded"] for r in records]))
        assert value["explanation_length"] == pytest.approx(np.mean([r["words"] for r in records]))
        assert {"user", "item", "title", "reason", "grounded", "hallucinated", "words"} <= set(records[0])
    # the report shows the section and escapes a reason: overwrite one with markup, re-render
    cid = by_model["llm-generate"]
    (segment, records), = folder.read_explanations(cid).items()
    records[0]["reason"] = "<script>alert(1)</script> & <b>bold</b>"
    folder.write_explanations(cid, segment, records)
    html = write_report(run_dir, metric="ndcg@5").html.read_text(encoding="utf-8")
    assert 'id="explanations"' in html and "What llm-generate tells users" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "<script>alert" not in html and "<b>bold</b>" not in html
    assert "explanation_grounding" not in html.split('id="systems"')[1].split('id="explanations"')[0]
