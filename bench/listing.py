"""What is registered, told to a newcomer: `bench list` and ``bench.list_models()`` etc.

Everything shown comes from what each entry declares about itself, never from a
table kept here: a model's ``family``, ``summary``, ``extra``, ``capabilities``
and ``default_params`` (:class:`bench.protocol.Recommender`); a dataset's card
(``datasets/*.toml``: title with its size, license, publisher URL); a metric's
record in :mod:`bench.metrics` (formula, direction, what it needs). The
functions return DataFrames (for notebooks); :func:`format_table` prints them
for the command line.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from bench import registry
from bench.errors import ConfigError
from bench.protocol import Capabilities

# capability flag -> what it lets a model serve, in the words of the report's segments
SERVES: dict[str, str] = {
    "cold_users": "cold users (k-shot)",
    "cold_users_zero_shot": "zero-shot users",
    "cold_items": "cold items",
    "update": "incremental update",
}


# -- models ---------------------------------------------------------------------------------------

def _model_class(name: str) -> tuple[type | None, str]:
    """The registered class, or None and why it cannot be imported (its missing extra named)."""
    try:
        return registry.models.get(name), ""
    except ConfigError as exc:
        cause = exc.__cause__
        if not isinstance(cause, ImportError):
            raise  # an unknown name: the registry's did-you-mean message
        missing = getattr(cause, "name", None)
        return None, f"cannot be imported: {cause or exc}" + (f" (module '{missing}')" if missing else "")


def _distribution_of(cls: type) -> str | None:
    """The installed distribution that ships ``cls`` (``bench-recsys`` for baselines/llm_models)."""
    top = cls.__module__.split(".")[0]
    names = metadata.packages_distributions().get(top) or []
    return names[0] if names else None


def missing_extra(cls: type) -> str:
    """``"pip install 'DIST[EXTRA]'"`` when a requirement of the model's declared extra is not installed, else ""."""
    extra = getattr(cls, "extra", "")
    if not extra:
        return ""
    dist = _distribution_of(cls)
    if dist is None:
        return ""
    requires = metadata.distribution(dist).requires or []
    wanted = [r for r in requires if re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", r)]
    for requirement in wanted:
        package = re.match(r"[A-Za-z0-9._-]+", requirement)
        if package is None:
            continue
        try:
            metadata.version(package.group(0))
        except metadata.PackageNotFoundError:
            return f"pip install '{dist}[{extra}]' (missing: {package.group(0)})"
    return ""


def _serves(capabilities: Capabilities) -> str:
    served = [text for flag, text in SERVES.items() if getattr(capabilities, flag, False)]
    return ", ".join(served) or "warm users only"


def list_models() -> pd.DataFrame:
    """One row per registered model: family, summary, what it serves, devices, determinism, extra."""
    rows = []
    for name in registry.models.names():
        cls, problem = _model_class(name)
        if cls is None:
            rows.append({"name": name, "family": "?", "summary": problem, "serves": "", "devices": "",
                         "deterministic": None, "needs": "", "origin": registry.models.origin(name)})
            continue
        caps: Capabilities = getattr(cls, "capabilities", Capabilities())
        rows.append({"name": name, "family": getattr(cls, "family", "") or "?",
                     "summary": _summary(cls),
                     "serves": _serves(caps), "devices": ", ".join(caps.devices),
                     "deterministic": bool(caps.deterministic), "needs": missing_extra(cls),
                     "origin": registry.models.origin(name)})
    return pd.DataFrame(rows, columns=["name", "family", "summary", "serves", "devices", "deterministic", "needs",
                                       "origin"])


def _summary(cls: type) -> str:
    """The class's own summary, else its own docstring's first line; an inherited summary describes the parent."""
    return (cls.__dict__.get("summary") or _first_line(cls.__dict__.get("__doc__"))
            or getattr(cls, "summary", "") or "")


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def _param_source(cls: type, param: str, value: Any) -> str:
    """The most basic class in the MRO whose own ``default_params`` sets ``param`` to this value."""
    for klass in reversed(cls.__mro__):
        own = klass.__dict__.get("default_params")
        if isinstance(own, dict) and param in own and own[param] == value:
            return f"{klass.__name__}.default_params ({klass.__module__})"
    return f"{cls.__name__}.default_params ({cls.__module__})"


def model_params(name: str) -> pd.DataFrame:
    """Every constructor parameter of a model with its default and where that default is set."""
    cls, problem = _model_class(name)
    if cls is None:
        raise ConfigError(f"model '{name}' {problem}")
    rows = []
    for param, value in dict(getattr(cls, "default_params", {}) or {}).items():
        rows.append({"parameter": param, "default": value, "type": type(value).__name__,
                     "source": _param_source(cls, param, value)})
    # seed and device are the harness's, set per cell; read from the constructor signature
    for owner in cls.__mro__:  # the first constructor that names them (subclasses often take **kwargs)
        init = owner.__dict__.get("__init__")
        keyword_only = [p for p in inspect.signature(init).parameters.values()
                        if p.kind is inspect.Parameter.KEYWORD_ONLY] if init is not None else []
        if keyword_only:
            rows += [{"parameter": p.name, "default": p.default, "type": type(p.default).__name__,
                      "source": f"{owner.__name__}.__init__ signature (set per cell by the suite)"}
                     for p in keyword_only if p.name not in {r["parameter"] for r in rows}]
            break
    return pd.DataFrame(rows, columns=["parameter", "default", "type", "source"])


def describe_model(name: str) -> str:
    """`bench list models NAME`: what the model is, what it serves, its parameters, its missing extra."""
    cls, problem = _model_class(name)
    if cls is None:
        raise ConfigError(f"model '{name}' {problem}")
    row = list_models().set_index("name").loc[name]
    caps: Capabilities = getattr(cls, "capabilities", Capabilities())
    lines = [f"{name}: {row['summary']}",
             f"  family:        {row['family']}",
             f"  serves:        warm users, {row['serves']}" if row["serves"] != "warm users only"
             else "  serves:        warm users only",
             f"  devices:       {row['devices']}",
             f"  deterministic: {'yes' if caps.deterministic else 'no: ' + (caps.nondeterminism or 'see its docs')}",
             f"  class:         {cls.__module__}:{cls.__qualname__} ({row['origin']})"]
    if row["needs"]:
        lines.append(f"  needs extra:   {row['needs']}")
    elif getattr(cls, "extra", ""):
        lines.append(f"  extra:         [{cls.extra}] (installed)")
    doc = inspect.cleandoc(cls.__doc__ or "")
    if doc:
        lines += ["", *("  " + line for line in doc.splitlines())]
    params = model_params(name)
    lines += ["", "  parameters (suite: [[models]] params = { ... }):"]
    width = max([len(p) for p in params["parameter"]] + [9])
    for r in params.itertuples():
        lines.append(f"    {r.parameter:{width}s} = {r.default!r:14s} {r.source}")
    return "\n".join(lines)


# -- datasets ---------------------------------------------------------------------------------------

def _split_title(title: str) -> tuple[str, str]:
    """Cards state the size in the title's parentheses: "MovieLens 100K (943 users, ...)"."""
    match = re.match(r"^(.*?)\s*\((.*)\)\s*$", title or "")
    return (match.group(1), match.group(2)) if match else (title or "", "")


def list_datasets() -> pd.DataFrame:
    """One row per registered dataset: title, size, license and source, from its card."""
    import bench.data  # noqa: F401  (registers the cards and the generator)

    rows = []
    for name in registry.datasets.names():
        loader = registry.datasets.get(name)
        origin = registry.datasets.origin(name)
        card = getattr(loader, "card", None)
        if card is not None:
            title, size = _split_title(card.title)
            rows.append({"name": name, "title": title, "size": size, "license": card.license,
                         "source": card.homepage or card.url, "citation": card.citation, "origin": origin})
        else:  # the generator or a plug-in without a card: what it says about itself
            params = getattr(loader, "param_names", ())
            rows.append({"name": name, "title": getattr(loader, "description", "") or _first_line(loader.__doc__),
                         "size": ("set by params: " + ", ".join(params)) if params else "",
                         "license": getattr(loader, "license", "generated" if name == "synthetic" else ""),
                         "source": getattr(loader, "source", "generated locally" if name == "synthetic" else ""),
                         "citation": getattr(loader, "citation", ""), "origin": origin})
    return pd.DataFrame(rows, columns=["name", "title", "size", "license", "source", "citation", "origin"])


# -- metrics and suites ------------------------------------------------------------------------------

def list_metrics() -> pd.DataFrame:
    """One row per registered metric (named variants included): direction, formula, what it needs."""
    from bench.metrics import get_metric

    rows = []
    for name in registry.metrics.names():
        m = get_metric(name)
        direction = {True: "higher is better", False: "lower is better"}.get(m.higher_is_better, "descriptive")
        rows.append({"name": name, "direction": direction,
                     "formula": m.description, "needs": m.needs, "per_user": m.per_user,
                     "variant_of": getattr(m, "variant_of", "")})
    return pd.DataFrame(rows, columns=["name", "direction", "formula", "needs", "per_user", "variant_of"])


def list_suites() -> pd.DataFrame:
    """Built-in and plug-in suites with their description and file."""
    from bench.config import builtin_suites

    rows = []
    for name, path in builtin_suites().items():
        description = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("description", "")
        rows.append({"name": name, "description": description, "path": str(path)})
    return pd.DataFrame(rows, columns=["name", "description", "path"])


def describe_dataset(name: str) -> str:
    """`bench list datasets NAME`: every field of its card."""
    registry.datasets.get(name)  # unknown names: did-you-mean error
    row = list_datasets().set_index("name").loc[name]
    return "\n".join([f"{name}: {row['title']}"] + [f"  {key + ':':10s} {row[key]}" for key in
                                                    ("size", "license", "source", "citation") if row[key]])


def describe_metric(name: str) -> str:
    """`bench list metrics NAME`: formula, direction, needs."""
    from bench.metrics import get_metric

    get_metric(name)  # unknown names: a clear error
    row = list_metrics().set_index("name").loc[name]
    return "\n".join([f"{name}: {row['formula']}", f"  direction: {row['direction']}",
                      f"  needs:     {row['needs']}" + (
                          " (labelled pairs of protocol = \"pointwise\"; one value per segment, CI by a bootstrap "
                          "over users)" if row["needs"] == "pairs" else
                          "" if row["per_user"] else " (one value per list set, no CI)")]
                     + ([f"  variant of: {row['variant_of']}"] if row["variant_of"] else []))


def describe_suite(name: str) -> str:
    """`bench list suites NAME`: its description and the suite file itself."""
    from bench.config import builtin_suites

    suites = builtin_suites()
    if name not in suites:
        registry.suites.get(name)  # unknown names: did-you-mean error
    return f"# {suites[name]}\n" + Path(suites[name]).read_text(encoding="utf-8")


def format_table(frame: pd.DataFrame, columns: list[str]) -> str:
    """Aligned plain-text columns for the terminal (no index, no truncation)."""
    if frame.empty:
        return "(none)"
    cells = [[_text(v) for v in row] for row in frame[columns].itertuples(index=False)]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _text(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


__all__ = ["list_models", "list_datasets", "list_metrics", "list_suites", "model_params", "describe_model",
           "describe_dataset", "describe_metric", "describe_suite", "format_table", "missing_extra"]
