"""A user's own data (issue 14): files and DataFrames, the canonical cache, given splits,
revenue metrics, `bench data describe`, dataset plug-ins, and every bad input as one clear message."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bench
from bench.cli import main
from bench.data import DataOptions, ImplicitConfig
from bench.data.canonical import FileLoader, parse_source
from bench.errors import ConfigError, DataError

EVENTS = pd.DataFrame({
    "customer_id": ["ann", "bob", "ann", "cid", "bob", "ann", "dan", "dan", "cid", "bob"],
    "sku": ["s1", "s2", "s2", "s1", "s3", "s1", "s3", "s2", "s3", "s1"],
    "qty": [1, 2, 1, 3, 1, 2, 1, 1, 2, 1],
    "ts": [1_700_000_000 + 100 * i for i in range(10)],
})
ITEMS = pd.DataFrame({"sku": ["s1", "s2", "s3"], "title": ["Red mug", "Blue pen", "Green cap"],
                      "brand": ["Acme", "Bic", "Acme"], "category": ["kitchen|gift", "office", "clothes|gift"],
                      "price": [4.0, 1.5, 10.0]})
COLUMNS = {"user": "customer_id", "item": "sku", "value": "qty", "timestamp": "ts"}
ITEM_COLUMNS = {"item": "sku", "text": ["title", "brand"], "categories": "category", "price": "price"}


def frame_ds(events=EVENTS, **kwargs):
    kwargs.setdefault("columns", COLUMNS)
    return bench.dataset_from_frame("shop", events, **kwargs)


# -- DataFrames -------------------------------------------------------------------------

def test_dense_ids_keep_the_users_own_ids_and_side_tables():
    ds = frame_ds(items=ITEMS, item_columns=ITEM_COLUMNS)
    assert list(ds.user_ids) == ["ann", "bob", "cid", "dan"] and list(ds.item_ids) == ["s1", "s2", "s3"]
    # (ann, s1) twice: the default policy keeps the later row (qty 2)
    pairs = {(ds.user_ids[u], ds.item_ids[i]): v for u, i, v in zip(ds.user, ds.item, ds.value)}
    assert pairs[("ann", "s1")] == 2 and len(pairs) == ds.n_interactions == 9
    assert ds.item_text[0] == "Red mug. Acme"
    assert ds.category_names == ["clothes", "gift", "kitchen", "office"]
    assert ds.item_categories.toarray().tolist() == [[0, 1, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]]
    assert ds.item_value.tolist() == [4.0, 1.5, 10.0]
    assert ds.info["conversion"] == "all interactions; weight=binary; duplicates=last"


@pytest.mark.parametrize("policy, ann_s1_rows, ann_s1_value", [("last", 1, [2.0]), ("first", 1, [1.0]),
                                                                ("sum", 1, [3.0]), ("keep", 2, [1.0, 2.0])])
def test_duplicates_policy(policy, ann_s1_rows, ann_s1_value):
    ds = frame_ds(duplicates=policy)
    mask = (ds.user_ids[ds.user] == "ann") & (ds.item_ids[ds.item] == "s1")
    assert mask.sum() == ann_s1_rows and sorted(ds.value[mask].tolist()) == ann_s1_value
    assert ds.info["conversion"].endswith(f"duplicates={policy}")
    if policy == "sum":  # the summed pair keeps the latest timestamp
        assert ds.timestamp[mask].tolist() == [1_700_000_500]


def test_sum_is_applied_before_the_implicit_threshold():
    ds = frame_ds(duplicates="sum", implicit={"min_value": 3})
    kept = {(ds.user_ids[u], ds.item_ids[i]) for u, i in zip(ds.user, ds.item)}
    assert kept == {("ann", "s1"), ("cid", "s1")}  # ann: 1 + 2 = 3; cid: 3


@pytest.mark.parametrize("column, unit", [
    (EVENTS["ts"], "integer seconds (detected)"),
    (EVENTS["ts"] * 1000 + 999, "integer milliseconds (detected)"),
    (pd.to_datetime(EVENTS["ts"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "ISO 8601 text"),
    (pd.to_datetime(EVENTS["ts"], unit="s"), "datetime["),  # unit: whatever pandas chose (ns or us)
    (pd.to_datetime(EVENTS["ts"], unit="s").dt.tz_localize("UTC").dt.tz_convert("Europe/Paris"),
     "time zone Europe/Paris]"),
])
def test_every_kind_of_timestamp_becomes_the_same_seconds(column, unit):
    ds = frame_ds(EVENTS.assign(ts=column))
    reference = frame_ds()
    assert unit in ds.info["timestamp_unit"]
    np.testing.assert_array_equal(ds.timestamp, reference.timestamp)


def test_arrow_tables_are_accepted_like_pandas():
    a = frame_ds(pa.Table.from_pandas(EVENTS))
    b = frame_ds()
    assert a.info["content_sha256"] == b.info["content_sha256"]


FRAME_MISTAKES = [
    ("absent column", EVENTS, {"user": "customer", "item": "sku"}, ConfigError,
     "column 'customer' (given for 'user') is absent; did you mean 'customer_id'? columns there: customer_id, sku"),
    ("null id", EVENTS.assign(sku=EVENTS["sku"].where(EVENTS.index != 4)), COLUMNS, DataError, "missing id at row 4"),
    ("empty id", EVENTS.assign(customer_id=EVENTS["customer_id"].where(EVENTS.index != 3, " ")), COLUMNS, DataError,
     "empty id at row 3"),
    ("non-numeric value", EVENTS.assign(qty=EVENTS["qty"].astype(str).where(EVENTS.index != 6, "two")), COLUMNS,
     DataError, "'two' at row 6, not a number"),
    ("bad timestamp", EVENTS.assign(ts=["2024-01-0%dT00:00:00" % (i + 1) for i in range(9)] + ["yesterday"]),
     COLUMNS, DataError, "'yesterday' at row 9, not a timestamp"),
    ("unknown duplicates policy", EVENTS, COLUMNS, ConfigError, "duplicates = 'mean' is not valid"),
]


@pytest.mark.parametrize("case, events, columns, error, message", FRAME_MISTAKES, ids=[m[0] for m in FRAME_MISTAKES])
def test_bad_frames_are_one_clear_error(case, events, columns, error, message):
    with pytest.raises(error) as info:
        frame_ds(events, columns=columns, **({"duplicates": "mean"} if "duplicates" in case else {}))
    assert message in str(info.value)


def test_bad_item_table_and_empty_conversion_through_frames():
    with pytest.raises(DataError, match="item id 's2' appears twice"):
        frame_ds(items=pd.concat([ITEMS, ITEMS.iloc[[1]]]), item_columns=ITEM_COLUMNS)
    with pytest.raises(ConfigError, match="no interaction left after conversion"):
        frame_ds(implicit={"min_value": 10})


# -- revenue metrics ----------------------------------------------------------------------

def test_revenue_metrics_hand_worked():
    from bench import metrics as M

    # user 0 lists items [2, 0, 1], test items {0, 1}; user 1 lists [1, 2, 0], test items {2}
    items = np.array([[2, 0, 1], [1, 2, 0]])
    value = np.array([4.0, 1.5, 10.0])
    hits, n_rel = M.hit_matrix(items, np.array([0, 1]), np.array([0, 0, 1]), np.array([0, 1, 2]), 3)
    relevant = M.relevant_value(np.array([0, 1]), np.array([0, 0, 1]), np.array([0, 1, 2]), value, 3)
    assert relevant.tolist() == [5.5, 10.0]
    inputs = M.EvalInputs(items=items, hits=hits, n_relevant=n_rel, n_candidates=3,
                          item_popularity=np.ones(3, int), n_train_users=2, item_categories=None,
                          item_value=value, relevant_value=relevant)
    table = M.compute(inputs, ["revenue", "revenue_share"], [1, 2, 3])
    col = {c: table.per_user[:, j].tolist() for j, c in enumerate(table.columns)}
    assert col[("revenue", 1)] == [0.0, 0.0] and col[("revenue", 2)] == [4.0, 10.0]
    assert col[("revenue", 3)] == [5.5, 10.0]
    assert col[("revenue_share", 2)] == [4.0 / 5.5, 1.0]
    without = M.compute(M.EvalInputs(items=items, hits=hits, n_relevant=n_rel, n_candidates=3,
                                     item_popularity=np.ones(3, int), n_train_users=2, item_categories=None),
                        ["revenue", "ndcg"], [2])
    assert without.columns == [("ndcg", 2)]  # no item values: revenue is left out, not zero


# -- files, the canonical cache, bench run ----------------------------------------------------

def shop_files(folder: Path, n_users: int = 60, n_items: int = 30, seed: int = 0) -> None:
    """A small shop log with items and a given train/test split, as CSV files."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, 1500)
    items = np.minimum(rng.zipf(1.3, 1500) - 1, n_items - 1)
    events = pd.DataFrame({"customer_id": [f"c{u:03d}" for u in users], "sku": [f"sku-{i}" for i in items],
                           "qty": rng.integers(1, 4, 1500), "ts": 1_700_000_000 + np.arange(1500) * 60})
    events = events.drop_duplicates(["customer_id", "sku"])
    (folder / "data").mkdir(parents=True, exist_ok=True)
    events.to_csv(folder / "data" / "events.csv", index=False)
    test = rng.random(len(events)) < 0.25
    events[~test].to_csv(folder / "data" / "train.csv", index=False)
    events[test].to_csv(folder / "data" / "test.csv", index=False)
    pd.DataFrame({"sku": [f"sku-{i}" for i in range(n_items)], "title": [f"thing {i}" for i in range(n_items)],
                  "category": ["a|b" if i % 2 else "c" for i in range(n_items)],
                  "price": np.round(rng.uniform(1, 20, n_items), 2)}).to_csv(folder / "data" / "items.csv", index=False)


SUITE = """
name = "shop"
[evaluation]
k = [5, 10]
bootstrap = 20
[execution]
isolation = "none"
[[datasets]]
name = "shop"
interactions = "data/events.csv"
columns = { user = "customer_id", item = "sku", value = "qty", timestamp = "ts" }
items = "data/items.csv"
item_columns = { item = "sku", text = "title", categories = "category", price = "price" }
[[splits]]
kind = "given"
train = "data/train.csv"
test = "data/test.csv"
[[models]]
name = "pop"
"""


def run_cli(tmp_path: Path, suite: str, *extra: str) -> int:
    (tmp_path / "suite.toml").write_text(textwrap.dedent(suite))
    return main(["run", "--suite", str(tmp_path / "suite.toml"), "--out", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), *extra])


def test_bench_run_on_a_users_csv_with_a_given_split_writes_the_full_report(tmp_path, capsys):
    shop_files(tmp_path)
    assert run_cli(tmp_path, SUITE) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    frame = pd.read_csv(run_dir / "results.csv")
    assert set(frame["split"]) == {"given"} and (frame["status"] == "ok").all()
    assert {"revenue", "revenue_share", "ndcg"} <= set(frame["metric"])
    assert frame["conversion"].iloc[0] == "all interactions; weight=binary; duplicates=last"
    assert (run_dir / "report.html").is_file() and "revenue" in (run_dir / "report.md").read_text()
    # the given split: exactly the pairs of the test file, nothing of train
    split = np.load(next((run_dir / "splits").glob("*.npz")))
    ids = np.load(run_dir / "ids" / "shop.npz")
    events = pd.read_csv(tmp_path / "data" / "events.csv")
    test_file = pd.read_csv(tmp_path / "data" / "test.csv")
    loader = bench.registry.datasets.get("shop")
    ds = loader(DataOptions(cache_dir=tmp_path / "cache"), ImplicitConfig())
    got = {(ds.user_ids[ds.user[r]], ds.item_ids[ds.item[r]]) for r in split["test"]}
    assert got == set(zip(test_file["customer_id"], test_file["sku"]))
    assert len(split["train"]) + len(split["test"]) == len(events)
    assert list(ids["user_ids"]) == sorted(events["customer_id"].unique())
    # the canonical cache: one complete entry, memory-mapped on reload
    entries = list((tmp_path / "cache" / "canonical").iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    assert isinstance(ds.user, np.memmap)
    # the split fingerprint follows the files' content; provenance names the bytes benchmarked
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["datasets"]["shop"]["files_sha256"]["interactions"] == \
        config_sha(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    assert set(config["splits"][0]["params"]["sha256"]) == {"train", "test"}
    assert len(config["datasets"][0]["source"]["sha256"]["interactions"]) == 64
    # --resume rebuilds the file dataset from config.json and reuses the finished cell
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir), "--cache-dir", str(tmp_path / "cache"), "--no-report"]) == 0
    assert "(1 cells, 0 failed, 1 reused)" in capsys.readouterr().out


def config_sha(run_dir: Path) -> str:
    return json.loads((run_dir / "config.json").read_text())["datasets"][0]["source"]["sha256"]["interactions"]


def test_given_split_with_a_valid_file_and_the_keep_policy(tmp_path):
    from bench.splits import check_params, make_split

    shop_files(tmp_path)
    data = tmp_path / "data"
    test = pd.read_csv(data / "test.csv")
    test.iloc[: len(test) // 2].to_csv(data / "valid.csv", index=False)
    test.iloc[len(test) // 2:].to_csv(data / "test2.csv", index=False)
    ds = bench.dataset_from_frame("shop", pd.read_csv(data / "events.csv"),
                                  {"user": "customer_id", "item": "sku", "value": "qty", "timestamp": "ts"})
    params = check_params("given", {"train": "data/train.csv", "test": "data/test2.csv", "valid": "data/valid.csv"},
                          tmp_path)
    split = make_split(ds, "given", 0, **params)
    assert len(split.valid) == len(test) // 2 and len(split.test) == len(test) - len(test) // 2
    assert len(split.fingerprint) == 16 and set(params["sha256"]) == {"train", "test", "valid"}
    assert split.stats["interactions_in_no_file"] == 0 and split.stats["test_rows_dropped_by_conversion"] == 0
    with_threshold = bench.dataset_from_frame("shop", pd.read_csv(data / "events.csv"),
                                              {"user": "customer_id", "item": "sku", "value": "qty"},
                                              implicit={"min_value": 2})
    thresholded = make_split(with_threshold, "given", 0, **params)  # split files converted like the interactions
    assert thresholded.stats["test_rows_dropped_by_conversion"] == int((test.iloc[len(test) // 2:]["qty"] < 2).sum())
    # the given split's own mistakes, on a DataFrame dataset too
    pd.concat([pd.read_csv(data / "train.csv"), test.iloc[[3]]]).to_csv(data / "leaky.csv", index=False)
    with pytest.raises(DataError, match="is also in the train file"):
        make_split(ds, "given", 0, **check_params("given", {"train": "data/leaky.csv", "test": "data/test.csv"},
                                                  tmp_path))
    test.assign(sku="sku-unknown").to_csv(data / "stranger.csv", index=False)
    with pytest.raises(DataError, match="item 'sku-unknown' \\(row 0\\) does not occur"):
        make_split(ds, "given", 0, **check_params("given", {"train": "data/train.csv", "test": "data/stranger.csv"},
                                                  tmp_path))
    # keep: repeated rows stay; a test row repeating a training pair is dropped and counted
    repeated = pd.concat([EVENTS, EVENTS]).reset_index(drop=True)
    kept = frame_ds(repeated, duplicates="keep")
    assert kept.n_interactions == 20
    random = make_split(kept, "random", 0, test_fraction=0.5)
    train_pairs = set(zip(kept.user[random.train], kept.item[random.train]))
    assert not train_pairs & set(zip(kept.user[random.test], kept.item[random.test]))
    assert random.stats["test_repeats_of_train_dropped"] > 0


def test_canonical_cache_key_follows_content_and_options(tmp_path):
    shop_files(tmp_path)
    events = tmp_path / "data" / "events.csv"
    columns = {"user": "customer_id", "item": "sku", "value": "qty"}
    options = DataOptions(cache_dir=tmp_path / "cache")

    def load(min_value=None):
        source = parse_source({"interactions": str(events), "columns": columns}, tmp_path, "t")
        return FileLoader("shop", source, "t")(options, ImplicitConfig(min_value=min_value))

    first = load()
    again = load()
    assert isinstance(again.user, np.memmap) and not isinstance(first.user, np.memmap)
    for name in ("user", "item", "value", "weight", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    load(min_value=2)
    assert len(list((tmp_path / "cache" / "canonical").iterdir())) == 2
    events.write_text(events.read_text() + "zed,sku-1,1,1800000000\n")
    assert load().n_users == first.n_users + 1  # an edited file never reuses the stale entry
    assert len(list((tmp_path / "cache" / "canonical").iterdir())) == 3


def _truncated_parquet(folder: Path) -> Path:
    path = folder / "data" / "events.parquet"
    pq.write_table(pa.Table.from_pandas(pd.read_csv(folder / "data" / "events.csv")), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _latin1(folder: Path) -> Path:
    path = folder / "data" / "latin.csv"
    path.write_bytes("customer_id,sku,qty,ts\nren\xe9,sku-1,1,1700000000\n".encode("latin-1"))
    return path


def _edit_csv(folder: Path, name: str, row: int, column: str, value: str) -> None:
    path = folder / "data" / name
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)


RUN_MISTAKES = [
    ("missing file", lambda f: None, ('data/events.csv', 'data/nothing.csv'), "nothing.csv does not exist"),
    ("unknown format", lambda f: (f / "data" / "events.xlsx").write_text("x"), ('data/events.csv', 'data/events.xlsx'),
     "unknown format '.xlsx'"),
    ("absent column", lambda f: None, ('user = "customer_id"', 'user = "customerid"'),
     "did you mean 'customer_id'? columns there: customer_id, sku, qty, ts"),
    ("null id", lambda f: _edit_csv(f, "events.csv", 7, "sku", ""), None, "empty id at row 7"),
    ("non-numeric value", lambda f: _edit_csv(f, "events.csv", 5, "qty", "lots"), None, "'lots' at row 5"),
    ("bad timestamp", lambda f: _edit_csv(f, "events.csv", 9, "ts", "noon"), None, "'noon' at row 9, not a timestamp"),
    ("truncated file", _truncated_parquet, ('data/events.csv', 'data/events.parquet'), "truncated"),
    ("not UTF-8", _latin1, ('data/events.csv', 'data/latin.csv'), "not valid UTF-8"),
    ("items not unique", lambda f: _edit_csv(f, "items.csv", 3, "sku", "sku-2"), None, "item id 'sku-2' appears twice"),
    ("test rows also in train", lambda f: pd.concat([pd.read_csv(f / "data" / "train.csv"),
                                                     pd.read_csv(f / "data" / "test.csv").iloc[:1]]).to_csv(
        f / "data" / "train.csv", index=False), None, "is also in the train file"),
    ("split user absent", lambda f: _edit_csv(f, "test.csv", 2, "customer_id", "stranger"), None,
     "user 'stranger' (row 2) does not occur in dataset 'shop'"),
    ("empty after conversion", lambda f: None, ('value = "qty", timestamp = "ts" }',
                                               'value = "qty", timestamp = "ts" }\nimplicit = { min_value = 99 }'),
     "no interaction left after conversion (value >= 99"),
    ("split parameter out of range", lambda f: None,
     ('test = "data/test.csv"', 'test = "data/test.csv"\n[[splits]]\nkind = "user_coldstart"\n'
                                'params = { user_fraction = 1.5 }'),
     "splits[1] (kind 'user_coldstart'): split parameter user_fraction = 1.5 must lie strictly between 0 and 1"),
]


@pytest.mark.parametrize("case, prepare, replace, message", RUN_MISTAKES, ids=[m[0] for m in RUN_MISTAKES])
def test_bad_input_through_bench_run_is_exit_2_before_any_cell(tmp_path, capsys, case, prepare, replace, message):
    shop_files(tmp_path)
    prepare(tmp_path)
    suite = SUITE if replace is None else SUITE.replace(*replace)
    assert run_cli(tmp_path, suite) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert err.count("\n") <= 2  # one message
    assert str(tmp_path / "suite.toml") in err  # names the suite file
    assert not list((tmp_path / "runs").glob("*/cells"))  # no cell ran
    canonical = tmp_path / "cache" / "canonical"
    entries = list(canonical.iterdir()) if canonical.exists() else []
    assert all((e / "meta.json").is_file() for e in entries)  # nothing half-written: no temporary folder left
    if case not in ("test rows also in train", "split user absent", "split parameter out of range"):
        assert entries == []  # the data itself was refused: no entry at all


@pytest.mark.parametrize("table, message", [
    ('kind = "random"\nparams = { test_fraction = 0 }', "test_fraction = 0 must lie strictly between 0 and 1"),
    ('kind = "holdout_n"\nparams = { test_items = 0 }', "test_items = 0 must be an integer >= 1"),
    ('kind = "leave_last_out"\nparams = { validation = "yes" }', "validation = 'yes' must be true or false"),
    ('kind = "user_coldstart"\nparams = { shots = [1, -2] }', "shots = [1, -2] must be a non-empty list"),
    ('kind = "item_coldstart"\nparams = { candidates = "warm" }', "candidates = 'warm' must be \"cold\" or \"all\""),
    ('kind = "given"\ntrain = "a.csv"', "a given split needs a 'test' file"),
    ('kind = "random"\ntest = "a.csv"', "which only kind = \"given\" takes"),
])
def test_every_split_parameter_is_checked_when_the_suite_is_read(tmp_path, table, message):
    from bench.config import load_suite

    path = tmp_path / "s.toml"
    path.write_text('name = "x"\n[[datasets]]\nname = "synthetic"\n[[models]]\nname = "pop"\n[[splits]]\n'
                    'kind = "random"\n[[splits]]\n' + table + "\n")
    with pytest.raises(ConfigError) as info:
        load_suite(str(path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_cold_fraction_too_large_for_the_data_stops_before_the_first_cell(tmp_path, capsys):
    suite = SUITE.replace('[[models]]', '[[splits]]\nkind = "user_coldstart"\nparams = { user_fraction = 0.9, '
                                        'shots = [50] }\n[[models]]')
    shop_files(tmp_path)
    assert run_cli(tmp_path, suite) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "suite.toml") in err and "lower user_fraction" in err
    assert not list((tmp_path / "runs").glob("*/cells"))


def test_gzip_jsonl_and_tsv_read_like_csv(tmp_path):
    events = EVENTS.copy()
    paths = {"jsonl.gz": tmp_path / "e.jsonl.gz", "tsv": tmp_path / "e.tsv", "parquet": tmp_path / "e.parquet"}
    with gzip.open(paths["jsonl.gz"], "wt") as handle:
        handle.write(events.to_json(orient="records", lines=True))
    events.to_csv(paths["tsv"], sep="\t", index=False)
    events.to_parquet(paths["parquet"])
    reference = frame_ds()
    for path in paths.values():
        source = parse_source({"interactions": str(path), "columns": COLUMNS}, tmp_path, "t")
        ds = FileLoader("shop", source, "t")(DataOptions(cache_dir=tmp_path / "cache"), ImplicitConfig())
        for name in ("user", "item", "value", "timestamp"):
            np.testing.assert_array_equal(getattr(ds, name), getattr(reference, name))


# -- in-memory datasets in runs, describe, plug-ins --------------------------------------------

def test_registered_frame_dataset_runs_by_name_and_its_identity_is_its_content(tmp_path):
    from bench.config import parse_suite
    from bench.data.frames import register
    from bench.runner import run_suite

    shop_files(tmp_path)
    events = pd.read_csv(tmp_path / "data" / "events.csv")
    ds = bench.dataset_from_frame("mem-shop", events, {"user": "customer_id", "item": "sku"})
    spec = register(ds)
    assert spec.name == "mem-shop" and spec.source["content_sha256"] == ds.info["content_sha256"]
    config = parse_suite({"name": "mem", "datasets": [{"name": "mem-shop"}], "splits": [{"kind": "random"}],
                          "models": [{"name": "pop"}], "evaluation": {"k": [5], "bootstrap": 0},
                          "execution": {"isolation": "none"}}, "test")
    config.datasets = [spec]
    summary = run_suite(config, out_root=tmp_path / "runs", progress=None)
    assert summary.failed == 0 and set(summary.frame["dataset"]) == {"mem-shop"}
    other = register(bench.dataset_from_frame("mem-shop", events.iloc[:-5], {"user": "customer_id", "item": "sku"}))
    assert other.source["content_sha256"] != spec.source["content_sha256"]
    with pytest.raises(ConfigError, match="already a built-in or plug-in dataset"):
        register(bench.dataset_from_frame("ml-100k", events, {"user": "customer_id", "item": "sku"}))


def test_describe_a_file_and_a_name(tmp_path, capsys):
    shop_files(tmp_path)
    path = tmp_path / "data" / "events.csv"
    svg = tmp_path / "plot.svg"
    assert main(["data", "describe", str(path), "--columns", "user=customer_id,item=sku,timestamp=ts",
                 "--cache-dir", str(tmp_path / "cache"), "--svg", str(svg)]) == 0
    out = capsys.readouterr().out
    events = pd.read_csv(path)
    per_item = events.groupby("sku").size()
    per_user = events.groupby("customer_id").size()
    assert f"{events['customer_id'].nunique():,} users, {events['sku'].nunique():,} items, {len(events):,} interactions" in out
    assert f"{(per_user < 5).sum():,} users" in out and f"{(per_item < 5).sum():,} items" in out
    assert "time range: 2023-11-14T22:13:20 .. " in out and "interactions per item (log2 bins)" in out
    assert svg.read_text().lstrip().startswith("<?xml")
    assert main(["data", "describe", "synthetic", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "dataset synthetic: 500 users" in capsys.readouterr().out
    assert main(["data", "describe", "nosuchdata"]) == 2
    assert "neither a registered dataset nor a file" in capsys.readouterr().err


PLUGIN = '''
import numpy as np
import pandas as pd
from bench.data import dataset_from_frame


class ToyShop:
    description = "a toy shop shipped by a plug-in package"
    param_names = ("n_users",)
    implicit_defaults = {}

    def __call__(self, options, implicit, n_users=20):
        rng = np.random.default_rng(0)
        users = [f"u{u}" for u in rng.integers(0, n_users, 300)]
        items = [f"i{i}" for i in rng.integers(0, 60, 300)]
        return dataset_from_frame("toyshop", pd.DataFrame({"u": users, "i": items}), {"user": "u", "item": "i"})


loader = ToyShop()
'''


def test_a_bench_datasets_entry_point_is_listed_and_run(tmp_path):
    site = tmp_path / "site"
    (site / "toy_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "toy_plugin.py").write_text(PLUGIN)
    (site / "toy_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (site / "toy_plugin-0.1.dist-info" / "entry_points.txt").write_text("[bench.datasets]\ntoyshop = toy_plugin:loader\n")
    env = os.environ | {"PYTHONPATH": str(site)}
    bench_cmd = [sys.executable, "-m", "bench.cli"]
    listed = subprocess.run(bench_cmd + ["list", "datasets"], env=env, capture_output=True, text=True, check=True)
    assert "toyshop" in listed.stdout and "entry point from toy-plugin" in listed.stdout
    suite = tmp_path / "s.toml"
    suite.write_text('name = "toy"\n[evaluation]\nk = [5]\nbootstrap = 0\n[execution]\nisolation = "none"\n'
                     '[[datasets]]\nname = "toyshop"\nparams = { n_users = 10 }\n[[splits]]\nkind = "random"\n'
                     '[[models]]\nname = "pop"\n')
    ran = subprocess.run(bench_cmd + ["run", "--suite", str(suite), "--out", str(tmp_path / "runs"), "--no-report"],
                         env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert "toyshop" in ran.stdout


# -- bit-identity with the built-in ml-100k card -----------------------------------------------

@pytest.mark.slow
def test_ml100k_from_a_csv_export_gives_bit_identical_metrics(tmp_path, mirror, capsys):
    folder = next(m / "ml-100k" for m in mirror if (m / "ml-100k" / "u.data").is_file())
    ratings = pd.read_csv(folder / "u.data", sep="\t", names=["user_id", "movie_id", "rating", "unix_time"])
    ratings.to_csv(tmp_path / "ratings.csv", index=False)
    genres = [g.split("|")[0] for g in (folder / "u.genre").read_text(encoding="latin-1").splitlines() if g.strip()]
    movies = pd.read_csv(folder / "u.item", sep="|", encoding="latin-1", header=None,
                         names=["movie_id", "title", "release", "video", "imdb"] + genres)
    movies["genres"] = ["|".join(g for g in genres if row[g] == 1) for _, row in movies.iterrows()]
    movies[["movie_id", "title", "genres"]].to_csv(tmp_path / "movies.csv", index=False)
    suite = """
    name = "identity"
    [evaluation]
    k = [5, 10, 20]
    bootstrap = 0
    [execution]
    isolation = "none"
    [[datasets]]
    name = "ml-100k"
    [[datasets]]
    name = "ml100k-csv"
    interactions = "ratings.csv"
    columns = { user = "user_id", item = "movie_id", value = "rating", timestamp = "unix_time" }
    implicit = { min_value = 4 }
    items = "movies.csv"
    item_columns = { item = "movie_id", text = "title", categories = "genres" }
    [[splits]]
    kind = "random"
    [[models]]
    name = "pop"
    [[models]]
    name = "itemknn"
    [[models]]
    name = "als"
    params = { factors = 16, iterations = 3 }
    """
    code = run_cli(tmp_path, suite, *sum((["--mirror", str(m)] for m in mirror), []), "--no-download", "--no-report")
    assert code == 0, capsys.readouterr().err
    frame = pd.read_csv(next((tmp_path / "runs").iterdir()) / "results.csv")
    scored = frame[(frame["k"] > 0) & (frame["status"] == "ok")]
    keys = ["model", "metric", "k"]
    builtin = scored[scored["dataset"] == "ml-100k"].set_index(keys)["value"].sort_index()
    ours = scored[scored["dataset"] == "ml100k-csv"].set_index(keys)["value"].sort_index()
    assert len(builtin) == 3 * 10 * 3 and builtin.index.equals(ours.index)
    assert (builtin.to_numpy() == ours.to_numpy()).all()  # bit-identical, not approximately equal
