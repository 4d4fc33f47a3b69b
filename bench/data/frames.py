"""A user's own interaction logs -- files or DataFrames -- turned into a :class:`Dataset`.

Files (``.csv .tsv .parquet .jsonl``, optionally ``.gz``) are read by pyarrow,
DataFrames (pandas, or anything with ``__arrow_c_stream__`` / ``__dataframe__``)
are converted to an Arrow table; from there one path normalises both: named
columns are picked, ids are checked (no nulls, no empty strings), values must
be numeric, timestamps of every kind become int64 seconds (the unit of integer
timestamps is detected and recorded), and :func:`bench.data.dataset.build_dataset`
applies the implicit conversion, the ``duplicates`` policy and the dense id maps.
Everything is column-wise (Arrow compute / pandas / numpy): no Python loop over rows.

Every problem is a :class:`~bench.errors.ConfigError` (a wrong mapping) or a
:class:`~bench.errors.DataError` (a bad file) naming the file or frame, the
column, the first bad row and the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bench import registry
from bench.data.dataset import DUPLICATE_POLICIES, Dataset, ImplicitConfig, build_dataset
from bench.errors import ConfigError, DataError
from bench.registry import suggest

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
           ".ndjson": "jsonl"}
INTERACTION_KEYS = ("user", "item", "value", "timestamp")
ITEM_KEYS = ("item", "text", "categories", "category_sep", "price", "value")
USER_KEYS = ("user", "features")
# integer timestamps: the largest magnitude of each unit for dates up to ~5000 AD
_UNITS = ((1e11, "seconds", 1), (1e14, "milliseconds", 1_000), (1e17, "microseconds", 1_000_000),
          (float("inf"), "nanoseconds", 1_000_000_000))


# -- reading -------------------------------------------------------------------

def file_format(path: Path, declared: str | None = None) -> str:
    """``csv``, ``tsv``, ``parquet`` or ``jsonl`` from ``declared`` or the file name (``.gz`` allowed)."""
    if declared:
        if declared not in set(FORMATS.values()):
            raise ConfigError(f"format = '{declared}' is unknown; use one of csv, tsv, parquet, jsonl")
        return declared
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise ConfigError(f"{path}: unknown format '{''.join(path.suffixes) or '(no extension)'}'; name the file "
                          f".csv, .tsv, .parquet or .jsonl (optionally .gz), or set format = \"csv\" etc.")
    return fmt


def read_file(path: Path, fmt: str | None = None) -> pa.Table:
    """The whole file as an Arrow table; a missing, truncated or non-UTF-8 file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path (relative paths are relative to the suite file)")
    fmt = file_format(path, fmt)
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            if path.suffix.lower() == ".gz":
                with pa.input_stream(str(path), compression="gzip") as stream:
                    return pq.read_table(pa.BufferReader(stream.read()))
            return pq.read_table(path)
        if fmt == "jsonl":
            with pa.input_stream(str(path), compression="detect") as stream:
                return pajson.read_json(stream)
        parse = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
        # empty cells stay empty strings in text columns (caught as empty ids) and null in numeric ones
        convert = pacsv.ConvertOptions(strings_can_be_null=False)
        with pa.input_stream(str(path), compression="detect") as stream:
            table = pacsv.read_csv(stream, parse_options=parse, convert_options=convert)
        binary = [f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        if binary:  # pyarrow keeps text it cannot decode as bytes
            raise DataError(f"{path}: column '{binary[0]}' is not valid UTF-8 text; re-export the file as UTF-8")
        return table
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError, UnicodeDecodeError) as exc:
        text = str(exc)
        if "UTF8" in text or "UTF-8" in text or isinstance(exc, UnicodeDecodeError):
            why = "is not valid UTF-8 text; re-export it as UTF-8"
        else:
            why = f"cannot be read as {fmt} ({text.splitlines()[0][:300]}); the file is truncated or not {fmt}"
        raise DataError(f"{path}: {why}") from None


def to_arrow(frame: Any, what: str) -> pa.Table:
    """pandas / Arrow / any ``__arrow_c_stream__`` or ``__dataframe__`` object as an Arrow table."""
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pd.DataFrame):
        return pa.Table.from_pandas(frame, preserve_index=False)
    if hasattr(frame, "__arrow_c_stream__"):
        return pa.table(frame)
    if hasattr(frame, "__dataframe__"):
        import pyarrow.interchange

        return pyarrow.interchange.from_dataframe(frame)
    raise ConfigError(f"{what}: expected a pandas DataFrame or an Arrow-compatible table, got {type(frame).__name__}")


# -- column checks ---------------------------------------------------------------

def _column(table: pa.Table, name: Any, key: str, where: str) -> pa.ChunkedArray:
    if not isinstance(name, str):
        raise ConfigError(f"{where}: the '{key}' column must be named by a string, got {name!r}")
    if name not in table.column_names:
        raise ConfigError(f"{where}: column '{name}' (given for '{key}') is absent; "
                          f"{suggest(name, table.column_names)}columns there: {', '.join(table.column_names)}")
    return table.column(name)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _ids(col: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    """Ids as integers or strings; nulls and empty strings are refused with the first bad row."""
    if col.null_count:
        bad = _first(col.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"{where}: column '{name}' has a missing id at row {bad}; every row needs one")
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_integer(col.type):
        return col.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(col.type):
        values = col.to_numpy()
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            bad = _first(~np.isfinite(values) | (values != np.round(values)))
            raise DataError(f"{where}: column '{name}' holds {values[bad]!r} at row {bad}, not an id")
        return values.astype(np.int64)
    text = col.cast(pa.string()) if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type) \
        else col
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0).to_numpy(zero_copy_only=False)
    if empty.any():
        raise DataError(f"{where}: column '{name}' has an empty id at row {_first(empty)}; every row needs one")
    return text.to_numpy(zero_copy_only=False).astype(object)


def _numbers(col: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    """A numeric column as float64; text that is not a number is refused with the first bad row."""
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
        values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        if np.isnan(values).any():
            raise DataError(f"{where}: column '{name}' is empty at row {_first(np.isnan(values))}; "
                            f"give every row a number")
        return values
    raw = pd.Series(col.to_numpy(zero_copy_only=False))
    values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
    if np.isnan(values).any():
        bad = _first(np.isnan(values))
        raise DataError(f"{where}: column '{name}' holds {raw.iloc[bad]!r} at row {bad}, not a number; "
                        f"fix the row or map another column")
    return values


def timestamps_to_seconds(col: pa.ChunkedArray, name: str, where: str) -> tuple[np.ndarray, str]:
    """int64 seconds from integer (s/ms/us/ns, detected), float, ISO-string, date or datetime columns."""
    if col.null_count:
        bad = _first(col.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"{where}: column '{name}' has no timestamp at row {bad}; give every row one "
                        f"or drop 'timestamp' from columns")
    if pa.types.is_timestamp(col.type):
        unit = col.type.unit
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
        zone = f", time zone {col.type.tz}" if col.type.tz else ""
        return col.cast(pa.int64()).to_numpy() // per_second, f"datetime[{unit}{zone}]"
    if pa.types.is_date(col.type):
        return col.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64) * 86_400, "date"
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        values = col.to_numpy()
        if pa.types.is_floating(col.type) and not np.isfinite(values).all():
            raise DataError(f"{where}: column '{name}' has no timestamp at row {_first(~np.isfinite(values))}")
        largest = max(float(values.max()), -float(values.min())) if len(values) else 0.0
        unit, per_second = next((u, d) for limit, u, d in _UNITS if largest < limit)
        seconds = values if per_second == 1 else np.floor_divide(values, per_second)
        return seconds.astype(np.int64, copy=False), f"integer {unit} (detected)"
    raw = pd.Series(col.to_numpy(zero_copy_only=False), dtype=object)
    numbers = pd.to_numeric(raw, errors="coerce")
    if len(raw) and not np.isnan(numbers.iloc[0]):  # epoch numbers stored as text (one bad row made it text)
        if numbers.isna().any():
            bad = _first(numbers.isna().to_numpy())
            raise DataError(f"{where}: column '{name}' holds {raw.iloc[bad]!r} at row {bad}, not a timestamp; "
                            f"the column holds epoch numbers, give every row one")
        return timestamps_to_seconds(pa.chunked_array([pa.array(numbers.to_numpy())]), name, where)
    parsed = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
    if parsed.isna().any():
        bad = _first(parsed.isna().to_numpy())
        raise DataError(f"{where}: column '{name}' holds {raw.iloc[bad]!r} at row {bad}, not a timestamp; "
                        f"use ISO 8601 text (2024-05-01T12:00:00Z), epoch seconds/milliseconds or a datetime column")
    return parsed.to_numpy(dtype="datetime64[s]").astype(np.int64), "ISO 8601 text"


def _mapping(columns: Any, keys: tuple[str, ...], required: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(columns, dict):
        raise ConfigError(f"{what} must be a table/dict such as {{ user = \"customer_id\", item = \"sku\" }}, "
                          f"got {columns!r}")
    unknown = sorted(set(columns) - set(keys))
    if unknown:
        raise ConfigError(f"{what} has unknown key '{unknown[0]}'; {suggest(unknown[0], list(keys))}"
                          f"valid: {', '.join(keys)}")
    missing = [k for k in required if k not in columns]
    if missing:
        raise ConfigError(f"{what} must name the '{missing[0]}' column, e.g. {{ {missing[0]} = \"...\" }}")
    return dict(columns)


# -- frames ----------------------------------------------------------------------

def interaction_frame(table: pa.Table, columns: dict[str, Any], where: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``user, item, value[, timestamp]`` columns for build_dataset, plus what was detected."""
    cols = _mapping(columns, INTERACTION_KEYS, ("user", "item"), f"{where}: columns")
    out = {"user": _ids(_column(table, cols["user"], "user", where), cols["user"], where),
           "item": _ids(_column(table, cols["item"], "item", where), cols["item"], where)}
    if "value" in cols:
        out["value"] = _numbers(_column(table, cols["value"], "value", where), cols["value"], where)
    else:
        out["value"] = np.ones(table.num_rows, dtype=np.float64)
    detected: dict[str, Any] = {}
    if "timestamp" in cols:
        out["timestamp"], detected["timestamp_unit"] = timestamps_to_seconds(
            _column(table, cols["timestamp"], "timestamp", where), cols["timestamp"], where)
    return pd.DataFrame(out), detected


def _text_of(table: pa.Table, names: list[str], where: str) -> np.ndarray:
    parts = [pc.fill_null(_column(table, n, "text", where).cast(pa.string()), "") for n in names]
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, ". ")
    return np.asarray(joined.to_numpy(zero_copy_only=False), dtype=object)


def _unique_ids(table: pa.Table, column: str, key: str, table_words: str, where: str) -> np.ndarray:
    """The id column of a side table (items or users), which must name each entity once."""
    ids = _ids(_column(table, column, key, where), column, where)
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        raise DataError(f"{where}: {key} id {ids[_first(dup)]!r} appears twice (row {_first(dup)}); {table_words} "
                        f"needs one row per {key}: deduplicate it")
    return ids


def item_frame(table: pa.Table, item_columns: dict[str, Any], where: str) -> tuple[pd.DataFrame, str | None]:
    """Items indexed by raw id: ``text``, ``categories``, ``tokens`` and the numeric ``value`` (price)."""
    from bench.data.parsers import title_tokens

    cols = _mapping(item_columns, ITEM_KEYS, ("item",), f"{where}: item_columns")
    ids = _unique_ids(table, cols["item"], "item", "an items table", where)
    text_names = cols.get("text", [])
    text_names = [text_names] if isinstance(text_names, str) else list(text_names)
    texts = _text_of(table, text_names, where) if text_names else np.array([None] * len(ids), dtype=object)
    frame = pd.DataFrame({"text": texts}, index=ids)
    if "categories" in cols:
        sep = cols.get("category_sep", "|")
        raw = pc.fill_null(_column(table, cols["categories"], "categories", where).cast(pa.string()), "")
        lists = pc.split_pattern(raw, sep).to_pylist()  # one list per item (not per interaction)
        frame["categories"] = [[c.strip() for c in cats if c.strip()] for cats in lists]
    else:
        frame["categories"] = [[] for _ in range(len(ids))]
    frame["tokens"] = [title_tokens(t) if isinstance(t, str) else [] for t in texts]
    value_key = "price" if "price" in cols else "value" if "value" in cols else None
    if value_key:
        frame["value"] = _numbers(_column(table, cols[value_key], value_key, where), cols[value_key], where)
    return frame, (cols[value_key] if value_key else None)


def user_frame(table: pa.Table, user_columns: dict[str, Any], where: str) -> pd.DataFrame:
    """Users indexed by raw id with a ``features`` column (``"column:value"`` tokens)."""
    cols = _mapping(user_columns, USER_KEYS, ("user",), f"{where}: user_columns")
    ids = _unique_ids(table, cols["user"], "user", "a users table", where)
    names = cols.get("features", [])
    names = [names] if isinstance(names, str) else list(names)
    tokens = [np.char.add(f"{n}:", pc.fill_null(_column(table, n, "features", where).cast(pa.string()), "")
                          .to_numpy(zero_copy_only=False).astype(str)) for n in names]
    features = [list(row) for row in zip(*tokens)] if tokens else [[] for _ in range(len(ids))]
    return pd.DataFrame({"features": features}, index=ids)


def frames_to_dataset(name: str, interactions: pa.Table, columns: dict[str, Any], *, where: str,
                      items: pa.Table | None = None, item_columns: dict[str, Any] | None = None,
                      items_where: str = "", users: pa.Table | None = None,
                      user_columns: dict[str, Any] | None = None, users_where: str = "",
                      implicit: ImplicitConfig | None = None, duplicates: str = "last",
                      info: dict[str, Any] | None = None) -> Dataset:
    """The one path from Arrow tables to a Dataset, shared by files and DataFrames."""
    if duplicates not in DUPLICATE_POLICIES:
        raise ConfigError(f"{where}: duplicates = '{duplicates}' is not valid; use one of "
                          f"{', '.join(DUPLICATE_POLICIES)}")
    if interactions.num_rows == 0:
        raise DataError(f"{where}: no interaction rows")
    frame, detected = interaction_frame(interactions, columns, where)
    if items is not None:
        if not item_columns:
            raise ConfigError(f"{items_where}: an items table needs item_columns naming at least its 'item' column")
        item_meta, value_column = item_frame(items, item_columns, items_where)
    else:
        item_meta, value_column = pd.DataFrame({"text": [], "categories": [], "tokens": []}), None
    user_meta = user_frame(users, user_columns or {}, users_where) if users is not None else None
    implicit = implicit or ImplicitConfig()
    meta = dict(info or {}) | detected | {"columns": dict(columns), "duplicates": duplicates,
                                         "implicit_min_value": implicit.min_value}
    if value_column:
        meta["item_value_column"] = value_column
    return build_dataset(name, frame, item_meta, implicit, user_meta, meta, duplicates=duplicates)


def dataset_from_frame(name: str, interactions: Any, columns: dict[str, Any], *, items: Any = None,
                       item_columns: dict[str, Any] | None = None, users: Any = None,
                       user_columns: dict[str, Any] | None = None, implicit: dict[str, Any] | None = None,
                       duplicates: str = "last") -> Dataset:
    """A Dataset from DataFrames (pandas, Arrow, or anything with ``__dataframe__``), no file written.

    ``columns`` maps ``user``, ``item`` and optionally ``value`` and ``timestamp``
    to the frame's column names; ``item_columns``/``user_columns`` as in a suite
    file. The result's identity in runs is its content hash (:func:`content_hash`).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"dataset_from_frame: name must be a non-empty string, got {name!r}")
    try:
        implicit_config = ImplicitConfig(**(implicit or {}))
    except TypeError:
        raise ConfigError(f"dataset_from_frame('{name}'): implicit takes min_value and weight, "
                          f"got {sorted(implicit or {})}") from None
    ds = frames_to_dataset(
        name, to_arrow(interactions, f"dataset '{name}' interactions"), columns,
        where=f"dataset '{name}' interactions frame",
        items=None if items is None else to_arrow(items, f"dataset '{name}' items"), item_columns=item_columns,
        items_where=f"dataset '{name}' items frame",
        users=None if users is None else to_arrow(users, f"dataset '{name}' users"), user_columns=user_columns,
        users_where=f"dataset '{name}' users frame", implicit=implicit_config, duplicates=duplicates,
        info={"title": f"{name} (in-memory DataFrame)", "license": "the user's own data", "source": "DataFrame"})
    ds.info["content_sha256"] = content_hash(ds)
    return ds


def content_hash(ds: Dataset) -> str:
    """sha256 of everything a model or metric sees: the identity of an in-memory dataset."""
    digest = hashlib.sha256()
    for array in (ds.user, ds.item, ds.value, ds.weight, ds.timestamp if ds.timestamp is not None else np.zeros(0)):
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"|")
    for ids in (ds.user_ids, ds.item_ids):
        digest.update(np.asarray(ids).astype(str).astype("U").tobytes())
    digest.update(json.dumps(ds.item_text).encode())
    for matrix in (ds.item_categories, ds.item_features):
        digest.update(matrix.indptr.tobytes() + matrix.indices.tobytes())
    if ds.item_value is not None:
        digest.update(ds.item_value.tobytes())
    digest.update(json.dumps(ds.info.get("conversion", "")).encode())
    return digest.hexdigest()


# -- registration: a dataset that loads by name ------------------------------------

class MemoryLoader:
    """A Dataset built in this process (``dataset_from_frame``), loadable by name for the runner."""

    param_names: tuple[str, ...] = ()
    implicit_defaults: dict[str, Any] = {}
    user_defined = True

    def __init__(self, ds: Dataset) -> None:
        self.dataset = ds
        self.description = f"in-memory dataset ({ds.n_interactions:,} interactions), registered in this process"

    def __call__(self, options: Any, implicit: ImplicitConfig, **params: Any) -> Dataset:
        if params or implicit != ImplicitConfig():
            raise ConfigError(f"dataset '{self.dataset.name}' was built in memory: give implicit= to "
                              f"dataset_from_frame, not to the suite")
        return self.dataset


def put_user_dataset(name: str, loader: Any, where: str) -> None:
    """Register a user's dataset; it may replace an earlier user dataset, never a built-in or plug-in one."""
    if name in registry.datasets and not getattr(registry.datasets.get(name), "user_defined", False):
        raise ConfigError(f"{where}: dataset name '{name}' is already a built-in or plug-in dataset; "
                          f"give your data another name")
    registry.datasets.replace(name, loader, origin="the user's own data")


def register(ds: Dataset) -> Any:
    """Make ``ds`` loadable by name in this process; returns the suite entry (DatasetSpec) that runs it.

    The entry's ``source`` carries the content hash, so run keys and cell ids
    change whenever the data does.
    """
    from bench.specs import DatasetSpec

    if not isinstance(ds, Dataset):
        raise ConfigError(f"register() takes a bench Dataset (from bench.dataset_from_frame), got {type(ds).__name__}")
    digest = ds.info.get("content_sha256") or content_hash(ds)
    ds.info["content_sha256"] = digest
    put_user_dataset(ds.name, MemoryLoader(ds), f"dataset '{ds.name}'")
    return DatasetSpec(ds.name, source={"in_memory": True, "content_sha256": digest})
