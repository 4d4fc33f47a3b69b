"""One check for every TOML table bench reads: known keys, right types, clear errors."""

from __future__ import annotations

from typing import Any

from bench.errors import ConfigError
from bench.registry import suggest


def check_keys(table: dict[str, Any], schema: dict[str, Any], where: str, source: str) -> None:
    """Raise :class:`ConfigError` naming ``source``, the key path and the fix for the first bad key.

    ``schema`` maps each valid key to a type or tuple of types; ``where`` is the
    key-path prefix (``"evaluation.systems."``). A bool never passes for a number.
    """
    for key, value in table.items():
        if key not in schema:
            raise ConfigError(f"{source}: unknown key '{where}{key}'; {suggest(key, list(schema))}"
                              f"valid keys here: {', '.join(schema)}")
        expected = schema[key]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__
            raise ConfigError(f"{source}: '{where}{key}' must be a {names}, got {type(value).__name__} ({value!r})")
