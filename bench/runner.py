"""Runs a suite: every dataset x seed x split x model cell, on identical splits.

Each cell fits once, recommends for every test user of every segment (warm,
each k-shot level, cold items), checks the output, persists the raw top-k and
per-user metric values, and only then scores. A cell that raises is recorded as
failed with its traceback and the suite goes on. Cell results are written
atomically as they finish, so a killed run keeps every finished cell and
``--resume`` continues where it stopped.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bench import metrics as metric_lib
from bench import protocols as eval_protocols
from bench import diskcache, explanations, grid, pointwise, provenance, realtime, registry, retrieved, systems
from bench import progress as cell_progress  # lines from inside a cell; `progress` is run_suite's callback
from bench.data import DataOptions, Dataset, load_dataset
from bench.data.dataset import side_info, train_data  # noqa: F401  (re-exported: runner.train_data)
from bench.errors import BenchError
from bench.execution import CellResult, CellTask, LocalExecutor, alone_on_node, preload_for, write_cell
from bench.protocol import Recommender, TrainData
from bench.results import write_tables
from bench.rundir import RunDir
from bench.specs import DatasetSpec, ModelSpec, SplitSpec, SuiteConfig
from bench.splits import Segment, Split, make_split, sample_test_users
from bench.stats import bootstrap_ci
from bench.validation import tied_list_warning, validate_topk

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class RunSummary:
    run_dir: Path
    cells: int
    failed: int
    skipped: int
    frame: pd.DataFrame
    failures: list[str] = field(default_factory=list)


def cell_id(dataset: DatasetSpec, split: SplitSpec, model: ModelSpec, seed: int, config: SuiteConfig) -> str:
    """Stable identity of a cell: same config, same id (used by resume and skip)."""
    # where it runs, and which model the report pairs it with, are not what it is
    model_key = {k: v for k, v in asdict(model).items() if k not in ("resources", "paired_with")}
    if model.refit:  # the default leaves the identity of every cell from before the setting unchanged
        del model_key["refit"]
    key = {"dataset": asdict(dataset), "split": {"kind": split.kind, "params": split.params},
           "model": model_key, "seed": seed, "evaluation": asdict(config.evaluation), "device": config.device}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


# -- scoring -------------------------------------------------------------------

@dataclass
class SegmentData:
    """The users, their test items and their history for one segment."""

    segment: Segment
    users: np.ndarray  # sorted unique test users (possibly sampled)
    test_users: np.ndarray
    test_items: np.ndarray
    history: list[np.ndarray] | None
    exclude: sp.csr_matrix | None
    candidates: np.ndarray | None  # shared 1-D pool, or per-user rows [users, C] (sampled protocols)

    def batch_candidates(self, lo: int, hi: int) -> np.ndarray | None:
        """The candidates of users[lo:hi]: per-user rows are sliced with the users, a shared pool is not."""
        if self.candidates is None or np.ndim(self.candidates) == 1:
            return self.candidates
        return self.candidates[lo:hi]


def segment_data(dataset: Dataset, split: Split, segment: Segment, train_matrix: sp.csr_matrix,
                 exclude_train: bool, max_users: int, *, protocol: eval_protocols.Protocol | None = None,
                 k: int = 0, negatives_dir: Path | None = None) -> SegmentData:
    users = sample_test_users(split, np.unique(dataset.user[split.test]), max_users)
    keep = np.isin(dataset.user[split.test], users)
    test_users, test_items = dataset.user[split.test][keep], dataset.item[split.test][keep]
    history = None
    exclude = None
    if segment.history_rows is not None:
        from bench.protocol import history_matrix

        history = _items_by_user(dataset, segment.history_rows, users)
        # Every interaction of a cold user before the test set is known, shown or not (at n shots the
        # ones between n and max(shots) too): ranking one is recommending a known positive, so it is
        # excluded like a warm user's training items, never counted as a miss.
        exclude = history_matrix(_items_by_user(dataset, split.history, users), dataset.n_items)
    elif exclude_train:
        exclude = train_matrix[users]
    rows = None
    if protocol is not None and protocol.kind == eval_protocols.RETRIEVED:  # a retriever's top-N (bench.retrieved)
        rows = retrieved.stored_candidates(dataset, split, segment, protocol, negatives_dir, segment_data)
    candidates = segment.candidates if protocol is None else eval_protocols.segment_candidates(
        dataset, split, segment, users, exclude, protocol, k, negatives_dir, rows)
    return SegmentData(segment, users, test_users, test_items, history, exclude, candidates)


def _items_by_user(dataset: Dataset, rows: np.ndarray, users: np.ndarray) -> list[np.ndarray]:
    """The items of ``rows`` (grouped by user, in their order) for each of the sorted ``users``."""
    owner = np.searchsorted(users, dataset.user[rows])
    valid = (owner < len(users)) & (users[np.minimum(owner, len(users) - 1)] == dataset.user[rows])
    rows, owner = rows[valid], owner[valid]
    bounds = np.searchsorted(owner, np.arange(len(users) + 1))
    items = dataset.item[rows]
    return [items[bounds[i]:bounds[i + 1]] for i in range(len(users))]


def score_lists(items: np.ndarray, data: SegmentData, dataset: Dataset, popularity: np.ndarray,
                n_train_users: int, metric_names: list[str], ks: list[int]) -> metric_lib.MetricTable:
    hits, n_rel = metric_lib.hit_matrix(items, data.users, data.test_users, data.test_items, dataset.n_items)
    cand = data.candidates
    n_candidates = (dataset.n_items if cand is None else len(cand) if np.ndim(cand) == 1
                    else np.unique(cand[cand >= 0]).size)
    value = dataset.item_value
    inputs = metric_lib.EvalInputs(items=items, hits=hits, n_relevant=n_rel, n_candidates=n_candidates,
                                   item_popularity=popularity, n_train_users=n_train_users,
                                   item_categories=dataset.item_categories, item_value=value,
                                   relevant_value=None if value is None else metric_lib.relevant_value(
                                       data.users, data.test_users, data.test_items, value, dataset.n_items))
    return metric_lib.compute(inputs, metric_names, ks)


def metric_rows(table: metric_lib.MetricTable, base: dict[str, Any], segment: str, n_users: int, bootstrap: int,
                seed: int, ranked_depth: int | None = None) -> list[dict[str, Any]]:
    """Tidy rows of one scored segment: per-user means with bootstrap CIs, aggregate metrics as they are.

    Shared by the runner and ``bench score``, so a rescored metric is the very row a fresh run writes.
    A cut-off beyond ``ranked_depth`` (a two-stage model's own positions, ``Recommender.ranked_depth``)
    is its first stage's ranking: status ``first_stage``, no value, never credited to the model (the
    per-user values stay in the cell's file).
    """
    low, high = (bootstrap_ci(table.per_user, bootstrap, seed=seed) if bootstrap
                 else (np.full(len(table.columns), np.nan),) * 2)
    rows = []
    for j, (name, k) in enumerate(table.columns):
        n, status = n_users, "ok"
        if ranked_depth is not None and k > ranked_depth:
            value, lo_, hi_, n, status = float("nan"), float("nan"), float("nan"), 0, "first_stage"
        elif (name, k) in table.aggregate:
            value, lo_, hi_ = table.aggregate[(name, k)], float("nan"), float("nan")
        else:
            value, lo_, hi_ = float(table.per_user[:, j].mean()), float(low[j]), float(high[j])
        rows.append(base | {"segment": segment, "metric": name, "k": k, "value": value, "ci_low": lo_,
                            "ci_high": hi_, "n": n, "status": status})
    return rows


# -- the cell ------------------------------------------------------------------

class CellRunner:
    """Runs one model on one split and writes its folder."""

    def __init__(self, config: SuiteConfig, run_id: str, run_dir: Path, dataset: Dataset, dspec: DatasetSpec,
                 split: Split, sspec: SplitSpec, train: TrainData, seed: int, cache_dir: Path | None = None) -> None:
        self.config, self.run_id, self.run_dir = config, run_id, run_dir
        self.cache_dir = cache_dir  # bench's cache home (DataOptions.cache_dir): converted checkpoints live there
        self.rundir = RunDir(run_dir)
        self.dataset, self.dspec, self.split, self.sspec, self.train, self.seed = dataset, dspec, split, sspec, train, seed
        self.popularity = np.bincount(train.item, minlength=dataset.n_items)
        self.n_train_users = int(np.unique(train.user).size)
        self.metric_names = config.evaluation.metrics or list(metric_lib.DEFAULT_METRICS) + (
            list(metric_lib.VALUE_METRICS) if dataset.item_value is not None else [])
        self.ks = sorted(config.evaluation.k)
        # progress lines from inside the cell (bench.progress): set by run_suite when the caller shows progress
        self.progress_label: str = ""
        self.progress_interval: float = 0.0
        self._catalogue: explanations.Catalogue | None = None  # titles and genres, built when a model explains

    def base_row(self, mspec: ModelSpec, params: dict[str, Any], cid: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "suite": self.config.name, "dataset": self.dataset.name,
            "conversion": self.dataset.info.get("conversion", ""), "split": self.split.kind,
            "split_params": json.dumps(self.split.params, sort_keys=True, default=str),
            "split_fingerprint": self.split.fingerprint,
            "protocol": eval_protocols.from_evaluation(self.config.evaluation).label, "seed": self.seed,
            "model": mspec.label, "model_name": mspec.name, "params": json.dumps(params, sort_keys=True, default=str),
            "cell_id": cid,
        }

    def new_info(self, mspec: ModelSpec, cid: str) -> dict[str, Any]:
        return {"cell_id": cid, "dataset": self.dspec.name, "split": self.split.kind,
                "split_fingerprint": self.split.fingerprint, "model": mspec.label,
                "model_name": mspec.name, "seed": self.seed, "segments": {}}

    def record_failure(self, mspec: ModelSpec, cid: str, error: str, trace: str,
                       info: dict[str, Any] | None = None,
                       kept_rows: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Write a failed cell: the error, its traceback and any rows scored before it."""
        info = info or self.new_info(mspec, cid)
        info.update(status="failed", error=error, traceback=trace)
        base = self.base_row(mspec, mspec.params, cid)
        rows = [r for r in (kept_rows or []) if r["status"] in ("ok", "first_stage")] + [
            base | {"segment": "-", "metric": "error", "k": 0, "value": float("nan"), "ci_low": float("nan"),
                    "ci_high": float("nan"), "n": 0, "status": "failed"}]
        return rows, info

    def run(self, mspec: ModelSpec, cid: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        with cell_progress.cell(self.progress_label or mspec.label, self.progress_interval):
            return self._run(mspec, cid)

    def _run(self, mspec: ModelSpec, cid: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        info = self.new_info(mspec, cid)
        rows: list[dict[str, Any]] = []
        base = self.base_row(mspec, mspec.params, cid)
        try:
            diskcache.use_root(self.cache_dir)  # in the cell's own process, before the model loads anything
            cls = registry.models.get(mspec.name)
            model: Recommender = cls(seed=self.seed, device=self.config.device, **mspec.params)
            base = self.base_row(mspec, model.params, cid)
            info["model_description"] = model.describe()
            segments = self.split.segments(self.dataset)
            if self.serves_nothing(model, mspec, segments):
                # e.g. an ALS on an item cold-start split: every segment would be "unsupported" after the fit
                info["fit_skipped"] = "the model can serve no segment of this split (capabilities): not fitted"
                rows.extend(self.run_segments(model, mspec, segments, base, cid, info))
                info["status"] = "ok"
                return rows, info
            # cold load apart from fit: the model's declared heavy modules (preload_modules), imported here if
            # no forkserver or earlier cell of this process did, so fit_seconds never includes an import
            import_start = time.perf_counter()
            for module in getattr(cls, "preload_modules", ()):
                importlib.import_module(module)
            rows.append(self.system_row(base, "fit", "import_seconds", time.perf_counter() - import_start))
            calibration = systems.Calibration()  # bracket the fit: the timing gates' reference for this cell
            bracket = [calibration.run()]
            caches_before, disk_before = systems.cache_counters(), diskcache.counters()
            cell_progress.phase("fit")
            tests_carve_model = bool(mspec.grid_of) and not mspec.refit  # the selected model is tested (bench.grid)
            fit_train = self.train
            if tests_carve_model:
                fit_train = grid.carve_train(self.dataset, self.split, self.seed, mspec.label)
                info["fit_data"] = ("train minus the validation carve (refit = false): the model scored on "
                                    "validation is the one tested")
            fit_cost = systems.measure_fit(lambda: model.fit(fit_train), model.size_bytes, model.device)
            caches = systems.caches_used(caches_before, systems.cache_counters())
            disk = diskcache.used(disk_before, diskcache.counters())
            bracket.append(calibration.run())
            cell_calibration = systems.calibration_record(bracket)
            rows.append(self.system_row(base, "fit", "calibration_seconds", cell_calibration["seconds"]))
            rows.append(self.system_row(base, "fit", "calibration_cpu_seconds", cell_calibration["cpu_seconds"]))
            info["fit_seconds"], info["fit_cpu_seconds"] = fit_cost.wall_seconds, fit_cost.cpu_seconds
            # caches_warm: the fit reused something an earlier cell of this process loaded (isolation = "none"),
            # so its fit_seconds leaves out a load that a cold process pays; None: it used no process cache
            info["caches_warm"] = ("warm" in caches.values()) if caches else None
            # disk_caches: entries of bench.diskcache the fit looked up, "hit" (read back, e.g. a converted
            # checkpoint) or "miss" (built now): warm across processes and runs, unlike caches_warm
            info["disk_caches"] = disk or None
            info["systems"] = {"device": model.device, "fit_peak_is_per_fit": fit_cost.peak_is_per_fit,
                               "process_peak_rss_mb_before_fit": fit_cost.process_peak_before_mb,
                               "process_caches": caches, "isolation": self.config.execution.isolation}
            for name, value in fit_cost.figures().items():
                rows.append(self.system_row(base, "fit", name, value))
            if caches:
                rows.append(self.system_row(base, "fit", "fit_caches_warm", float(info["caches_warm"])))
            if disk:
                rows.append(self.system_row(base, "fit", "fit_disk_caches_hit",
                                            float(all(v == "hit" for v in disk.values()))))
            if tests_carve_model:  # scored on validation before anything (a replay) can update it
                cell_progress.phase("validation")
                rows.extend(grid.validation_rows(self.dataset, self.split, self.seed, self.config.device, mspec,
                                                 base, fitted=model))
            rows.extend(self.run_segments(model, mspec, segments, base, cid, info))
            info["model_description"] = model.describe()  # again: fitted models add what they learned
            cell_progress.phase("real-time replay")
            rows.extend(self.run_realtime(model, mspec, base, cid, info))
            if not tests_carve_model:  # grid points only: a second fit on train minus a validation carve
                cell_progress.phase("validation fit")
                rows.extend(grid.validation_rows(self.dataset, self.split, self.seed, self.config.device, mspec,
                                                 base))
            info["status"] = "ok"
        except Exception as exc:  # one broken model must not end the suite
            return self.record_failure(mspec, cid, f"{type(exc).__name__}: {exc}", traceback.format_exc(),
                                       info, rows)
        return rows, info

    def run_segments(self, model: Recommender, mspec: ModelSpec, segments: list[Segment], base: dict[str, Any],
                     cid: str, info: dict[str, Any]) -> list[dict[str, Any]]:
        """Every segment under the main protocol, then under each of evaluation.extra_protocols (same fit)."""
        rows: list[dict[str, Any]] = []
        for i, protocol in enumerate(eval_protocols.cell_protocols(self.config.evaluation)):
            if not retrieved.applies(self.config.evaluation, protocol, self.split.kind):
                continue  # evaluation.retrieved_splits leaves this split kind out
            for segment in segments:
                rows.extend(self.run_segment(model, mspec, segment, base | {"protocol": protocol.label}, cid,
                                             info, protocol=protocol, extra=i > 0))
        return rows

    def serves_nothing(self, model: Recommender, mspec: ModelSpec, segments: list[Segment]) -> bool:
        """True when fitting would be wasted: no segment the model can serve, no replay, no grid selection."""
        return (bool(segments) and not any(model.capabilities.supports(s.needs) for s in segments)
                and not realtime.applies(self.config.evaluation.realtime, self.split.kind) and not mspec.grid_of)

    @staticmethod
    def system_row(base: dict[str, Any], segment: str, metric: str, value: float) -> dict[str, Any]:
        return base | {"segment": segment, "metric": metric, "k": 0, "value": float(value),
                       "ci_low": float("nan"), "ci_high": float("nan"), "n": 0, "status": "ok"}

    def unsupported_rows(self, base: dict[str, Any], segment: str) -> list[dict[str, Any]]:
        return [base | {"segment": segment, "metric": name, "k": k, "value": float("nan"), "ci_low": float("nan"),
                        "ci_high": float("nan"), "n": 0, "status": "unsupported"}
                for name, k in metric_lib.metric_columns(self.metric_names, self.ks)]

    def run_segment(self, model: Recommender, mspec: ModelSpec, segment: Segment, base: dict[str, Any],
                    cid: str, info: dict[str, Any], *, protocol: eval_protocols.Protocol | None = None,
                    extra: bool = False) -> list[dict[str, Any]]:
        """Score one segment under ``protocol`` (default: the main one); ``extra`` protocols' segments are
        named ``<segment>@<protocol>`` and skip the serving measurements (the main protocol has them)."""
        ev = self.config.evaluation
        protocol = protocol or eval_protocols.from_evaluation(ev)
        two_stage = protocol.kind == eval_protocols.RETRIEVED
        name = retrieved.segment_label(segment.name, protocol, extra)
        if not model.capabilities.supports(segment.needs):
            info["segments"][name] = {"status": "unsupported", "needs": segment.needs}
            return self.unsupported_rows(base, name)
        if protocol.pointwise:  # labelled pairs, not ranked lists (bench.pointwise)
            return self.run_pointwise(model, segment, base, cid, info, retrieved.user_limit(ev, mspec.max_test_users,
                                                                                           protocol),
                                      protocol.label_threshold)
        if two_stage and not retrieved.serves(protocol, segment):
            info["segments"][name] = {"status": "unsupported", "needs": segment.needs,
                                      "reason": f"the retriever '{protocol.retriever}' cannot serve {segment.needs}"}
            return self.unsupported_rows(base, name) + self.unsupported_rows(base, name + retrieved.FOUND)
        max_users = retrieved.user_limit(ev, mspec.max_test_users, protocol)
        data = segment_data(self.dataset, self.split, segment, self.train.matrix, ev.exclude_train, max_users,
                            protocol=protocol, k=self.ks[-1], negatives_dir=self.rundir.splits_dir)
        model.rank_shared_candidates(two_stage)  # a two-stage model ranks the protocol's candidates, all of them
        try:
            return self.score_segment(model, mspec, data, name, base, cid, info, protocol, extra)
        finally:
            model.rank_shared_candidates(False)

    def score_segment(self, model: Recommender, mspec: ModelSpec, data: SegmentData, name: str,
                      base: dict[str, Any], cid: str, info: dict[str, Any], protocol: eval_protocols.Protocol,
                      extra: bool) -> list[dict[str, Any]]:
        ev = self.config.evaluation
        k_max = self.ks[-1]
        cell_progress.phase(f"recommend {name} ({len(data.users)} users)")
        batch = ev.batch_size or len(data.users)
        items_parts, score_parts = [], []
        # Each timing measures one thing: a first 1-user call pays one-off costs (lazy loads, allocation,
        # JIT) and is recorded apart; recommend_seconds is the model's warm calls only, without the
        # slicing of inputs or the validation of outputs (validate_seconds).
        clock = systems.Clock(model.device)
        first = clock.now()
        if len(data.users):
            model.recommend(data.users[:1], k_max, history=None if data.history is None else data.history[:1],
                            candidates=data.batch_candidates(0, 1),
                            exclude=None if data.exclude is None else data.exclude[:1])
        first_call = clock.now() - first
        model.extra_metrics()  # drop figures of earlier calls (and of the warm-up): the segment's own are read below
        seconds = validate_seconds = 0.0
        for lo, hi in cell_progress.user_batches(len(data.users), batch):
            hist = None if data.history is None else data.history[lo:hi]
            excl = None if data.exclude is None else data.exclude[lo:hi]
            cand = data.batch_candidates(lo, hi)
            start = clock.now()
            items, scores = model.recommend(data.users[lo:hi], k_max, history=hist, candidates=cand, exclude=excl)
            checked = clock.now()
            items, scores = validate_topk(mspec.label, items, scores, n_users=len(data.users[lo:hi]), k=k_max,
                                          n_items=self.dataset.n_items, exclude=excl, candidates=cand)
            seconds += checked - start
            validate_seconds += time.perf_counter() - checked
            items_parts.append(items)
            score_parts.append(scores)
        items = np.concatenate(items_parts)
        scores = np.concatenate(score_parts)
        self.rundir.write_topk(cid, name, data.users, items, scores)
        table = score_lists(items, data, self.dataset, self.popularity, self.n_train_users, self.metric_names, self.ks)
        depth = model.ranked_depth(k_max)  # a two-stage model's own positions; below them, its first stage's
        model_figures = model.extra_metrics()
        seg_info: dict[str, Any] = {"status": "ok", "users": int(len(data.users))}
        rows = []
        if protocol.kind == eval_protocols.RETRIEVED:
            table, rows = self.two_stage_figures(model, data, items, table, name, base, cid, depth, seg_info)
        self.rundir.write_per_user(cid, name, data.users, table.per_user, [f"{m}@{k}" for m, k in table.columns])
        # depth < k_max only for a model that leaves positions to its first stage (the probes' deeper tau column
        # then too); a model that ranks every position it returns has no first-stage cut-off at all
        rows = metric_rows(table, base, name, len(data.users), ev.bootstrap, self.seed,
                           ranked_depth=depth if depth < k_max else None) + rows
        n_users = len(data.users)
        rows.append(self.system_row(base, name, "recommend_seconds", seconds) | {"n": n_users})
        rows.append(self.system_row(base, name, "users_per_second", n_users / max(seconds, 1e-12))
                    | {"n": n_users})
        rows.append(self.system_row(base, name, "first_call_seconds", first_call) | {"n": 1})
        rows.append(self.system_row(base, name, "validate_seconds", validate_seconds) | {"n": n_users})
        rows.extend(self.system_row(base, name, metric, value) for metric, value in model_figures.items())
        info["segments"][name] = seg_info | {"recommend_seconds": seconds, "first_call_seconds": first_call,
                                             "validate_seconds": validate_seconds}
        if depth < k_max:
            info["segments"][name]["ranked_depth"] = int(depth)
        warning = tied_list_warning(scores)
        if warning:
            info["segments"][name]["warnings"] = [warning]
        if not extra:  # reasons and serving figures once per segment, under the cell's main protocol
            rows.extend(self.explain_segment(model, data, items, base, cid, info["segments"][name]))
            rows.extend(self.measure_serving(model, data, k_max, base, info["segments"][name]))
        return rows

    def explain_segment(self, model: Recommender, data: SegmentData, items: np.ndarray, base: dict[str, Any],
                        cid: str, segment_info: dict[str, Any]) -> list[dict[str, Any]]:
        """A model's reasons for its lists (capability ``explains``), outside the recommend timers: stored in
        the cell folder with their verdicts and scored as k=0 rows (bench.explanations)."""
        if not model.capabilities.explains:
            return []
        start = time.perf_counter()
        reasons = model.explain(data.users, items, history=data.history)
        seconds = time.perf_counter() - start
        matrix = self.train.matrix
        histories = (data.history if data.history is not None
                     else [matrix.indices[matrix.indptr[u]:matrix.indptr[u + 1]] for u in data.users])
        if self._catalogue is None:
            d = self.dataset
            self._catalogue = explanations.Catalogue.from_side(d.item_text, d.item_categories, d.category_names,
                                                               d.item_features, d.item_feature_names)
        recs = explanations.records(reasons, data.users, items, histories, self._catalogue,
                                    self.dataset.user_ids, self.dataset.item_ids)
        segment = data.segment.name
        self.rundir.write_explanations(cid, segment, recs)
        segment_info["explanations"] = {"reasons": len(recs), "seconds": seconds}
        rows = [self.system_row(base, segment, explanations.EXPLAIN_SECONDS, seconds) | {"n": len(recs)}]
        figures = explanations.summarise(recs, self.config.evaluation.bootstrap, self.seed)
        for name, (value, low, high, n) in figures.items():
            rows.append(self.system_row(base, segment, name, value) | {"ci_low": low, "ci_high": high, "n": n})
        return rows

    def two_stage_figures(self, model: Recommender, data: SegmentData, items: np.ndarray,
                          table: metric_lib.MetricTable, name: str,
                          base: dict[str, Any], cid: str, depth: int,
                          seg_info: dict[str, Any]) -> tuple[metric_lib.MetricTable, list[dict[str, Any]]]:
        """Under protocol "retrieved": the order-probe columns (added to ``table``), and the rows of segment
        ``<name>+found``, the users whose held-out item the retriever found (LlamaRec's second figure)."""
        ev = self.config.evaluation
        assert data.candidates is not None and np.ndim(data.candidates) == 2
        if ev.order_probes:
            probe_k = retrieved.probe_depth(data.candidates, self.ks[-1])
            ndcg_ks = [k for k in self.ks if k <= depth]

            def ndcg(items: np.ndarray) -> np.ndarray:
                return score_lists(items[:, :self.ks[-1]], data, self.dataset, self.popularity, self.n_train_users,
                                   ["ndcg"], self.ks).per_user[:, [self.ks.index(k) for k in ndcg_ks]]

            cell_progress.phase(f"order probes {name} ({ev.order_probes} orders)")
            start = time.perf_counter()
            probes = retrieved.probe_table(data.candidates, lambda cand: self.rank_all(model, data, probe_k, cand),
                                           ndcg, ndcg_ks, ev.order_probes, self.seed,
                                           given=items if probe_k == items.shape[1] else None)
            probe_seconds = time.perf_counter() - start
            model.extra_metrics()  # the probes' calls are not the segment's figures
            table = metric_lib.MetricTable(table.columns + probes.columns,
                                           np.column_stack([table.per_user, probes.per_user]), table.aggregate)
            seg_info["order_probes"] = int(ev.order_probes)
            seg_info["order_probe_seconds"] = probe_seconds  # the probes' extra recommend calls, scoring included
        found = retrieved.found_mask(data.users, data.candidates, data.test_users, data.test_items,
                                     self.dataset.n_items)
        seg_info["found_users"] = int(found.sum())
        sub = retrieved.found_table(table, found)
        found_name = name + retrieved.FOUND
        self.rundir.write_per_user(cid, found_name, data.users[found], sub.per_user,
                                   [f"{m}@{k}" for m, k in sub.columns])
        return table, metric_rows(sub, base, found_name, int(found.sum()), ev.bootstrap, self.seed,
                                  ranked_depth=depth if depth < self.ks[-1] else None)

    def rank_all(self, model: Recommender, data: SegmentData, k: int, candidates: np.ndarray) -> np.ndarray:
        """The model's top-k of every user of ``data`` among ``candidates`` (per-user rows), in the suite's
        batches and validated: the order probes' calls."""
        batch = self.config.evaluation.batch_size or len(data.users)
        parts = []
        for lo, hi in cell_progress.user_batches(len(data.users), batch):
            hist = None if data.history is None else data.history[lo:hi]
            excl = None if data.exclude is None else data.exclude[lo:hi]
            items, scores = model.recommend(data.users[lo:hi], k, history=hist,
                                            candidates=candidates[lo:hi], exclude=excl)
            items, _ = validate_topk(model.name, items, scores, n_users=hi - lo, k=k,
                                     n_items=self.dataset.n_items, exclude=excl, candidates=candidates[lo:hi])
            parts.append(items)
        return np.concatenate(parts) if parts else np.zeros((0, k), np.int64)

    def run_retriever(self, protocol: eval_protocols.Protocol, extra: bool,
                      cid: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Protocol "retrieved": fit the retriever once for this split (which stores every segment's candidates)
        and score its own ranking as a row of its own: its top-k of the N, plus ``recall@N`` and
        ``hit_rate@N`` over all N (its recall; the share of users whose held-out item was retrieved)."""
        ev = self.config.evaluation
        spec = ModelSpec(protocol.retriever, json.loads(protocol.retriever_params),
                         retrieved.retriever_label(protocol))
        base = self.base_row(spec, spec.params, cid) | {"protocol": protocol.label}
        info = self.new_info(spec, cid) | {"retriever": True, "protocol": protocol.label}
        rows: list[dict[str, Any]] = []
        k_max = self.ks[-1]
        for segment in self.split.segments(self.dataset):
            name = retrieved.segment_label(segment.name, protocol, extra)
            if not retrieved.serves(protocol, segment):
                info["segments"][name] = {"status": "unsupported", "needs": segment.needs}
                rows += self.unsupported_rows(base, name) + self.unsupported_rows(base, name + retrieved.FOUND)
                continue
            data = segment_data(self.dataset, self.split, segment, self.train.matrix, ev.exclude_train,
                                retrieved.user_limit(ev, None, protocol), protocol=protocol, k=k_max,
                                negatives_dir=self.rundir.splits_dir)
            assert data.candidates is not None
            items = data.candidates[:, :k_max]  # the retriever's order: its own top-k
            self.rundir.write_topk(cid, name, data.users, items, -np.arange(k_max, dtype=np.float64)[None, :]
                                   .repeat(len(items), 0))  # rank order, not the retriever's scores

            def score(lists: np.ndarray, names: list[str], ks: list[int]) -> metric_lib.MetricTable:
                return score_lists(lists, data, self.dataset, self.popularity, self.n_train_users, names, ks)

            table = score(items, self.metric_names, self.ks)
            depth = data.candidates.shape[1]
            if depth > k_max:  # recall and hit rate of the whole candidate list: the retriever's recall@N
                whole = score(data.candidates, ["recall", "hit_rate"], [depth])
                table = metric_lib.MetricTable(table.columns + whole.columns,
                                               np.column_stack([table.per_user, whole.per_user]), table.aggregate)
            found = retrieved.found_mask(data.users, data.candidates, data.test_users, data.test_items,
                                         self.dataset.n_items)
            sub = retrieved.found_table(table, found)
            found_name = name + retrieved.FOUND
            self.rundir.write_per_user(cid, name, data.users, table.per_user, [f"{m}@{k}" for m, k in table.columns])
            self.rundir.write_per_user(cid, found_name, data.users[found], sub.per_user,
                                       [f"{m}@{k}" for m, k in sub.columns])
            rows += metric_rows(table, base, name, len(data.users), ev.bootstrap, self.seed)
            rows += metric_rows(sub, base, found_name, int(found.sum()), ev.bootstrap, self.seed)
            info["segments"][name] = {"status": "ok", "users": int(len(data.users)),
                                      "found_users": int(found.sum()), "n_candidates": int(depth)}
        info["status"] = "ok"
        return rows, info

    def run_pointwise(self, model: Recommender, segment: Segment, base: dict[str, Any], cid: str,
                      info: dict[str, Any], max_users: int, threshold: float) -> list[dict[str, Any]]:
        """The pointwise protocol's segment (bench.pointwise): score the labelled test pairs, store them, rate them.

        The serving scenarios are not run: they time recommend(), which this protocol does not ask for;
        the pairs' own timing is the row ``score_pairs_seconds``.
        """
        ev = self.config.evaluation
        users = sample_test_users(self.split, np.unique(self.dataset.user[self.split.test]), max_users)
        pairs = pointwise.test_pairs(self.dataset, self.split, users, threshold)
        wanted = [metric_lib.parse_metric_entry(e)[0] for e in ev.metrics] or list(metric_lib.PAIR_METRICS)
        rows, scores, seg_info = pointwise.segment_rows(model, pairs, base, segment.name, wanted, ev.bootstrap,
                                                        self.seed, ev.batch_size)
        self.rundir.write_pairs(cid, segment.name, users=pairs.users, items=pairs.items, labels=pairs.labels,
                                scores=scores)
        rows.extend(self.system_row(base, segment.name, name, value) for name, value in model.extra_metrics().items())
        info["segments"][segment.name] = seg_info
        return rows

    def measure_serving(self, model: Recommender, data: SegmentData, k: int, base: dict[str, Any],
                        segment_info: dict[str, Any]) -> list[dict[str, Any]]:
        """Latency / throughput / server figures of one segment (bench.systems), as k=0 rows."""
        spec = self.config.evaluation.systems
        if not spec.enabled or (spec.segments and data.segment.name not in spec.segments):
            return []
        requests = systems.Requests(data.users, k, data.history, data.exclude, data.candidates)
        cell_progress.phase(f"systems scenarios {data.segment.name}")
        per_user = segment_info.get("recommend_seconds", 0.0) / max(segment_info.get("users", 0), 1)
        with alone_on_node():  # exclusive_timing: no other cell on this node while it is measured
            figures, details = systems.measure_serving(model.recommend, requests, spec, device=model.device,
                                                       seed=self.seed, per_user_seconds=per_user)
        segment_info["systems"] = details | {name: value for name, (value, _n) in figures.items()}
        over_budget = details.get("over_budget")
        # too_few_requests: a percentile from too few requests; over_budget: a batch scenario not run
        return [self.system_row(base, data.segment.name, name, value)
                | {"n": n, "status": systems.figure_status(name, n, over_budget)}
                for name, (value, n) in figures.items()]

    def run_realtime(self, model: Recommender, mspec: ModelSpec, base: dict[str, Any], cid: str,
                     info: dict[str, Any]) -> list[dict[str, Any]]:
        """Freshness: update cost and prequential replay on temporal splits (bench.realtime)."""
        spec = self.config.evaluation.realtime
        if not realtime.applies(spec, self.split.kind):
            return []
        cls = registry.models.get(mspec.name)
        make_model = lambda: cls(seed=self.seed, device=self.config.device, **mspec.params)  # noqa: E731
        d = self.dataset
        log = realtime.event_log(d.user, d.item, d.weight, d.timestamp, self.train.side, self.split.train,
                                 self.split.stats["cut_timestamp"], spec.max_events)
        rows, traces = realtime.run_cell(model, make_model, log, spec, base, info, self.seed,
                                         self.split.stats["cut_timestamp"])
        self.rundir.write_realtime(cid, traces)
        return rows


# -- the suite -----------------------------------------------------------------

def save_id_maps(run_dir: Path, dataset: Dataset) -> None:
    """``ids/<dataset>.npz``: the raw user and item id of every dense index, so the top-k files
    (dense ids) can be read back in the data's own ids."""
    from bench.rundir import atomic_write_npz

    atomic_write_npz(run_dir / "ids" / f"{dataset.name}.npz", user_ids=np.asarray(dataset.user_ids).astype(str),
                     item_ids=np.asarray(dataset.item_ids).astype(str))


def plan_cells(config: SuiteConfig) -> list[tuple[DatasetSpec, int, SplitSpec, ModelSpec]]:
    cells = []
    for dspec in config.datasets:
        for seed in config.seeds:
            for sspec in config.splits:
                if sspec.datasets is not None and dspec.name not in sspec.datasets:
                    continue
                for mspec in config.models:
                    if mspec.splits is None or sspec.kind in mspec.splits:
                        cells.append((dspec, seed, sspec, mspec))
    return cells


RetrieverCell = tuple[DatasetSpec, int, SplitSpec, ModelSpec, eval_protocols.Protocol, bool]


def retriever_plan(config: SuiteConfig) -> list[RetrieverCell]:
    """One retriever cell per dataset x seed x split under each "retrieved" protocol of the suite (with
    whether that protocol is an extra one); ``bench score`` rescores them like every cell."""
    protocols = [(p, i > 0) for i, p in enumerate(eval_protocols.cell_protocols(config.evaluation))
                 if p.kind == eval_protocols.RETRIEVED]
    cells = plan_cells(config)
    groups = list(dict.fromkeys((id(d), seed, id(s)) for d, seed, s, _m in cells))
    by_key = {(id(d), seed, id(s)): (d, seed, s) for d, seed, s, _m in cells}
    return [(*by_key[key], ModelSpec(protocol.retriever, json.loads(protocol.retriever_params),
                                     retrieved.retriever_label(protocol)), protocol, extra)
            for protocol, extra in protocols for key in groups
            if retrieved.applies(config.evaluation, protocol, by_key[key][2].kind)]


def retriever_cells(config: SuiteConfig, run_id: str, run_dir: Path,
                    prepare: Callable[..., tuple[Dataset, Split, TrainData]], force: bool,
                    say: Progress, cache_dir: Path | None = None) -> list[tuple[str, list[dict[str, Any]]]]:
    """Protocol "retrieved": per split and seed, the retriever fitted once in this process, its candidates
    stored for every cell (before any cell runs), and its own ranking scored as a cell of its own."""
    from bench.execution import CellResult

    out: list[tuple[str, list[dict[str, Any]]]] = []
    folder = RunDir(run_dir)
    for dspec, seed, sspec, spec, protocol, extra in retriever_plan(config):
        cid = cell_id(dspec, sspec, spec, seed, config)
        info = None if force else folder.read_cell(cid)
        if info is None:
            dataset, split, train = prepare(dspec, seed, sspec)
            runner = CellRunner(config, run_id, run_dir, dataset, dspec, split, sspec, train, seed, cache_dir)
            diskcache.use_root(cache_dir)  # a retriever that loads a checkpoint reads the run's cache home
            start = time.perf_counter()
            try:
                rows, info = runner.run_retriever(protocol, extra, cid)
            except Exception as exc:  # the retriever's failure ends the run: no model could be scored
                raise BenchError(f"{config.source}: retriever '{protocol.retriever}' on {dspec.name} "
                                 f"{sspec.kind} seed={seed}: {type(exc).__name__}: {exc}") from exc
            write_cell(run_dir, cid, CellResult(rows, info))
            say(f"{dspec.name} {sspec.kind} seed={seed} {spec.label}: candidates retrieved and stored "
                f"in {time.perf_counter() - start:.1f}s")
            info["rows"] = rows
        out.append((cid, info["rows"]))
    return out


def run_key(config: SuiteConfig) -> str:
    """Hash of what decides a run's results: the config (execution settings included), code and packages.

    Two invocations with the same key share a run folder, so re-running a finished
    suite reuses its finished cells (``force`` re-runs them). A dirty checkout
    contributes the hash of its diff, so edited code never reuses stale cells.
    """
    # execution settings are part of the key: isolation changes what fit and serving timings include
    # (process caches shared across cells or not), so two modes never mix in one folder; tracking is not
    payload = {"config": {k: v for k, v in config.as_dict().items() if k not in ("source", "tracking")},
               "git": provenance.git_state(), "diff": provenance.git_diff_digest(),
               "packages": provenance.package_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_suite(config: SuiteConfig, *, out_root: Path = Path("reports/runs"), data: DataOptions | None = None,
              run_dir: Path | None = None, force: bool = False, progress: Progress | None = stderr_progress,
              progress_interval: float = cell_progress.DEFAULT_INTERVAL) -> RunSummary:
    """Run every cell of ``config``; finished cells in the run folder are kept unless ``force``.

    Without ``run_dir`` the folder is ``out_root/<suite>-<run key>``: the same
    config on the same code lands in the same folder and resumes there. Cells go
    to the executor ``config.execution`` names (bench.execution); their results
    come back here, and this process alone writes the run folder.
    """
    data = data or DataOptions()
    say = progress or (lambda _msg: None)
    run_dir = Path(run_dir) if run_dir is not None else Path(out_root) / f"{config.name}-{run_key(config)}"
    run_id = run_dir.name
    folder = RunDir(run_dir)
    folder.write_config(config.as_dict())
    prov = provenance.collect(config.device)
    calibration = systems.calibrate()  # the timing gates' reference, measured in this run (bench.systems)
    prov["calibration"] = systems.calibration_record(calibration)
    folder.write_provenance(prov)

    cells = plan_cells(config)
    preload_for([registry.models.get(m.name) for m in config.models])
    order = [cell_id(d, s, m, seed, config) for d, seed, s, m in cells]
    rows_by_cell: dict[str, list[dict[str, Any]]] = {}  # written in plan order, whatever order cells finish in
    failures: list[str] = []
    skipped = 0
    started = time.perf_counter()
    dataset_cache: dict[str, Dataset] = {}
    split_cache: dict[tuple[str, int, str], tuple[Split, TrainData]] = {}

    def prepare(dspec: DatasetSpec, seed: int, sspec: SplitSpec) -> tuple[Dataset, Split, TrainData]:
        """The cell's dataset and split, each built once and cached for the cells that share it."""
        dkey = json.dumps(asdict(dspec), sort_keys=True, default=str)
        if dkey not in dataset_cache:
            try:
                dataset_cache[dkey] = load_dataset(dspec.name, data, dspec.implicit, **dspec.params)
            except BenchError as exc:  # the data's problem, told with the suite that asked for it
                raise type(exc)(f"{config.source}: dataset '{dspec.name}': {exc}") from None
            save_id_maps(run_dir, dataset_cache[dkey])
            if dataset_cache[dkey].info.get("files_sha256") or dataset_cache[dkey].info.get("content_sha256"):
                info = dataset_cache[dkey].info  # a user's own data: which bytes were benchmarked
                prov.setdefault("datasets", {})[dspec.name] = {
                    k: info[k] for k in ("files_sha256", "content_sha256", "conversion", "timestamp_unit",
                                         "canonical_cache", "source") if k in info}
                folder.write_provenance(prov)
        dataset = dataset_cache[dkey]
        skey = (dkey, seed, json.dumps({"kind": sspec.kind, "params": sspec.params}, sort_keys=True, default=str))
        if skey not in split_cache:
            try:
                split = make_split(dataset, sspec.kind, seed, **sspec.params)
            except BenchError as exc:
                raise type(exc)(f"{config.source}: split '{sspec.kind}' on dataset '{dspec.name}': {exc}") from None
            folder.splits.write_split(split.fingerprint, train=split.train, test=split.test, valid=split.valid,
                                      history=split.history, cold_users=split.cold_users,
                                      cold_items=split.cold_items)
            protocol = eval_protocols.from_evaluation(config.evaluation)
            if protocol.pointwise:  # labelled pairs: refused before any cell runs when the data has no two labels
                pointwise.check_dataset(dataset, split, protocol.label_threshold,
                                        f"{config.source}: split '{sspec.kind}'")
                split_cache[skey] = (split, pointwise.train_data(dataset, split.train, protocol.label_threshold))
            else:
                split_cache[skey] = (split, train_data(dataset, split.train))
        return (dataset, *split_cache[skey])

    pending = [(d, seed, s) for (d, seed, s, _m), cid in zip(cells, order) if force or not folder.cell_done(cid)]
    for dspec, seed, sspec in pending:  # every data or split problem surfaces before the first cell runs
        prepare(dspec, seed, sspec)
    for cid, rows in retriever_cells(config, run_id, run_dir, prepare, force, say, data.cache_dir):
        order.append(cid)  # the retriever's own ranking: one row set per split (bench.retrieved)
        rows_by_cell[cid] = rows

    spec = config.execution
    executor = None

    def table_rows() -> list[dict[str, Any]]:
        return [row for cid in order for row in rows_by_cell.get(cid, [])]

    def finish(task: CellTask, result: CellResult) -> None:
        """A cell came back: retry a dead process (max_retries), else write its folder and the tables."""
        attempt = {"error": result.info.get("error"), "execution": result.info.get("execution", {})}
        if result.crashed and len(task.attempts) < spec.max_retries:
            task.attempts.append(attempt)
            say(f"{task.label}: {result.info.get('error')}; retry {len(task.attempts)} of {spec.max_retries}")
            executor.submit(task)
            return
        result.info.setdefault("execution", {})["attempts"] = len(task.attempts) + 1
        result.info["execution"]["earlier_attempts"] = task.attempts
        write_cell(run_dir, task.cid, result)
        rows_by_cell[task.cid] = result.rows
        if result.status == "failed":
            failures.append(f"{task.label}: {result.info['error']}")
        write_tables(run_dir, table_rows(), prov)
        shared = result.info["execution"].get("shared_node_with")
        note = f", {shared} other cell(s) on its node" if shared else ""
        say(f"{task.label}: {result.status} in {time.perf_counter() - task.submitted:.1f}s{note} "
            f"(elapsed {time.perf_counter() - started:.0f}s)")

    try:
        if spec.executor == "ray":  # Ray is imported only when asked for (the [ray] extra)
            from bench.ray_executor import RayExecutor

            executor = RayExecutor(spec, config.device)
        else:
            executor = LocalExecutor(spec)
        for index, (dspec, seed, sspec, mspec) in enumerate(cells, 1):
            cid = order[index - 1]
            label = f"[{index}/{len(cells)}] {dspec.name} {sspec.kind} seed={seed} {mspec.label}"
            info = None if force else folder.read_cell(cid)
            if info is not None:
                rows_by_cell[cid] = info["rows"]
                skipped += 1
                if info.get("status") == "failed":
                    failures.append(f"{label}: {info.get('error')}")
                say(f"{label}: already done ({info.get('status')}), reused (--force re-runs it)")
                continue
            dataset, split, train = prepare(dspec, seed, sspec)
            runner = CellRunner(config, run_id, run_dir, dataset, dspec, split, sspec, train, seed, data.cache_dir)
            if progress is not None:  # lines from inside long cells too (bench.progress)
                runner.progress_label, runner.progress_interval = label, progress_interval
            while executor.capacity and executor.outstanding >= executor.capacity:
                finish(*executor.next_done())
            executor.submit(CellTask(runner, mspec, cid, label))
        while executor.outstanding:
            finish(*executor.next_done())
    except KeyboardInterrupt:
        if executor is not None:
            executor.cancel()  # outstanding cells are stopped; finished ones are in their folders
        # Every cell whose cell.json exists is finished: rebuild the table from those files.
        finished = [folder.read_cell(cid) for cid in order]
        rows = [row for info in finished if info is not None for row in info["rows"]]
        write_tables(run_dir, rows, prov)
        say(f"interrupted: finished cells are saved in {run_dir}; "
            f"continue with: bench run --resume {run_dir}")
        raise
    finally:
        if executor is not None:
            executor.close()
    all_rows = table_rows()
    all_rows.extend(grid.selection_rows(all_rows, config.models))  # grids: pick each winner on validation
    prov["calibration"] = systems.calibration_record(calibration + systems.calibrate())  # start and end
    folder.write_provenance(prov)
    frame = write_tables(run_dir, all_rows, prov)
    return RunSummary(run_dir, len(cells), len(failures), skipped, frame, failures)
