"""Shared fixtures: the real datasets come from the read-only mirror (../shared/datasets
beside the repository, or $BENCH_DATA_MIRROR), never from the network."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from bench.data import DataOptions, load_dataset

REPO = Path(__file__).resolve().parents[1]


def mirror_dirs() -> tuple[Path, ...]:
    from_env = [Path(p) for p in os.environ.get("BENCH_DATA_MIRROR", "").split(os.pathsep) if p]
    return tuple(from_env) + (REPO.parent / "shared" / "datasets",)


@pytest.fixture
def ctrl_c_delivered():
    """Ctrl-C raises KeyboardInterrupt in this process and in the processes the test starts.

    A test runner started in the background of a non-interactive shell (``pytest &``, a CI
    agent's job) inherits SIGINT *ignored*; its children inherit that, and Python then installs
    no KeyboardInterrupt handler, so a Ctrl-C test would see its interrupt vanish. With a
    handler installed here, exec gives each child the default disposition again.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


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


@pytest.fixture(scope="session")
def als_top20(ml100k):
    """Top-20 lists of implicit's ALS on ml-100k (random split, training items excluded).

    Real model output for checking metrics against other frameworks. Returns
    (users, items, scores, test_users, test_items).
    """
    from baselines.implicit_models import ALS
    from bench.runner import train_data
    from bench.splits import make_split

    split = make_split(ml100k, "random", 0)
    train = train_data(ml100k, split.train)
    model = ALS(seed=0, factors=32, iterations=10)
    model.fit(train)
    users = np.unique(ml100k.user[split.test])
    items, scores = model.recommend(users, 20, exclude=train.matrix[users])
    return users, items, scores, ml100k.user[split.test], ml100k.item[split.test]
