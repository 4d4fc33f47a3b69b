"""The report's figures: matplotlib (no pyplot state), embedded as base64 SVG images.

An ``<img src="data:image/svg+xml;base64,...">`` keeps each figure self-contained
(no shared SVG ids between figures, no script can run from an image) and needs
no network to display. Model labels are data: ``$`` is escaped so matplotlib
never reads a label as mathtext, and a leading ``_`` (which legends hide) is kept.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from bench.report.rundata import RunData
from bench.report.tables import THROUGHPUT_PREFIX, split_rank, fmt, metric_direction, segment_sort_key

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


@dataclass
class Plot:
    title: str
    uri: str  # data:image/svg+xml;base64,...
    alt: str
    caption: str = ""


def plain(label: str) -> str:
    """A data-derived label made literal for matplotlib."""
    text = str(label).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def to_uri(fig: Figure) -> str:
    """Fixed hash salt and no date: the same run renders byte-identical figures."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "bench-report"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def model_styles(models: list[str]) -> dict[str, tuple[str, str]]:
    """The same colour and marker for a model in every figure."""
    return {m: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, m in enumerate(models)}


def pareto_front(cost: np.ndarray, accuracy: np.ndarray, lower_cost_is_better: bool = True) -> np.ndarray:
    """Indices of the points no other point beats on both cost and accuracy, ordered by cost.

    As in ann-benchmarks' recall/QPS plots: walking from the cheapest point, a
    point joins the frontier when its accuracy exceeds every cheaper one's.
    """
    cost = np.asarray(cost, dtype=float)
    accuracy = np.asarray(accuracy, dtype=float)
    valid = np.flatnonzero(np.isfinite(cost) & np.isfinite(accuracy))
    if valid.size == 0:
        return valid
    key = cost[valid] if lower_cost_is_better else -cost[valid]
    order = valid[np.lexsort((-accuracy[valid], key))]  # cheapest first, best accuracy first among equal cost
    front, best = [], -math.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return np.array(front, dtype=int)


def primary_segment(segments: list[str]) -> str:
    """The segment a split's cost is plotted for: ``all``, else the most history, else the first."""
    ordered = sorted(segments, key=segment_sort_key)
    if "all" in ordered:
        return "all"
    shots = [s for s in ordered if s.startswith("shots=")]
    return shots[-1] if shots else ordered[0]


# -- accuracy vs cost ---------------------------------------------------------------


def _cost_axes(figures: pd.DataFrame) -> list[tuple[str, str, bool, pd.Series]]:
    """(axis label, title, lower is better, value per model) for each cost measured."""
    axes = []
    per = figures.groupby(["model", "metric"])["value"].mean()
    metrics = set(figures["metric"])
    for name, label in (("latency_p50_ms", "p50 single-request latency (ms)"),
                        ("latency_p99_ms", "p99 single-request latency (ms)")):
        if name in metrics:
            axes.append((label, f"vs {label.split(' (')[0]}", True, per.xs(name, level="metric")))
    throughput = sorted(m for m in metrics if m.startswith(THROUGHPUT_PREFIX))
    if throughput:
        best = figures[figures["metric"].isin(throughput)].groupby(["model", "metric"])["value"].mean()
        axes.append(("throughput (users/s, best batch size)", "vs throughput", False,
                     best.groupby(level="model").max()))
    elif "users_per_second" in metrics:
        axes.append(("throughput (users/s, whole segment in batches)", "vs throughput", False,
                     per.xs("users_per_second", level="metric")))
    return axes


def tradeoff_plots(run: RunData, metric: str, styles: dict[str, tuple[str, str]]) -> list[Plot]:
    """``metric`` against latency and throughput for each dataset x split, with Pareto frontiers."""
    frame = run.frame[run.frame["status"] == "ok"]
    name, _, k = metric.partition("@")
    plots = []
    groups = sorted(frame.groupby(["dataset", "split", "protocol"]), key=lambda kv: (kv[0][0], split_rank(run, kv[0][1]),
                                                                                    kv[0][2]))
    for (dataset, split, protocol), sub in groups:
        acc_rows = sub[(sub["metric"] == name) & (sub["k"] == int(k or 0))]
        if acc_rows.empty:
            continue
        segment = primary_segment(list(acc_rows["segment"].unique()))
        acc = acc_rows[acc_rows["segment"] == segment].groupby("model")["value"].mean()
        figures = sub[(sub["k"] == 0) & (sub["segment"] == segment)]
        axes = _cost_axes(figures)
        if not axes:
            continue
        fig = Figure(figsize=(4.2 * len(axes), 3.6))
        model_name = sub.drop_duplicates("model").set_index("model")["model_name"]
        for index, (label, title, lower, cost) in enumerate(axes, 1):
            ax = fig.add_subplot(1, len(axes), index)
            models = [m for m in run.model_order() if m in acc.index and m in cost.index]
            if not models:
                continue
            x = np.array([cost[m] for m in models], dtype=float)
            y = np.array([acc[m] for m in models], dtype=float)
            for m, xi, yi in zip(models, x, y):
                color, marker = styles.get(m, ("#333333", "o"))
                ax.scatter([xi], [yi], color=color, marker=marker, s=46, zorder=3, label=plain(m))
            for family in sorted({str(model_name.get(m, m)) for m in models}):  # one frontier per registered model
                members = [i for i, m in enumerate(models) if str(model_name.get(m, m)) == family]
                if len(members) > 1:
                    front = [members[i] for i in pareto_front(x[members], y[members], lower)]
                    color = styles.get(models[members[0]], ("#333333", "o"))[0]
                    ax.plot(x[front], y[front], color=color, linewidth=1.2, zorder=2)
            front = pareto_front(x, y, lower)
            if len(front) > 1:
                ax.step(x[front], y[front], where="post" if lower else "pre", color="#999999", linestyle="--",
                        linewidth=1, zorder=1, label="Pareto frontier (all models)")
            if np.all(x > 0) and x.max() / max(x.min(), 1e-300) > 20:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short log ranges
            ax.set_xlabel(label + ("  (← better)" if lower else "  (better →)"))
            ax.set_ylabel(f"{metric} (higher is better)" if metric_direction(name) is not False else metric)
            ax.set_title(title, fontsize=10)
            ax.grid(True, alpha=0.3)
        handles, labels = fig.axes[0].get_legend_handles_labels() if fig.axes else ([], [])
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False,
                       bbox_to_anchor=(0.5, -0.02 - 0.05 * ((len(labels) - 1) // 5)))
        fig.subplots_adjust(bottom=0.28, wspace=0.3)
        proto = "" if protocol == "full" else f", protocol {protocol}"
        plots.append(Plot(f"{dataset} · {split} split · segment {segment}{proto}", to_uri(fig),
                          f"{metric} against serving cost on {dataset}, {split} split",
                          "Up and to the left (latency) or right (throughput) is better. Points on the dashed line "
                          "are not beaten on both accuracy and cost by any other model; a solid line joins the "
                          "frontier of several configurations of the same registered model."))
    return plots


# -- cold start --------------------------------------------------------------------


def coldstart_plots(run: RunData, metric: str, styles: dict[str, tuple[str, str]]) -> tuple[list[Plot], list[str]]:
    """``metric`` against the number of history items of cold users; warm vs cold-item bars."""
    frame = run.frame
    name, _, k = metric.partition("@")
    rows = frame[(frame["metric"] == name) & (frame["k"] == int(k or 0))]
    plots, notes = [], []
    shots_rows = rows[rows["segment"].str.fullmatch(r"shots=\d+")]
    for (dataset, split, protocol), sub in shots_rows.groupby(["dataset", "split", "protocol"]):
        fig = Figure(figsize=(9.5, 4.4))
        ax = fig.add_subplot(1, 1, 1)
        levels = sorted({int(s.split("=")[1]) for s in sub["segment"]})
        warm = _warm_reference(rows, dataset, protocol)
        for model in [m for m in run.model_order() if m in set(sub["model"])]:
            color, marker = styles.get(model, ("#333333", "o"))
            msub = sub[sub["model"] == model]
            ok = msub[msub["status"] == "ok"].groupby("segment").agg(value=("value", "mean"), low=("ci_low", "mean"),
                                                                     high=("ci_high", "mean"))
            xs = [n for n in levels if f"shots={n}" in ok.index]
            missing = [n for n in levels if f"shots={n}" not in ok.index and
                       (msub[msub["segment"] == f"shots={n}"]["status"] == "unsupported").any()]
            label = plain(model) + (f"  (not served at {', '.join(map(str, missing))} shots)" if missing else "")
            if xs:
                ys = np.array([ok.loc[f"shots={n}", "value"] for n in xs])
                low = np.array([ok.loc[f"shots={n}", "low"] for n in xs])
                high = np.array([ok.loc[f"shots={n}", "high"] for n in xs])
                ax.plot(xs, ys, color=color, marker=marker, label=label)
                if np.isfinite(low).all() and np.isfinite(high).all():
                    ax.fill_between(xs, low, high, color=color, alpha=0.10, linewidth=0)
            else:
                ax.plot([], [], color=color, marker=marker, label=plain(model) + "  (not served)")
            if warm is not None and model in warm.index:
                ax.axhline(warm[model], color=color, linestyle=":", linewidth=0.9, alpha=0.7)
        ax.set_xticks(levels)
        ax.set_xlabel("history items given to each cold user (shots)")
        ax.set_ylabel(f"{metric}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        caption = ("Lines: mean over cold users with its 95% bootstrap band. A model that cannot serve a level has "
                   "no point there (it is not zero).")
        if warm is not None:
            caption += " Dotted lines: the same model on warm users (random split), for reference."
        plots.append(Plot(f"{dataset} · user cold-start ({split} split)", to_uri(fig),
                          f"{metric} against number of history items for cold users on {dataset}", caption))
    if shots_rows.empty:
        notes.append("no user cold-start split in this run (add a `user_coldstart` split with `shots`)")
    cold_rows = rows[rows["segment"] == "cold-items"]
    for (dataset, protocol), sub in cold_rows.groupby(["dataset", "protocol"]):
        warm = _warm_reference(rows, dataset, protocol)
        models = [m for m in run.model_order() if m in set(sub["model"]) or (warm is not None and m in warm.index)]
        cold = sub[sub["status"] == "ok"].groupby("model")["value"].mean()
        unsupported = set(sub[sub["status"] == "unsupported"]["model"])
        fig = Figure(figsize=(max(5.0, 1.3 * len(models) + 2), 3.8))
        ax = fig.add_subplot(1, 1, 1)
        width = 0.38
        x = np.arange(len(models))
        top = max([0.0] + [float(v) for v in cold.values] + ([float(v) for v in warm.values] if warm is not None
                                                              else []))
        for i, model in enumerate(models):
            color = styles.get(model, ("#333333", "o"))[0]
            if warm is not None and model in warm.index:
                ax.bar(x[i] - width / 2, warm[model], width, color=color, alpha=0.45, edgecolor=color)
            if model in cold.index:
                ax.bar(x[i] + width / 2, cold[model], width, color=color, hatch="//", edgecolor="white")
            elif model in unsupported:
                ax.text(x[i] + width / 2, top * 0.02, "not served", rotation=90, ha="center", va="bottom",
                        fontsize=8, color="#555555")
        ax.set_xticks(x, [plain(m) for m in models], rotation=20 if len(models) > 4 else 0)
        ax.set_ylabel(metric)
        ax.set_ylim(0, top * 1.1 if top > 0 else 1)
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(facecolor="#888888", alpha=0.45, label="warm items (random split)"),
                           Patch(facecolor="#888888", hatch="//", edgecolor="white", label="cold items")],
                  fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
        ax.grid(True, axis="y", alpha=0.3)
        plots.append(Plot(f"{dataset} · warm versus cold items", to_uri(fig),
                          f"{metric} on warm items versus cold items on {dataset}",
                          "Cold-item ranking is over the cold items only (they have no training interactions). "
                          "“not served” marks a model without a cold-item capability (it has no score, not zero)."))
    if cold_rows.empty:
        notes.append("no item cold-start split in this run (add an `item_coldstart` split)")
    return plots, notes


def _warm_reference(rows: pd.DataFrame, dataset: str, protocol: str) -> pd.Series | None:
    """Per-model value on the ``all`` segment of the first warm split (random preferred)."""
    warm = rows[(rows["dataset"] == dataset) & (rows["protocol"] == protocol) & (rows["segment"] == "all")
                & (rows["status"] == "ok")]
    if warm.empty:
        return None
    split = "random" if "random" in set(warm["split"]) else sorted(warm["split"].unique())[0]
    return warm[warm["split"] == split].groupby("model")["value"].mean()


# -- real time ---------------------------------------------------------------------


def realtime_plots(run: RunData, styles: dict[str, tuple[str, str]]) -> tuple[list[Plot], list[str]]:
    """Hit rate over replay time per model and policy, and hit rate against total update cost.

    Reads each cell's replay traces (``RunData.realtime``, written by ``bench.realtime``) for the curves.
    """
    frame = run.frame
    replay = frame[frame["segment"].str.startswith("replay:")]
    if replay.empty:
        return [], ["no real-time replay in this run (the `realtime` suite, on a temporal split, produces one)"]
    plots = []
    for dataset, sub in replay.groupby("dataset"):
        fig = Figure(figsize=(11.5, 4.0))
        left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        styles_by_policy = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))]
        policies = sorted({s.split(":", 1)[1] for s in sub["segment"]})
        k = int(sub[sub["metric"] == "prequential_hit_rate"]["k"].max() or 0)
        for model in [m for m in run.model_order() if m in set(sub["model"])]:
            color, marker = styles.get(model, ("#333333", "o"))
            for cid in sub[sub["model"] == model]["cell_id"].unique()[:1]:
                payload = run.realtime(str(cid))
                if payload is None:
                    continue
                for label, trace in payload.get("policies", {}).items():
                    if trace.get("status") != "ok" or not trace.get("block_end"):
                        continue
                    hits = np.asarray(trace["hits"], dtype=float)
                    events = np.asarray(trace["events"], dtype=float)
                    window = max(1, len(hits) // 20)
                    kernel = np.ones(window)
                    rate = np.convolve(hits, kernel, "valid") / np.maximum(np.convolve(events, kernel, "valid"), 1)
                    x = np.asarray(trace["block_end"], dtype=float)[window - 1:]
                    left.plot(x, rate, color=color, linestyle=styles_by_policy[policies.index(label) % 6]
                              if label in policies else "-", linewidth=1.2, label=plain(f"{model} · {label}"))
            ok = sub[(sub["model"] == model) & (sub["status"] == "ok")]
            rate = ok[ok["metric"] == "prequential_hit_rate"].groupby("segment")["value"].mean()
            cost = ok[ok["metric"] == "update_seconds_total"].groupby("segment")["value"].mean()
            for segment in rate.index:
                if segment in cost.index:
                    right.scatter([cost[segment]], [rate[segment]], color=color, marker=marker, s=40)
                    right.annotate(plain(segment.split(":", 1)[1]), (cost[segment], rate[segment]), fontsize=7,
                                   xytext=(4, 3), textcoords="offset points")
        left.set_xlabel("events replayed after the time cut")
        left.set_ylabel(f"hit rate@{k} (moving window)")
        left.grid(True, alpha=0.3)
        left.legend(fontsize=7, loc="best")
        right.set_xscale("symlog", linthresh=1e-2)
        right.set_xlabel("total update time over the replay (s, symlog)")
        right.set_ylabel(f"prequential hit rate@{k}")
        right.grid(True, alpha=0.3)
        right.set_title("freshness versus update cost", fontsize=10)
        plots.append(Plot(f"{dataset} · real-time replay", to_uri(fig),
                          f"hit rate over replay time and against update cost on {dataset}",
                          "Left: each policy's hit rate over the events after the time cut (static = never "
                          "updated). Right: one point per model and policy; up and to the left is better."))
    return plots, []


__all__ = ["Plot", "coldstart_plots", "fmt", "model_styles", "pareto_front", "realtime_plots", "tradeoff_plots"]
