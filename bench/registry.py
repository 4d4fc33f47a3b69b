"""One generic registry for models, datasets, metrics and suites.

Entries come from three places, all lazy so that ``bench list`` stays fast and a
broken optional plug-in cannot break the core:

1. decorator registration (``@models.register("pop")``),
2. lazy ``"module:attr"`` strings (``models.add_lazy("als", "baselines.x:ALS")``),
3. ``importlib.metadata`` entry points (group ``bench.models`` etc.), exactly how a
   third-party package plugs in -- the core never imports plug-ins by name.

Unknown names raise :class:`~bench.errors.UnknownNameError` with a "did you mean"
suggestion and the list of what exists.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from bench.errors import ConfigError, UnknownNameError

T = TypeVar("T")


def load_object(spec: str) -> object:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj: object = module
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def suggest(name: str, choices: list[str]) -> str:
    """Return ``"did you mean 'x'? "`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


class Registry(Generic[T]):
    """A named collection of objects of one kind, with lazy and entry-point entries."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._objects: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._origin: dict[str, str] = {}
        self._entry_points_loaded = False

    # -- registration ------------------------------------------------------
    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator."""

        def add(target: T) -> T:
            self._check_free(name)
            self._objects[name] = target
            self._origin[name] = getattr(target, "__module__", "builtin")
            return target

        return add(obj) if obj is not None else add

    def replace(self, name: str, obj: T, origin: str) -> None:
        """Register ``obj`` under ``name`` even if taken: a user's own dataset re-registered in a notebook."""
        self._load_entry_points()
        self._lazy.pop(name, None)
        self._objects[name] = obj
        self._origin[name] = origin

    def add_lazy(self, name: str, spec: str, origin: str = "builtin") -> None:
        """Register ``"module:attr"`` to be imported on first use."""
        self._check_free(name)
        self._lazy[name] = spec
        self._origin[name] = origin

    def _check_free(self, name: str) -> None:
        if name in self._objects or name in self._lazy:
            raise ConfigError(f"{self.kind} '{name}' is registered twice ({self._origin.get(name)})")

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._objects or ep.name in self._lazy:
                continue  # explicit registration wins over discovery
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            self._lazy[ep.name] = ep.value
            self._origin[ep.name] = f"entry point from {dist}"

    # -- lookup ------------------------------------------------------------
    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(set(self._objects) | set(self._lazy))

    def origin(self, name: str) -> str:
        self._load_entry_points()
        return self._origin.get(name, "")

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._load_entry_points()
        return name in self._objects or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """Return the object for ``name``, importing it if it is lazy."""
        self._load_entry_points()
        if name in self._objects:
            return self._objects[name]
        if name in self._lazy:
            spec = self._lazy[name]
            try:
                obj = load_object(spec)
            except ImportError as exc:
                raise ConfigError(
                    f"{self.kind} '{name}' ({spec}) cannot be imported: {exc}. "
                    f"Install the extra it needs (e.g. pip install -e '.[llm]')."
                ) from exc
            self._objects[name] = obj  # type: ignore[assignment]
            del self._lazy[name]
            return obj  # type: ignore[return-value]
        available = self.names()
        raise UnknownNameError(
            f"unknown {self.kind} '{name}'; {suggest(name, available)}"
            f"available: {', '.join(available) or '(none)'}"
        )


# The four registries. Builtins are added by the modules that define them.
models: Registry = Registry("model", "bench.models")
datasets: Registry = Registry("dataset", "bench.datasets")
metrics: Registry = Registry("metric", "bench.metrics")
suites: Registry = Registry("suite", "bench.suites")
