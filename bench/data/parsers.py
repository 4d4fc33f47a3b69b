"""Parsers for the publishers' raw files, one per dataset card ``parser`` value.

Each parser turns verified file paths into the raw frames
:func:`bench.data.dataset.build_dataset` expects. Any format problem (wrong
encoding, wrong column count, unparsable value) becomes a
:class:`~bench.errors.DataError` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bench.errors import DataError

RawFrames = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]  # interactions, items, users
Parser = Callable[[dict[str, Path]], RawFrames]

PARSERS: dict[str, Parser] = {}

_WORD = re.compile(r"[a-z0-9']+")
_STOPWORDS = frozenset("the a an of and in on to for with la le les de el il".split())


def parser(name: str) -> Callable[[Parser], Parser]:
    def add(fn: Parser) -> Parser:
        PARSERS[name] = fn
        return fn

    return add


def read_table(path: Path, *, sep: str, names: list[str], encoding: str = "utf-8", header: int | None = None,
               dtypes: dict[str, type] | None = None) -> pd.DataFrame:
    """``pd.read_csv`` that checks the column count and reports problems by file."""
    try:
        frame = pd.read_csv(
            path, sep=sep, header=header, encoding=encoding, dtype=str, keep_default_na=False,
            engine="c" if len(sep) == 1 else "python", quoting=3 if sep != "," else 0,
        )
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid {encoding} text ({exc.reason} at byte {exc.start}); "
                        f"the file is corrupt or not the publisher's original") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"{path}: cannot be parsed as {sep!r}-separated text ({exc}); "
                        f"replace it with the publisher's original file") from exc
    if frame.shape[1] != len(names):
        raise DataError(f"{path}: expected {len(names)} columns ({', '.join(names)}), found {frame.shape[1]}; "
                        f"replace it with the publisher's original file")
    frame.columns = names
    for column, kind in (dtypes or {}).items():
        try:
            frame[column] = frame[column].astype(kind)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: column '{column}' holds a value that is not {kind.__name__} ({exc}); "
                            f"the file is corrupt") from exc
    return frame


def title_tokens(title: str) -> list[str]:
    """Lower-cased content words of a title, without the trailing '(1995)' year."""
    title = re.sub(r"\(\d{4}\)\s*$", "", title)
    return [w for w in _WORD.findall(title.lower()) if w not in _STOPWORDS and len(w) > 1]


@parser("movielens_100k")
def parse_ml100k(paths: dict[str, Path]) -> RawFrames:
    ratings = read_table(paths["u.data"], sep="\t", names=["user", "item", "value", "timestamp"],
                         dtypes={"user": int, "item": int, "value": float, "timestamp": np.int64})
    genre_names = [g.split("|")[0] for g in paths["u.genre"].read_text(encoding="latin-1").splitlines() if g.strip()]
    if len(genre_names) != 19:
        raise DataError(f"{paths['u.genre']}: expected 19 genres, found {len(genre_names)}")
    item_cols = ["item", "title", "release", "video_release", "imdb"] + genre_names
    items = read_table(paths["u.item"], sep="|", names=item_cols, encoding="latin-1", dtypes={"item": int})
    flags = items[genre_names].to_numpy() == "1"
    categories = [[g for g, on in zip(genre_names, row) if on] for row in flags]
    items_out = pd.DataFrame({
        "text": [f"{t}. Genres: {', '.join(c) or 'unknown'}" for t, c in zip(items["title"], categories)],
        "categories": categories,
        "tokens": [title_tokens(t) for t in items["title"]],
    }, index=items["item"].to_numpy())
    users = read_table(paths["u.user"], sep="|", names=["user", "age", "gender", "occupation", "zip"],
                       dtypes={"user": int, "age": int})
    age_bucket = pd.cut(users["age"], [0, 17, 24, 34, 44, 49, 55, 200],
                        labels=["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]).astype(str)
    users_out = pd.DataFrame({
        "features": [[f"age:{a}", f"gender:{g}", f"occupation:{o}"]
                     for a, g, o in zip(age_bucket, users["gender"], users["occupation"])],
    }, index=users["user"].to_numpy())
    return ratings, items_out, users_out


@parser("movielens_latest")
def parse_ml_latest(paths: dict[str, Path]) -> RawFrames:
    ratings = read_table(paths["ratings.csv"], sep=",", header=0, names=["user", "item", "value", "timestamp"],
                         dtypes={"user": int, "item": int, "value": float, "timestamp": np.int64})
    movies = read_table(paths["movies.csv"], sep=",", header=0, names=["item", "title", "genres"],
                        dtypes={"item": int})
    tags = read_table(paths["tags.csv"], sep=",", header=0, names=["user", "item", "tag", "timestamp"],
                      dtypes={"item": int})
    tags["tag"] = tags["tag"].str.strip().str.lower()
    tag_counts = tags.groupby(["item", "tag"]).size().rename("n").reset_index()
    tag_counts = tag_counts.sort_values(["item", "n", "tag"], ascending=[True, False, True])
    top_tags = tag_counts.groupby("item")["tag"].apply(lambda s: list(s[:10]))
    categories = [[] if g == "(no genres listed)" else g.split("|") for g in movies["genres"]]
    item_tags = [top_tags.get(i, []) for i in movies["item"]]
    text = [
        f"{t}. Genres: {', '.join(c) or 'unknown'}" + (f". Tags: {', '.join(tg)}" if tg else "")
        for t, c, tg in zip(movies["title"], categories, item_tags)
    ]
    items_out = pd.DataFrame({
        "text": text,
        "categories": categories,
        "tokens": [title_tokens(t) + [f"tag={x}" for x in tg] for t, tg in zip(movies["title"], item_tags)],
    }, index=movies["item"].to_numpy())
    return ratings, items_out, None


@parser("lastfm_hetrec")
def parse_lastfm(paths: dict[str, Path]) -> RawFrames:
    plays = read_table(paths["user_artists.dat"], sep="\t", header=0, names=["user", "item", "value"],
                       dtypes={"user": int, "item": int, "value": float})
    artists = read_table(paths["artists.dat"], sep="\t", header=0, names=["item", "name", "url", "picture"],
                         dtypes={"item": int})
    # No timestamps: the tag-assignment files that carry them are not in the
    # archive copy we mirror, and user_artists.dat has none.
    items_out = pd.DataFrame({
        # The name alone: a shared suffix such as "(music artist)" would dominate every
        # sentence embedding and make all artists look alike to text models.
        "text": list(artists["name"]),
        "categories": [[] for _ in range(len(artists))],
        "tokens": [title_tokens(name) for name in artists["name"]],
    }, index=artists["item"].to_numpy())
    friends = read_table(paths["user_friends.dat"], sep="\t", header=0, names=["user", "friend"],
                         dtypes={"user": int, "friend": int})
    degree = friends.groupby("user").size()
    bucket = pd.cut(degree, [0, 2, 5, 10, 25, 10_000], labels=["1-2", "3-5", "6-10", "11-25", "26+"]).astype(str)
    users_out = pd.DataFrame({"features": [[f"friends:{b}"] for b in bucket]}, index=degree.index.to_numpy())
    return plays, items_out, users_out
