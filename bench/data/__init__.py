"""Datasets: cards, verified fetching, parsers, the synthetic generator and the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from bench import registry
from bench.data.cards import Card, DataOptions, cards_dir, fetch, read_card
from bench.data.dataset import Dataset, ImplicitConfig, build_dataset
from bench.data.parsers import PARSERS
from bench.data import synthetic
from bench.errors import ConfigError

__all__ = ["Dataset", "DataOptions", "ImplicitConfig", "load_dataset", "CardLoader", "SyntheticLoader",
           "dataset_from_frame", "register"]


class CardLoader:
    """Loads a dataset described by a card: fetch + verify files, parse, convert."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.description = card.title
        self.param_names: tuple[str, ...] = ()
        self.implicit_defaults = card.implicit_defaults

    def __call__(self, options: DataOptions, implicit: ImplicitConfig, **params: Any) -> Dataset:
        if params:
            raise ConfigError(f"dataset '{self.card.name}' takes no parameters, got {sorted(params)}")
        if self.card.parser not in PARSERS:
            raise ConfigError(f"dataset card {self.card.path}: unknown parser '{self.card.parser}'")
        paths = fetch(self.card, options)
        interactions, items, users = PARSERS[self.card.parser](paths)
        info = self.card.info | {"source": {name: str(p) for name, p in paths.items()}}
        return build_dataset(self.card.name, interactions, items, implicit, users, info)


class SyntheticLoader:
    """The deterministic generator of :mod:`bench.data.synthetic`."""

    description = "Deterministic synthetic data (power-law popularity, categories, timestamps)"
    param_names = ("n_users", "n_items", "n_interactions", "n_categories", "alpha", "preference", "seed")
    implicit_defaults: dict[str, Any] = {}

    def __call__(self, options: DataOptions, implicit: ImplicitConfig, **params: Any) -> Dataset:
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise ConfigError(f"dataset 'synthetic': unknown parameter(s) {unknown}; "
                              f"valid: {', '.join(self.param_names)}")
        interactions, items, users = synthetic.generate(**params)
        info = {"title": self.description, "license": "generated", "citation": "", "params": params}
        return build_dataset("synthetic", interactions, items, implicit, users, info)


def _register_builtins() -> None:
    for path in sorted(cards_dir().glob("*.toml")):
        card = read_card(path)
        registry.datasets.register(card.name, CardLoader(card))
    registry.datasets.register("synthetic", SyntheticLoader())


_register_builtins()


def implicit_config(name: str, overrides: dict[str, Any] | None) -> ImplicitConfig:
    """The dataset's card defaults for implicit conversion, updated by ``overrides``."""
    loader = registry.datasets.get(name)
    merged = dict(getattr(loader, "implicit_defaults", {})) | dict(overrides or {})
    unknown = sorted(set(merged) - {"min_value", "weight"})
    if unknown:
        raise ConfigError(f"dataset '{name}': unknown implicit option(s) {unknown}; valid: min_value, weight")
    return ImplicitConfig(**merged)


def dataset_from_frame(*args: Any, **kwargs: Any) -> Dataset:
    """See :func:`bench.data.frames.dataset_from_frame`."""
    from bench.data.frames import dataset_from_frame as build

    return build(*args, **kwargs)


def register(ds: Dataset) -> Any:
    """See :func:`bench.data.frames.register`."""
    from bench.data.frames import register as put

    return put(ds)


def load_dataset(name: str, options: DataOptions | None = None, implicit: dict[str, Any] | None = None,
                 **params: Any) -> Dataset:
    """Load a registered dataset by name."""
    loader: Callable[..., Dataset] = registry.datasets.get(name)
    return loader(options or DataOptions(), implicit_config(name, implicit), **params)
