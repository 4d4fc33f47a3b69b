"""Explanations and trust: what a model's one-sentence reasons name, scored against the catalogue.

A model that declares the ``explains`` capability returns, after a segment's lists
are made, a reason for some of the items it listed (its own budget decides how
many: ``Recommender.explain``). The runner stores them, one JSON line each, in
``cells/<cell>/explanations-<segment>.jsonl`` (bench.rundir) with the checks below
already applied, so a reader can audit every verdict, and writes three rows per
segment (``k = 0``, ``n`` = the number of reasons, bootstrap CI over users):

``explanation_grounding``
    share of reasons that name (a) an item of the user's history, by a title
    variant, or (b) a genre or tag of the recommended item.
``explanation_history_grounding``
    share of reasons that name an item of the user's history (part (a) alone).
    The prompt shows the recommended item's genres, so (b) is cheap to earn by
    copying them; naming the right history item is the harder half.
``explanation_hallucination``
    share of reasons with at least one *item mention* that matches no catalogue
    title.
``explanation_length``
    mean number of words per reason.

Matching is done on normalised text: Unicode accents removed, lower case, every
run of characters other than a-z and 0-9 turned into one space. A phrase is
*named* when its normalised form occurs in the normalised reason between word
boundaries (``"heat"`` is in ``"the heat is on"``, not in ``"theatre"``).

Title variants of an item: its title (the item text before ``". Genres:"`` /
``". Tags:"``), the title without a trailing ``(1995)`` year, without a further
trailing parenthesised alternative title, and with a trailing article moved to
the front (``"Usual Suspects, The"`` -> ``"The Usual Suspects"``). Variants of
fewer than :data:`MIN_TITLE_CHARS` characters after normalisation are never
matched (``"It"``, ``"Up"`` would match ordinary words).

A genre or tag is named by its normalised form or a plural of its last word
(+s, +es, y -> ies: ``"comedies"`` names Comedy, ``"thrillers"`` Thriller).

Item mentions (hallucination) are (1) text in double quotes (straight, curly or
guillemets) that starts with a capital letter or a digit, and (2) a run of title
words before a parenthesised year, ``Toy Story (1995)``, the catalogue's own
style. A mention matches the catalogue when its normalised form, or the form of
any of its word suffixes (so ``"Like Toy Story (1995)"`` matches Toy Story),
equals a title variant; for a year mention the suffixes are taken over the
:data:`CONTEXT_WORDS` words before the year, so inner punctuation
("Mockingjay - Part 1 (2014)") cannot cut a real title short. The year itself
is not compared (a real title with a wrong year is not counted). A quoted genre
or tag name is not an item mention.

History grounding ignores the recommended item's own title: its variants are
blanked out of the reason first ("Underworld: Awakening" does not name the
history's "Underworld").

Limits, said plainly: a title named without quotes or year ("you liked Star
Wars") is counted for grounding but never as a hallucination, so the rate is a
lower bound; a quoted capitalised phrase that is no title ("Great Fun") counts
as a hallucinated item; grounding is lexical: a reason that names a history
item in a false statement is still "grounded", and a one-word title that is a
common word ("Heat", "Kids") matches its ordinary use.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from bench.metrics import Metric

EXPLAIN_SECONDS = "explain_seconds"  # the k=0 row of the time a segment's reasons took (outside recommend timers)
MIN_TITLE_CHARS = 4
TAG_PREFIX = "tok:tag="  # item_feature_names entries of tags (bench.data.parsers, ml-latest)
_ARTICLES = r"the|a|an|les|la|le|l'|il|el|das|der|die|den|det"
_TRAILING_ARTICLE = re.compile(rf"^(.*\S),\s*({_ARTICLES})$", re.IGNORECASE)
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_TRAILING_PARENS = re.compile(r"\s*\([^()]*\)\s*$")
_TEXT_FIELDS = re.compile(r"\.\s+(?:Genres|Tags):")
_QUOTED = re.compile(r'"([^"\n]{2,120})"|“([^”\n]{2,120})”|«\s*([^»\n]{2,120}?)\s*»')
_YEAR_MENTION = re.compile(r"\((\d{4})\)")
# words a title may contain in lower case ("Lord of the Rings"); a mention walks back over them
_CONNECTORS = {"of", "the", "a", "an", "and", "in", "on", "to", "for", "at", "with", "from", "de", "la", "le", "du",
               "des", "et", "or", "vs", "is", "&", "-", "–", "—"}
CONTEXT_WORDS = 15  # words before a "(1995)" that a year mention's catalogue lookup reads


def normalise(text: str) -> str:
    """Accents removed, lower case, every non-alphanumeric run one space: the form every match compares."""
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_text = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", ascii_text).split())


def names(reason_norm: str, phrase_norm: str) -> bool:
    """Whether the normalised ``phrase`` occurs in the normalised reason between word boundaries."""
    return bool(phrase_norm) and f" {phrase_norm} " in f" {reason_norm} "


def title_of(item_text: str) -> str:
    """The title part of an item text ("Toy Story (1995). Genres: Animation" -> "Toy Story (1995))."""
    return _TEXT_FIELDS.split(item_text, maxsplit=1)[0].strip()


def title_variants(title: str) -> set[str]:
    """Normalised forms under which a reason may name this title (see the module docstring)."""
    forms = {title.strip()}
    no_year = _YEAR.sub("", title).strip()
    forms.add(no_year)
    forms.add(_TRAILING_PARENS.sub("", no_year).strip())
    for form in list(forms):
        moved = _TRAILING_ARTICLE.match(form)
        if moved:
            forms.add(f"{moved.group(2)} {moved.group(1)}")
            forms.add(moved.group(1))
    out = {normalise(f) for f in forms}
    return {f for f in out if len(f) >= MIN_TITLE_CHARS}


def term_forms(term: str) -> set[str]:
    """A genre or tag and the plurals of its last word, normalised."""
    base = normalise(term)
    if not base:
        return set()
    head, _, last = base.rpartition(" ")
    prefix = f"{head} " if head else ""
    plurals = {last + "s", last + "es"} | ({last[:-1] + "ies"} if last.endswith("y") else set())
    return {base} | {prefix + p for p in plurals}


def words(reason: str) -> int:
    """Whitespace-separated tokens that hold at least one letter or digit."""
    return sum(1 for token in reason.split() if any(c.isalnum() for c in token))


def _mention_spans(reason: str) -> list[tuple[str, str]]:
    """(the mention as shown, the text its catalogue lookup reads) for every item mention of a reason.

    A year mention's lookup text is the whole line before the year (up to :data:`CONTEXT_WORDS` words),
    so a title with inner punctuation ("L.A. Confidential (1997)", "Mockingjay - Part 1 (2014)") is
    found by its word suffixes even where the shown span stops early.
    """
    found = []
    for match in _QUOTED.finditer(reason):
        text = next(g for g in match.groups() if g is not None).strip()
        if text and (text[0].isupper() or text[0].isdigit()):
            found.append((text, text))
    for match in _YEAR_MENTION.finditer(reason):
        line = reason[:match.start()].rstrip().split("\n")[-1]
        context = " ".join(line.split()[-CONTEXT_WORDS:]) + f" ({match.group(1)})"
        tokens = re.split(r'[.;!?"“”«»()]', line)[-1].split()  # the shown span stays within a sentence
        start = len(tokens)
        while start > 0:
            word = tokens[start - 1].strip(",:'’")
            if word and (word[0].isupper() or word[0].isdigit() or word.lower() in _CONNECTORS):
                start -= 1
            else:
                break
        while start < len(tokens) and tokens[start].lower() in _CONNECTORS:
            start += 1
        if start < len(tokens):
            found.append((" ".join(tokens[start:]) + f" ({match.group(1)})", context))
    return found


def mentions(reason: str) -> list[str]:
    """Item mentions in a reason: capitalised quoted text, and title words before a "(1995)" year."""
    return [shown for shown, _ in _mention_spans(reason)]


@dataclass
class Catalogue:
    """Titles, title variants and genre/tag names of every item of a dataset, built once per dataset."""

    titles: list[str]
    variants: list[set[str]]
    terms: list[dict[str, set[str]]]  # per item: genre/tag name -> its normalised forms
    all_variants: set[str] = field(default_factory=set)
    all_terms: set[str] = field(default_factory=set)

    @classmethod
    def from_side(cls, item_text: Sequence[str], item_categories: Any, category_names: Sequence[str],
                  item_features: Any = None, item_feature_names: Sequence[str] = ()) -> "Catalogue":
        """From a dataset's (or SideInfo's) item texts, category matrix and feature matrix (tags)."""
        titles = [title_of(t) for t in item_text]
        variants = [title_variants(t) for t in titles]
        n = len(titles)
        terms: list[dict[str, set[str]]] = [{} for _ in range(n)]
        if item_categories is not None and item_categories.shape[1]:
            cats = item_categories.tocsr()
            for i in range(n):
                for c in cats.indices[cats.indptr[i]:cats.indptr[i + 1]]:
                    terms[i][str(category_names[c])] = term_forms(str(category_names[c]))
        tag_columns = {j: name[len(TAG_PREFIX):] for j, name in enumerate(item_feature_names)
                       if str(name).startswith(TAG_PREFIX)}
        if item_features is not None and tag_columns:
            feats = item_features.tocsr()
            for i in range(n):
                for j in feats.indices[feats.indptr[i]:feats.indptr[i + 1]]:
                    if j in tag_columns:
                        terms[i][tag_columns[j]] = term_forms(tag_columns[j])
        out = cls(titles, variants, terms)
        out.all_variants = set().union(*variants) if variants else set()
        out.all_terms = {f for item in terms for forms in item.values() for f in forms}
        return out

    def in_catalogue(self, mention: str) -> bool:
        """Whether a mention (or one of its word suffixes, with or without its year) is a catalogue title."""
        tokens = normalise(mention).split()
        no_year = tokens[:-1] if tokens and re.fullmatch(r"\d{4}", tokens[-1]) else tokens
        for seq in (tokens, no_year):
            for start in range(len(seq)):
                if " ".join(seq[start:]) in self.all_variants:
                    return True
        return False


def check(reason: str, item: int, history: Sequence[int], catalogue: Catalogue) -> dict[str, Any]:
    """The verdicts on one reason for ``item``: grounded (and by what), hallucinated (and which mentions), words."""
    norm = normalise(reason)
    # the recommended item's own title is no evidence about the history ("Underworld: Awakening" names
    # the history's "Underworld" only lexically): its variants are blanked out, longest first
    own = norm
    for variant in sorted(catalogue.variants[int(item)], key=len, reverse=True):
        own = f" {own} ".replace(f" {variant} ", " | ").strip()
    grounded_by = []
    for h in dict.fromkeys(int(x) for x in history):
        if any(names(own, v) for v in catalogue.variants[h]):
            grounded_by.append(f"history: {catalogue.titles[h]}")
    by_history = bool(grounded_by)
    for term, forms in catalogue.terms[int(item)].items():
        if any(names(norm, f) for f in forms):
            grounded_by.append(f"genre/tag: {term}")
    unknown = [shown for shown, lookup in _mention_spans(reason)
               if not catalogue.in_catalogue(lookup) and normalise(shown) not in catalogue.all_terms]
    grounded_by = list(dict.fromkeys(grounded_by))  # two catalogue ids may share a title (ml-100k has such pairs)
    return {"grounded": bool(grounded_by), "grounded_by": grounded_by, "history_grounded": by_history,
            "hallucinated": bool(unknown),
            "unknown_mentions": unknown, "words": words(reason)}


def records(reasons: list[tuple[int, int, str]], users: np.ndarray, items: np.ndarray,
            histories: list[np.ndarray], catalogue: Catalogue, user_ids: np.ndarray | None = None,
            item_ids: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One stored record per reason ``(row, rank, text)`` of ``Recommender.explain``, with its verdicts.

    ``histories[row]`` is what the model knew of user ``users[row]`` (training items, or a cold user's shots).
    """
    out = []
    for row, rank, text in reasons:
        item = int(items[row, rank])
        record = {"user": int(users[row]), "rank": int(rank) + 1, "item": item, "title": catalogue.titles[item],
                  "reason": str(text), "history_size": int(len(histories[row]))}
        if user_ids is not None:
            record["user_id"] = str(user_ids[int(users[row])])
        if item_ids is not None:
            record["item_id"] = str(item_ids[item])
        out.append(record | check(str(text), item, histories[row], catalogue))
    return out


METRIC_FIELDS = {"explanation_grounding": "grounded", "explanation_history_grounding": "history_grounded",
                 "explanation_hallucination": "hallucinated", "explanation_length": "words"}


def summarise(recs: list[dict[str, Any]], n_resamples: int, seed: int) -> dict[str, tuple[float, float, float, int]]:
    """``metric -> (value, ci_low, ci_high, n reasons)``: the mean over reasons, CI by resampling users.

    A user's reasons are not independent (one prompt history), so the bootstrap draws users and
    recomputes the ratio sum/count over their reasons (a cluster bootstrap).
    """
    out: dict[str, tuple[float, float, float, int]] = {}
    if not recs:
        return out
    users = np.array([r["user"] for r in recs])
    owners, inverse = np.unique(users, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(owners)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(owners), size=(n_resamples, len(owners))) if n_resamples else None
    for metric, key in METRIC_FIELDS.items():
        values = np.array([float(r[key]) for r in recs])
        sums = np.bincount(inverse, weights=values, minlength=len(owners))
        low = high = float("nan")
        if draws is not None:
            ratios = sums[draws].sum(1) / counts[draws].sum(1)
            low, high = (float(v) for v in np.quantile(ratios, [0.025, 0.975]))
        out[metric] = (float(values.mean()), low, high, len(recs))
    return out


def _from_explanations(_inputs: Any, _k: int) -> np.ndarray:
    raise NotImplementedError("explanation metrics are written by the runner from a model's reasons "
                              "(bench.explanations), not computed from top-k lists")


_NEEDS = "explanations"
GROUNDING = Metric("explanation_grounding", _from_explanations, True, _NEEDS, True,
                   "share of reasons naming a history item (title variant) or a genre/tag of the recommended item")
HISTORY_GROUNDING = Metric("explanation_history_grounding", _from_explanations, True, _NEEDS, True,
                           "share of reasons naming an item of the user's history (title variant)")
HALLUCINATION = Metric("explanation_hallucination", _from_explanations, False, _NEEDS, True,
                       "share of reasons with an item mention (capitalised quote, or words before '(YYYY)') "
                       "that matches no catalogue title")
LENGTH = Metric("explanation_length", _from_explanations, None, _NEEDS, True,
                "mean words per reason (whitespace tokens holding a letter or digit); descriptive, no better direction")
