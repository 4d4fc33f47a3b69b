"""Deliberately broken or slow models, registered for reliability tests.

Imported by the tests (in-process) and by the subprocess entry ``run_bench.py``.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from baselines.simple import Pop
from bench import registry


class SlowPop(Pop):
    """Pop that takes ``delay`` seconds to fit (gives a test time to kill the run mid-suite) and
    ``recommend_delay`` seconds per recommend call (lets a test watch the progress of a segment)."""

    name = "slow-pop"
    default_params = {"delay": 0.5, "recommend_delay": 0.0}

    def fit(self, train):
        time.sleep(self.params["delay"])
        super().fit(train)

    def recommend(self, users, k, **kwargs):
        time.sleep(self.params["recommend_delay"])
        return super().recommend(users, k, **kwargs)


class Raising(Pop):
    name = "raising"

    def fit(self, train):
        raise RuntimeError("boom: this model always fails to fit")


class Hanging(Pop):
    name = "hanging"

    def fit(self, train):
        time.sleep(3600)


class Garbage(Pop):
    """Pop whose output is broken in the way ``kind`` says."""

    name = "garbage"
    default_params = {"kind": "nan"}

    def recommend(self, user_ids, k, *, history=None, candidates=None, exclude=None):
        items, scores = super().recommend(user_ids, k, history=history, candidates=candidates, exclude=exclude)
        items, scores = items.copy(), scores.copy()
        kind = self.params["kind"]
        if kind == "nan":
            scores[0, 0] = np.nan
        elif kind == "short":
            return items[:, : k - 1], scores[:, : k - 1]
        elif kind == "shape":
            return items[:-1], scores[:-1]
        elif kind == "duplicate":
            items[0, 1] = items[0, 0]
        elif kind == "out_of_range":
            items[0, 0] = 10**9
        elif kind == "unsorted":
            scores[0, :] = np.arange(scores.shape[1])
        elif kind == "training_item":
            row = exclude[0].indices if exclude is not None and exclude.nnz else None
            if row is not None and len(row):
                items[0, 0] = row[0]
        return items, scores


for _cls in (SlowPop, Raising, Hanging, Garbage):
    if _cls.name not in registry.models:
        registry.models.register(_cls.name, _cls)


class Hog(Pop):
    """Allocates ``gib`` GiB in fit: an out-of-memory cell under a memory limit."""

    name = "hog"
    default_params = {"gib": 4.0}

    def fit(self, train):
        self.blob = np.ones(int(self.params["gib"] * 2**30 / 8))
        super().fit(train)


if Hog.name not in registry.models:
    registry.models.register(Hog.name, Hog)


class SelfKill(Pop):
    """SIGKILLs its own process in fit, as the OOM killer or `kill -9` would.

    With ``marker`` set it dies only while that file does not exist yet (creating
    it first), so a retried cell succeeds: one death, then a clean second attempt.
    """

    name = "self-kill"
    default_params = {"marker": ""}

    def fit(self, train):
        marker = self.params["marker"]
        if not marker or not os.path.exists(marker):
            if marker:
                open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        super().fit(train)


class ThreadProbe(Pop):
    """Pop that reports the thread caps its process runs under (BLAS/OpenMP pools, OMP_NUM_THREADS)."""

    name = "thread-probe"

    def fit(self, train):
        from threadpoolctl import threadpool_info

        self.pools = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})
        super().fit(train)

    def describe(self):
        return super().describe() | {"omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                     "pools": getattr(self, "pools", [])}


for _cls in (SelfKill, ThreadProbe):
    if _cls.name not in registry.models:
        registry.models.register(_cls.name, _cls)
