"""A user's own split: ``[[splits]] kind = "given"`` with train/test(/valid) files.

The files have the dataset's format and column names. Their rows are matched to
the dataset's interactions by (user, item): a dataset row belongs to the part
whose file lists its pair. Rows the implicit conversion drops (value below
``min_value``) are dropped from the split files the same way and counted. A
user or item the interactions do not know, a pair the interactions lack, or a
test (valid) pair that is also in train is refused, naming the file and row,
before any cell runs. The split then goes through the same leakage check and
fingerprint as every built-in split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.data.cards import sha256_of
from bench.data.dataset import Dataset
from bench.data.frames import _column, _ids, _numbers, file_format, read_file
from bench.errors import ConfigError, DataError

PARTS = ("train", "test", "valid")


def check_given_params(params: dict[str, Any], base_dir: Any) -> dict[str, Any]:
    """Resolve the files against the suite's folder, check they exist and have a known format; hash them."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    for part in ("train", "test"):
        if not params.get(part):
            raise ConfigError(f"a given split needs a '{part}' file, e.g. {part} = \"data/{part}.csv\"")
    out: dict[str, Any] = {"valid": ""}
    digests = {}
    for part in PARTS:
        value = params.get(part) or ""
        if not value:
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{part} = {value!r} must be a file path")
        path = Path(value).expanduser()
        path = (path if path.is_absolute() else base / path).resolve()
        if not path.is_file():
            raise ConfigError(f"{part} file {path} does not exist (relative paths are relative to the suite "
                              f"file's folder, {base})")
        file_format(path)
        out[part] = str(path)
        digests[part] = sha256_of(path)
    out["sha256"] = digests
    return out


def _keys(dataset: Dataset, path: Path) -> tuple[np.ndarray, int]:
    """(user, item) keys of a split file's rows in the dataset's dense ids, and rows dropped by the conversion."""
    columns = dataset.info.get("columns")
    if not columns:
        raise ConfigError(f"a given split needs a dataset read from files or a DataFrame; "
                          f"'{dataset.name}' has no column mapping")
    where = str(path)
    table = read_file(path)
    users = _ids(_column(table, columns["user"], "user", where), columns["user"], where)
    items = _ids(_column(table, columns["item"], "item", where), columns["item"], where)
    dropped = 0
    min_value = dataset.info.get("implicit_min_value")
    if min_value is not None and "value" in columns and columns["value"] in table.column_names:
        values = _numbers(table.column(columns["value"]), columns["value"], where)
        keep = values >= min_value
        dropped = int((~keep).sum())
        users, items = users[keep], items[keep]
    row_numbers = np.flatnonzero(np.ones(table.num_rows, bool) if not dropped else keep)
    dense = []
    for raw, known, what in ((users, dataset.user_ids, "user"), (items, dataset.item_ids, "item")):
        known_arr = np.asarray(known)
        raw = raw.astype(known_arr.dtype) if known_arr.dtype.kind == "U" else raw
        pos = np.searchsorted(known_arr, raw)
        pos_c = np.minimum(pos, len(known_arr) - 1)
        absent = known_arr[pos_c] != raw
        if np.any(absent):
            bad = int(np.flatnonzero(absent)[0])
            raise DataError(f"{path}: {what} {raw[bad]!r} (row {row_numbers[bad]}) does not occur in dataset "
                            f"'{dataset.name}' after its conversion ({dataset.info.get('conversion', '')}); "
                            f"a given split may only use the dataset's own interactions")
        dense.append(pos_c.astype(np.int64))
    keys = dense[0] * dataset.n_items + dense[1]
    data_keys = np.unique(dataset.user.astype(np.int64) * dataset.n_items + dataset.item)
    missing = ~np.isin(keys, data_keys)
    if missing.any():
        bad = int(np.flatnonzero(missing)[0])
        raise DataError(f"{path}: row {row_numbers[bad]} pairs user {users[bad]!r} with item {items[bad]!r}, which "
                        f"the interactions of '{dataset.name}' do not contain; split files must be drawn from "
                        f"the interactions file")
    return keys, dropped


def given_rows(dataset: Dataset, files: dict[str, str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Dataset rows of each part, and the split-file rows the conversion dropped; overlapping parts
    are refused with the file and row."""
    keys: dict[str, np.ndarray] = {}
    stats: dict[str, int] = {}
    for part in PARTS:
        if files.get(part):
            keys[part], stats[f"{part}_rows_dropped_by_conversion"] = _keys(dataset, Path(files[part]))
    for part in ("test", "valid"):
        for other in ("train",) + (("test",) if part == "valid" else ()):
            if part in keys and other in keys:
                shared = np.isin(keys[part], keys[other])
                if shared.any():
                    bad = int(np.flatnonzero(shared)[0])
                    user, item = divmod(int(keys[part][bad]), dataset.n_items)
                    raise DataError(f"{files[part]}: row {bad} (user {dataset.user_ids[user]!r}, item "
                                    f"{dataset.item_ids[item]!r}) is also in the {other} file {files[other]}; "
                                    f"{part} pairs must not appear in {other} (that is leakage): remove them")
    row_keys = dataset.user.astype(np.int64) * dataset.n_items + dataset.item
    rows = np.arange(dataset.n_interactions)
    parts = {part: rows[np.isin(row_keys, k)] for part, k in keys.items()}
    stats["interactions_in_no_file"] = int(dataset.n_interactions - sum(len(r) for r in parts.values()))
    return parts, stats
