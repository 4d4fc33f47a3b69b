"""bench: a benchmark and evaluation harness for recommender systems.

The public surface most users need:

- :class:`bench.protocol.Recommender` -- the model protocol plug-ins implement;
- :data:`bench.registry.models`, ``datasets``, ``metrics``, ``suites`` -- registries;
- :func:`bench.runner.run_suite` -- run a suite programmatically;
- the ``bench`` command line (:mod:`bench.cli`).
"""

__version__ = "0.1.0"
