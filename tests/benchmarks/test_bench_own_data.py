"""The load path of a user's own file (issue 14): first load (parse + canonical cache write) and cached reload.

A 2-million-row MovieLens-shaped Parquet log made by ``scripts/make_big_log.py``'s generator
(fewer users and items, same shape). With benchmarks disabled (the default) each
function runs once and the reloaded Dataset is checked against the parsed one;
with ``--benchmark-enable`` pytest-benchmark records both timings. The 20M-row
figures of docs/benchmarks.md come from ``scripts/measure_load.py`` in fresh processes.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bench.data import DataOptions, ImplicitConfig
from bench.data.canonical import FileLoader, parse_source

REPO = Path(__file__).resolve().parents[2]
COLUMNS = {"user": "userId", "item": "movieId", "value": "rating", "timestamp": "timestamp"}


@pytest.fixture(scope="module")
def log_file(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_big_log", REPO / "scripts" / "make_big_log.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path_factory.mktemp("big") / "interactions.parquet"
    pq.write_table(module.generate(2_000_000, seed=0, n_users=20_000, n_items=5_000), path)
    return path


def _loader(path: Path) -> FileLoader:
    return FileLoader("big", parse_source({"interactions": str(path), "columns": COLUMNS}, path.parent, "bench"),
                      "bench")


def test_first_load_parses_and_writes_the_cache(benchmark, log_file, tmp_path):
    loader = _loader(log_file)
    implicit = ImplicitConfig(min_value=4.0)

    def fresh() -> tuple[tuple, dict]:
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
        return (DataOptions(cache_dir=tmp_path / "cache"), implicit), {}

    ds = benchmark.pedantic(loader, setup=fresh, rounds=2 if not benchmark.disabled else 1)
    assert ds.n_interactions > 500_000 and not isinstance(ds.user, np.memmap)
    assert (ds.value >= 4).all()


def test_cached_reload_memory_maps(benchmark, log_file, tmp_path):
    loader = _loader(log_file)
    options, implicit = DataOptions(cache_dir=tmp_path / "cache"), ImplicitConfig(min_value=4.0)
    parsed = loader(options, implicit)
    reloaded = benchmark(loader, options, implicit)
    assert isinstance(reloaded.user, np.memmap)
    for name in ("user", "item", "value", "weight", "timestamp", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(reloaded, name), getattr(parsed, name))
