"""Suite files: TOML parsed into one typed config object, validated with clear errors.

A suite is datasets x splits x models x seeds, plus evaluation settings. Every
unknown key, wrong type or unknown name is reported with the file, the key path
and a suggestion, as a :class:`~bench.errors.ConfigError` (exit code 2).

Example::

    name = "smoke"
    seeds = [0]
    [evaluation]
    k = [5, 10, 20]
    [[datasets]]
    name = "synthetic"
    params = { n_users = 300 }
    [[splits]]
    kind = "random"
    [[models]]
    name = "als"
    params = { factors = 32 }
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import itertools

from bench import metrics as metric_lib
from bench import registry
from bench.errors import ConfigError
from bench.protocol import Capabilities
from bench.registry import suggest
from bench.schema import check_keys as _check_keys
from bench.specs import (DEFAULT_SELECT_BY, DatasetSpec, EvaluationSpec, ExecutionSpec, ModelSpec,  # noqa: F401
                         SplitSpec, SuiteConfig, check_resources, parse_realtime, parse_systems,
                         parse_tracking)


# -- schema ------------------------------------------------------------------

_TOP = {"name": str, "description": str, "seeds": list, "device": str, "datasets": list, "splits": list,
        "models": list, "evaluation": dict, "execution": dict, "tracking": dict}
_EXECUTION = {"isolation": str, "timeout": (int, float), "memory_limit_gb": (int, float), "executor": str,
              "jobs": int, "ray_address": str, "max_retries": int, "exclusive_timing": bool,
              "occupancy_dir": str}
_DATASET = {"name": str, "params": dict, "implicit": dict, "source": dict}
_SPLIT = {"kind": str, "params": dict, "datasets": list, "train": str, "test": str, "valid": str}
_MODEL = {"name": str, "params": dict, "label": str, "grid": dict, "select_by": str, "grid_of": str,
          "splits": list, "max_test_users": int, "resources": dict, "paired_with": str,
          "refit": bool}
_EVAL = {"k": list, "metrics": list, "exclude_train": bool, "bootstrap": int, "batch_size": int,
         "max_test_users": int, "systems": dict, "realtime": dict, "protocol": str, "negatives_per": str,
         "extra_protocols": list, "retriever": dict, "n_candidates": int, "order_probes": int,
         "retrieved_splits": list, "retrieved_max_test_users": int, "label_threshold": (int, float)}
_DEVICES = ("cpu", "cuda", "auto")


def _require(table: dict[str, Any], key: str, where: str, source: str) -> None:
    if key not in table:
        raise ConfigError(f"{source}: '{where}' needs a '{key}' key")


def _check_entry(table: Any, section: str, i: int, schema: dict[str, Any], required: str, source: str) -> None:
    """One [[section]] entry: a table with known keys of the right types and its required key."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {section}[{i}] must be a table")
    _check_keys(table, schema, f"{section}[{i}].", source)
    _require(table, required, f"{section}[{i}]", source)


def _known(kind_registry: registry.Registry, name: str, where: str, source: str) -> None:
    if name not in kind_registry:
        names = kind_registry.names()
        raise ConfigError(f"{source}: {where} names unknown {kind_registry.kind} '{name}'; "
                          f"{suggest(name, names)}available: {', '.join(names)}")


def parse_suite(raw: dict[str, Any], source: str, base_dir: Path | None = None) -> SuiteConfig:
    """Validate a suite table and build the typed config.

    ``base_dir`` anchors relative data paths (the suite file's folder; default: the working directory).
    """
    from bench.splits import SPLITS, check_params

    _check_keys(raw, _TOP, "", source)
    _require(raw, "name", "the suite", source)
    for key in ("datasets", "splits", "models"):
        if not raw.get(key):
            raise ConfigError(f"{source}: the suite needs at least one entry in [[{key}]]")
    seeds = raw.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{source}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    device = raw.get("device", "cpu")
    if device not in _DEVICES:
        raise ConfigError(f"{source}: device = '{device}' is not valid; use one of {', '.join(_DEVICES)}")

    datasets = []
    for i, table in enumerate(raw["datasets"]):
        datasets.append(_parse_dataset(table, i, source, base_dir or Path.cwd()))

    splits = []
    dataset_names = {d.name for d in datasets}
    for i, table in enumerate(raw["splits"]):
        _check_entry(table, "splits", i, _SPLIT, "kind", source)
        kind = table["kind"]
        if kind not in SPLITS:
            raise ConfigError(f"{source}: splits[{i}].kind = '{kind}' is unknown; {suggest(kind, list(SPLITS))}"
                              f"available: {', '.join(SPLITS)}")
        params = dict(table.get("params", {}))
        files = {key: table[key] for key in ("train", "test", "valid") if key in table}
        if files and kind != "given":
            raise ConfigError(f"{source}: splits[{i}] has {', '.join(files)} files, which only kind = \"given\" takes")
        params.update(files)
        unknown = sorted(set(params) - set(SPLITS[kind][1]))
        if unknown:
            raise ConfigError(f"{source}: splits[{i}].params has unknown key(s) {unknown} for kind '{kind}'; "
                              f"valid: {', '.join(sorted(SPLITS[kind][1]))}")
        try:  # every parameter checked now, not after the cells before it have run
            params = check_params(kind, params, base_dir or Path.cwd())
        except ConfigError as exc:
            raise ConfigError(f"{source}: splits[{i}] (kind '{kind}'): {exc}") from None
        if kind == "given" and table.get("datasets") is None and len(datasets) > 1:
            raise ConfigError(f"{source}: splits[{i}] is a given split; say which dataset its files belong to "
                              f"with datasets = [\"NAME\"]")
        only = table.get("datasets")
        if only is not None:
            for name in only:
                if name not in dataset_names:
                    raise ConfigError(f"{source}: splits[{i}].datasets names '{name}', which is not in [[datasets]]")
        splits.append(SplitSpec(kind, params, only))

    models = []
    labels: set[str] = set()
    for i, table in enumerate(expand_capability_selectors(raw["models"], source)):
        _check_entry(table, "models", i, _MODEL, "name", source)
        _known(registry.models, table["name"], f"models[{i}].name", source)
        only_splits = table.get("splits")
        if only_splits is not None:
            kinds = [s.kind for s in splits]
            for kind in only_splits:
                if kind not in kinds:
                    raise ConfigError(f"{source}: models[{i}].splits names '{kind}', which is not a kind in "
                                      f"[[splits]] ({', '.join(kinds)})")
        base = ModelSpec(table["name"], dict(table.get("params", {})), table.get("label", ""),
                         grid_of=table.get("grid_of", ""), select_by=table.get("select_by", ""),
                         splits=only_splits, max_test_users=table.get("max_test_users"),
                         resources=check_resources(table.get("resources", {}), f"models[{i}].resources", source),
                         paired_with=table.get("paired_with", ""), refit=table.get("refit", True))
        if base.max_test_users is not None and base.max_test_users < 0:
            raise ConfigError(f"{source}: models[{i}].max_test_users must be >= 0 (0 = every test user), "
                              f"got {base.max_test_users}")
        for spec in expand_grid(base, table, f"models[{i}]", source):  # one spec per grid point
            if spec.label in labels:
                raise ConfigError(f"{source}: two models share the label '{spec.label}'; give one a distinct 'label'")
            labels.add(spec.label)
            _check_model_params(spec, f"models[{i}].params", source)
            models.append(spec)

    for i, spec in enumerate(models):  # after all labels are known: a pair may name a later model
        if spec.paired_with and (spec.paired_with not in labels or spec.paired_with == spec.label):
            raise ConfigError(f"{source}: model '{spec.label}': paired_with = '{spec.paired_with}' must name another "
                              f"model's label in this suite; labels: {', '.join(sorted(labels))}")

    ev_raw = raw.get("evaluation", {})
    _check_keys(ev_raw, _EVAL, "evaluation.", source)
    evaluation = EvaluationSpec(**{k: copy.deepcopy(v) for k, v in ev_raw.items()})
    evaluation.systems = parse_systems(evaluation.systems, source)
    evaluation.realtime = parse_realtime(evaluation.realtime, source)
    _check_systems_segments(evaluation.systems.segments, splits, source)
    if not evaluation.k or not all(isinstance(k, int) and k >= 1 for k in evaluation.k):
        raise ConfigError(f"{source}: evaluation.k must be a non-empty list of integers >= 1, got {evaluation.k!r}")
    _check_metrics_and_protocol(evaluation, source)
    kinds = [s.kind for s in splits]
    for kind in evaluation.retrieved_splits:
        if kind not in kinds:
            raise ConfigError(f"{source}: evaluation.retrieved_splits names '{kind}', which is not a kind in "
                              f"[[splits]] ({', '.join(kinds)})")
    _check_pointwise(evaluation, splits, models, source)
    _check_models_against_evaluation(models, evaluation, source)
    if evaluation.bootstrap < 0 or evaluation.batch_size < 0 or evaluation.max_test_users < 0:
        raise ConfigError(f"{source}: evaluation.bootstrap, batch_size and max_test_users must be >= 0")

    ex_raw = raw.get("execution", {})
    _check_keys(ex_raw, _EXECUTION, "execution.", source)
    execution = ExecutionSpec(**ex_raw)
    execution.validate(source)

    return SuiteConfig(name=raw["name"], description=raw.get("description", ""), seeds=list(seeds), device=device,
                       datasets=datasets, splits=splits, models=models, evaluation=evaluation, execution=execution,
                       tracking=parse_tracking(raw.get("tracking"), source), source=source)


def _check_systems_segments(wanted: list[str], splits: list[SplitSpec], source: str) -> None:
    """Each segment named in ``evaluation.systems.segments`` must be one some split of the suite produces."""
    from bench.splits import segment_names

    produced = {name for s in splits for name in segment_names(s.kind, s.params)}
    missing = [name for name in wanted if name not in produced]
    if missing:
        raise ConfigError(f"{source}: evaluation.systems.segments names {missing}, which no split of this suite "
                          f"produces; its splits' segments are {sorted(produced)}")


def _parse_dataset(table: Any, i: int, source: str, base_dir: Path) -> DatasetSpec:
    """One ``[[datasets]]`` entry: a registered name, a user's files, or a stored ``source`` (resume)."""
    from bench.data import canonical

    where = f"{source}: datasets[{i}]"
    if isinstance(table, dict) and (canonical.is_file_dataset(table) or table.get("source")):
        _require(table, "name", f"datasets[{i}]", source)
        name, stored = table["name"], dict(table.get("source", {}))
        if stored.get("in_memory"):  # a DataFrame registered by bench.data.frames.register in this process
            loader = registry.datasets.get(name) if name in registry.datasets else None
            digest = getattr(getattr(loader, "dataset", None), "info", {}).get("content_sha256")
            if digest != stored.get("content_sha256"):
                raise ConfigError(f"{where}: dataset '{name}' was an in-memory DataFrame; register the same data "
                                  f"again (bench.run(..., datasets=[ds])) to resume this run")
            return DatasetSpec(name, {}, dict(table.get("implicit", {})), source=stored)
        stored.pop("sha256", None)
        spec = canonical.parse_source({k: v for k, v in table.items() if k != "source"} | stored, base_dir, where)
        canonical.register_file_dataset(name, spec, where)
        return DatasetSpec(name, {}, dict(table.get("implicit", {})), source=spec)
    _check_entry(table, "datasets", i, _DATASET, "name", source)
    table = {k: v for k, v in table.items() if k != "source"}  # an empty stored source: a registered dataset
    _known(registry.datasets, table["name"], f"datasets[{i}].name", source)
    params = dict(table.get("params", {}))
    param_names = getattr(registry.datasets.get(table["name"]), "param_names", None)
    unknown = sorted(set(params) - set(param_names)) if param_names is not None else []
    if unknown:
        raise ConfigError(f"{where}.params has unknown key '{unknown[0]}' for dataset '{table['name']}'; "
                          f"{suggest(unknown[0], list(param_names))}valid: {', '.join(param_names) or '(none)'}")
    return DatasetSpec(table["name"], params, dict(table.get("implicit", {})))


def config_from_dict(stored: dict[str, Any], source: str) -> SuiteConfig:
    """Rebuild a config saved by :meth:`SuiteConfig.as_dict` (``config.json`` of a run), re-validated."""

    def drop_none(value: Any) -> Any:
        """Unset optional fields are stored as None or ""; leave them out so defaults apply."""
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None and v != ""}  # "" = default
        if isinstance(value, list):
            return [drop_none(v) for v in value]
        return value

    raw = drop_none({k: v for k, v in stored.items() if k != "source"})
    return parse_suite(raw, source, Path(source).parent)


def expand_capability_selectors(tables: list[Any], source: str) -> list[Any]:
    """``[[models]] capability = "update"`` stands for every registered model declaring it.

    Resolved against the registry when the suite is loaded, so a plug-in
    installed later joins suites like ``realtime`` without editing them. Models
    listed by name keep their parameters; plug-ins whose extra is not installed
    are left out.
    """
    named = {t.get("name") for t in tables if isinstance(t, dict) and "name" in t}
    out: list[Any] = []
    for i, table in enumerate(tables):
        if not (isinstance(table, dict) and "capability" in table):
            out.append(table)
            continue
        capability = table["capability"]
        if set(table) != {"capability"} or capability not in Capabilities.__dataclass_fields__ \
                or not isinstance(getattr(Capabilities(), capability), bool):
            raise ConfigError(f"{source}: models[{i}] selects by capability; it takes only "
                              f"capability = one of cold_users, cold_users_zero_shot, cold_items, update")
        for name in registry.models.names():
            if name in named:
                continue
            try:
                cls = registry.models.get(name)
            except ConfigError:
                continue  # optional extra not installed: cannot take part here
            if getattr(getattr(cls, "capabilities", None), capability, False):
                out.append({"name": name})
                named.add(name)
    return out


def _check_metrics_and_protocol(evaluation: EvaluationSpec, source: str) -> None:
    """Metric entries (``"map@10[denominator=test]"``) and the protocol (``"uni100"``) are checked before anything
    runs; a sampled protocol bounds the usable k by its number of negatives."""
    from bench.metrics import parse_metric_entry
    from bench.protocols import parse_protocol  # draws negatives too: imported only when a suite is checked

    k_max = max(evaluation.k)
    for entry in evaluation.metrics:
        if not isinstance(entry, str):
            raise ConfigError(f"{source}: evaluation.metrics entries must be strings, got {entry!r}")
        try:
            _name, own_k = parse_metric_entry(entry)
        except ConfigError as exc:
            raise ConfigError(f"{source}: evaluation.metrics: {exc}") from None
        if metric_lib.get_metric(_name).needs == "explanations":
            raise ConfigError(f"{source}: evaluation.metrics entry '{entry}' is not scored from top-k lists: models "
                              f"that explain write it themselves (llm-generate with explain_users > 0, llm-rerank "
                              f"with explain = true); remove it from evaluation.metrics")
        if metric_lib.get_metric(_name).needs == metric_lib.ORDER_PROBES:
            raise ConfigError(f"{source}: evaluation.metrics entry '{entry}' is computed by the order probes; "
                              f"remove it and set evaluation.order_probes = 3 (with protocol \"retrieved\")")
        if own_k is not None and own_k > k_max:
            raise ConfigError(f"{source}: evaluation.metrics entry '{entry}' asks for k={own_k}, beyond the largest "
                              f"evaluation.k ({k_max}); add {own_k} to evaluation.k")
    from bench import retrieved

    def check_params(name: str, params: dict[str, Any], where: str) -> None:
        _check_model_params(ModelSpec(name, dict(params)), where, source)

    retrieved.check_evaluation(evaluation, source, check_params)
    if evaluation.protocol.strip().lower() == "retrieved":
        return  # its k bound (n_candidates >= max k) was checked with it
    protocol = parse_protocol(evaluation.protocol, negatives_per=evaluation.negatives_per,
                              exclude_train=evaluation.exclude_train, source=source,
                              label_threshold=evaluation.label_threshold)
    if protocol.sampled and k_max > protocol.min_candidates():
        raise ConfigError(f"{source}: evaluation.k goes up to {k_max}, but protocol '{protocol.name}' may leave a user "
                          f"only {protocol.min_candidates()} candidates; use k <= {protocol.min_candidates()} "
                          f"or more negatives")


def _check_pointwise(evaluation: EvaluationSpec, splits: list[SplitSpec], models: list[ModelSpec],
                     source: str) -> None:
    """``protocol = "pointwise"`` scores labelled pairs: only pair metrics, warm splits, no grids; and the
    pair metrics (auc, gauc, logloss) only under it. Checked before anything runs."""
    from bench.pointwise import WARM_SPLITS

    pointwise = str(evaluation.protocol).strip().lower() == "pointwise"
    pair_entries = [e for e in evaluation.metrics if metric_lib.parse_metric_entry(e)[0] in metric_lib.PAIR_METRICS]
    if not pointwise:
        if pair_entries:
            raise ConfigError(f"{source}: evaluation.metrics lists {', '.join(pair_entries)}, which score labelled "
                              f"(user, item) pairs; set evaluation.protocol = \"pointwise\" or drop them")
        return
    others = [e for e in evaluation.metrics if e not in pair_entries]
    if others:
        raise ConfigError(f"{source}: evaluation.protocol = \"pointwise\" scores labelled pairs, so evaluation.metrics "
                          f"can only hold {', '.join(metric_lib.PAIR_METRICS)}; drop {', '.join(others)} "
                          f"(or leave metrics empty for all three)")
    for spec in splits:
        if spec.kind not in WARM_SPLITS:
            raise ConfigError(f"{source}: split kind '{spec.kind}' has cold users or cold items, which the pointwise "
                              f"protocol does not score; use one of {', '.join(WARM_SPLITS)}")
    for spec in models:
        if spec.grid_of:
            raise ConfigError(f"{source}: model '{spec.grid_of}' has a grid, whose winner is picked on a ranking "
                              f"metric; under the pointwise protocol list one [[models]] entry per setting instead")


def _check_models_against_evaluation(models: list[ModelSpec], evaluation: EvaluationSpec, source: str) -> None:
    """A model may refuse a protocol its settings cannot serve (``check_evaluation(params, evaluation)``, e.g. a
    listwise LLM prompt under the pointwise protocol): refused here, before any cell runs, not mid-suite."""
    for spec in models:
        cls = registry.models.get(spec.name)
        check = getattr(cls, "check_evaluation", None)
        if callable(check):
            try:
                check({**(getattr(cls, "default_params", None) or {}), **spec.params}, evaluation)
            except ConfigError as exc:
                raise ConfigError(f"{source}: model '{spec.label}': {exc}") from None


def _check_model_params(spec: ModelSpec, where: str, source: str) -> None:
    """Unknown parameter names are caught before anything runs, not mid-suite."""
    cls = registry.models.get(spec.name)
    custom = getattr(cls, "check_params", None)
    if callable(custom):  # adapters whose parameters depend on a value (cornac: the named model's signature)
        try:
            custom(spec.params)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {where}: {exc}") from None
        return
    defaults = getattr(cls, "default_params", None)
    if defaults is None:
        return
    unknown = sorted(set(spec.params) - set(defaults))
    if unknown:
        bad = unknown[0]
        raise ConfigError(f"{source}: {where} has unknown parameter '{bad}' for model '{spec.name}'; "
                          f"{suggest(bad, list(defaults))}valid: {', '.join(sorted(defaults)) or '(none)'}")
    check_values = getattr(cls, "check_param_values", None)
    if callable(check_values):  # value rules checked before any cell runs (llm_models: explanation budgets)
        try:
            check_values({**defaults, **spec.params})
        except ConfigError as exc:
            raise ConfigError(f"{source}: {where}: {exc}") from None


# -- grids: one model per point (bench.grid runs and selects them) ----------------

def parse_select_by(text: str, where: str, source: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ("ndcg", 10), with a clear error otherwise."""
    name, _, k = text.partition("@")
    if name not in registry.metrics or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"{source}: {where}.select_by = '{text}' must be METRIC@K with a registered per-user "
                          f"metric, e.g. 'ndcg@10'; metrics: {', '.join(registry.metrics.names())}")
    metric = metric_lib.get_metric(name)
    if not metric.per_user:
        raise ConfigError(f"{source}: {where}.select_by = '{text}': '{name}' is not a per-user metric")
    return name, int(k)


def expand_grid(spec: ModelSpec, table: dict[str, Any], where: str, source: str) -> list[ModelSpec]:
    """One :class:`ModelSpec` per grid point (or ``[spec]`` when the table has no grid)."""
    grid = table.get("grid")
    if not grid:
        # refit = true is the default (stored configs write it for every model); only false asks for a grid
        for key in ("select_by", "refit"):
            if key in table and table[key] is not True and not spec.grid_of:
                raise ConfigError(f"{source}: {where}.{key} needs a {where}.grid to select from")
        return [spec]
    select_by = table.get("select_by", DEFAULT_SELECT_BY)
    parse_select_by(select_by, where, source)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: {where}.grid.{key} must be a non-empty list of values, got {values!r}")
        if key in spec.params:
            raise ConfigError(f"{source}: '{key}' is both in {where}.params and {where}.grid; keep it in one")
    keys = sorted(grid)
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        label = f"{spec.label}[{','.join(f'{k}={v}' for k, v in point.items())}]"
        points.append(ModelSpec(spec.name, spec.params | point, label, grid_of=spec.label, select_by=select_by,
                                splits=spec.splits, max_test_users=spec.max_test_users,
                                resources=dict(spec.resources), refit=spec.refit))
    return points


# -- loading -----------------------------------------------------------------

def builtin_suites() -> dict[str, Path]:
    """Suites shipped as package data, plus any registered through entry points."""
    return {name: Path(str(registry.suites.get(name))) for name in registry.suites.names()}


for _path in sorted(Path(str(resources.files("bench.suites"))).glob("*.toml")):
    registry.suites.register(_path.stem, _path)


def load_suite(name_or_path: str) -> SuiteConfig:
    """Load a built-in suite by name or a suite file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"suite file {path} does not exist")
        source = str(path)
    else:
        known = builtin_suites()
        if name_or_path not in known:
            raise ConfigError(f"unknown suite '{name_or_path}'; {suggest(name_or_path, list(known))}"
                              f"available: {', '.join(known)} (or pass a path to a .toml file)")
        path = known[name_or_path]
        source = f"builtin suite '{name_or_path}' ({path})"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot be read ({exc})") from exc
    return parse_suite(raw, source, path.parent)
