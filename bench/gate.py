"""CI regression gating: compare a run with a committed baseline, check by check.

A pull request should fail when it makes a recommender worse or slower, and
pass when it only moves numbers within noise. Three ideas make that work:

* **Direction-aware checks.** Each metric's direction comes from the metric
  registry (``higher_is_better``), so a rise in ``arp`` (lower is better) is a
  drop just like a fall in ``ndcg``.
* **Significance on per-user values.** An accuracy drop fails only when it is
  larger than the rule's tolerance AND the paired test on the same users says
  it is real (family-wise corrected over all checks). Seeds are not extra
  users: with several seeds, one check covers them all, each user's values
  averaged over its seeds first (``bench.stats``, the report's rule too). Baselines therefore keep
  the per-user values of every gated metric, not just the means.
* **Machine-independent timings.** A model's time is divided by a reference
  measured in the same run, and that ratio is compared with the same ratio in
  the baseline, so a slower CI machine does not fail the gate but a model that
  got slower does. The default reference is the run's calibration workload
  (``bench.systems.calibrate``: fixed numpy work timed at the start and end of
  every run, recorded in provenance.json), which is always long enough to
  time; a model label as reference (``als / pop``) is still accepted.

A comparison that cannot be made (missing baseline, model, metric, segment,
mismatched suite or split fingerprints) is a usage problem, never a pass:
:class:`GateError`, exit code 2. A regression is exit code 1.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from bench.errors import BenchError
from bench.registry import suggest
from bench.rundir import RunDir, atomic_write_bytes, atomic_write_json, dumps, runs_under

BASELINE_SCHEMA = "bench-gate-baseline"
BASELINE_VERSION = 1
TIME_SUFFIXES = {"_seconds": 1.0, "_ms": 1e-3, "_us": 1e-6}


class GateError(BenchError):
    """The comparison cannot be made; the gate neither passes nor fails (exit 2)."""


# -- rules ---------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    """An allowed change: relative to the baseline value ("5%") or absolute (0.01)."""

    amount: float
    relative: bool

    @classmethod
    def parse(cls, raw: Any, where: str) -> "Tolerance":
        if isinstance(raw, str) and raw.strip().endswith("%"):
            try:
                amount = float(raw.strip()[:-1]) / 100.0
            except ValueError:
                amount = -1.0
            relative = True
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            amount, relative = float(raw), False
        else:
            amount, relative = -1.0, False
        if not math.isfinite(amount) or amount < 0:
            raise GateError(f"{where} = {raw!r} is not a tolerance; write a percentage string like \"5%\" "
                            f"(relative to the baseline) or a non-negative number like 0.01 (absolute)")
        return cls(amount, relative)

    def allowed(self, baseline: float) -> float:
        return self.amount * abs(baseline) if self.relative else self.amount

    def __str__(self) -> str:
        return f"{self.amount * 100:g}%" if self.relative else f"{self.amount:g}"


@dataclass(frozen=True)
class AccuracyRule:
    """Gate ``metric`` (``name@k``): a drop beyond ``max_drop`` that is also significant fails."""

    metric: str
    max_drop: Tolerance
    alpha: float
    test: str  # "t" (paired t-test) or "bootstrap" (paired bootstrap of the differences)
    models: tuple[str, ...] | None = None
    segments: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    gate: bool = True

    @property
    def metric_name(self) -> str:
        return self.metric.rsplit("@", 1)[0]

    @property
    def k(self) -> int:
        return int(self.metric.rsplit("@", 1)[1])

    def matches(self, dataset: str, model: str, segment: str) -> bool:
        return ((self.models is None or model in self.models) and (self.segments is None or segment in self.segments)
                and (self.datasets is None or dataset in self.datasets))


CALIBRATION = "calibration"  # the reference of a timing rule that means the run's calibration workload


@dataclass(frozen=True)
class TimingRule:
    """Gate a duration (``fit_seconds``...) as a ratio to ``reference`` in the same run: the calibration
    workload (:data:`CALIBRATION`, the default) or a model label's same duration."""

    metric: str
    reference: str
    max_increase: Tolerance  # relative growth of the ratio
    floor_seconds: float  # durations below this are timer noise; they count as the floor
    models: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    gate: bool = True

    def matches(self, dataset: str, model: str) -> bool:
        return (self.models is None or model in self.models) and (self.datasets is None or dataset in self.datasets)


@dataclass
class Rules:
    accuracy: list[AccuracyRule]
    timing: list[TimingRule]
    correction: str  # "holm", "bonferroni" or "none": family-wise control over all accuracy checks
    resamples: int  # bootstrap resamples for the "bootstrap" test and for every CI of a difference
    source: str

    @property
    def accuracy_metrics(self) -> list[str]:
        return sorted({r.metric for r in self.accuracy})

    @property
    def timing_metrics(self) -> list[str]:
        return sorted({r.metric for r in self.timing})


DEFAULT_RULES_NAME = "default.toml"
_TOP_KEYS = {"alpha": (int, float), "test": str, "correction": str, "resamples": int, "max_drop": (str, int, float),
             "accuracy": list, "timing": list}
_ACCURACY_KEYS = {"metric": str, "max_drop": (str, int, float), "alpha": (int, float), "test": str, "models": list,
                  "segments": list, "datasets": list, "gate": bool}
_TIMING_KEYS = {"metric": str, "reference": str, "max_increase": (str, int, float), "floor_seconds": (int, float),
                "models": list, "datasets": list, "gate": bool}
TESTS = ("t", "bootstrap")
CORRECTIONS = ("holm", "bonferroni", "none")


def default_rules_path() -> Path:
    """The rules shipped with bench (package data, never read from the working directory)."""
    return Path(str(resources.files("bench.gate_rules") / DEFAULT_RULES_NAME))


def _check_table(table: Any, schema: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise GateError(f"{source}: {where} must be a table")
    for key, value in table.items():
        if key not in schema:
            raise GateError(f"{source}: unknown key '{key}' in {where}; {suggest(key, list(schema))}"
                            f"valid keys: {', '.join(schema)}")
        expected = schema[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise GateError(f"{source}: '{key}' in {where} has the wrong type ({type(value).__name__}: {value!r})")
    return table


def _names(table: dict[str, Any], key: str) -> tuple[str, ...] | None:
    return tuple(str(v) for v in table[key]) if key in table else None


def _metric_at_k(raw: str, where: str, source: str) -> str:
    from bench.metrics import get_metric

    name, sep, k = raw.rpartition("@")
    if not sep or not k.isdigit() or int(k) < 1:
        raise GateError(f"{source}: {where} metric = '{raw}' needs a cut-off, like 'ndcg@10'")
    try:
        get_metric(name)
    except BenchError as exc:
        raise GateError(f"{source}: {where}: {exc}") from None
    return f"{name}@{int(k)}"


def parse_rules(raw: dict[str, Any], source: str) -> Rules:
    """Validate a rules table (see ``bench/gate_rules/default.toml`` for the format)."""
    _check_table(raw, _TOP_KEYS, "the rules file", source)
    alpha = float(raw.get("alpha", 0.05))
    test = raw.get("test", "t")
    correction = raw.get("correction", "holm")
    resamples = int(raw.get("resamples", 2000))
    default_drop = raw.get("max_drop", "5%")
    if correction not in CORRECTIONS:
        raise GateError(f"{source}: correction = '{correction}' is unknown; use one of {', '.join(CORRECTIONS)}")
    if resamples < 100:
        raise GateError(f"{source}: resamples = {resamples} is too few for a p-value; use at least 100")
    accuracy = []
    for i, table in enumerate(raw.get("accuracy", [])):
        where = f"[[accuracy]] #{i + 1}"
        _check_table(table, _ACCURACY_KEYS, where, source)
        if "metric" not in table:
            raise GateError(f"{source}: {where} needs a 'metric' key, like metric = \"ndcg@10\"")
        rule_alpha = float(table.get("alpha", alpha))
        rule_test = table.get("test", test)
        if not 0 < rule_alpha < 1:
            raise GateError(f"{source}: {where} alpha = {rule_alpha} must lie between 0 and 1")
        if rule_test not in TESTS:
            raise GateError(f"{source}: {where} test = '{rule_test}' is unknown; use one of {', '.join(TESTS)}")
        accuracy.append(AccuracyRule(
            metric=_metric_at_k(table["metric"], where, source),
            max_drop=Tolerance.parse(table.get("max_drop", default_drop), f"{source}: {where} max_drop"),
            alpha=rule_alpha, test=rule_test, models=_names(table, "models"), segments=_names(table, "segments"),
            datasets=_names(table, "datasets"), gate=table.get("gate", True)))
    timing = []
    for i, table in enumerate(raw.get("timing", [])):
        where = f"[[timing]] #{i + 1}"
        _check_table(table, _TIMING_KEYS, where, source)
        if "metric" not in table:
            raise GateError(f"{source}: {where} needs a 'metric' key")
        if not any(table["metric"].endswith(s) for s in TIME_SUFFIXES):
            raise GateError(f"{source}: {where} metric = '{table['metric']}' is not a duration; timing rules take "
                            f"metrics ending in {', '.join(TIME_SUFFIXES)} (e.g. fit_seconds, recommend_seconds)")
        floor = float(table.get("floor_seconds", 0.05))
        if floor < 0:
            raise GateError(f"{source}: {where} floor_seconds must be >= 0")
        timing.append(TimingRule(
            metric=table["metric"], reference=table.get("reference", CALIBRATION),
            max_increase=Tolerance.parse(table.get("max_increase", "200%"), f"{source}: {where} max_increase"),
            floor_seconds=floor, models=_names(table, "models"), datasets=_names(table, "datasets"),
            gate=table.get("gate", True)))
    if not accuracy and not timing:
        raise GateError(f"{source}: no [[accuracy]] or [[timing]] rules; a gate that checks nothing would always pass")
    return Rules(accuracy, timing, correction, resamples, source)


def load_rules(path: Path | None = None) -> Rules:
    """Rules from a TOML file, or bench's default rules."""
    path = default_rules_path() if path is None else Path(path)
    if not path.is_file():
        raise GateError(f"rules file {path} does not exist; pass --rules with a TOML file "
                        f"(copy {default_rules_path()} to start)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise GateError(f"rules file {path}: not valid TOML ({exc})") from exc
    return parse_rules(raw, str(path))


# -- snapshots: what a run (or a baseline) says about each cell -----------------

GroupKey = tuple[str, str, str, int]  # dataset, split kind, split params (JSON), seed
CellKey = tuple[str, str, str, int, str]  # group + model label


@dataclass
class SegmentValues:
    """One scored segment of a cell: its users and the gated metrics' values."""

    status: str  # "ok" or "unsupported"
    users: np.ndarray | None = None
    per_user: dict[str, np.ndarray] = field(default_factory=dict)  # metric@k -> per-user values
    means: dict[str, float] = field(default_factory=dict)  # metric@k -> reported value (also aggregates)
    # metric@k whose positions the model did not rank itself (status "first_stage"): never compared as its own
    first_stage: set[str] = field(default_factory=set)


@dataclass
class CellState:
    model_name: str
    params: str
    status: str  # "ok" or "failed"
    error: str = ""
    segments: dict[str, SegmentValues] = field(default_factory=dict)
    systems: dict[str, dict[str, float]] = field(default_factory=dict)  # segment -> metric -> value


@dataclass
class Snapshot:
    """The comparable content of a run: split fingerprints, cells, gated values."""

    suite: str
    run_id: str
    provenance: dict[str, Any]
    fingerprints: dict[GroupKey, str]
    cells: dict[CellKey, CellState]
    metrics: set[str]  # metric@k columns that have per-user values (or aggregates) here
    source: str  # file or folder, for messages


def group_label(key: GroupKey, all_keys: Iterable[GroupKey] = ()) -> str:
    dataset, split, params, seed = key
    label = f"{dataset}/{split}/seed={seed}"
    if sum(1 for k in all_keys if (k[0], k[1], k[3]) == (dataset, split, seed)) > 1:
        label += f" {params}"
    return label


def snapshot_from_run(run_dir: Path, metrics: Iterable[str]) -> Snapshot:
    """Read a run folder: results.json rows, plus per-user values of ``metrics`` from each cell."""
    from bench.results import load_results

    run_dir = Path(run_dir)
    folder = RunDir(run_dir)
    if not folder.has_results():
        raise GateError(f"--current {run_dir}: no results.json there; pass the run folder `bench run` printed "
                        f"(reports/runs/<run-id>)")
    frame, provenance = load_results(run_dir)
    if frame.empty:
        raise GateError(f"--current {run_dir}: the run has no results yet")
    wanted = sorted(set(metrics))
    fingerprints: dict[GroupKey, str] = {}
    cells: dict[CellKey, CellState] = {}
    found: set[str] = set()
    for row in frame.itertuples(index=False):
        group: GroupKey = (row.dataset, row.split, row.split_params, int(row.seed))
        seen = fingerprints.setdefault(group, row.split_fingerprint)
        if seen != row.split_fingerprint:
            raise GateError(f"{run_dir}: two split fingerprints for {group_label(group)} in one run")
        key: CellKey = (*group, row.model)
        cell = cells.setdefault(key, CellState(row.model_name, row.params, "ok", segments={}, systems={}))
        if row.status == "failed":
            cell.status, cell.error = "failed", _cell_error(folder, row.cell_id)
            continue
        if row.k == 0:
            cell.systems.setdefault(row.segment, {})[row.metric] = float(row.value)
            continue
        segment = cell.segments.get(row.segment)
        scored = row.status in ("ok", "first_stage")
        if segment is None:
            segment = cell.segments[row.segment] = SegmentValues("ok" if scored else row.status)
            if scored:
                _read_per_user(folder, row.cell_id, row.segment, wanted, segment)
        column = f"{row.metric}@{row.k}"
        if row.status == "first_stage" and column in wanted:
            segment.first_stage.add(column)
            segment.per_user.pop(column, None)
            found.add(column)
        if row.status == "ok" and column in wanted:
            segment.means[column] = float(row.value)
            found.add(column)
    suite = str(frame["suite"].iloc[0])
    return Snapshot(suite, str(frame["run_id"].iloc[0]), provenance, fingerprints, cells, found, str(run_dir))


def _cell_error(folder: RunDir, cell_id: str) -> str:
    try:
        info = folder.read_cell(cell_id)
    except (OSError, ValueError):
        return "failed"
    return "failed" if info is None else str(info.get("error", "failed"))


def _read_per_user(folder: RunDir, cell_id: str, segment: str, wanted: list[str], into: SegmentValues) -> None:
    stored = folder.read_per_user(cell_id, segment)
    if stored is None:
        return
    into.users = stored.users
    for name in wanted:
        column = stored.column(name)
        if column is not None and np.isfinite(column).all():  # aggregate-only metrics are NaN per user: mean only
            into.per_user[name] = column


# -- baseline files --------------------------------------------------------------

def baseline_payload(snapshot: Snapshot, rules: Rules, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a committed baseline holds: enough to re-run every check without the original run."""
    failed = [f"{group_label(k[:4])} {k[4]}: {c.error}" for k, c in snapshot.cells.items() if c.status == "failed"]
    if failed:
        raise GateError(f"{snapshot.source} has failed cells; a baseline must be a healthy run. Failed: "
                        + "; ".join(failed))
    cells = []
    for key, cell in sorted(snapshot.cells.items()):
        dataset, split, params, seed, model = key
        segments = {}
        for name, seg in sorted(cell.segments.items()):
            entry: dict[str, Any] = {"status": seg.status}
            if seg.status == "ok":
                entry["users"] = None if seg.users is None else seg.users.tolist()
                entry["means"] = dict(sorted(seg.means.items()))
                entry["per_user"] = {m: v.tolist() for m, v in sorted(seg.per_user.items())}
                if seg.first_stage:
                    entry["first_stage"] = sorted(seg.first_stage)
            segments[name] = entry
        cells.append({"dataset": dataset, "split": split, "split_params": params, "seed": seed, "model": model,
                      "model_name": cell.model_name, "params": cell.params, "status": cell.status,
                      "segments": segments, "systems": cell.systems})
    return {
        "schema": BASELINE_SCHEMA, "schema_version": BASELINE_VERSION, "suite": snapshot.suite,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source_run": snapshot.run_id,
        "rules": rules.source, "metrics": sorted(snapshot.metrics), "provenance": snapshot.provenance,
        "config": config or {},
        "splits": [{"dataset": d, "split": s, "split_params": p, "seed": seed, "split_fingerprint": fp}
                   for (d, s, p, seed), fp in sorted(snapshot.fingerprints.items())],
        "cells": cells,
    }


def _compact_json(payload: dict[str, Any]) -> str:
    """Indented JSON with number lists on one line: readable diffs, a file of reasonable size."""
    number = r"-?[0-9][0-9.eE+-]*"
    return re.sub(rf"\[\s*({number}(?:,\s*{number})*)\s*\]",
                  lambda m: "[" + ", ".join(part.strip() for part in m.group(1).split(",")) + "]", dumps(payload))


def write_baseline(run_dir: Path, path: Path, rules: Rules) -> dict[str, Any]:
    """Write ``path`` from ``run_dir`` (``bench gate --update-baseline``); returns the payload."""
    needed = set(rules.accuracy_metrics)
    snapshot = snapshot_from_run(run_dir, needed)
    missing = sorted(needed - snapshot.metrics)
    if missing:
        raise GateError(f"{run_dir} has no values for {', '.join(missing)} (named by {rules.source}); "
                        f"run a suite that scores them or change the rules")
    config = RunDir(run_dir).read_config() or {}
    payload = baseline_payload(snapshot, rules, config)
    atomic_write_bytes(Path(path), (_compact_json(payload) + "\n").encode("utf-8"))
    Path(path).chmod(0o644)  # a file to commit and share, not a private temporary
    return payload


def load_baseline(path: Path) -> Snapshot:
    """A committed baseline file, as a :class:`Snapshot`."""
    path = Path(path)
    if not path.is_file():
        raise GateError(f"baseline {path} does not exist; a missing baseline is never a pass. Create it "
                        f"deliberately with: bench gate --update-baseline --current RUN_DIR --baseline {path}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GateError(f"baseline {path} cannot be read as JSON ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("schema") != BASELINE_SCHEMA:
        raise GateError(f"baseline {path} is not a bench gate baseline (no \"schema\": \"{BASELINE_SCHEMA}\"); "
                        f"write one with bench gate --update-baseline")
    if payload.get("schema_version") != BASELINE_VERSION:
        raise GateError(f"baseline {path} has schema_version {payload.get('schema_version')}, this bench reads "
                        f"{BASELINE_VERSION}; re-create it with bench gate --update-baseline")
    fingerprints = {(s["dataset"], s["split"], s["split_params"], int(s["seed"])): s["split_fingerprint"]
                    for s in payload["splits"]}
    cells: dict[CellKey, CellState] = {}
    for c in payload["cells"]:
        segments = {}
        for name, seg in c["segments"].items():
            users = seg.get("users")
            segments[name] = SegmentValues(
                seg["status"], None if users is None else np.asarray(users, dtype=np.int64),
                {m: np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64)
                 for m, vals in seg.get("per_user", {}).items()},
                {m: (np.nan if v is None else float(v)) for m, v in seg.get("means", {}).items()},
                set(seg.get("first_stage", [])))
        systems = {s: {m: (np.nan if v is None else float(v)) for m, v in vals.items()}
                   for s, vals in c.get("systems", {}).items()}
        cells[(c["dataset"], c["split"], c["split_params"], int(c["seed"]), c["model"])] = CellState(
            c["model_name"], c["params"], c["status"], c.get("error", ""), segments, systems)
    return Snapshot(payload["suite"], payload.get("source_run", ""), payload.get("provenance", {}), fingerprints,
                    cells, set(payload.get("metrics", [])), str(path))


# -- checks ----------------------------------------------------------------------

@dataclass
class Check:
    """One comparison and its verdict; a row of the gate's table."""

    kind: str  # "accuracy", "timing" or "status"
    where: str  # dataset/split/seed
    segment: str
    model: str
    metric: str
    baseline: float
    current: float
    delta: float  # current - baseline (timing: of the ratios)
    allowed: str  # the tolerance, in words
    p_value: float = float("nan")  # raw, two-sided
    p_adjusted: float = float("nan")  # after the family-wise correction
    ci_low: float = float("nan")  # CI of mean(current - baseline) per user
    ci_high: float = float("nan")
    verdict: str = "pass"  # "pass", "fail", or "skip" (shown, never counted as a pass)
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    tolerance: Tolerance | None = field(default=None, repr=False)  # accuracy checks: the rule's max_drop

    @property
    def failed(self) -> bool:
        return self.verdict == "fail"


@dataclass
class GateResult:
    checks: list[Check]
    notes: list[str]
    baseline: Snapshot
    current: Snapshot
    rules: Rules

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def skipped(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "skip"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    @property
    def verdict(self) -> str:
        return "fail" if self.failures else "pass"


def _direction(metric: str) -> bool:
    """True when higher is better, from the metric registry."""
    from bench.metrics import get_metric

    return get_metric(metric.rsplit("@", 1)[0]).higher_is_better


def _paired(current: np.ndarray, baseline: np.ndarray, test: str, resamples: int,
            confidence: float) -> tuple[float, float, float]:
    """p-value of mean(current - baseline) = 0, and a bootstrap CI of that mean difference."""
    from bench.stats import bootstrap_ci, paired_bootstrap_pvalue, paired_ttest_pvalues

    diff = current - baseline
    if test == "bootstrap":
        p = 1.0 if not diff.any() else paired_bootstrap_pvalue(current, baseline, n_resamples=resamples)
    else:
        p = float(paired_ttest_pvalues(current, baseline)[0])
    low, high = bootstrap_ci(diff, n_resamples=resamples, confidence=confidence)
    return p, float(low[0]), float(high[0])


def _resolve(rules: list[Any], *match_args: Any) -> Any:
    """The last rule that matches wins, so a specific rule below a general one refines it."""
    chosen = None
    for rule in rules:
        if rule.matches(*match_args):
            chosen = rule
    return chosen


def _seeds_label(dataset: str, split: str, params: str, seeds: list[int], all_keys: Iterable[GroupKey]) -> str:
    """``synthetic/random/seed=0``, or ``.../seeds=0,1`` for a check over several seeds."""
    label = group_label((dataset, split, params, seeds[0]), all_keys)
    return label if len(seeds) == 1 else label.replace(f"/seed={seeds[0]}", "/seeds=" + ",".join(map(str, seeds)), 1)


def accuracy_checks(baseline: Snapshot, current: Snapshot, rules: Rules, problems: list[str]) -> list[Check]:
    """One check per dataset/split x model x segment x metric, over the users of every seed.

    Seeds are not extra users (the rule of ``bench.stats``, shared with the report): the values of
    all seeds are paired by (seed, user), averaged per user over its seeds, and tested over users.
    """
    checks: list[Check] = []
    all_groups = list(baseline.fingerprints)
    for metric in rules.accuracy_metrics:
        candidates = [r for r in rules.accuracy if r.metric == metric]
        higher_is_better = _direction(metric)
        if metric not in baseline.metrics:
            problems.append(f"metric {metric} is missing in the baseline {baseline.source} (it has "
                            f"{', '.join(sorted(baseline.metrics)) or 'none'}); re-create the baseline with "
                            f"--update-baseline --rules {rules.source}")
            continue
        if metric not in current.metrics:
            problems.append(f"metric {metric} is missing in the current run {current.source}; does the suite "
                            f"still score it (evaluation.k, evaluation.metrics)?")
            continue
        pooled: dict[tuple[str, str, str, str, str], list[tuple[int, SegmentValues, SegmentValues]]] = {}
        pooled_rule: dict[tuple[str, str, str, str, str], AccuracyRule] = {}
        for key, base_cell in sorted(baseline.cells.items()):
            group, model = key[:4], key[4]
            where = group_label(group, all_groups)
            cur_cell = current.cells.get(key)
            if cur_cell is None or base_cell.status != "ok":
                continue  # missing cells are reported once, by compare()
            for seg_name, base_seg in sorted(base_cell.segments.items()):
                rule = _resolve(candidates, group[0], model, seg_name)
                if rule is None or not rule.gate or base_seg.status != "ok":
                    continue
                if cur_cell.status == "failed":
                    continue  # one status check per cell, added by compare()
                cur_seg = cur_cell.segments.get(seg_name)
                if cur_seg is None or cur_seg.status != "ok":
                    checks.append(Check("status", where, seg_name, model, metric, base_seg.means.get(metric, np.nan),
                                        np.nan, np.nan, "-", verdict="fail",
                                        note="segment scored in the baseline but not in the current run "
                                             f"({'unsupported' if cur_seg else 'absent'})"))
                    continue
                if metric in base_seg.first_stage or metric in cur_seg.first_stage:
                    checks.append(Check("status", where, seg_name, model, metric, np.nan, np.nan, np.nan, "-",
                                        verdict="skip", note="ranked by the first stage, not the model (it "
                                        "ranked fewer than k positions): not compared as the model's"))
                    continue
                pkey = (group[0], group[1], group[2], model, seg_name)
                pooled.setdefault(pkey, []).append((group[3], base_seg, cur_seg))
                pooled_rule[pkey] = rule
        for pkey, entries in pooled.items():
            dataset, split, params, model, seg_name = pkey
            where = _seeds_label(dataset, split, params, [seed for seed, _, _ in entries], all_groups)
            checks.append(_accuracy_check(pooled_rule[pkey], where, seg_name, model, metric, higher_is_better,
                                          entries, rules.resamples, problems))
    return checks


def _accuracy_check(rule: AccuracyRule, where: str, segment: str, model: str, metric: str, higher_is_better: bool,
                    entries: list[tuple[int, SegmentValues, SegmentValues]], resamples: int,
                    problems: list[str]) -> Check:
    """The check of one metric over the seeds in ``entries`` (seed, baseline segment, current segment)."""
    gaps = sorted({side for _, base, cur in entries for side, seg in (("baseline", base), ("current run", cur))
                   if metric not in seg.means})
    if gaps:  # e.g. ild on a data set without categories: undefined, not zero
        problems.append(f"{metric} is missing for {model} on {where} {segment} in the {' and the '.join(gaps)}; "
                        f"exempt it with a rule (gate = false) or gate another metric")
    b = float(np.mean([base.means.get(metric, np.nan) for _, base, _ in entries]))
    c = float(np.mean([cur.means.get(metric, np.nan) for _, _, cur in entries]))
    check = Check("accuracy", where, segment, model, metric, b, c, c - b, f"-{rule.max_drop}",
                  tolerance=rule.max_drop,
                  detail={"higher_is_better": higher_is_better, "alpha": rule.alpha, "test": rule.test,
                          "seeds": [seed for seed, _, _ in entries]})
    if all(metric in base.per_user and metric in cur.per_user for _, base, cur in entries):
        for _, base, cur in entries:
            if base.users is None or cur.users is None or not np.array_equal(base.users, cur.users):
                problems.append(f"{where} {segment} {model}: the test users differ between baseline and current "
                                f"run although the split fingerprint matches (was evaluation.max_test_users or the "
                                f"model's own max_test_users changed?); a paired comparison needs the same users")
                return check
        from bench.stats import paired_user_means, seed_user_keys

        keys = np.concatenate([seed_user_keys(np.full(len(base.users), seed), base.users)
                               for seed, base, _ in entries])
        _, base_values, cur_values = paired_user_means(
            keys, np.concatenate([base.per_user[metric] for _, base, _ in entries]),
            keys, np.concatenate([cur.per_user[metric] for _, _, cur in entries]))
        if len(entries) > 1:  # the value tested is the mean over users of their seed means
            check.baseline, check.current = float(base_values.mean()), float(cur_values.mean())
            check.delta = check.current - check.baseline
        check.p_value, check.ci_low, check.ci_high = _paired(cur_values, base_values, rule.test, resamples,
                                                             1.0 - rule.alpha)
        check.detail["n"] = int(len(cur_values))
    return check


def _finish_accuracy(check: Check) -> None:
    """Verdict: a drop beyond tolerance that is significant (after correction) fails."""
    higher = check.detail["higher_is_better"]
    drop = (check.baseline - check.current) if higher else (check.current - check.baseline)
    allowed = check.tolerance.allowed(check.baseline)
    check.detail.update(drop=drop, allowed_drop=allowed)
    alpha = check.detail["alpha"]
    p = check.p_adjusted if math.isfinite(check.p_adjusted) else check.p_value
    significant = math.isfinite(p) and p < alpha
    if not math.isfinite(drop):
        check.verdict, check.note = "fail", "value missing (NaN)"
    elif drop <= allowed:
        check.verdict = "pass"
        check.note = "better (significant)" if drop < 0 and significant else "within tolerance"
    elif not math.isfinite(check.p_value):
        check.verdict, check.note = "fail", "drop beyond tolerance (no per-user values: tolerance only)"
    elif significant:
        check.verdict, check.note = "fail", "drop beyond tolerance and significant"
    else:
        check.verdict, check.note = "pass", "drop beyond tolerance but not significant (noise)"


def _adjust(checks: list[Check], correction: str) -> None:
    from bench.stats import holm_adjust

    tested = [c for c in checks if c.kind == "accuracy" and math.isfinite(c.p_value)]
    p = np.array([c.p_value for c in tested])
    if not len(p):
        return
    if correction == "holm":
        adjusted = holm_adjust(p)
    elif correction == "bonferroni":
        adjusted = np.minimum(p * len(p), 1.0)
    else:
        adjusted = p
    for check, value in zip(tested, adjusted):
        check.p_adjusted = float(value)


def _cell_time(cell: CellState, metric: str) -> float | None:
    """A cell's total of a duration over its segments, in seconds (None if never measured)."""
    scale = next(f for s, f in TIME_SUFFIXES.items() if metric.endswith(s))
    values = [seg[metric] for seg in cell.systems.values() if metric in seg and math.isfinite(seg[metric])]
    return sum(values) * scale if values else None


def calibration_seconds(snapshot: Snapshot, metric: str = "fit_seconds") -> float | None:
    """The run's calibration time (``provenance.json["calibration"]``), None if not recorded.

    CPU-time metrics (``*_cpu_seconds``) divide by the calibration's CPU time, wall times by its wall time.
    """
    key = "cpu_seconds" if metric.endswith("_cpu_seconds") else "seconds"
    value = (snapshot.provenance.get("calibration") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def _cell_calibration(cell: CellState, metric: str) -> float | None:
    """The calibration timed around this cell's fit (rows ``calibration_seconds`` / ``_cpu_seconds``)."""
    name = "calibration_cpu_seconds" if metric.endswith("_cpu_seconds") else "calibration_seconds"
    value = cell.systems.get("fit", {}).get(name)
    return float(value) if value is not None and math.isfinite(value) and value > 0 else None


def _serves_nothing(cell: CellState) -> bool:
    """Every accuracy segment of the cell is unsupported (the runner then skips the fit)."""
    return bool(cell.segments) and all(seg.status == "unsupported" for seg in cell.segments.values())


def timing_checks(baseline: Snapshot, current: Snapshot, rules: Rules, problems: list[str],
                  notes: list[str]) -> list[Check]:
    """One ratio check per model and dataset/split/seed; timings nobody measured on either side are skipped."""
    checks: list[Check] = []
    all_groups = list(baseline.fingerprints)
    if any(r.reference == CALIBRATION and r.gate for r in rules.timing):
        for snap, side in ((baseline, "baseline"), (current, "current run")):
            measured = [calibration_seconds(snap, r.metric) is not None
                        or any(_cell_calibration(c, r.metric) for c in snap.cells.values())
                        for r in rules.timing if r.reference == CALIBRATION]
            if not all(measured):
                problems.append(f"the {side} {snap.source} has no calibration timing (provenance.json "
                                f"\"calibration\"), the reference of timing rules; "
                                + ("re-create it with --update-baseline from a run of this bench"
                                   if side == "baseline" else "run the suite with this version of bench"))
    for metric in rules.timing_metrics:
        for snap, side in ((baseline, "baseline"), (current, "current run")):
            if not any(metric in seg for cell in snap.cells.values() for seg in cell.systems.values()):
                problems.append(f"timing metric {metric} is in no row of the {side} {snap.source}; check the name "
                                f"in {rules.source} (durations the runner records: fit_seconds, recommend_seconds)")
        candidates = [r for r in rules.timing if r.metric == metric]
        for key, base_cell in sorted(baseline.cells.items()):
            group, model = key[:4], key[4]
            rule = _resolve(candidates, group[0], model)
            cur_cell = current.cells.get(key)
            if rule is None or not rule.gate or model == rule.reference or cur_cell is None:
                continue
            if base_cell.status != "ok" or cur_cell.status != "ok":
                continue  # a failed cell is a status check of its own
            if _serves_nothing(base_cell) or _serves_nothing(cur_cell):
                continue  # not fitted where it serves no segment (bench.runner): its fit time means nothing
            where = group_label(group, all_groups)
            own = {"baseline": _cell_time(base_cell, metric), "current": _cell_time(cur_cell, metric)}
            if own["baseline"] is None and own["current"] is None:
                continue  # the model serves no segment that records this duration, on either side
            if rule.reference == CALIBRATION:  # the cell's own bracket of its fit, else the run's
                ref = {"baseline": _cell_calibration(base_cell, metric) or calibration_seconds(baseline, metric),
                       "current": _cell_calibration(cur_cell, metric) or calibration_seconds(current, metric)}
                if None in ref.values():
                    continue  # reported once above
            else:
                refs = {"baseline": baseline.cells.get((*group, rule.reference)),
                        "current": current.cells.get((*group, rule.reference))}
                missing_ref = [side for side, cell in refs.items() if cell is None]
                if missing_ref:
                    problems.append(f"timing reference model '{rule.reference}' is missing on {where} in the "
                                    f"{' and '.join(missing_ref)}; timing ratios need it in the same run")
                    continue
                ref = {side: _cell_time(cell, metric) for side, cell in refs.items()}
                if ref["baseline"] is None and ref["current"] is None:
                    checks.append(Check("timing", where, "total", model, f"{metric} / {rule.reference}", np.nan,
                                        np.nan, np.nan, "-", verdict="skip",
                                        note=f"reference {rule.reference} records no {metric} here (it serves "
                                             f"none of these segments)"))
                    continue
            gaps = [f"{who} in the {side}" for side in ("baseline", "current")
                    for who, value in ((model, own[side]), (rule.reference, ref[side])) if value is None]
            if gaps:
                problems.append(f"timing metric {metric} on {where} is missing for {', '.join(gaps)}")
                continue
            checks.append(_timing_check(rule, where, model, metric, (own["baseline"], ref["baseline"]),
                                        (own["current"], ref["current"])))
    return checks


def _timing_check(rule: TimingRule, where: str, model: str, metric: str, base: tuple[float, float],
                  cur: tuple[float, float]) -> Check:
    """Ratio model/reference now vs in the baseline; the model's durations under the floor count as the floor.

    A reference model under the floor cannot cancel the machine's speed (its
    timing is noise), so such a check is skipped, visibly, rather than passed.
    The calibration reference is a fixed workload sized to be timed well: no
    floor applies to it.
    """
    floor = rule.floor_seconds
    if rule.reference == CALIBRATION:
        # The calibration is a measurement, never noise: no floor for it. The model's floor is in the baseline's
        # seconds and moves with the calibration, so a duration under it on both sides compares equal (+0%)
        # however the calibration moved.
        ref_floor, floor_c = 0.0, floor * cur[1] / base[1]
    else:
        ref_floor, floor_c = floor, floor
    ratio_b = max(base[0], floor) / max(base[1], ref_floor)
    ratio_c = max(cur[0], floor_c) / max(cur[1], ref_floor)
    growth = ratio_c / ratio_b - 1.0
    limit = rule.max_increase.amount  # "200%" and 2.0 both mean: the ratio may triple
    check = Check("timing", where, "total", model, f"{metric} / {rule.reference}", ratio_b, ratio_c,
                  ratio_c - ratio_b, f"+{limit:.0%}",
                  detail={"baseline_seconds": base[0], "baseline_reference_seconds": base[1],
                          "current_seconds": cur[0], "current_reference_seconds": cur[1], "growth": growth,
                          "floor_seconds": floor, "reference": rule.reference})
    if min(base[1], cur[1]) < ref_floor:
        check.verdict = "skip"
        check.note = (f"reference {rule.reference} took {min(base[1], cur[1]) * 1e3:.1f} ms, under the "
                      f"{floor * 1e3:g} ms floor: a ratio to it would be timer noise")
    elif growth > limit:
        check.verdict = "fail"
        check.note = f"{growth:+.0%} relative to {rule.reference} (limit +{limit:.0%})"
    else:
        check.note = f"{growth:+.0%} relative to {rule.reference}"
    return check


def compare(baseline: Snapshot, current: Snapshot, rules: Rules) -> GateResult:
    """Every check of ``rules`` on ``current`` against ``baseline``; usage problems raise :class:`GateError`."""
    problems: list[str] = []
    notes: list[str] = []
    if baseline.suite != current.suite:
        raise GateError(f"suite mismatch: the baseline {baseline.source} is of suite '{baseline.suite}', the run "
                        f"{current.source} of suite '{current.suite}'; gate against reports/baselines/"
                        f"{current.suite}.json or run suite '{baseline.suite}'")
    all_groups = list(baseline.fingerprints)
    for group, fp in sorted(baseline.fingerprints.items()):
        label = group_label(group, all_groups)
        if group not in current.fingerprints:
            problems.append(f"{label} is in the baseline but not in the current run (different seeds, datasets "
                            f"or splits?)")
        elif current.fingerprints[group] != fp:
            problems.append(f"split fingerprint mismatch for {label}: baseline {fp}, current "
                            f"{current.fingerprints[group]}; the data or the split changed, so the runs are not "
                            f"comparable. If that is intended, update the baseline with --update-baseline")
    for key in sorted(set(baseline.cells) - set(current.cells)):
        if key[:4] in current.fingerprints:
            problems.append(f"model '{key[4]}' on {group_label(key[:4], all_groups)} is in the baseline but not "
                            f"in the current run; a missing comparison is never a pass")
    new = sorted({k[4] for k in set(current.cells) - set(baseline.cells)})
    if new:
        notes.append(f"not gated (not in the baseline): {', '.join(new)}; add them with --update-baseline")
    if problems:
        raise GateError(_problem_text(problems))

    checks: list[Check] = []
    for key, cur_cell in sorted(current.cells.items()):
        base_cell = baseline.cells.get(key)
        if base_cell is not None and base_cell.status == "ok" and cur_cell.status == "failed":
            checks.append(Check("status", group_label(key[:4], all_groups), "-", key[4], "cell status", np.nan,
                                np.nan, np.nan, "-", verdict="fail", note=f"cell failed: {cur_cell.error}"[:300]))
        if base_cell is not None and base_cell.params != cur_cell.params:
            notes.append(f"{key[4]} on {group_label(key[:4], all_groups)}: parameters changed "
                          f"({_params_change(base_cell.params, cur_cell.params)})")
    checks += accuracy_checks(baseline, current, rules, problems)
    checks += timing_checks(baseline, current, rules, problems, notes)
    if problems:
        raise GateError(_problem_text(problems))
    _adjust(checks, rules.correction)
    for check in checks:
        if check.kind == "accuracy":
            _finish_accuracy(check)
    machine_b = baseline.provenance.get("machine", {})
    machine_c = current.provenance.get("machine", {})
    if machine_b and machine_c and machine_b != machine_c:
        notes.append("baseline and current ran on different machines; timing checks compare ratios to a reference "
                     "(the calibration workload, or a model) measured in the same run")
    if all(c.verdict == "skip" for c in checks):
        raise GateError(f"no check applies: the rules of {rules.source} match no model or segment of the "
                        f"baseline, or every check was skipped; a gate that checks nothing is not a pass")
    return GateResult(checks, notes, baseline, current, rules)


def _params_change(before: str, after: str) -> str:
    """Only the parameters that differ, e.g. ``init_seed 0 -> 1``."""
    try:
        a, b = json.loads(before), json.loads(after)
    except ValueError:
        return f"{before} -> {after}"
    if not isinstance(a, dict) or not isinstance(b, dict):
        return f"{before} -> {after}"
    return ", ".join(f"{k} {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k))


def _problem_text(problems: list[str]) -> str:
    unique = list(dict.fromkeys(problems))
    return "cannot compare (exit 2, not a pass):\n  - " + "\n  - ".join(unique)


def run_gate(baseline_path: Path, run_dir: Path, rules: Rules) -> GateResult:
    """Load both sides and compare them."""
    baseline = load_baseline(baseline_path)
    current = snapshot_from_run(run_dir, rules.accuracy_metrics)
    return compare(baseline, current, rules)


def resolve_run_dir(path: Path) -> Path:
    """A run folder, or a folder holding exactly one (what `bench run --out DIR` leaves in a fresh DIR)."""
    path = Path(path)
    if RunDir(path).has_results():
        return path
    runs = [run.path for run in runs_under(path)]
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise GateError(f"--current {path}: no results.json there (nor in a sub-folder); pass the run folder "
                        f"`bench run` printed (reports/runs/<run-id>)")
    raise GateError(f"--current {path} holds {len(runs)} runs ({', '.join(p.name for p in runs[:5])}"
                    f"{', ...' if len(runs) > 5 else ''}); pass the one to check")


def suite_of_run(run_dir: Path) -> str:
    """The suite name of a run folder (for the default baseline path)."""
    config = RunDir(run_dir).read_config()
    if config is None:
        raise GateError(f"--current {run_dir}: no config.json there; pass the run folder `bench run` printed")
    return str(config["name"])


# -- output ----------------------------------------------------------------------

def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _fmt_p(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def table_rows(result: GateResult) -> list[list[str]]:
    header = ["verdict", "kind", "where", "segment", "model", "metric", "baseline", "current", "delta", "allowed",
              "p (adj)", "95% CI of diff", "note"]
    rows = [header]
    order = {"fail": 0, "pass": 1, "skip": 2}
    for c in sorted(result.checks, key=lambda c: (order[c.verdict], c.kind, c.where, c.model, c.metric, c.segment)):
        confidence = c.detail.get("alpha")
        ci = f"[{_fmt(c.ci_low)}, {_fmt(c.ci_high)}]" if math.isfinite(c.ci_low) else "-"
        if confidence is not None and confidence != 0.05 and ci != "-":
            ci += f" ({1 - confidence:.0%})"
        p = _fmt_p(c.p_adjusted if math.isfinite(c.p_adjusted) else c.p_value)
        delta = _fmt(c.delta)
        if c.kind != "status" and math.isfinite(c.delta) and c.baseline:
            delta += f" ({c.delta / abs(c.baseline):+.1%})"
        rows.append([c.verdict.upper(), c.kind, c.where, c.segment, c.model, c.metric, _fmt(c.baseline),
                     _fmt(c.current), delta, c.allowed, p, ci, c.note])
    return rows


def format_table(result: GateResult) -> str:
    rows = table_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def headline(result: GateResult) -> str:
    n, failed, skipped = len(result.checks), len(result.failures), len(result.skipped)
    tail = f"; {skipped} skipped (not gated; the table says why)" if skipped else ""
    if failed:
        return f"bench gate: FAIL: {failed} of {n} checks regressed{tail} (suite '{result.current.suite}')"
    return (f"bench gate: PASS: {n - skipped} checks within tolerance or noise{tail} "
            f"(suite '{result.current.suite}')")


def _provenance_line(snapshot: Snapshot) -> str:
    git = snapshot.provenance.get("git", {}) or {}
    commit = (git.get("commit") or "unknown")[:10]
    dirty = " (dirty)" if git.get("dirty") else ""
    return f"run `{snapshot.run_id}`, commit `{commit}`{dirty}"


def format_markdown(result: GateResult) -> str:
    """A pull-request comment: the verdict, the failures, then every check folded away."""
    icon = ":x:" if result.failures else ":white_check_mark:"
    lines = [f"## {icon} {headline(result)}", "",
             f"- baseline: `{result.baseline.source}` ({_provenance_line(result.baseline)})",
             f"- current: `{result.current.source}` ({_provenance_line(result.current)})",
             f"- rules: `{result.rules.source}`; an accuracy drop fails only when it exceeds the tolerance AND is "
             f"significant ({result.rules.correction} correction over all accuracy checks); timings are ratios to "
             f"a reference timed in the same run (the calibration workload unless a rule names a model)", ""]
    rows = table_rows(result)

    def md(table: list[list[str]]) -> list[str]:
        out = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table[1:]]
        return out

    failed = [r for r in rows[1:] if r[0] == "FAIL"]
    if failed:
        lines += ["### Regressions", ""] + md([rows[0]] + failed) + [""]
    for note in result.notes:
        lines.append(f"> {note}")
    if result.notes:
        lines.append("")
    lines += [f"<details><summary>All {len(result.checks)} checks</summary>", ""] + md(rows) + ["", "</details>", ""]
    return "\n".join(lines)


def verdict_payload(result: GateResult) -> dict[str, Any]:
    return {
        "verdict": result.verdict, "exit_code": result.exit_code, "suite": result.current.suite,
        "baseline": {"path": result.baseline.source, "run_id": result.baseline.run_id,
                     "git": result.baseline.provenance.get("git")},
        "current": {"path": result.current.source, "run_id": result.current.run_id,
                    "git": result.current.provenance.get("git")},
        "rules": result.rules.source, "correction": result.rules.correction,
        "counts": {"checks": len(result.checks), "failed": len(result.failures), "skipped": len(result.skipped)},
        "notes": result.notes,
        "checks": [{k: v for k, v in asdict(c).items() if k != "tolerance"} for c in result.checks],
    }


def error_payload(message: str, baseline: Path | None, run_dir: Path | None) -> dict[str, Any]:
    """The verdict file of a gate that could not compare: exit 2, never a pass."""
    return {"verdict": "error", "exit_code": 2, "error": message,
            "baseline": {"path": None if baseline is None else str(baseline)},
            "current": {"path": None if run_dir is None else str(run_dir)}, "checks": []}


def write_outputs(payload: dict[str, Any], markdown: str, json_path: Path, markdown_path: Path) -> None:
    atomic_write_json(json_path, payload)
    atomic_write_bytes(markdown_path, markdown.encode("utf-8"))
