"""bench: a benchmark and evaluation harness for recommender systems.

The public surface most users need:

- ``bench.run(suite, models=[...], mirror=...)`` -> :class:`bench.api.Run` (``.results``,
  ``.leaderboard(metric)``, ``.report(path)``), ``bench.load_run(path)``, ``bench.compare(old, new)``;
- ``bench.list_models()``, ``list_datasets()``, ``list_metrics()``, ``list_suites()`` as DataFrames;
- :class:`bench.protocol.Recommender` -- the model protocol plug-ins implement;
- :data:`bench.registry.models`, ``datasets``, ``metrics``, ``suites`` -- registries;
- :func:`bench.dataset_from_frame` -- a Dataset from the user's own DataFrames;
- the ``bench`` command line (:mod:`bench.cli`), a thin shell over :mod:`bench.api`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Loaded on first use, so `import bench` (and every plug-in importing bench.protocol) stays light.
_API = ("Run", "run", "load_run", "compare", "list_models", "list_datasets", "list_metrics", "list_suites",
        "model_params")
__all__ = [*_API, "dataset_from_frame", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from bench import api

        return getattr(api, name)
    if name == "dataset_from_frame":
        from bench.data.frames import dataset_from_frame

        return dataset_from_frame
    raise AttributeError(f"module 'bench' has no attribute '{name}'")
