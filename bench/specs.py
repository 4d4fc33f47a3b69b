"""Plain, validated specs: what a suite file says, as dataclasses. The configuration layer.

``bench.config`` parses a suite file (TOML) into these; the runtime modules (runner,
execution, grid, systems, realtime) read them and never import ``bench.config``, so
configuration flows down only. Each sub-table that a runtime module owns
(``[evaluation.systems]``, ``[evaluation.realtime]``, ``[execution]``) is checked here,
next to its dataclass, with messages that name the key and the fix; checks that need
the registries (model, dataset and metric names, grids) are in ``bench.config``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.errors import ConfigError
from bench.schema import check_keys

DEFAULT_SELECT_BY = "ndcg@10"  # the validation metric a grid selects by unless its table names one


# -- [execution] ---------------------------------------------------------------------------

ISOLATION_MODES = ("process", "none")
EXECUTORS = ("local", "ray")
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory_gb")


@dataclass
class ExecutionSpec:
    """How cells run: not part of a cell's identity, but part of the run key (``bench.runner.run_key``).

    Isolation changes what timings include (a shared process keeps model files and encodings
    loaded across cells), so runs in different modes get different folders and never mix.
    """

    isolation: str = "process"  # "process": a child per cell; "none": in this process (debugging)
    timeout: float = 0.0  # seconds per cell; 0 = no limit (needs isolation = "process")
    memory_limit_gb: float = 0.0  # address space a cell may add to what it inherits; 0 = none (needs "process")
    executor: str = "local"  # "local" (this machine) or "ray" (one Ray task per cell)
    jobs: int = 0  # local: cells at once (0 = 1); ray: most tasks in flight (0 = as many as the cluster takes)
    ray_address: str = ""  # "" = ray.init()'s default (RAY_ADDRESS, a `ray start` cluster, else a new local Ray);
    # "auto" = the running cluster; or "HOST:PORT"
    max_retries: int = 0  # re-runs of a cell whose process or worker died (never of an exception or timeout)
    exclusive_timing: bool = False  # run each cell's systems scenarios alone on its node
    occupancy_dir: str = ""  # node-local folder of running-cell markers; "" = <tmp>/bench-node-<uid>

    def validate(self, source: str) -> None:
        if self.isolation not in ISOLATION_MODES:
            raise ConfigError(f"{source}: execution.isolation = '{self.isolation}' is not valid; "
                              f"use one of {', '.join(ISOLATION_MODES)}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"{source}: execution.executor = '{self.executor}' is not valid; "
                              f"use one of {', '.join(EXECUTORS)}")
        if self.timeout < 0 or self.memory_limit_gb < 0:
            raise ConfigError(f"{source}: execution.timeout and memory_limit_gb must be >= 0")
        if self.jobs < 0 or self.max_retries < 0:
            raise ConfigError(f"{source}: execution.jobs and max_retries must be >= 0")
        if self.isolation == "none" and (self.timeout or self.memory_limit_gb or self.jobs > 1):
            raise ConfigError(f"{source}: execution.timeout / memory_limit_gb / jobs > 1 need isolation = \"process\"")
        if self.ray_address and self.executor != "ray":
            raise ConfigError(f"{source}: execution.ray_address = '{self.ray_address}' needs executor = \"ray\" "
                              f"(bench run --executor ray)")


def check_resources(table: Any, where: str, source: str) -> dict[str, float]:
    """``[[models]] resources = { num_cpus = 2, num_gpus = 1, memory_gb = 8 }``: what one cell asks Ray for."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {where} must be a table like {{ num_cpus = 2, num_gpus = 1 }}")
    out: dict[str, float] = {}
    for key, value in table.items():
        if key not in RESOURCE_KEYS:
            raise ConfigError(f"{source}: {where} has unknown key '{key}'; valid: {', '.join(RESOURCE_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (key == "num_cpus" and value == 0):
            raise ConfigError(f"{source}: {where}.{key} must be a number {'> 0' if key == 'num_cpus' else '>= 0'}, "
                              f"got {value!r}")
        out[key] = value
    return out


# -- [tracking] ----------------------------------------------------------------------------

# `[tracking] mlflow = "default"` / a bare `--mlflow`: MLflow resolves the store itself (MLFLOW_TRACKING_URI, ...)
DEFAULT_TRACKING_URI = "default"
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass
class TrackingSpec:
    """``[tracking]`` of a suite: where bench.tracking logs the run, or nowhere (``mlflow = ""``).

    Not part of a run's identity: the same suite logged elsewhere reuses its finished cells."""

    mlflow: str = ""


def parse_tracking(raw: Any, source: str) -> TrackingSpec:
    """Check ``[tracking]`` before anything runs: a table whose ``mlflow`` is a tracking URI, a path or "default"."""
    if raw is None or raw == {}:
        return TrackingSpec()
    if isinstance(raw, TrackingSpec):
        raw = {"mlflow": raw.mlflow}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [tracking] must be a table, e.g. [tracking] mlflow = \"file:./mlruns\"")
    unknown = sorted(set(raw) - {"mlflow"})
    if unknown:
        raise ConfigError(f"{source}: tracking has unknown key(s) {unknown}; valid: mlflow")
    return TrackingSpec(check_tracking_uri(raw.get("mlflow", ""), f"{source}: tracking.mlflow"))


def check_tracking_uri(uri: Any, where: str) -> str:
    """A tracking URI (``file:./mlruns``, ``http://host:5000``), a local path, or "default"."""
    if not isinstance(uri, str):
        raise ConfigError(f"{where} must be a string (a tracking URI such as \"file:./mlruns\" or "
                          f"\"http://host:5000\"), got {uri!r}")
    uri = uri.strip()
    if uri and uri != DEFAULT_TRACKING_URI and not _URI_SCHEME.match(uri) and not re.match(r"^[\w./~-]+$", uri):
        raise ConfigError(f"{where} = {uri!r} is neither a URI (scheme:...) nor a plain path; use e.g. "
                          f"\"file:./mlruns\", \"http://host:5000\" or \"default\" (MLflow's own setting)")
    return uri


# -- [evaluation.systems] --------------------------------------------------------------------

@dataclass
class SystemsSpec:
    """The ``[evaluation.systems]`` table of a suite file."""

    enabled: bool = True
    warmup: int = 5  # single-stream requests run and discarded before measuring (>= 1: the first call is cold)
    latency_requests: int = 100  # single-stream requests measured
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32, 256, 0])  # offline; 0 = all users at once
    server_rate: float = 0.0  # Poisson arrivals per second; 0 = server scenario off
    server_requests: int = 300
    server_p99_ms: float = 0.0  # > 0: search the highest rate meeting this p99
    max_seconds: float = 5.0  # budget per scenario (per batch size, per server rate)
    # segments whose serving is measured ("all", "shots=10", "cold-items"); empty = every segment. A k-shot
    # curve has five segments of one model: measuring one of them keeps a quick suite quick
    segments: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_SYSTEMS_KEYS: dict[str, type | tuple[type, ...]] = {
    "enabled": bool, "warmup": int, "latency_requests": int, "batch_sizes": list, "server_rate": (int, float),
    "server_requests": int, "server_p99_ms": (int, float), "max_seconds": (int, float), "segments": list}
SEGMENT_NAME = re.compile(r"^(all|cold-items|shots=\d+)$")  # bench.splits names its segments so


# Fewest timed requests a percentile is reported from (bench.systems): the q-th percentile needs at least one
# request beyond it (n >= 1 / (1 - q): 100 for p99, 20 for p95, 10 for p90), and no percentile, not even the
# median, is read off fewer than 10 requests. Below that the row says "too few requests (n = ...)".
MIN_REQUESTS: dict[str, int] = {"p50": 10, "p90": 10, "p95": 20, "p99": 100}


def parse_systems(raw: dict[str, Any] | SystemsSpec, source: str) -> SystemsSpec:
    """Validate ``[evaluation.systems]``; every mistake names the key and the fix."""
    if isinstance(raw, SystemsSpec):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: 'evaluation.systems' must be a table, got {type(raw).__name__}")
    check_keys(raw, _SYSTEMS_KEYS, "evaluation.systems.", source)
    spec = SystemsSpec(**raw)
    if spec.warmup < 1:
        raise ConfigError(f"{source}: evaluation.systems.warmup = {spec.warmup}: at least one warm-up request is "
                          f"needed (the first call of a model pays one-off costs: lazy loading, allocation, JIT); "
                          f"set warmup = 1 or more")
    if spec.latency_requests < 0 or spec.server_requests < 0:
        raise ConfigError(f"{source}: evaluation.systems latency_requests and server_requests must be >= 0")
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in spec.batch_sizes):
        raise ConfigError(f"{source}: evaluation.systems.batch_sizes must be integers >= 0 (0 = all users), "
                          f"got {spec.batch_sizes!r}")
    if spec.server_rate < 0 or spec.server_p99_ms < 0 or spec.max_seconds <= 0:
        raise ConfigError(f"{source}: evaluation.systems server_rate and server_p99_ms must be >= 0 "
                          f"and max_seconds > 0")
    bad = [name for name in spec.segments if not isinstance(name, str) or not SEGMENT_NAME.match(name)]
    if bad:
        raise ConfigError(f"{source}: evaluation.systems.segments: {bad!r} name no segment; segments are "
                          f"'all' (random/temporal/leave-last-out splits), 'shots=N' (user_coldstart) and "
                          f"'cold-items' (item_coldstart)")
    if spec.server_p99_ms > 0 and spec.server_requests < MIN_REQUESTS["p99"]:
        raise ConfigError(f"{source}: evaluation.systems.server_p99_ms needs server_requests >= "
                          f"{MIN_REQUESTS['p99']} for a meaningful p99 (see bench.specs.MIN_REQUESTS)")
    return spec


# -- [evaluation.realtime] -------------------------------------------------------------------

POLICIES = ("static", "incremental", "retrain")


@dataclass
class PolicySpec:
    name: str
    every: int = 0  # events between updates; 0 for static

    @property
    def label(self) -> str:
        return self.name if self.name == "static" else f"{self.name}/every={self.every}"


def _default_policies() -> list[PolicySpec]:
    return [PolicySpec("static"), PolicySpec("incremental", 500), PolicySpec("retrain", 5000)]


@dataclass
class RealtimeSpec:
    """The ``[evaluation.realtime]`` table of a suite file."""

    enabled: bool = False
    k: int = 10
    block: int = 500  # events scored per batched recommend call
    max_events: int = 0  # replay at most this many events after the cut; 0 = all
    policies: list[PolicySpec] = field(default_factory=_default_policies)
    update_cost_users: int = 50
    update_cost_items: int = 50

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_KEYS: dict[str, type] = {"enabled": bool, "k": int, "block": int, "max_events": int, "policies": list,
                          "update_cost_users": int, "update_cost_items": int}


def parse_realtime(raw: dict[str, Any] | RealtimeSpec, source: str) -> RealtimeSpec:
    """Validate ``[evaluation.realtime]``; mistakes name the key and the fix."""
    if isinstance(raw, RealtimeSpec):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: 'evaluation.realtime' must be a table, got {type(raw).__name__}")
    check_keys(raw, _KEYS, "evaluation.realtime.", source)
    values = dict(raw)
    policies = []
    for i, table in enumerate(values.pop("policies", None) or [asdict(p) for p in _default_policies()]):
        where = f"{source}: evaluation.realtime.policies[{i}]"
        if not isinstance(table, dict) or set(table) - {"name", "every"} or "name" not in table:
            raise ConfigError(f"{where} must be a table like {{ name = \"incremental\", every = 500 }}")
        if table["name"] not in POLICIES:
            raise ConfigError(f"{where}: policy '{table['name']}' is unknown; use one of {', '.join(POLICIES)}")
        every = table.get("every", 0)
        if table["name"] != "static" and (not isinstance(every, int) or every <= 0):
            raise ConfigError(f"{where}: policy '{table['name']}' needs 'every' = events between updates (> 0)")
        policies.append(PolicySpec(table["name"], int(every) if table["name"] != "static" else 0))
    spec = RealtimeSpec(**values, policies=policies)
    if spec.k < 1 or spec.block < 1 or spec.max_events < 0 or spec.update_cost_users < 0 or spec.update_cost_items < 0:
        raise ConfigError(f"{source}: evaluation.realtime needs k >= 1, block >= 1 and non-negative "
                          f"max_events / update_cost_users / update_cost_items")
    for p in policies:
        if p.every % spec.block:
            raise ConfigError(f"{source}: evaluation.realtime policy '{p.label}': every = {p.every} must be a "
                              f"multiple of block = {spec.block} (the model only changes between blocks)")
    labels = [p.label for p in policies]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{source}: evaluation.realtime.policies lists the same policy twice: {labels}")
    return spec


# -- the suite ------------------------------------------------------------------------------

@dataclass
class DatasetSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    implicit: dict[str, Any] = field(default_factory=dict)
    # a user's own data (bench.data.canonical / frames): absolute file paths, column mapping, duplicates
    # policy and the files' sha256, or {"in_memory": True, "content_sha256": ...}; {} for registered loaders
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class SplitSpec:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    datasets: list[str] | None = None  # restrict to these datasets; None = all

    @property
    def label(self) -> str:
        return self.kind


@dataclass
class ModelSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    grid_of: str = ""  # set on grid points: the label of the grid they came from (bench.grid)
    select_by: str = ""  # grid points: validation metric that picks the winner, e.g. "ndcg@10"
    # grid points: True = each point is refitted on all of train for its test rows (the default); False = the
    # model tested is the one fitted on train minus the validation carve, the model that was selected (RecBole's
    # early-stopping protocol: the 80% model of an 80/10/10 split is the one reported)
    refit: bool = True
    splits: list[str] | None = None  # run only on splits of these kinds; None = every split
    # score this model on a seeded sample of at most this many test users per segment (None or 0 = the
    # suite's evaluation.max_test_users, which it can only shrink). Samples are prefixes of one seeded
    # permutation: every model sampled at this size sees the same users, a subset of any larger sample.
    max_test_users: int | None = None
    # what one cell of this model asks a Ray cluster for (num_cpus, num_gpus, memory_gb); how cells run,
    # not what they compute, so it is left out of the cell's identity (bench.runner.cell_id)
    resources: dict[str, float] = field(default_factory=dict)
    # the label of another model of the suite: the report shows this model's paired difference against it
    # (per-user values on the users both scored, CI and p-value); how results are read, not what a cell
    # computes, so it is left out of the cell's identity too
    paired_with: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    def select_metric(self) -> tuple[str, int]:
        """The grid's selection metric as (name, k); ``select_by`` was checked by bench.config."""
        name, _, k = (self.select_by or DEFAULT_SELECT_BY).partition("@")
        return name, int(k)


@dataclass
class EvaluationSpec:
    k: list[int] = field(default_factory=lambda: [5, 10, 20])
    metrics: list[str] = field(default_factory=list)  # empty = every registered default
    exclude_train: bool = True
    bootstrap: int = 1000
    batch_size: int = 0  # users per recommend() call; 0 = all at once
    max_test_users: int = 0  # 0 = all; else a seeded sample, identical for every model
    # "full" ranking, "uniN" / "popN" sampled negatives, or "pointwise" labelled pairs (bench.protocols); part of
    # every cell's identity
    protocol: str = "full"
    negatives_per: str = "test_item"  # sampled protocols: N per "test_item" (RecBole) or per "user" (Elliot)
    # more protocols each cell is scored under after the main one (same fit, rows with their own protocol
    # label and segments "<segment>@<label>"), e.g. ["retrieved"]
    extra_protocols: list[str] = field(default_factory=list)
    # protocol "retrieved" (bench.retrieved): the model proposing every user's candidates and how many
    retriever: dict[str, Any] = field(default_factory=dict)  # { name = "als", params = {...} }
    n_candidates: int = 0
    order_probes: int = 0  # >= 2: score the retrieved candidates in this many orders (bench.retrieved)
    retrieved_splits: list[str] = field(default_factory=list)  # split kinds scored under "retrieved"; [] = all
    # under "retrieved", every model (and the retriever's row) scores at most this many users per segment
    retrieved_max_test_users: int = 0
    label_threshold: float = 4.0  # protocol = "pointwise": a test pair is liked when its rating is >= this
    # [evaluation.systems] / [evaluation.realtime]: latency, throughput, memory; freshness replay
    systems: SystemsSpec = field(default_factory=SystemsSpec)
    realtime: RealtimeSpec = field(default_factory=RealtimeSpec)


@dataclass
class SuiteConfig:
    name: str
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    datasets: list[DatasetSpec] = field(default_factory=list)
    splits: list[SplitSpec] = field(default_factory=list)
    models: list[ModelSpec] = field(default_factory=list)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)  # [tracking]: log the run to MLflow
    source: str = ""  # where the config came from (file path or "builtin:NAME")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
