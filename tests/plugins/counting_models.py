"""A model that counts how often it is built and fitted: proves `bench score` refits nothing.

Imported by tests in-process (suites with ``isolation = "none"``), so the class counters
see every construction the runner or the scorer makes.
"""

from __future__ import annotations

from baselines.simple import Pop
from bench import registry
from bench.protocol import Capabilities


class CountingPop(Pop):
    """Pop for warm users only (cold segments are "not served"), counting builds and fits."""

    name = "counting-pop"
    capabilities = Capabilities()
    built = 0
    fits = 0

    def __init__(self, *args, **kwargs) -> None:
        type(self).built += 1
        super().__init__(*args, **kwargs)

    def fit(self, train) -> None:
        type(self).fits += 1
        super().fit(train)


if "counting-pop" not in registry.models:
    registry.models.register("counting-pop", CountingPop)
