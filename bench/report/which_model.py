"""“Which model when”: the answer a decision-maker came for, one line per situation.

For every leaderboard (dataset × split × segment: warm users, each k-shot level
of new users, new items) and every latency budget in :data:`TIERS` (p99 of
single-request latency, as ``bench.systems`` measures it for that segment), the
model with the best headline metric among those that meet the budget, its 95%
CI, and the models not significantly different from it. The test is the
leaderboards' own (:func:`bench.report.tables._mark_best_and_ties` on the
leaderboard restricted to the models within budget): the same pairing, the same
Holm correction, over the models competing in that budget. So the "any
latency" column agrees with the leaderboard's best and ≈ marks exactly.

Nothing is called best that is not: a model scored on a sample of the users
(its own ``max_test_users``) is never the best, only "within noise" or listed
as sampled; a budget no fully scored model meets says so; a model that cannot
serve a segment is listed as not served, one that failed as failed; models
without a latency figure are only considered in the "any latency" column.

For real-time runs (``bench.realtime``): per dataset and model, the update
policy with the highest prequential hit rate, and the cheapest policy (least
total update time) whose hit rate is not significantly different from it —
a paired t-test over the replay's blocks (every policy of a model replays the
same events in the same blocks), Holm-corrected over the policies compared.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.report import tables, units
from bench.report.rundata import RunData
from bench.report.tables import ALPHA, Cell, Leaderboard
from bench.stats import holm_adjust, paired_ttest_pvalues

# (p99 budget in ms or None for no budget, column title)
TIERS: tuple[tuple[float | None, str], ...] = ((1.0, "p99 ≤ 1 ms"), (10.0, "p99 ≤ 10 ms"), (100.0, "p99 ≤ 100 ms"),
                                               (None, "any latency"))
P99 = "latency_p99_ms"


@dataclass
class Choice:
    """One (situation, budget) cell: who to deploy and why."""

    budget_ms: float | None
    best: list[str] = field(default_factory=list)  # several only on an exact tie
    cell: Cell | None = None
    p99_ms: float | None = None
    within_noise: list[str] = field(default_factory=list)
    sampled_only: list[str] = field(default_factory=list)  # in budget, but scored on a sample: never best
    over_budget: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)  # no latency figure: only in the "any" column
    not_served: list[str] = field(default_factory=list)
    first_stage: list[str] = field(default_factory=list)  # positions ranked by a first stage: no score of its own
    failed: list[str] = field(default_factory=list)
    fastest: tuple[str, float] | None = None  # when nobody meets the budget
    notes: dict[str, str] = field(default_factory=dict)  # model -> "n = 50" for sampled models
    others_scored: int = 0  # how many other fully scored models were compared with the best
    p99: dict[str, float] = field(default_factory=dict)  # measured p99 (ms) of the models on this board
    better_over_budget: list[str] = field(default_factory=list)  # over budget with a better mean than the choice

    @property
    def headline(self) -> str:
        """``ease`` / ``ease = itemknn (tie)`` / ``no model`` (the bold part)."""
        if not self.best:
            return "no model"
        return " = ".join(self.best) + (" (exact tie)" if len(self.best) > 1 else "")

    @property
    def value_text(self) -> str:
        if self.cell is None:
            return ""
        text = tables.fmt(self.cell.value) + (f" {self.cell.ci_text}" if self.cell.ci_text else "")
        if self.p99_ms is not None:
            text += f", p99 {units.milliseconds(self.p99_ms)}"
        return text

    @property
    def why(self) -> str:
        """The one-line reason: ties, budget, capability, sampling."""
        def named(models: list[str]) -> str:
            return ", ".join(m + (f" ({self.notes[m]})" if m in self.notes else "") for m in models)

        parts = []
        if not self.best:
            if self.sampled_only:
                parts.append(f"only sampled models meet it: {named(self.sampled_only)} (not comparable with a "
                             f"full evaluation)")
            elif self.fastest is not None:
                parts.append(f"no model meets this budget (fastest: {self.fastest[0]}, p99 "
                             f"{units.milliseconds(self.fastest[1])})")
            else:
                parts.append("no model was scored here")
        if self.within_noise:
            parts.append(f"within noise: {named(self.within_noise)}")
        elif self.best:
            scope = "" if self.budget_ms is None else " within budget"
            parts.append(f"significantly ahead of the {self.others_scored} other{'s' if self.others_scored > 1 else ''}"
                         f"{scope}" if self.others_scored else f"the only model{scope}")
        if self.best and self.sampled_only:
            parts.append(f"sampled, not eligible: {named(self.sampled_only)}")
        if self.over_budget:  # name those that would have been better; count the rest
            named_over = [m for m in self.over_budget if m in self.better_over_budget] if self.best else []
            rest = len(self.over_budget) - len(named_over)
            if named_over:
                parts.append("better but over budget: " + ", ".join(f"{m} ({units.milliseconds(self.p99[m])})"
                                                                   for m in named_over))
            if rest:
                parts.append(f"{rest} {'more ' if named_over else ''}model{'s' if rest > 1 else ''} over budget")
        if self.unmeasured and self.budget_ms is not None:
            parts.append(f"latency not measured: {', '.join(self.unmeasured)}")
        if self.not_served:
            parts.append(f"not served: {', '.join(self.not_served)}")
        if self.first_stage:
            parts.append(f"ranked by a first stage at this cut-off: {', '.join(self.first_stage)}")
        if self.failed:
            parts.append(f"failed: {', '.join(self.failed)}")
        return "; ".join(parts)


@dataclass
class Situation:
    """One row: a dataset × split × segment and its choice per budget."""

    board: Leaderboard
    label: str
    choices: list[Choice]


@dataclass
class WhichModel:
    metric: str
    tiers: list[tuple[float | None, str]]
    rows: list[Situation]
    notes: list[str]
    realtime: list["PolicyChoice"]


def situation_label(split: str, segment: str) -> str:
    """Reader words for a segment: warm users, new users with N items, new items."""
    if segment.startswith("shots="):
        n = segment.split("=", 1)[1]
        return f"new users, {n} history item{'' if n == '1' else 's'}"
    if segment == "cold-items":
        return "new items"
    if segment == "all":
        return "warm users" + ("" if split == "random" else f" ({split} split)")
    return f"{segment} ({split} split)"


def _latencies(run: RunData) -> pd.Series:
    """Mean p99 (ms) per (dataset, split, segment, model) over seeds."""
    frame = run.frame
    rows = frame[(frame["metric"] == P99) & (frame["k"] == 0) & (frame["status"] == "ok")]
    return rows.groupby(["dataset", "split", "segment", "model"])["value"].mean()


def _p99(latency: pd.Series, board: Leaderboard, model: str) -> float | None:
    """The model's p99 on this segment; else its worst p99 on the split (serving cost barely depends on it)."""
    key = (board.dataset, board.split, board.segment, model)
    if key in latency.index:
        return float(latency[key])
    try:
        same_split = latency.xs((board.dataset, board.split), level=("dataset", "split"))
    except KeyError:
        return None
    values = [float(v) for (seg, m), v in same_split.items() if m == model]
    return max(values) if values else None


def _choose(board: Leaderboard, column: str, budget: float | None, p99: dict[str, float | None]) -> Choice:
    choice = Choice(budget)
    col = board.column(column)
    ok = [m for m in board.models
          if board.cell(m, column).status == "ok" and math.isfinite(board.cell(m, column).value)]
    choice.not_served = [m for m in board.models if board.cell(m, column).status == "unsupported"]
    choice.failed = [m for m in board.models if board.cell(m, column).status == "failed"]
    choice.first_stage = [m for m in board.models if board.cell(m, column).status == "first_stage"]
    choice.notes = {m: board.model_note(m) for m in board.sampled}
    choice.p99 = {m: v for m, v in p99.items() if v is not None}
    if budget is None:
        eligible = ok
    else:
        eligible = [m for m in ok if p99.get(m) is not None and p99[m] <= budget]
        choice.over_budget = [m for m in ok if p99.get(m) is not None and p99[m] > budget]
        choice.unmeasured = [m for m in ok if p99.get(m) is None]
    full = [m for m in eligible if m not in board.sampled]
    if not full:
        choice.sampled_only = eligible
        measured = [(m, p99[m]) for m in ok if p99.get(m) is not None]
        choice.fastest = min(measured, key=lambda mp: mp[1]) if measured and not eligible else None
        return choice
    if col is None or col.higher_is_better is None:
        return choice
    cells = {(m, column): dataclasses.replace(board.cell(m, column), best=False, tied=False, p_adj=float("nan"),
                                              tested=False, delta=None) for m in eligible}
    sub = dataclasses.replace(board, columns=[col], models=eligible, cells=cells, notes=[],
                              sampled={m: n for m, n in board.sampled.items() if m in eligible}, same_users=None)
    tables._mark_best_and_ties(sub, board.values)  # the leaderboards' test, on the models within budget
    choice.best = [m for m in eligible if cells[(m, column)].best]
    choice.cell = cells[(choice.best[0], column)]
    choice.p99_ms = p99.get(choice.best[0])
    choice.within_noise = [m for m in eligible if cells[(m, column)].tied]
    choice.sampled_only = [m for m in eligible if m in board.sampled and not cells[(m, column)].tied]
    choice.others_scored = len([m for m in eligible if m not in choice.best and m not in board.sampled])
    sign = 1.0 if col.higher_is_better else -1.0
    choice.better_over_budget = [m for m in choice.over_budget
                                 if sign * board.cell(m, column).value > sign * choice.cell.value]
    return choice


def which_model(run: RunData, boards: list[Leaderboard], metric: str) -> WhichModel:
    """The section's content: one row per leaderboard that has ``metric``, one choice per latency tier."""
    latency = _latencies(run)
    any_latency = len(latency) > 0
    tiers = list(TIERS) if any_latency else [t for t in TIERS if t[0] is None]
    notes = []
    if any_latency:
        notes.append("p99 latencies are measured once per cell on the run's machine (see Systems): a model close "
                     "to a budget may fall on either side of it in another run")
    else:
        notes.append("this run measured no single-request latency (systems disabled), so only the “any latency” "
                     "column is shown")
    rows = []
    for board in boards:
        if board.column(metric) is None:
            continue
        p99 = {m: _p99(latency, board, m) for m in board.models}
        label = f"{board.dataset} · {situation_label(board.split, board.segment)}"
        if board.protocol != "full":
            label += f" · protocol {board.protocol}"
        rows.append(Situation(board, label, [_choose(board, metric, budget, p99) for budget, _ in tiers]))
    return WhichModel(metric, tiers, rows, notes, policy_choices(run))


# -- real time ---------------------------------------------------------------------


@dataclass
class PolicyChoice:
    """Per dataset and model: the freshest update policy and the cheapest one within noise of it."""

    dataset: str
    model: str
    freshest: str
    freshest_rate: float
    freshest_cost: float
    cheapest: str
    cheapest_rate: float
    cheapest_cost: float
    within_noise: list[str]
    worse: list[str]
    not_served: list[str]
    blocks: int
    tested: bool  # False when the per-block curves were missing (no test, nothing called within noise)

    @property
    def why(self) -> str:
        parts = []
        if self.cheapest != self.freshest:
            parts.append(f"{self.cheapest} is within noise of it for {units.seconds(self.cheapest_cost)} of updates "
                         f"instead of {units.seconds(self.freshest_cost)}")
        elif self.within_noise:
            parts.append("it is also the cheapest of the policies within noise")
        others = [p for p in self.within_noise if p != self.cheapest]
        if others:
            parts.append(f"also within noise: {', '.join(others)}")
        if self.worse:
            parts.append(f"significantly less fresh: {', '.join(self.worse)}")
        if not self.tested:
            parts.append("no per-block curves, so no test")
        if self.not_served:
            parts.append(f"not served: {', '.join(self.not_served)}")
        return "; ".join(parts) + (f" ({self.blocks} replay blocks)" if self.tested else "")


def policy_sort_key(policy: str) -> tuple[bool, str, int]:
    """``static`` first, then each policy kind by how often it updates (``every=250`` before ``every=2500``)."""
    kind, _, tail = policy.partition("/every=")
    return (kind != "static", kind, int(tail) if tail.isdigit() else 0)


def _block_rates(run: RunData, cell_ids: list[str]) -> dict[str, np.ndarray]:
    """policy -> per-block hit rates, blocks of every seed's cell concatenated in the same order."""
    out: dict[str, list[np.ndarray]] = {}
    for cid in cell_ids:
        payload = run.realtime(cid)
        if payload is None:
            continue
        for label, trace in payload.get("policies", {}).items():
            if trace.get("status") == "ok" and trace.get("events"):
                events = np.asarray(trace["events"], dtype=float)
                out.setdefault(label, []).append(np.asarray(trace["hits"], dtype=float) / np.maximum(events, 1))
    return {label: np.concatenate(parts) for label, parts in out.items()}


def policy_choices(run: RunData) -> list[PolicyChoice]:
    frame = run.frame
    replay = frame[frame["segment"].str.startswith("replay:")]
    out = []
    order = run.model_order()
    for dataset, sub in replay.groupby("dataset"):
        for model in [m for m in order if m in set(sub["model"])]:
            msub = sub[sub["model"] == model]
            ok = msub[msub["status"] == "ok"]
            rate = ok[ok["metric"] == "prequential_hit_rate"].groupby("segment")["value"].mean()
            cost = ok[ok["metric"] == "update_seconds_total"].groupby("segment")["value"].mean()
            policies = sorted((s for s in rate.index if s in cost.index),
                              key=lambda s: policy_sort_key(s.split(":", 1)[1]))
            not_served = sorted({s.split(":", 1)[1] for s in msub[msub["status"] == "unsupported"]["segment"]}
                                - {p.split(":", 1)[1] for p in policies})
            if not policies:
                continue
            names = {s: s.split(":", 1)[1] for s in policies}
            top = max(rate[s] for s in policies)
            best = min((s for s in policies if rate[s] == top), key=lambda s: cost[s])
            cells = sorted(str(c) for c in ok.sort_values("seed")["cell_id"].unique())
            curves = _block_rates(run, cells)
            others = [s for s in policies if s != best]
            raw = []
            for s in others:
                a, b = curves.get(names[best]), curves.get(names[s])
                if a is None or b is None or a.size != b.size or a.size < 2:
                    raw.append(float("nan"))
                elif np.array_equal(a, b):
                    raw.append(1.0)  # the same hits block for block: no difference (a t-test has no variance)
                else:
                    raw.append(float(paired_ttest_pvalues(a, b)[0]))
            adjusted = holm_adjust(np.array(raw)) if raw else np.array([])
            tested = bool(others) and bool(np.isfinite(adjusted).all())
            within = [s for s, p in zip(others, adjusted) if math.isfinite(p) and p >= ALPHA]
            worse = [s for s, p in zip(others, adjusted) if math.isfinite(p) and p < ALPHA]
            cheapest = min([best] + within, key=lambda s: (cost[s], -rate[s]))
            out.append(PolicyChoice(str(dataset), model, names[best], float(rate[best]), float(cost[best]),
                                    names[cheapest], float(rate[cheapest]), float(cost[cheapest]),
                                    [names[s] for s in within], [names[s] for s in worse], not_served,
                                    int(len(curves.get(names[best], []))), tested or not others))
    return out


__all__ = ["Choice", "PolicyChoice", "Situation", "TIERS", "WhichModel", "policy_choices", "policy_sort_key",
           "situation_label", "which_model"]
