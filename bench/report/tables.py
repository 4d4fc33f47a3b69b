"""The report's tables, computed from a run folder: leaderboards with CIs and
significance markers, deltas against another run, systems figures, model details.

Significance (named in the report by :data:`SIGNIFICANCE_METHOD`): in every
leaderboard column the best model is compared with each other model by a
two-sided paired t-test over users (values paired by seed and user id, then
each user's values averaged over its seeds: seeds are not extra users, see
``bench.stats``), and the p-values of that column are Holm-corrected; a model whose
adjusted p is >= :data:`ALPHA` is marked "not significantly different from the
best". Aggregate-only metrics (coverage) have no per-user values and no test.

Rows read from the tidy table (see ``bench.results`` and ``bench.systems``):
accuracy metrics are rows with ``k > 0``; status ``unsupported`` rows become
"not served"; a failed cell is the row ``metric == "error"``; systems figures
are rows with ``k == 0`` (segment ``fit`` for fitting, the scored segment for
serving), by the names in :data:`FIT_FIGURES` and :data:`SERVE_FIGURES` plus
``throughput_users_per_s@batch=B``; unknown ``k == 0`` names are still shown.
Real-time rows (``bench.realtime``) live in segments ``replay:<policy>`` and
``update-cost`` (``prequential_hit_rate``, ``prequential_new_user_hit_rate``,
``updates``, ``update_seconds_total``, ``replay_recommend_seconds``,
``update_seconds_per_new_user``/``_item``; curves from ``cells/<id>/realtime.json``)
and are shown only in the real-time section. A sampled ``protocol`` other than
``full`` gets its own leaderboards.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench import registry
from bench.explanations import EXPLAIN_SECONDS, METRIC_FIELDS
from bench import registry, retrieved
from bench.metrics import DEFAULT_METRICS
from bench.report import units
from bench.report.rundata import RunData
from bench.stats import (average_over_seeds, bootstrap_ci, holm_adjust, paired_ttest_pvalues, paired_user_means,
                         seed_spread, seed_user_keys, welch_ttest_pvalue)
from bench.systems import OVER_BUDGET, TOO_FEW

ALPHA = 0.05
SIGNIFICANCE_METHOD = ("two-sided paired t-test over users (values paired by seed and user id, each user's "
                       "values averaged over its seeds, so a seed never counts as extra users; "
                       "scipy.stats.ttest_rel), Holm-Bonferroni correction over the models compared with the "
                       f"best in each column, alpha = {ALPHA}")
COMPARE_METHOD = ("paired t-test over the users both runs scored (each user averaged over its seeds) when their "
                  "split fingerprints match, otherwise Welch's t-test; Holm-Bonferroni correction over all deltas "
                  f"of a table, alpha = {ALPHA}")

# k = 0 figures and their column titles; the values carry their unit (bench.report.units.figure)
FIT_FIGURES: dict[str, str] = {
    "import_seconds": "imports (cold load before fit)",
    "fit_seconds": "fit wall time",
    "fit_cpu_seconds": "fit CPU time",
    "model_bytes": "model size",
    "fit_peak_rss_mb": "fit peak RSS",
    "fit_rss_increase_mb": "fit RSS increase",
    "fit_peak_gpu_mb": "fit peak GPU memory",
    "fit_caches_warm": "fit found process caches warm (1 = yes)",
    "fit_disk_caches_hit": "fit read its disk caches back, e.g. a converted checkpoint (1 = yes, 0 = built)",
    "calibration_seconds": "calibration around fit",
    "calibration_cpu_seconds": "calibration around fit (CPU)",
}
SERVE_FIGURES: dict[str, str] = {
    "latency_mean_ms": "latency mean",
    "latency_p50_ms": "latency p50",
    "latency_p90_ms": "latency p90",
    "latency_p95_ms": "latency p95",
    "latency_p99_ms": "latency p99",
    "users_per_second": "users/s (warm recommend calls)",
    "recommend_seconds": "recommend time (warm calls, whole segment)",
    "first_call_seconds": "first call (1 user, cold)",
    "validate_seconds": "output validation",
    "server_target_rate": "server target rate (req/s)",
    "server_achieved_rate": "server achieved rate (req/s)",
    "server_latency_p50_ms": "server p50",
    "server_latency_p99_ms": "server p99",
    "server_max_rate_at_p99": "max rate at p99 target (req/s)",
    "serve_peak_gpu_mb": "serve peak GPU memory",
    "timer_overhead_ns": "timer overhead",
}
THROUGHPUT_PREFIX = "throughput_users_per_s@batch="
# explanation rows have the report's Explanations section (bench.report.explanations), not the systems tables
# pair metrics (k = 0) have their own section (report.pointwise)
NOT_FIGURES = {"error", EXPLAIN_SECONDS, *METRIC_FIELDS, "auc", "gauc", "logloss"}
# bench.realtime's segments: shown in the real-time section, not in leaderboards or systems tables
REALTIME_SEGMENTS = ("replay:", "update-cost")


def is_realtime(segment: pd.Series) -> pd.Series:
    return segment.str.startswith(REALTIME_SEGMENTS)


def metric_direction(name: str) -> bool | None:
    """higher_is_better of a registered metric; None when the name is unknown."""
    try:
        direction = registry.metrics.get(name).higher_is_better
        return None if direction is None else bool(direction)  # None: descriptive (explanation_length)
    except Exception:  # noqa: BLE001 - an unregistered metric (another plug-in) is shown, undirected
        return None


def metric_sort_key(name: str) -> tuple[int, str]:
    """Suite-default metrics in their usual order, a variant (``map[denominator=test]``) beside its base."""
    base = name.split("@")[0].split("[")[0]
    return (DEFAULT_METRICS.index(base) if base in DEFAULT_METRICS else len(DEFAULT_METRICS), name)


def segment_sort_key(segment: str) -> tuple[int, float, str]:
    """``all`` first, then k-shot levels by number of shots, then cold items, then anything else."""
    if segment == "all":
        return (0, 0.0, segment)
    match = re.fullmatch(r"shots=(\d+)", segment)
    if match:
        return (1, float(match.group(1)), segment)
    if segment == "cold-items":
        return (2, 0.0, segment)
    return (3, 0.0, segment)


def fmt(value: float | None, digits: int = units.DIGITS) -> str:
    """Numbers for people (three significant figures, k/M): 0.303, 5.21, 150, 12.0k."""
    return units.number(value, digits)


# -- leaderboards -----------------------------------------------------------------


@dataclass
class Column:
    metric: str
    k: int
    higher_is_better: bool | None
    per_user: bool = True

    @property
    def key(self) -> str:
        return f"{self.metric}@{self.k}"


@dataclass
class Delta:
    """Change of one leaderboard cell against the compared run."""

    other: float
    value: float
    p_adj: float = float("nan")
    significant: bool = False
    better: bool | None = None  # direction-aware; None for undirected metrics or no change


@dataclass
class Cell:
    status: str  # ok | unsupported | first_stage | failed | missing
    value: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    best: bool = False
    tied: bool = False  # not significantly different from the best
    p_adj: float = float("nan")
    tested: bool = False
    delta: Delta | None = None
    n: int = 0  # test users scored (per seed): below the board's n for a model run with its own max_test_users
    seed_sd: float = float("nan")  # spread of the per-seed means (several seeds only), shown apart from the CI
    seed_min: float = float("nan")
    seed_max: float = float("nan")

    @property
    def seed_text(self) -> str:
        if self.status != "ok" or not math.isfinite(self.seed_sd):
            return ""
        return f"SD {fmt(self.seed_sd, 2)} ({fmt(self.seed_min, 3)}–{fmt(self.seed_max, 3)})"

    @property
    def text(self) -> str:
        return {"unsupported": "not served", "first_stage": "first stage", "failed": "failed",
                "missing": "–"}.get(self.status, fmt(self.value))

    @property
    def ci_text(self) -> str:
        if self.status != "ok" or not math.isfinite(self.ci_low):
            return ""
        return f"[{fmt(self.ci_low, 3)}, {fmt(self.ci_high, 3)}]"


@dataclass
class Leaderboard:
    dataset: str
    split: str
    protocol: str
    segment: str
    split_params: str
    columns: list[Column]
    models: list[str]
    cells: dict[tuple[str, str], Cell]  # (model, column key) -> cell
    n_users: int
    seeds: list[int]
    notes: list[str] = field(default_factory=list)
    values: dict[str, "ModelValues | None"] = field(default_factory=dict, repr=False)  # per-user, for --compare
    sampled: dict[str, int] = field(default_factory=dict)  # model -> users scored, for models below n_users
    same_users: "SameUsers | None" = None  # every model on the sampled models' users

    @property
    def title(self) -> str:
        proto = "" if self.protocol == "full" else f", protocol {self.protocol}"
        return f"{self.dataset} · {self.split} split · segment {self.segment}{proto}"

    @property
    def anchor(self) -> str:
        return "lb-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{self.dataset}-{self.split}-{self.protocol}-{self.segment}")

    def cell(self, model: str, column: str) -> Cell:
        return self.cells.get((model, column), Cell("missing"))

    def column(self, key: str) -> Column | None:
        return next((c for c in self.columns if c.key == key), None)

    def model_note(self, model: str) -> str:
        return f"n = {self.sampled[model]}" if model in self.sampled else ""

    def row_status(self, model: str) -> str:
        statuses = {self.cell(model, c.key).status for c in self.columns}
        return "ok" if "ok" in statuses else (statuses.pop() if len(statuses) == 1 else "missing")


@dataclass
class ModelValues:
    """A model's per-user matrix over all seeds of one segment: rows keyed by (seed, user)."""

    keys: np.ndarray
    values: np.ndarray
    columns: list[str]

    def column(self, name: str) -> np.ndarray | None:
        return self.values[:, self.columns.index(name)] if name in self.columns else None

    def user_means(self, name: str) -> np.ndarray | None:
        """The column as one value per user (its mean over the seeds it was scored in): the unit of CIs."""
        col = self.column(name)
        return None if col is None else average_over_seeds(self.keys, col)[1]


def model_values(run: RunData, rows: pd.DataFrame, segment: str) -> ModelValues | None:
    """Stack the per-user files of a model's cells (one per seed) for one segment."""
    parts_keys, parts_values, columns = [], [], None
    for seed, cid in rows[["seed", "cell_id"]].drop_duplicates().itertuples(index=False):
        pu = run.per_user(str(cid), segment)
        if pu is None:
            continue
        if columns is None:
            columns = pu.columns
        elif pu.columns != columns:
            pu_index = [pu.columns.index(c) if c in pu.columns else None for c in columns]
            pu = type(pu)(pu.users, np.column_stack([pu.values[:, i] if i is not None else
                                                      np.full(len(pu.users), np.nan) for i in pu_index]), columns)
        parts_keys.append(seed_user_keys(np.full(len(pu.users), int(seed)), pu.users))
        parts_values.append(pu.values)
    if columns is None:
        return None
    return ModelValues(np.concatenate(parts_keys), np.concatenate(parts_values), columns)


def _aligned(a: ModelValues, b: ModelValues, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-user means of ``column`` on the (seed, user) pairs both scored (bench.stats.paired_user_means)."""
    va, vb = a.column(column), b.column(column)
    if va is None or vb is None:
        return np.empty(0), np.empty(0)
    _, ma, mb = paired_user_means(a.keys, va, b.keys, vb)
    return ma, mb


def _pair_pvalues(a: ModelValues, b: ModelValues) -> dict[str, float]:
    """Paired p-value of every column two models share, over users, in one vectorised call."""
    shared = [c for c in a.columns if c in b.columns]
    if not shared:
        return {}
    _, pa, pb = paired_user_means(a.keys, a.values[:, [a.columns.index(c) for c in shared]],
                                  b.keys, b.values[:, [b.columns.index(c) for c in shared]])
    if len(pa) < 2:
        return {}
    return dict(zip(shared, paired_ttest_pvalues(pa, pb).tolist()))


def _best(scored: list[tuple[str, Cell]], higher_is_better: bool) -> list[str]:
    """The models whose value is the column's best (several on an exact tie)."""
    sign = 1.0 if higher_is_better else -1.0
    top = max(sign * c.value for _, c in scored)
    return [m for m, c in scored if sign * c.value == top]


def _mark_best_and_ties(board: Leaderboard, values: dict[str, ModelValues | None]) -> None:
    """Best = highest mean among models scored on every test user (a sample's mean is not comparable);
    every other model, sampled ones included, is tested against it on the users both scored."""
    pair_cache: dict[tuple[str, str], dict[str, float]] = {}
    for column in board.columns:
        ok = [(m, board.cells[(m, column.key)]) for m in board.models
              if (m, column.key) in board.cells and board.cells[(m, column.key)].status == "ok"
              and math.isfinite(board.cells[(m, column.key)].value)]
        if not ok or column.higher_is_better is None:
            continue
        eligible = [(m, c) for m, c in ok if m not in board.sampled] or ok
        best_models = _best(eligible, column.higher_is_better)
        for m in best_models:
            board.cells[(m, column.key)].best = True
        if not column.per_user:
            continue
        reference = values.get(best_models[0])
        others = [(m, c) for m, c in ok if m not in best_models]
        raw = []
        for m, c in others:
            mv = values.get(m)
            if reference is None or mv is None:
                raw.append(float("nan"))
                continue
            if (best_models[0], m) not in pair_cache:
                pair_cache[(best_models[0], m)] = _pair_pvalues(reference, mv)
            raw.append(pair_cache[(best_models[0], m)].get(column.key, float("nan")))
        adjusted = holm_adjust(np.array(raw))
        for (m, c), p in zip(others, adjusted):
            c.p_adj = float(p)
            c.tested = bool(math.isfinite(p))
            c.tied = bool(math.isfinite(p) and p >= ALPHA)


def leaderboards(run: RunData) -> list[Leaderboard]:
    """One leaderboard per dataset x split x protocol x segment, every metric at every k."""
    frame = run.frame
    accuracy = frame[(frame["k"] > 0) & (frame["metric"] != "error") & ~is_realtime(frame["segment"])]
    failed = frame[frame["metric"] == "error"]
    order = run.model_order()
    boards = []
    keys = accuracy[["dataset", "split", "protocol", "segment"]].drop_duplicates()
    keys = sorted(keys.itertuples(index=False), key=lambda r: (r.dataset, split_rank(run, r.split), r.protocol,
                                                               segment_sort_key(r.segment)))
    failed_splits = {(r.dataset, r.split, r.model) for r in failed.itertuples()}
    by_board = dict(iter(accuracy.groupby(["dataset", "split", "protocol", "segment"], sort=False)))
    models_in_split = frame.groupby(["dataset", "split"])["model"].agg(set)
    for key in keys:
        sub = by_board[tuple(key)]
        in_split = models_in_split.get((key.dataset, key.split), set())
        models = [m for m in order if m in in_split]
        pairs = sorted({(r.metric, int(r.k)) for r in sub[["metric", "k"]].itertuples(index=False)},
                       key=lambda mk: (metric_sort_key(mk[0]), mk[1]))
        columns = [Column(m, k, metric_direction(m)) for m, k in pairs]
        cells: dict[tuple[str, str], Cell] = {}
        values: dict[str, ModelValues | None] = {}
        seeds = sorted(int(s) for s in sub["seed"].unique())
        by_model = dict(iter(sub.groupby("model", sort=False)))
        for model in models:
            msub = by_model.get(model)
            if msub is None:
                status = "failed" if (key.dataset, key.split, model) in failed_splits else "missing"
                for column in columns:
                    cells[(model, column.key)] = Cell(status)
                continue
            ok = msub[msub["status"] == "ok"]
            values[model] = model_values(run, ok, key.segment) if not ok.empty else None
            # one pass over the model's rows (a boolean filter per column made the report slow on big suites)
            statuses = {(m, int(k)): set(g) for (m, k), g in msub.groupby(["metric", "k"], sort=False)["status"]}
            ok_rows = {(m, int(k)): g for (m, k), g in ok.groupby(["metric", "k"], sort=False)}
            for column in columns:
                okrow = ok_rows.get((column.metric, column.k))
                if okrow is None:
                    seen = statuses.get((column.metric, column.k), set())
                    status = next((s for s in ("unsupported", "first_stage") if s in seen),
                                  "failed" if (key.dataset, key.split, model) in failed_splits else "missing")
                    cells[(model, column.key)] = Cell(status)
                    continue
                row_values = okrow["value"].to_numpy()
                cell = Cell("ok", float(row_values.mean()), n=int(okrow["n"].to_numpy().max()))
                if len(okrow) == 1:
                    cell.ci_low, cell.ci_high = float(okrow["ci_low"].iloc[0]), float(okrow["ci_high"].iloc[0])
                else:  # several seeds: mean and CI over users (each user's mean over its seeds), spread apart
                    cell.seed_sd, cell.seed_min, cell.seed_max = seed_spread(row_values)
                    mv = values[model]
                    col = None if mv is None else mv.user_means(column.key)
                    if col is not None and np.isfinite(col).all():
                        cell.value = float(col.mean())
                        low, high = bootstrap_ci(col)
                        cell.ci_low, cell.ci_high = float(low[0]), float(high[0])
                cells[(model, column.key)] = cell
        for column in columns:
            column.per_user = any(v is not None and (c := v.column(column.key)) is not None and np.isfinite(c).any()
                                  for v in values.values())
        n_users = int(sub[sub["status"] == "ok"]["n"].max()) if (sub["status"] == "ok").any() else 0
        board = Leaderboard(key.dataset, key.split, key.protocol, key.segment,
                            str(sub["split_params"].iloc[0]) if len(sub) else "", columns, models, cells,
                            n_users, seeds, values=values)
        board.sampled = _sampled_models(board)
        if (protocol_note := retrieved.board_note(key.protocol, key.segment)) is not None:
            board.notes.append(protocol_note)
        _mark_best_and_ties(board, values)
        if board.sampled:
            board.same_users = same_users_table(board)
            names = ", ".join(f"{m} ({n})" for m, n in board.sampled.items())
            board.notes.append(
                f"Scored on a seeded sample of the {n_users} test users (the model's own max_test_users): {names}. "
                f"They are not eligible for best; ≈ and the tests against the best pair the users both scored"
                + (f"; the table below compares every model on those {board.same_users.n_users} users."
                   if board.same_users is not None else "."))
        board.notes.extend(_segment_notes(run, by_model, key.segment))
        if len(seeds) > 1:
            board.notes.append(_seed_note(board))
        undirected = [c.metric for c in columns if c.higher_is_better is None]
        if undirected:
            board.notes.append("no best marked for unregistered metrics: " + ", ".join(sorted(set(undirected))))
        boards.append(board)
    return boards


def _segment_notes(run: RunData, by_model: dict[str, pd.DataFrame], segment: str) -> list[str]:
    """What the runner recorded about a model's lists in this segment (cell.json): how deep the model
    itself ranked when a first stage filled the rest, and validation warnings (all-equal top-k scores)."""
    notes = []
    for model, msub in by_model.items():
        for cid in msub["cell_id"].unique():
            info = run.cells.get(str(cid), {})
            seg = info.get("segments", {}).get(segment, {})
            seed = f" (seed {info['seed']})" if "seed" in info else ""
            if seg.get("ranked_depth") is not None:
                notes.append(f"{model}{seed} ranked only its top {seg['ranked_depth']}: cells at k above it "
                             f"show \"first stage\" — those positions were ranked by the first stage, not the "
                             f"model, and are not credited to it")
            notes.extend(f"{model}{seed}: warning: {w}" for w in seg.get("warnings", []))
    return notes
def _seed_note(board: Leaderboard) -> str:
    """The spread across seeds, apart from the CIs (which are over users: a seed is not extra users)."""
    parts = []
    for column in board.columns:
        spread = [f"{m} {c.seed_text}" for m in board.models if (c := board.cell(m, column.key)).seed_text]
        if spread:
            parts.append(f"{column.key}: " + ", ".join(spread))
    return (f"Seeds {', '.join(map(str, board.seeds))}: values and CIs are over users, each user's value averaged "
            f"over the seeds it was scored in; spread of the per-seed means (SD, min–max): " + "; ".join(parts))


def _sampled_models(board: Leaderboard) -> dict[str, int]:
    """Models scored on fewer test users than the board's largest count (their own max_test_users)."""
    out = {}
    for model in board.models:
        counts = [c.n for key, c in board.cells.items() if key[0] == model and c.status == "ok" and c.n]
        if counts and max(counts) < board.n_users:
            out[model] = max(counts)
    return out


@dataclass
class SameUsers:
    """Every model's mean on the users the sampled models were scored on: the like-for-like comparison."""

    n_users: int
    models: list[str]
    columns: list[Column]
    cells: dict[tuple[str, str], Cell]

    def cell(self, model: str, column: str) -> Cell:
        return self.cells.get((model, column), Cell("missing"))


def same_users_table(board: Leaderboard) -> SameUsers | None:
    """Means over the (seed, user) keys every sampled model scored (nested samples: the smallest one)."""
    keys = None
    for model in board.sampled:
        mv = board.values.get(model)
        if mv is not None:
            keys = mv.keys if keys is None else np.intersect1d(keys, mv.keys)
    if keys is None or keys.size == 0:
        return None
    columns = [c for c in board.columns if c.per_user]
    cells: dict[tuple[str, str], Cell] = {}
    models = []
    for model in board.models:
        mv = board.values.get(model)
        if mv is None:
            continue
        _, _, rows = np.intersect1d(keys, mv.keys, assume_unique=True, return_indices=True)
        if rows.size < keys.size:
            continue  # not scored on all of these users (failed, not served, or another sample)
        models.append(model)
        for column in columns:
            col = mv.column(column.key)
            if col is not None and np.isfinite(col[rows]).all():
                users, means, _ = average_over_seeds(keys, col[rows])  # users are the unit, not (seed, user)
                cells[(model, column.key)] = Cell("ok", float(means.mean()), n=int(users.size))
    for column in columns:
        ok = [(m, cells[(m, column.key)]) for m in models if (m, column.key) in cells]
        if ok and column.higher_is_better is not None:
            for m in _best(ok, column.higher_is_better):
                cells[(m, column.key)].best = True
    n_users = int(average_over_seeds(keys, np.zeros(keys.size))[0].size)
    return SameUsers(n_users, models, columns, cells) if len(models) > 1 else None


# -- paired comparisons ([[models]] paired_with) ------------------------------------------

PAIRED_METHOD = ("per-user differences on the (seed, user) pairs both models scored, each user averaged over "
                 "its seeds: mean difference, 95% percentile bootstrap CI of it (1000 resamples of users), "
                 "two-sided paired t-test (scipy.stats.ttest_rel); one planned comparison per pair, so no "
                 "multiple-comparison correction")
PAIRED_RESAMPLES = 1000


@dataclass
class PairedRow:
    column: str
    model: float  # mean over the paired users
    reference: float
    diff: float  # model - reference
    ci_low: float
    ci_high: float
    p: float


@dataclass
class PairedComparison:
    """One model against the model it names in ``paired_with``, on one leaderboard's users."""

    board: Leaderboard
    model: str
    reference: str
    n_users: int  # users both scored (the test's n)
    n_model: int  # users each scored: equal to n_users when the two arms saw the same users
    n_reference: int
    rows: list[PairedRow]

    @property
    def same_users(self) -> bool:
        return self.n_model == self.n_reference == self.n_users


def paired_comparisons(run: RunData, boards: list[Leaderboard]) -> list[PairedComparison]:
    """For each ``paired_with`` pair of the suite and each leaderboard both models are on: the paired
    difference of every per-user column (bench.stats: users paired by (seed, user), seeds averaged)."""
    pairs = [(m.get("label") or m.get("name"), m["paired_with"]) for m in run.config.get("models", [])
             if m.get("paired_with")]
    out = []
    for board in boards:
        for model, reference in pairs:
            a, b = board.values.get(model), board.values.get(reference)
            if a is None or b is None:
                continue
            columns = [c.key for c in board.columns if c.per_user and c.key in a.columns and c.key in b.columns]
            if not columns:
                continue
            users, ma, mb = paired_user_means(a.keys, a.values[:, [a.columns.index(c) for c in columns]],
                                              b.keys, b.values[:, [b.columns.index(c) for c in columns]])
            diff = ma - mb
            low, high = bootstrap_ci(diff, PAIRED_RESAMPLES, seed=0)
            pvalues = paired_ttest_pvalues(ma, mb)
            rows = [PairedRow(c, float(ma[:, j].mean()), float(mb[:, j].mean()), float(diff[:, j].mean()),
                              float(low[j]), float(high[j]), float(pvalues[j]))
                    for j, c in enumerate(columns)] if users.size else []
            n_a = int(average_over_seeds(a.keys, np.zeros(a.keys.size))[0].size)
            n_b = int(average_over_seeds(b.keys, np.zeros(b.keys.size))[0].size)
            out.append(PairedComparison(board, model, reference, int(users.size), n_a, n_b, rows))
    return out


def loss_table(run: RunData, blocks: int = 8) -> FigureTable | None:
    """The fine-tuning loss of every fitted model that kept one (``describe()["training"]["loss_curve"]``):
    the mean loss over ``blocks`` equal runs of steps, first to last, so a curve fits in a table row."""
    rows = []
    for cell in sorted(run.cells.values(), key=lambda c: (str(c.get("dataset")), split_rank(run, str(c.get("split"))),
                                                          str(c.get("model")), int(c.get("seed", 0)))):
        curve = ((cell.get("model_description") or {}).get("training") or {}).get("loss_curve") or []
        if not curve:
            continue
        parts = np.array_split(np.asarray(curve, dtype=np.float64), min(blocks, len(curve)))
        spans, start = [], 1
        for part in parts:
            spans.append(f"{fmt(float(part.mean()), 3)} ({start}–{start + len(part) - 1})")
            start += len(part)
        rows.append([str(cell.get("model")), f"{cell.get('dataset')} · {cell.get('split')} · seed {cell.get('seed')}",
                     str(len(curve))] + spans + [""] * (blocks - len(spans)))
    if not rows:
        return None
    return FigureTable("Fine-tuning loss", ["model", "cell", "steps"] + [f"block {i + 1}" for i in range(blocks)],
                       rows, note="mean training loss over equal blocks of steps (the steps in parentheses); "
                                  "every step's loss is in cell.json, model_description.training.loss_curve")


def split_rank(run: RunData, split: str) -> int:
    """Position of a split kind in the suite file (report order follows the suite)."""
    kinds = [s.get("kind") for s in run.config.get("splits", [])]
    return kinds.index(split) if split in kinds else len(kinds)


def add_deltas(current: list[Leaderboard], run: RunData, other: RunData) -> list[str]:
    """Attach to every leaderboard cell its change against ``other``; returns notes on what did not match."""
    other_boards = {(b.dataset, b.split, b.protocol, b.segment): b for b in leaderboards(other)}
    notes = []
    same_split = {}
    for fp_frame, name in ((run.frame, "cur"), (other.frame, "other")):
        same_split[name] = fp_frame.groupby(["dataset", "split"])["split_fingerprint"].agg(lambda s: frozenset(s))
    for board in current:
        ob = other_boards.get((board.dataset, board.split, board.protocol, board.segment))
        if ob is None:
            notes.append(f"{board.title}: not in the compared run")
            continue
        fps_cur = same_split["cur"].get((board.dataset, board.split))
        fps_other = same_split["other"].get((board.dataset, board.split))
        paired = fps_cur is not None and fps_cur == fps_other
        unpaired_note = (f"{board.dataset} · {board.split}: the runs used different splits (fingerprints differ), "
                         f"so its deltas are tested unpaired (Welch)")
        if not paired and unpaired_note not in notes:
            notes.append(unpaired_note)
        entries: list[tuple[Cell, float]] = []
        for model in board.models:
            for column in board.columns:
                cell, ocell = board.cell(model, column.key), ob.cell(model, column.key)
                if cell.status != "ok" or ocell.status != "ok":
                    continue
                delta = Delta(ocell.value, cell.value - ocell.value)
                if column.higher_is_better is not None and delta.value != 0:
                    delta.better = (delta.value > 0) == column.higher_is_better
                cell.delta = delta
                p = float("nan")
                mv, omv = board.values.get(model), ob.values.get(model)
                if column.per_user and mv is not None and omv is not None:
                    if paired:
                        a, b = _aligned(mv, omv, column.key)
                        p = float(paired_ttest_pvalues(a, b)[0]) if a.size >= 2 else float("nan")
                    else:
                        a, b = mv.user_means(column.key), omv.user_means(column.key)
                        p = welch_ttest_pvalue(a, b) if a is not None and b is not None else float("nan")
                entries.append((cell, p))
        adjusted = holm_adjust(np.array([p for _, p in entries])) if entries else []
        for (cell, _), p in zip(entries, adjusted):
            cell.delta.p_adj = float(p)
            cell.delta.significant = bool(math.isfinite(p) and p < ALPHA)
    return notes


# -- the at-a-glance lines ---------------------------------------------------------


@dataclass
class Verdict:
    board: Leaderboard
    column: str
    leaders: list[str]  # best plus those not significantly different
    best: str
    best_cell: Cell
    worse: list[str]
    not_served: list[str]
    failed: list[str]


def verdicts(boards: list[Leaderboard], headline: str) -> list[Verdict]:
    """Who wins each leaderboard on the headline metric, and who is statistically tied with the winner."""
    out = []
    for board in boards:
        column = board.column(headline)
        if column is None:
            continue
        best = [m for m in board.models if board.cell(m, headline).best]
        tied = [m for m in board.models if board.cell(m, headline).tied]
        ok = [m for m in board.models if board.cell(m, headline).status == "ok"]
        if not best:
            continue
        out.append(Verdict(board, headline, best + tied, best[0], board.cell(best[0], headline),
                           [m for m in ok if m not in best and m not in tied],
                           [m for m in board.models if board.cell(m, headline).status == "unsupported"],
                           [m for m in board.models if board.cell(m, headline).status == "failed"]))
    return out


# -- systems -----------------------------------------------------------------------


@dataclass
class FigureTable:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    summary: str = ""  # one line shown while a long table is folded


def _figure_label(name: str) -> str:
    if name in FIT_FIGURES:
        return FIT_FIGURES[name]
    if name in SERVE_FIGURES:
        return SERVE_FIGURES[name]
    if name.startswith(THROUGHPUT_PREFIX):
        return f"throughput users/s, batch {name[len(THROUGHPUT_PREFIX):]}"
    return name


def _figure_order(name: str) -> tuple[int, int, str]:
    names = list(FIT_FIGURES) + list(SERVE_FIGURES)
    if name.startswith(THROUGHPUT_PREFIX):
        batch = name[len(THROUGHPUT_PREFIX):]
        return (len(FIT_FIGURES) + 5, int(batch) if batch.isdigit() else 10**9, name)
    return (names.index(name) if name in names else len(names), 0, name)


def _fmt_figure(name: str, value: float) -> str:
    return units.figure(name, value)


def _extreme(means: pd.Series, name: str, lowest: bool) -> tuple[str, float] | None:
    """(row label, value) of the lowest/highest mean of figure ``name`` (index: ..., metric last)."""
    try:
        values = means.xs(name, level="metric").dropna()
    except KeyError:
        return None
    if values.empty:
        return None
    key = values.idxmin() if lowest else values.idxmax()
    label = " · ".join(map(str, key)) if isinstance(key, tuple) else str(key)
    return label, float(values[key])


def _summary(means: pd.Series, wanted: list[tuple[str, str, bool]]) -> str:
    """"fastest p99: pop · all (23.3 µs); ..." from (phrase, figure name, lowest is the one to name)."""
    parts = []
    for phrase, name, lowest in wanted:
        found = _extreme(means, name, lowest)
        if found:
            parts.append(f"{phrase}: {found[0]} ({_fmt_figure(name, found[1])})")
    return "; ".join(parts)


CONCURRENT_MARK = " ‡"
CONCURRENT_NOTE = ("‡ measured while other cells ran on the same node (executor jobs > 1 or Ray): these timings "
                   "may be disturbed; exclusive_timing = true measures serving alone (bench.execution)")


def concurrent_cells(run: RunData) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]:
    """(dataset, split, model) whose fit, and whose serving figures, ran beside other cells on their node."""
    fit_ids, serve_ids = set(), set()
    for cid, info in run.cells.items():
        execution = info.get("execution") or {}
        if execution.get("shared_node_with"):
            fit_ids.add(cid)
            if not execution.get("systems_alone"):
                serve_ids.add(cid)
    frame = run.frame
    keys = lambda ids: set(map(tuple, frame.loc[frame["cell_id"].isin(ids),  # noqa: E731
                                                ["dataset", "split", "model"]].drop_duplicates().to_numpy()))
    return keys(fit_ids), keys(serve_ids)


OVER_BUDGET_NOTE = ("over budget: that batch scenario was not run, because one call of it would take more than "
                    "twice evaluation.systems.max_seconds at the model's users/s of the accuracy pass; "
                    "raise max_seconds to measure it.")


def systems_tables(run: RunData) -> list[FigureTable]:
    """Fit cost per dataset x split (one row per model) and serving cost per segment; figures measured
    beside other cells on the node are marked."""
    shared_fit, shared_serve = concurrent_cells(run)
    mark = lambda shared, d, s, m: m + (CONCURRENT_MARK if (d, s, m) in shared else "")  # noqa: E731
    frame = run.frame
    figures = frame[(frame["k"] == 0) & frame["status"].isin(["ok", TOO_FEW, OVER_BUDGET])
                    & ~frame["metric"].isin(NOT_FIGURES) & ~is_realtime(frame["segment"])]
    too_few = figures[figures["status"] == TOO_FEW].groupby(["model", "segment", "metric"])["n"].max()
    over_budget = set(map(tuple, figures.loc[figures["status"] == OVER_BUDGET, ["model", "segment", "metric"]]
                          .to_numpy()))
    tables = []
    order = run.model_order()
    for (dataset, split), sub in sorted(figures.groupby(["dataset", "split"]),
                                        key=lambda kv: (kv[0][0], split_rank(run, kv[0][1]))):
        fit = sub[sub["segment"] == "fit"]
        if not fit.empty:
            names = sorted(fit["metric"].unique(), key=_figure_order)
            means = fit.groupby(["model", "metric"])["value"].mean()
            rows = [[mark(shared_fit, dataset, split, m)] + [_fmt_figure(n, means.get((m, n), float("nan")))
                                                              for n in names]
                    for m in order if m in set(fit["model"])]
            note = CONCURRENT_NOTE if any(r[0].endswith(CONCURRENT_MARK) for r in rows) else ""
            tables.append(FigureTable(f"{dataset} · {split} split · fitting", ["model"] +
                                      [_figure_label(n) for n in names], rows, note,
                                      summary=_summary(means, [("fastest fit", "fit_seconds", True),
                                                               ("slowest fit", "fit_seconds", False),
                                                               ("largest model", "model_bytes", False)])))
        serve = sub[sub["segment"] != "fit"]
        if not serve.empty:
            names = sorted(serve["metric"].unique(), key=_figure_order)
            means = serve.groupby(["model", "segment", "metric"])["value"].mean()
            segments = sorted(serve["segment"].unique(), key=segment_sort_key)
            rows = [[mark(shared_serve, dataset, split, m), s]
                    + [f"too few requests (n = {int(too_few[(m, s, n)])})" if (m, s, n) in too_few.index
                       else "over budget" if (m, s, n) in over_budget
                       else _fmt_figure(n, means.get((m, s, n), float("nan"))) for n in names]
                    for m in order for s in segments if (m, s) in set(zip(serve["model"], serve["segment"]))]
            note = CONCURRENT_NOTE if any(r[0].endswith(CONCURRENT_MARK) for r in rows) else ""
            if any(cell == "over budget" for r in rows for cell in r):
                note = " ".join(filter(None, [note, OVER_BUDGET_NOTE]))
            summary = _summary(means, [("lowest p99", "latency_p99_ms", True),
                                       ("highest p99", "latency_p99_ms", False)])
            peaks = [(found[1], n, found[0]) for n in names if n.startswith(THROUGHPUT_PREFIX)
                     and (found := _extreme(means, n, lowest=False))]
            if peaks:  # the best throughput over every batch size
                value, name, where = max(peaks)
                summary += (("; " if summary else "") + f"highest throughput: {where}, batch "
                            f"{name[len(THROUGHPUT_PREFIX):]} ({_fmt_figure(name, value)})")
            tables.append(FigureTable(f"{dataset} · {split} split · serving", ["model", "segment"] +
                                      [_figure_label(n) for n in names], rows, note, summary=summary))
    return tables


def realtime_tables(run: RunData) -> list[FigureTable]:
    """Per dataset: each model x policy's prequential hit rate and update cost; per-user/item update cost."""
    frame = run.frame
    rt = frame[is_realtime(frame["segment"])]
    tables = []
    order = run.model_order()
    for dataset, sub in rt.groupby("dataset"):
        replay = sub[sub["segment"].str.startswith("replay:")]
        if not replay.empty:
            means = replay[replay["status"] == "ok"].groupby(["model", "segment", "metric"])["value"].mean()
            not_served = replay[replay["status"] == "unsupported"]
            unsupported = set(zip(not_served["model"], not_served["segment"]))
            unsupported_metric = set(zip(not_served["model"], not_served["segment"], not_served["metric"]))
            names = ["prequential_hit_rate", "prequential_new_user_hit_rate", "updates", "update_seconds_total",
                     "replay_recommend_seconds"]
            names = [n for n in names if n in set(replay["metric"])]
            rows = []
            for m in order:
                for seg in sorted(replay[replay["model"] == m]["segment"].unique()):
                    policy = seg.split(":", 1)[1]
                    if (m, seg) in unsupported and not any((m, seg, n) in means.index for n in names):
                        rows.append([m, policy] + ["not served"] * len(names))
                    else:
                        rows.append([m, policy] + ["not served" if (m, seg, n) in unsupported_metric else
                                                   _fmt_figure(n, means.get((m, seg, n), float("nan")))
                                                   for n in names])
            k = replay[replay["metric"] == "prequential_hit_rate"]["k"].max()
            headers = {"prequential_hit_rate": f"hit rate@{k}", "prequential_new_user_hit_rate":
                       f"new-user hit rate@{k}", "updates": "updates", "update_seconds_total": "update time",
                       "replay_recommend_seconds": "recommend time"}
            best = _extreme(means, "prequential_hit_rate", lowest=False)
            tables.append(FigureTable(f"{dataset} · prequential replay", ["model", "policy"] +
                                      [headers[n] for n in names], rows,
                                      summary=f"freshest: {best[0].replace(' · replay:', ' · ')} (hit rate "
                                              f"{fmt(best[1])})" if best else ""))
        cost = sub[(sub["segment"] == "update-cost") & (sub["status"] == "ok")]
        if not cost.empty:
            means = cost.groupby(["model", "metric"])["value"].mean()
            rows = [[m, units.seconds(means.get((m, "update_seconds_per_new_user"), float("nan"))),
                     units.seconds(means.get((m, "update_seconds_per_new_item"), float("nan")))]
                    for m in order if m in set(cost["model"])]
            tables.append(FigureTable(f"{dataset} · incremental update cost", ["model", "time per new user",
                                                                             "time per new item"], rows,
                                      "Models without the update capability are absent (they must refit)."))
    return tables


# -- per-model details -------------------------------------------------------------

BUDGET_WORDS = ("iteration", "epoch", "step", "budget", "max_seconds", "factors", "batch", "learning_rate", "lr")


@dataclass
class CellDetail:
    dataset: str
    split: str
    seed: int
    status: str
    fit_seconds: str
    segments: str
    error: str = ""
    traceback: str = ""


@dataclass
class ModelDetail:
    label: str
    name: str
    params: dict[str, Any]
    budget: dict[str, Any]
    capabilities: dict[str, Any]
    device: str
    extra: dict[str, Any]
    cells: list[CellDetail]

    @property
    def failures(self) -> list[CellDetail]:
        return [c for c in self.cells if c.status == "failed"]


def model_details(run: RunData) -> list[ModelDetail]:
    details = []
    frame = run.frame
    for label in run.model_order():
        cells = [c for c in run.cells.values() if c.get("model") == label]
        rows = frame[frame["model"] == label]
        description = next((c["model_description"] for c in cells if c.get("model_description")), {})
        params = description.get("params")
        if params is None and len(rows):
            try:
                params = json.loads(rows["params"].iloc[0])
            except ValueError:
                params = {}
        params = params or {}
        budget = {k: v for k, v in params.items() if any(w in k.lower() for w in BUDGET_WORDS)}
        extra = {k: v for k, v in description.items() if k not in ("name", "params", "seed", "device", "capabilities")}
        cell_details = []
        for c in sorted(cells, key=lambda c: (str(c.get("dataset")), split_rank(run, str(c.get("split"))),
                                              int(c.get("seed", 0)))):
            segs = c.get("segments", {})
            seg_text = ", ".join(f"{name}: {'not served' if s.get('status') == 'unsupported' else s.get('status')}"
                                 for name, s in sorted(segs.items(), key=lambda kv: segment_sort_key(kv[0])))
            cell_details.append(CellDetail(str(c.get("dataset")), str(c.get("split")), int(c.get("seed", 0)),
                                           str(c.get("status", "?")),
                                           units.seconds(c["fit_seconds"])
                                           if isinstance(c.get("fit_seconds"), (int, float)) else "–", seg_text, str(c.get("error") or ""),
                                           str(c.get("traceback") or "")))
        if not cell_details:  # no cell.json (copied table only): fall back on the table's error rows
            for r in rows[rows["metric"] == "error"].itertuples():
                cell_details.append(CellDetail(r.dataset, r.split, int(r.seed), "failed", "–", "", "(see cell.json)"))
        name = description.get("name") or (rows["model_name"].iloc[0] if len(rows) else label)
        details.append(ModelDetail(label, str(name), params, budget, description.get("capabilities", {}),
                                   str(description.get("device", "")), extra, cell_details))
    return details
