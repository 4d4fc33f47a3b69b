"""Loaders, dataset cards, checksum verification and the synthetic generator."""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import registry
from bench.data import DataOptions, load_dataset
from bench.data.cards import fetch, read_card
from bench.errors import ConfigError, DataError


def test_ml100k_counts_match_an_independent_read(ml100k, mirror):
    raw = pd.read_csv(mirror[0] / "ml-100k" / "u.data", sep="\t", names=["u", "i", "r", "t"])
    positive = raw[raw.r >= 4]
    assert ml100k.n_interactions == len(positive)
    assert ml100k.n_users == positive.u.nunique()
    assert ml100k.n_items == positive.i.nunique()
    assert ml100k.info["conversion"] == "value >= 4; weight=binary"
    assert ml100k.timestamp is not None and ml100k.timestamp.min() == positive.t.min()
    # side information: title + genres as text, genre categories, demographic user features
    toy_story = int(np.flatnonzero(ml100k.item_ids == 1)[0])
    assert ml100k.item_text[toy_story].startswith("Toy Story (1995). Genres: Animation")
    assert set(np.array(ml100k.category_names)[ml100k.item_categories[toy_story].indices]) == {
        "Animation", "Children's", "Comedy"}
    assert ml100k.user_features is not None and "gender:F" in ml100k.user_feature_names


def test_ml_latest_small_has_tags_in_text(data_options):
    ds = load_dataset("ml-latest-small", data_options)
    toy_story = int(np.flatnonzero(ds.item_ids == 1)[0])
    assert "Tags: pixar" in ds.item_text[toy_story]
    assert ds.has_timestamps


def test_lastfm_play_counts_without_timestamps(data_options):
    ds = load_dataset("lastfm-hetrec", data_options)
    assert ds.n_interactions == 92834 and ds.n_users == 1892
    assert not ds.has_timestamps
    assert ds.info["conversion"] == "all interactions; weight=log1p"
    assert np.allclose(ds.weight, np.log1p(ds.value))
    assert ds.item_text[0] == "MALICE MIZER"  # artists.dat's first artist, name only


def test_implicit_conversion_is_configurable(data_options):
    ds = load_dataset("ml-100k", data_options, implicit={"min_value": 5})
    assert ds.info["conversion"] == "value >= 5; weight=binary"
    assert ds.n_interactions == 21201  # ratings of exactly 5 in u.data (published counts)
    with pytest.raises(ConfigError, match="weight"):
        load_dataset("ml-100k", data_options, implicit={"weight": "squared"})


def _copy_mirror(mirror: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "mirror" / "ml-100k"
    dst.mkdir(parents=True)
    for name in ("u.data", "u.item", "u.user", "u.genre"):
        shutil.copy(mirror / "ml-100k" / name, dst / name)
    return tmp_path / "mirror"


def test_checksum_mismatch_in_mirror_names_the_file(mirror, tmp_path):
    copy = _copy_mirror(mirror[0], tmp_path)
    data = copy / "ml-100k" / "u.data"
    data.write_bytes(data.read_bytes()[:-100])  # truncated
    options = DataOptions(cache_dir=tmp_path / "cache", mirrors=(copy,), allow_download=False)
    with pytest.raises(DataError, match=r"u\.data.*sha256.*corrupt or truncated"):
        load_dataset("ml-100k", options)


def test_corrupt_cache_file_is_reported_with_the_fix(mirror, tmp_path):
    cache = tmp_path / "cache" / "ml-100k"
    cache.mkdir(parents=True)
    (cache / "u.item").write_text("garbage")
    options = DataOptions(cache_dir=tmp_path / "cache", mirrors=mirror, allow_download=False)
    with pytest.raises(DataError, match=r"rm '.*u\.item'"):
        load_dataset("ml-100k", options)


def test_missing_files_without_download_say_what_to_do(tmp_path):
    options = DataOptions(cache_dir=tmp_path / "cache", mirrors=(tmp_path / "empty",), allow_download=False)
    with pytest.raises(DataError, match="--mirror"):
        load_dataset("ml-100k", options)


def _zip_of(mirror: Path, tmp_path: Path, corrupt: str | None = None) -> Path:
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("u.data", "u.item", "u.user", "u.genre"):
            payload = (mirror / "ml-100k" / name).read_bytes()
            zf.writestr(f"ml-100k/{name}", payload[:-10] if name == corrupt else payload)
    return archive


def test_download_verifies_and_fills_the_cache(mirror, tmp_path):
    card = read_card(registry.datasets.get("ml-100k").card.path)
    card = replace(card, url=_zip_of(mirror[0], tmp_path).as_uri())  # file:// stands in for GroupLens
    options = DataOptions(cache_dir=tmp_path / "cache", mirrors=(), allow_download=True)
    paths = fetch(card, options)
    assert all(p.parent == tmp_path / "cache" / "ml-100k" for p in paths.values())
    assert (tmp_path / "cache" / "ml-100k" / "u.data").read_bytes() == (mirror[0] / "ml-100k" / "u.data").read_bytes()
    # second fetch is served from the verified cache, even with downloads off
    again = fetch(card, replace(options, allow_download=False))
    assert again == paths


def test_corrupt_download_leaves_nothing_half_written(mirror, tmp_path):
    card = read_card(registry.datasets.get("ml-100k").card.path)
    card = replace(card, url=_zip_of(mirror[0], tmp_path, corrupt="u.item").as_uri())
    options = DataOptions(cache_dir=tmp_path / "cache", mirrors=(), allow_download=True)
    with pytest.raises(DataError, match=r"u\.item"):
        fetch(card, options)
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert all(p.name != "u.item" for p in leftovers)
    assert not any(".download-" in str(p) for p in (tmp_path / "cache").rglob("*"))


def test_wrong_encoding_and_column_count_name_the_file(tmp_path):
    from bench.data.parsers import read_table

    bad_encoding = tmp_path / "artists.dat"
    bad_encoding.write_bytes(b"id\tname\n1\t\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"artists\.dat: not valid utf-8"):
        read_table(bad_encoding, sep="\t", header=0, names=["id", "name"])
    wrong_columns = tmp_path / "u.data"
    wrong_columns.write_text("1\t2\t3\n4\t5\t6\n")
    with pytest.raises(DataError, match=r"u\.data: expected 4 columns"):
        read_table(wrong_columns, sep="\t", names=["user", "item", "value", "timestamp"])


def test_unknown_dataset_suggests_the_right_name():
    with pytest.raises(ConfigError, match="did you mean 'ml-100k'"):
        load_dataset("ml-100", DataOptions())


def test_synthetic_is_deterministic_and_power_law(data_options):
    a = load_dataset("synthetic", data_options, n_users=300, n_items=200, n_interactions=8000, seed=4)
    b = load_dataset("synthetic", data_options, n_users=300, n_items=200, n_interactions=8000, seed=4)
    c = load_dataset("synthetic", data_options, n_users=300, n_items=200, n_interactions=8000, seed=5)
    assert np.array_equal(a.item, b.item) and np.array_equal(a.user, b.user)
    assert not np.array_equal(a.item, c.item)
    counts = np.sort(np.bincount(a.item))[::-1]
    assert counts[:20].sum() > 0.25 * counts.sum()  # a popular head
    assert a.item_categories.shape[1] == 8 and a.has_timestamps
    assert a.item_text[0].startswith("Item ")


def test_synthetic_rejects_bad_parameters(data_options):
    with pytest.raises(ConfigError, match="unknown parameter"):
        load_dataset("synthetic", data_options, n_user=3)
