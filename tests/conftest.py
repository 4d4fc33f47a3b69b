"""Shared fixtures: the real datasets come from the read-only mirror (../shared/datasets
beside the repository, or $BENCH_DATA_MIRROR), never from the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.data import DataOptions, load_dataset

REPO = Path(__file__).resolve().parents[1]


def mirror_dirs() -> tuple[Path, ...]:
    from_env = [Path(p) for p in os.environ.get("BENCH_DATA_MIRROR", "").split(os.pathsep) if p]
    return tuple(from_env) + (REPO.parent / "shared" / "datasets",)


@pytest.fixture(scope="session")
def mirror() -> tuple[Path, ...]:
    dirs = tuple(d for d in mirror_dirs() if d.is_dir())
    if not dirs:
        pytest.fail("no dataset mirror: put the publishers' files in ../shared/datasets or set BENCH_DATA_MIRROR")
    return dirs


@pytest.fixture(scope="session")
def data_options(mirror: tuple[Path, ...], tmp_path_factory: pytest.TempPathFactory) -> DataOptions:
    return DataOptions(cache_dir=tmp_path_factory.mktemp("cache"), mirrors=mirror, allow_download=False)


@pytest.fixture(scope="session")
def ml100k(data_options: DataOptions):
    return load_dataset("ml-100k", data_options)
