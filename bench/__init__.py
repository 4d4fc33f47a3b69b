"""bench: a benchmark and evaluation harness for recommender systems.

The public surface most users need:

- :class:`bench.protocol.Recommender` -- the model protocol plug-ins implement;
- :data:`bench.registry.models`, ``datasets``, ``metrics``, ``suites`` -- registries;
- :func:`bench.runner.run_suite` -- run a suite programmatically;
- :func:`bench.dataset_from_frame` -- a Dataset from the user's own DataFrames;
- the ``bench`` command line (:mod:`bench.cli`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `import bench` stays cheap
    if name == "dataset_from_frame":
        from bench.data.frames import dataset_from_frame

        return dataset_from_frame
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
