"""Datasets from a user's files, and their canonical cache.

The first load of a file dataset parses it (pyarrow, see :mod:`bench.data.frames`)
and writes the finished :class:`Dataset` to ``<cache>/canonical/<key>/`` as
plain ``.npy`` arrays plus small JSON/NPZ side files. The key is the sha256 of
every input file together with everything that shapes the result (column
mapping, implicit conversion, duplicates policy, cache version), so an edited
file or option never reuses a stale entry. Later loads memory-map the arrays.

The entry is written into a temporary folder beside it and renamed into place
only when complete: a crash or a parse error never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from bench.data.cards import DataOptions, sha256_of
from bench.data.dataset import DUPLICATE_POLICIES, Dataset, ImplicitConfig
from bench.data.frames import file_format, frames_to_dataset, put_user_dataset, read_file
from bench.errors import ConfigError
from bench.schema import check_keys

CANONICAL_VERSION = 1
SOURCE_KEYS: dict[str, Any] = {"name": str, "params": dict, "implicit": dict, "interactions": str, "columns": dict,
                               "items": str, "item_columns": dict, "users": str, "user_columns": dict,
                               "duplicates": str, "format": str}
_FILES = ("interactions", "items", "users")
_ARRAYS = ("user", "item", "value", "weight", "timestamp", "item_value", "user_ids", "item_ids")
_MATRICES = ("item_categories", "item_features", "user_features")


def is_file_dataset(table: dict[str, Any]) -> bool:
    return "interactions" in table


def parse_source(table: dict[str, Any], base_dir: Path, where: str) -> dict[str, Any]:
    """Check a ``[[datasets]]`` table that names files, before anything runs.

    Paths become absolute (relative ones are relative to the suite file); each
    file must exist and have a known format; its sha256 is recorded, so the
    run key, the cell ids and the split fingerprints follow the file's content.
    """
    check_keys(table, SOURCE_KEYS, "", where)
    if table.get("params"):
        raise ConfigError(f"{where}: a dataset read from files takes no 'params'")
    if "columns" not in table:
        raise ConfigError(f"{where}: name the columns, e.g. columns = {{ user = \"customer_id\", item = \"sku\" }}")
    duplicates = table.get("duplicates", "last")
    if duplicates not in DUPLICATE_POLICIES:
        raise ConfigError(f"{where}: duplicates = '{duplicates}' is not valid; use one of {', '.join(DUPLICATE_POLICIES)}")
    for side in ("items", "users"):
        if (side in table) != (f"{side[:-1]}_columns" in table):
            raise ConfigError(f"{where}: '{side}' and '{side[:-1]}_columns' go together; give both or neither")
    source: dict[str, Any] = {k: v for k, v in table.items() if k not in ("name", "params", "implicit")}
    source["duplicates"] = duplicates
    digests = {}
    for key in _FILES:
        if key not in source:
            continue
        path = Path(source[key]).expanduser()
        path = path if path.is_absolute() else (base_dir / path)
        path = path.resolve()
        if not path.is_file():
            raise ConfigError(f"{where}: {key} file {path} does not exist (relative paths are relative to the "
                              f"suite file's folder, {base_dir})")
        try:
            file_format(path, source.get("format") if key == "interactions" else None)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        source[key] = str(path)
        digests[key] = sha256_of(path)
    source["sha256"] = digests
    return source


def cache_key(source: dict[str, Any], digests: dict[str, str], implicit: ImplicitConfig) -> str:
    """What decides the canonical Dataset: file contents and every option, never the file's path."""
    options = {k: v for k, v in source.items() if k not in (*_FILES, "sha256")}
    payload = {"version": CANONICAL_VERSION, "sha256": digests, "options": options, "implicit": asdict(implicit)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


class FileLoader:
    """Loads a user's file dataset through the canonical cache."""

    param_names: tuple[str, ...] = ()
    implicit_defaults: dict[str, Any] = {}
    user_defined = True

    def __init__(self, name: str, source: dict[str, Any], where: str) -> None:
        self.name, self.source, self.where = name, source, where
        self.description = f"the user's own data ({Path(source['interactions']).name})"

    def __call__(self, options: DataOptions, implicit: ImplicitConfig, **params: Any) -> Dataset:
        if params:
            raise ConfigError(f"{self.where}: a dataset read from files takes no parameters, got {sorted(params)}")
        digests = {key: sha256_of(Path(self.source[key])) for key in _FILES if key in self.source}
        folder = options.cache_dir / "canonical" / cache_key(self.source, digests, implicit)
        if (folder / "meta.json").is_file():
            ds = load_canonical(folder)
            ds.name = self.name
            return ds
        ds = self.parse(implicit, digests)
        save_canonical(ds, folder)
        return ds

    def parse(self, implicit: ImplicitConfig, digests: dict[str, str]) -> Dataset:
        src = self.source
        tables = {key: read_file(Path(src[key]), src.get("format") if key == "interactions" else None)
                  for key in _FILES if key in src}
        info = {"title": f"{self.name} (the user's own data)", "license": "the user's own data",
                "source": {key: src[key] for key in tables}, "files_sha256": digests}
        return frames_to_dataset(
            self.name, tables["interactions"], src["columns"], where=src["interactions"],
            items=tables.get("items"), item_columns=src.get("item_columns"), items_where=src.get("items", ""),
            users=tables.get("users"), user_columns=src.get("user_columns"), users_where=src.get("users", ""),
            implicit=implicit, duplicates=src.get("duplicates", "last"), info=info)


def register_file_dataset(name: str, source: dict[str, Any], where: str) -> None:
    put_user_dataset(name, FileLoader(name, source, where), where)


# -- the cache folder ------------------------------------------------------------

def save_canonical(ds: Dataset, folder: Path) -> None:
    """Write ``ds`` into ``folder`` atomically (temporary sibling folder, then one rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        for name in _ARRAYS:
            array = getattr(ds, name)
            if array is None:
                continue
            if array.dtype == object:  # string ids: fixed-width unicode, memory-mappable
                array = array.astype(str)
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        for name in _MATRICES:
            matrix = getattr(ds, name)
            if matrix is not None:
                sp.save_npz(tmp / f"{name}.npz", matrix.tocsr())
        meta = {"name": ds.name, "item_text": ds.item_text, "category_names": ds.category_names,
                "item_feature_names": ds.item_feature_names, "user_feature_names": ds.user_feature_names,
                "info": ds.info, "version": CANONICAL_VERSION}
        # meta.json last: load_canonical only trusts a folder that has it
        (tmp / "meta.json").write_text(json.dumps(meta, default=str), encoding="utf-8")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same entry first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_canonical(folder: Path) -> Dataset:
    """A Dataset whose arrays are memory-mapped from ``folder``."""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    arrays = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="r")
              if (folder / f"{name}.npy").is_file() else None for name in _ARRAYS}
    matrices = {name: sp.load_npz(folder / f"{name}.npz").tocsr() if (folder / f"{name}.npz").is_file() else None
                for name in _MATRICES}
    info = meta["info"] | {"canonical_cache": str(folder)}
    return Dataset(name=meta["name"], user=arrays["user"], item=arrays["item"], value=arrays["value"],
                   weight=arrays["weight"], timestamp=arrays["timestamp"], user_ids=arrays["user_ids"],
                   item_ids=arrays["item_ids"], item_text=meta["item_text"],
                   item_categories=matrices["item_categories"], category_names=meta["category_names"],
                   item_features=matrices["item_features"], item_feature_names=meta["item_feature_names"],
                   user_features=matrices["user_features"], user_feature_names=meta["user_feature_names"],
                   info=info, item_value=arrays["item_value"])
