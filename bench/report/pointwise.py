"""The report's pointwise (CTR-style) section: the AUC / GAUC / log-loss table and the few-shot curve.

Rows come from runs under ``[evaluation] protocol = "pointwise"`` (bench.pointwise): pair metrics
carry ``k = 0``. A model's log loss is shown only where it was scored; a model whose scores are
not probabilities reads "not a probability", never a number. The curve plots AUC against the
number of labelled examples a model was fine-tuned on (``train_examples``; ``max_steps = 0`` is the
untuned checkpoint at 0), with every other model as a horizontal reference line: they are trained on
every liked training interaction, not on a few labelled pairs.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.metrics import PAIR_METRICS
from bench.report.plots import MARKER_SIZE, Plot, model_gid, plain, style_of, to_uri
from bench.report.rundata import RunData
from bench.report.style import Style
from bench.report.tables import FigureTable, fmt

NOT_PROBABILITY = "not a probability"


def pair_rows(run: RunData) -> pd.DataFrame:
    """The pair-metric rows of the run (empty for ranking runs)."""
    frame = run.frame
    return frame[frame["metric"].isin(PAIR_METRICS) & (frame["k"] == 0)]


def examples_of(params: str) -> int | None:
    """Labelled examples a model was fine-tuned on, from its params; None for models that do not learn from them."""
    try:
        p = json.loads(params) if isinstance(params, str) else dict(params or {})
    except ValueError:
        return None
    if p.get("train_labels") != "rating":
        return None
    return 0 if not p.get("max_steps") else int(p.get("train_examples") or 0)


def _cell_text(row: pd.Series | None) -> str:
    if row is None:
        return "–"
    if row["status"] == "unsupported":
        return NOT_PROBABILITY
    if row["status"] != "ok" or not np.isfinite(row["value"]):
        return str(row["status"])
    ci = f" [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]" if np.isfinite(row["ci_low"]) else ""
    return f"{fmt(row['value'])}{ci}"


def pointwise_tables(run: RunData) -> list[FigureTable]:
    """One table per dataset x split x segment: each model's AUC, GAUC and log loss (95% CIs over users)."""
    rows = pair_rows(run)
    frame = run.frame
    out = []
    for (dataset, split, segment, protocol), sub in rows.groupby(["dataset", "split", "segment", "protocol"]):
        counts = frame[(frame["dataset"] == dataset) & (frame["split"] == split) & (frame["segment"] == segment)]
        pairs = counts[counts["metric"] == "test_pairs"].groupby("model")["value"].first()
        liked = counts[counts["metric"] == "test_pairs_liked_share"].groupby("model")["value"].first()
        skipped = counts[counts["metric"] == "gauc_users_skipped"].groupby("model")["value"].first()
        table_rows = []
        for model in [m for m in run.model_order() if m in set(sub["model"])]:
            mine = sub[sub["model"] == model].set_index("metric")
            cells = [_cell_text(mine.loc[name] if name in mine.index else None) for name in PAIR_METRICS]
            table_rows.append([model] + cells)
        n_pairs = int(pairs.iloc[0]) if len(pairs) else 0
        note = (f"{n_pairs} labelled test pairs ({fmt(float(liked.iloc[0]) if len(liked) else float('nan'))} liked), "
                f"the same for every model; GAUC skips users whose pairs hold one label "
                f"({int(skipped.iloc[0]) if len(skipped) else 0} here). Brackets: 95% bootstrap over users. "
                f"Log loss only for models whose scores are probabilities (Capabilities.calibrated).")
        out.append(FigureTable(f"{dataset} · {split} split · {segment} · {protocol}",
                               ["model", "AUC ↑", "GAUC ↑", "log loss ↓"], table_rows, note))
    return out


def few_shot_plots(run: RunData, styles: dict[str, Style]) -> list[Plot]:
    """AUC against the number of labelled fine-tuning examples (LM models), other models as reference lines."""
    rows = pair_rows(run)
    rows = rows[(rows["metric"] == "auc") & (rows["status"] == "ok")]
    plots = []
    for (dataset, split, segment), sub in rows.groupby(["dataset", "split", "segment"]):
        sub = sub.assign(examples=[examples_of(p) for p in sub["params"]])
        curve = sub[sub["examples"].notna()]
        if curve.empty:
            continue
        fig = Figure(figsize=(9.0, 4.2))
        ax = fig.add_subplot(1, 1, 1)
        levels = sorted({int(x) for x in curve["examples"]})
        position = {n: i for i, n in enumerate(levels)}  # 0, 16, 64, 256: evenly spaced, labelled
        family = curve.assign(base=curve["model_name"]).groupby("base")
        for base, points in family:
            points = points.sort_values("examples")
            first = points["model"].iloc[0]
            st = style_of(styles, first)
            xs = [position[int(n)] for n in points["examples"]]
            ax.plot(xs, points["value"], color=st.color, marker=st.marker, markersize=MARKER_SIZE,
                    label=plain(f"{base} (tuned on N examples)"), gid=model_gid(first))
            low, high = points["ci_low"].to_numpy(float), points["ci_high"].to_numpy(float)
            if np.isfinite(low).all() and np.isfinite(high).all():
                ax.fill_between(xs, low, high, color=st.color, alpha=0.12, linewidth=0)
        for model in [m for m in run.model_order() if m in set(sub[sub["examples"].isna()]["model"])]:
            value = float(sub[sub["model"] == model]["value"].mean())
            st = style_of(styles, model)
            ax.axhline(value, color=st.color, linestyle="--", linewidth=1.1, label=plain(f"{model} (all training data)"),
                       gid=model_gid(model))
        ax.axhline(0.5, color="#999999", linestyle=":", linewidth=0.9, label="chance (0.5)")
        ax.set_xticks(range(len(levels)), [str(n) for n in levels])
        ax.set_xlabel("labelled examples the LM was fine-tuned on (0 = untuned checkpoint)")
        ax.set_ylabel("AUC")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        plots.append(Plot(f"{dataset} · {split} split · AUC against labelled examples", to_uri(fig),
                          f"AUC against the number of labelled fine-tuning examples on {dataset}",
                          "TALLRec's few-shot view: the LM's AUC on the shared labelled test pairs (95% bootstrap band "
                          "over users) after fine-tuning on N labelled yes/no examples; dashed lines are models "
                          "trained on every liked training interaction, the dotted line is chance."))
    return plots
