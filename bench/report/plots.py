"""The report's figures: matplotlib (no pyplot state), embedded as base64 SVG images.

An ``<img src="data:image/svg+xml;base64,...">`` keeps each figure self-contained
(no shared SVG ids between figures, no script can run from an image) and needs
no network to display. Model labels are data: ``$`` is escaped so matplotlib
never reads a label as mathtext, and a leading ``_`` (which legends hide) is kept.

Every model is drawn with its :mod:`bench.report.style` colour-marker pair, and
every artist that draws a model carries the SVG id ``model-<hash of its label>``
(:func:`model_gid`), so a test (or a reader's tool) can check from the SVG
alone that no two models share a pair. Legends sit outside the axes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter

from bench.report import units
from bench.report.rundata import RunData
from bench.report.style import Style
from bench.report.which_model import policy_sort_key
from bench.report.tables import (THROUGHPUT_PREFIX, FigureTable, split_rank, fmt, metric_direction,
                                 segment_sort_key)

FALLBACK = Style("#333333", "o", "other")
MARKER_SIZE = 7  # points: lines' markers and scatter points (s = MARKER_SIZE**2) draw the same shape size


@dataclass
class Plot:
    title: str
    uri: str  # data:image/svg+xml;base64,...
    alt: str
    caption: str = ""
    table: FigureTable | None = None  # shown beside the figure (e.g. the points a plot does not label)


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


def model_gid(label: str) -> str:
    """SVG id of the artists that draw one model: the same in every figure and every report."""
    return "model-" + hashlib.sha1(str(label).encode("utf-8")).hexdigest()[:12]


def style_of(styles: dict[str, Style], model: str) -> Style:
    return styles.get(model, FALLBACK)


def seconds_axis(axis) -> None:  # noqa: ANN001 - a matplotlib Axis
    """Tick labels in human units (``10 µs``, ``1 ms``) for an axis in seconds."""
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: units.seconds(v)))


def figure_legend(fig: Figure, handles: list, labels: list[str]) -> None:
    """Models' legend below the axes, never over the data."""
    if handles:
        ncol = min(len(labels), 5)
        fig.legend(handles, labels, loc="upper center", ncol=ncol, frameon=False, fontsize=8,
                   bbox_to_anchor=(0.5, 0.0))


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
    for name, label in (("latency_p50_ms", "p50 single-request latency"),
                        ("latency_p99_ms", "p99 single-request latency")):
        if name in metrics:
            axes.append((label, f"vs {label}", True, per.xs(name, level="metric") / 1000.0))  # seconds
    throughput = sorted(m for m in metrics if m.startswith(THROUGHPUT_PREFIX))
    if throughput:
        best = figures[figures["metric"].isin(throughput)].groupby(["model", "metric"])["value"].mean()
        axes.append(("throughput (users/s, best batch size)", "vs throughput", False,
                     best.groupby(level="model").max()))
    elif "users_per_second" in metrics:
        axes.append(("throughput (users/s, whole segment in batches)", "vs throughput", False,
                     per.xs("users_per_second", level="metric")))
    return axes


def tradeoff_plots(run: RunData, metric: str, styles: dict[str, Style]) -> list[Plot]:
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
                st = style_of(styles, m)
                ax.scatter([xi], [yi], color=st.color, marker=st.marker, s=MARKER_SIZE ** 2, zorder=3,
                           label=plain(m), gid=model_gid(m))
            for family in sorted({str(model_name.get(m, m)) for m in models}):  # one frontier per registered model
                members = [i for i, m in enumerate(models) if str(model_name.get(m, m)) == family]
                if len(members) > 1:
                    front = [members[i] for i in pareto_front(x[members], y[members], lower)]
                    color = style_of(styles, models[members[0]]).color
                    ax.plot(x[front], y[front], color=color, linewidth=1.2, zorder=2)
            front = pareto_front(x, y, lower)
            if len(front) > 1:
                ax.step(x[front], y[front], where="post" if lower else "pre", color="#999999", linestyle="--",
                        linewidth=1, zorder=1, label="Pareto frontier (all models)")
            if np.all(x > 0) and x.max() / max(x.min(), 1e-300) > 20:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short log ranges
            if lower:
                seconds_axis(ax.xaxis)
            else:
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.set_xlabel(label + ("  (← better)" if lower else "  (better →)"))
            ax.set_ylabel(f"{metric} (higher is better)" if metric_direction(name) is not False else metric)
            ax.set_title(title, fontsize=10)
            ax.grid(True, alpha=0.3)
        handles, labels = fig.axes[0].get_legend_handles_labels() if fig.axes else ([], [])
        fig.subplots_adjust(wspace=0.3)
        figure_legend(fig, handles, labels)
        proto = "" if protocol == "full" else f", protocol {protocol}"
        plots.append(Plot(f"{dataset} · {split} split · segment {segment}{proto}", to_uri(fig),
                          f"{metric} against serving cost on {dataset}, {split} split",
                          "Read it as a menu: up and to the left (latency) or right (throughput) is better, and a "
                          "model on the dashed line is not beaten on both accuracy and cost by any other; a solid "
                          "line joins configurations of the same registered model."))
    return plots


# -- cold start --------------------------------------------------------------------


def coldstart_plots(run: RunData, metric: str, styles: dict[str, Style]) -> tuple[list[Plot], list[str]]:
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
            st = style_of(styles, model)
            color, marker = st.color, st.marker
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
                ax.plot(xs, ys, color=color, marker=marker, markersize=MARKER_SIZE, label=label, gid=model_gid(model))
                if np.isfinite(low).all() and np.isfinite(high).all():
                    ax.fill_between(xs, low, high, color=color, alpha=0.10, linewidth=0)
            else:
                ax.plot([], [], color=color, marker=marker, markersize=MARKER_SIZE,
                        label=plain(model) + "  (not served)")
            if warm is not None and model in warm.index:
                ax.axhline(warm[model], color=color, linestyle=":", linewidth=0.9, alpha=0.7)
        ax.set_xticks(levels)
        ax.set_xlabel("history items given to each cold user (shots)")
        ax.set_ylabel(f"{metric}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        caption = ("How fast each model learns a new user: mean over cold users (95% bootstrap band) against the "
                   "number of history items it was given, no point where a model cannot serve a level (it is not "
                   "zero)" + (", and a dotted line at the same model's score on warm users (random split)."
                              if warm is not None else "."))
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
            st = style_of(styles, model)
            color = st.color
            if warm is not None and model in warm.index:
                ax.bar(x[i] - width / 2, warm[model], width, color=color, alpha=0.45, edgecolor=color)
            if model in cold.index:
                ax.bar(x[i] + width / 2, cold[model], width, color=color, hatch="//", edgecolor="white")
            elif model in unsupported:
                ax.text(x[i] + width / 2, top * 0.02, "not served", rotation=90, ha="center", va="bottom",
                        fontsize=8, color="#555555")
            # the model's marker above its bars: the same pair as in every other plot
            height = max([float(warm[model])] if warm is not None and model in warm.index else [0.0])
            height = max(height, float(cold[model]) if model in cold.index else 0.0)
            ax.plot([x[i]], [height + top * 0.05], color=color, marker=st.marker, markersize=MARKER_SIZE,
                    linestyle="none", zorder=4, gid=model_gid(model))
        ax.set_xticks(x, [plain(m) for m in models], rotation=20 if len(models) > 4 else 0)
        ax.set_ylabel(metric)
        ax.set_ylim(0, top * 1.15 if top > 0 else 1)
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(facecolor="#888888", alpha=0.45, label="warm items (random split)"),
                           Patch(facecolor="#888888", hatch="//", edgecolor="white", label="cold items")],
                  fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
        ax.grid(True, axis="y", alpha=0.3)
        plots.append(Plot(f"{dataset} · warm versus cold items", to_uri(fig),
                          f"{metric} on warm items versus cold items on {dataset}",
                          "What a model loses on items nobody has interacted with yet: pale bars are warm items, "
                          "hatched bars cold items (ranked among the cold items only); “not served” marks a model "
                          "without a cold-item capability (no score, not zero)."))
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


POLICY_LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1, 1, 1))]


def _replay_curves(run: RunData, cell_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """policy label -> (events replayed, moving-window hit rate) from a cell's replay traces."""
    payload = run.realtime(str(cell_id))
    if payload is None:
        return {}
    out = {}
    for label, trace in payload.get("policies", {}).items():
        if trace.get("status") != "ok" or not trace.get("block_end"):
            continue
        hits = np.asarray(trace["hits"], dtype=float)
        events = np.asarray(trace["events"], dtype=float)
        window = max(1, len(hits) // 20)
        kernel = np.ones(window)
        rate = np.convolve(hits, kernel, "valid") / np.maximum(np.convolve(events, kernel, "valid"), 1)
        out[label] = (np.asarray(trace["block_end"], dtype=float)[window - 1:], rate)
    return out


def realtime_plots(run: RunData, styles: dict[str, Style]) -> tuple[list[Plot], list[str]]:
    """Per dataset: small multiples of hit rate over replay time (one panel per model, policies as line
    styles, one y-axis) and the freshness-versus-update-cost scatter (only its Pareto frontier labelled,
    every point in the table beside it).

    Reads each cell's replay traces (``RunData.realtime``, written by ``bench.realtime``) for the curves.
    """
    frame = run.frame
    replay = frame[frame["segment"].str.startswith("replay:")]
    if replay.empty:
        return [], ["no real-time replay in this run (the `realtime` suite, on a temporal split, produces one)"]
    plots = []
    for dataset, sub in replay.groupby("dataset"):
        policies = sorted({s.split(":", 1)[1] for s in sub["segment"]}, key=policy_sort_key)
        k = int(sub[sub["metric"] == "prequential_hit_rate"]["k"].max() or 0)
        models = [m for m in run.model_order() if m in set(sub["model"])]
        # -- small multiples: one panel per model, a common y-axis
        curves = {m: _replay_curves(run, sub[sub["model"] == m]["cell_id"].iloc[0]) for m in models}
        drawn = [m for m in models if curves[m]]
        if drawn:
            ncols = min(4, len(drawn))
            nrows = math.ceil(len(drawn) / ncols)
            fig = Figure(figsize=(2.9 * ncols + 0.6, 2.3 * nrows + 0.4))
            axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
            for ax, model in zip(axes.flat, drawn):
                st = style_of(styles, model)
                for label, (x, rate) in curves[model].items():
                    ls = POLICY_LINESTYLES[policies.index(label) % len(POLICY_LINESTYLES)] if label in policies else "-"
                    ax.plot(x, rate, color=st.color, linestyle=ls, linewidth=1.3, marker=st.marker,
                            markersize=MARKER_SIZE - 3, markevery=[len(x) - 1], gid=model_gid(model))
                ax.set_title(plain(model), fontsize=9, color=st.color)
                ax.grid(True, alpha=0.3)
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            for ax in axes.flat[len(drawn):]:
                ax.set_visible(False)
            for ax in axes[:, 0]:
                ax.set_ylabel(f"hit rate@{k}", fontsize=8)
            for ax in axes[-1, :]:
                ax.set_xlabel("events after the cut", fontsize=8)
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], color="#333333", linestyle=POLICY_LINESTYLES[i % len(POLICY_LINESTYLES)])
                       for i, _ in enumerate(policies)]
            fig.legend(handles, [plain(p) for p in policies], loc="upper center", bbox_to_anchor=(0.5, 0.0),
                       ncol=min(len(policies), 5), frameon=False, fontsize=8, title="update policy",
                       title_fontsize=8)
            fig.tight_layout()
            plots.append(Plot(f"{dataset} · hit rate over the replay, one panel per model", to_uri(fig),
                              f"hit rate over replay time, one panel per model, on {dataset}",
                              "Whether updating keeps a model fresh: each panel is one model's moving-window hit "
                              "rate over the events after the time cut (same y-axis everywhere), one line style "
                              "per update policy, and a line above “static” is what updating buys."))
        # -- freshness versus update cost
        ok = sub[sub["status"] == "ok"]
        rate = ok[ok["metric"] == "prequential_hit_rate"].groupby(["model", "segment"])["value"].mean()
        cost = ok[ok["metric"] == "update_seconds_total"].groupby(["model", "segment"])["value"].mean()
        points = [(m, seg, float(cost[(m, seg)]), float(rate[(m, seg)])) for m, seg in rate.index
                  if (m, seg) in cost.index]
        points.sort(key=lambda p: (models.index(p[0]) if p[0] in models else len(models), p[1]))
        if not points:
            continue
        x = np.array([p[2] for p in points])
        y = np.array([p[3] for p in points])
        front = [int(i) for i in pareto_front(x, y, lower_cost_is_better=True)]
        fig = Figure(figsize=(6.6, 4.2))
        ax = fig.add_subplot(1, 1, 1)
        seen: set[str] = set()
        for i, (model, seg, cx, cy) in enumerate(points):
            st = style_of(styles, model)
            ax.scatter([cx], [cy], color=st.color, marker=st.marker, s=MARKER_SIZE ** 2, zorder=3,
                       label=plain(model) if model not in seen else None, gid=model_gid(model),
                       edgecolors="black" if i in front else "none", linewidths=0.8)
            seen.add(model)
        if len(front) > 1:
            ax.step(x[front], y[front], where="post", color="#999999", linestyle="--", linewidth=1, zorder=1)
        for rank, i in enumerate(front, 1):  # only the frontier is labelled, by number: the table names it
            ax.annotate(str(rank), (x[i], y[i]), fontsize=8, fontweight="bold", xytext=(5, 4),
                        textcoords="offset points")
        ax.margins(x=0.08, y=0.12)
        ax.set_xscale("symlog", linthresh=max(1e-3, float(np.min(x[x > 0])) / 2) if (x > 0).any() else 1e-2)
        seconds_axis(ax.xaxis)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("total update time over the replay (symlog; ← cheaper)")
        ax.set_ylabel(f"prequential hit rate@{k} (fresher ↑)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="model",
                  title_fontsize=8)
        rank_of = {i: rank for rank, i in enumerate(front, 1)}
        rows = [[model, seg.split(":", 1)[1], fmt(cy), units.seconds(cx), str(rank_of.get(i, ""))]
                for i, (model, seg, cx, cy) in sorted(enumerate(points), key=lambda ip: -ip[1][3])]
        table = FigureTable("every point", ["model", "policy", f"hit rate@{k}", "update time", "frontier #"], rows)
        plots.append(Plot(f"{dataset} · freshness versus update cost", to_uri(fig),
                          f"prequential hit rate against total update time per model and policy on {dataset}",
                          "Which update policy is worth its cost: one point per model and policy, up and to the "
                          "left is better, and only the points on the dashed frontier (outlined) are labelled, by "
                          "their number in the table beside, which lists every point.", table))
    return plots, []



__all__ = ["Plot", "coldstart_plots", "model_gid", "pareto_front", "realtime_plots", "tradeoff_plots"]


# -- fine-tuning loss --------------------------------------------------------------------


def loss_plots(run: RunData, styles: dict[str, Style]) -> list[Plot]:
    """Training loss per step of every model that kept one (``model_description.training.loss_curve``),
    one figure per dataset x split: each step's loss thin, its moving mean thick (steps of small batches
    are noisy; the trend is the question)."""
    curves: dict[tuple[str, str], list[tuple[str, int, np.ndarray]]] = {}
    for cell in run.cells.values():
        curve = ((cell.get("model_description") or {}).get("training") or {}).get("loss_curve") or []
        if curve:
            key = (str(cell.get("dataset")), str(cell.get("split")))
            curves.setdefault(key, []).append((str(cell.get("model")), int(cell.get("seed", 0)),
                                               np.asarray(curve, dtype=float)))
    plots = []
    for (dataset, split), entries in sorted(curves.items(), key=lambda kv: (kv[0][0], split_rank(run, kv[0][1]))):
        fig = Figure(figsize=(5.6, 3.2))
        ax = fig.add_subplot(1, 1, 1)
        windows = []
        for model, seed, curve in sorted(entries, key=lambda e: (e[0], e[1])):
            st = style_of(styles, model)
            steps = np.arange(1, curve.size + 1)
            window = max(1, curve.size // 8)
            windows.append(window)
            smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
            label = plain(model) + (f" (seed {seed})" if len(entries) > 1 else "")
            ax.plot(steps, curve, color=st.color, linewidth=0.7, alpha=0.35, gid=model_gid(model))
            ax.plot(steps[window - 1:], smooth, color=st.color, linewidth=2.0, label=label, gid=model_gid(model))
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("training loss")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        figure_legend(fig, handles, labels)
        plots.append(Plot(f"{dataset} · {split}: fine-tuning loss", to_uri(fig),
                          f"training loss per step on {dataset} {split}",
                          f"thin: each step's loss; thick: moving mean over "
                          f"{', '.join(map(str, sorted(set(windows))))} "
                          f"steps (cell.json model_description.training.loss_curve)"))
    return plots
