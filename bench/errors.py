"""Exceptions that mean "the user must fix something", as opposed to bugs.

The CLI turns every :class:`BenchError` into one clear message and exit code 2
(usage/config/data problems) without a traceback. Anything else is a bug or a
model failure and is reported as such.
"""

from __future__ import annotations


class BenchError(Exception):
    """A problem the user can fix; the message names the culprit and the fix."""

    exit_code = 2


class ConfigError(BenchError):
    """A suite file, command-line flag or parameter is wrong."""


class UnknownNameError(ConfigError):
    """A model, dataset, metric or suite name is not registered."""


class DataError(BenchError):
    """A data file is missing, corrupt, has the wrong checksum or format."""


class ModelOutputError(Exception):
    """A model returned output the harness refuses to score (wrong shape, NaN...).

    Not a :class:`BenchError`: it fails the cell, not the whole run.
    """
