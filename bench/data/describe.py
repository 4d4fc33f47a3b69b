"""``bench data describe``: what a user is about to benchmark, before they benchmark it.

Counts, density, the interactions-per-user and per-item distributions (as a
log-binned text histogram, or an SVG), the time range, and the cold-start
potential: users and items with fewer than 5 interactions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.data.dataset import Dataset

COLD_BELOW = 5
_BAR = 40


def describe(ds: Dataset) -> dict[str, Any]:
    """The figures ``bench data describe`` prints, as a dict (also used by tests)."""
    per_user = np.bincount(ds.user, minlength=ds.n_users)
    per_item = np.bincount(ds.item, minlength=ds.n_items)
    out: dict[str, Any] = {
        "name": ds.name, "users": ds.n_users, "items": ds.n_items, "interactions": ds.n_interactions,
        "density": ds.n_interactions / max(1, ds.n_users * ds.n_items),
        "conversion": ds.info.get("conversion", ""),
        "per_user": _quantiles(per_user), "per_item": _quantiles(per_item),
        "cold_users": int((per_user < COLD_BELOW).sum()), "cold_items": int((per_item < COLD_BELOW).sum()),
        "item_value": ds.item_value is not None, "categories": len(ds.category_names),
    }
    if ds.timestamp is not None and len(ds.timestamp):
        lo, hi = int(np.min(ds.timestamp)), int(np.max(ds.timestamp))
        out["time_range"] = (str(np.datetime64(lo, "s")), str(np.datetime64(hi, "s")))
        out["timestamp_unit"] = ds.info.get("timestamp_unit", "seconds")
    return out


def _quantiles(counts: np.ndarray) -> dict[str, float]:
    q = np.percentile(counts, [0, 25, 50, 75, 90, 99, 100]) if len(counts) else np.zeros(7)
    return {"min": q[0], "p25": q[1], "median": q[2], "p75": q[3], "p90": q[4], "p99": q[5], "max": q[6],
            "mean": float(counts.mean()) if len(counts) else 0.0}


def log_bins(counts: np.ndarray) -> list[tuple[int, int, int]]:
    """(low, high, how many) for power-of-two bins [1,1], [2,3], [4,7], ... covering the counts."""
    top = int(counts.max()) if len(counts) else 1
    edges = [1 << p for p in range(int(np.log2(max(top, 1))) + 2)]
    hist, _ = np.histogram(counts, bins=edges)
    return [(lo, hi - 1, int(n)) for lo, hi, n in zip(edges[:-1], edges[1:], hist)]


def text_histogram(counts: np.ndarray, label: str) -> str:
    bins = log_bins(counts)
    peak = max((n for *_, n in bins), default=1) or 1
    lines = [f"{label} (log2 bins)"]
    for lo, hi, n in bins:
        span = f"{lo}" if lo == hi else f"{lo}-{hi}"
        lines.append(f"  {span:>13s} | {'#' * max(1 if n else 0, round(_BAR * n / peak)):<{_BAR}s} {n:,}")
    return "\n".join(lines)


def render(ds: Dataset) -> str:
    d = describe(ds)
    q = lambda s: ", ".join(f"{k} {v:,.1f}" if k == "mean" else f"{k} {v:,.0f}" for k, v in s.items())  # noqa: E731
    lines = [f"dataset {d['name']}: {d['users']:,} users, {d['items']:,} items, {d['interactions']:,} interactions, "
             f"density {d['density']:.6f}",
             f"conversion: {d['conversion']}",
             f"interactions per user: {q(d['per_user'])}",
             f"interactions per item: {q(d['per_item'])}",
             f"cold-start potential: {d['cold_users']:,} users ({d['cold_users'] / max(1, d['users']):.1%}) and "
             f"{d['cold_items']:,} items ({d['cold_items'] / max(1, d['items']):.1%}) have < {COLD_BELOW} interactions"]
    if "time_range" in d:
        lines.append(f"time range: {d['time_range'][0]} .. {d['time_range'][1]} (timestamps: {d['timestamp_unit']})")
    else:
        lines.append("time range: no timestamps (time-based splits are refused)")
    lines.append(f"item side information: {d['categories']} categories; item values (revenue metrics): "
                 f"{'yes' if d['item_value'] else 'no'}")
    lines += ["", text_histogram(np.bincount(ds.user, minlength=ds.n_users), "interactions per user"),
              "", text_histogram(np.bincount(ds.item, minlength=ds.n_items), "interactions per item")]
    return "\n".join(lines)


def write_svg(ds: Dataset, path: Path) -> None:
    """The two distributions as log-log scatter plots in one SVG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, counts, label in ((axes[0], np.bincount(ds.user, minlength=ds.n_users), "interactions per user"),
                              (axes[1], np.bincount(ds.item, minlength=ds.n_items), "interactions per item")):
        values, freq = np.unique(counts[counts > 0], return_counts=True)
        ax.loglog(values, freq, ".", markersize=3)
        ax.axvline(COLD_BELOW, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("how many")
    fig.suptitle(f"{ds.name}: {ds.n_users:,} users, {ds.n_items:,} items, {ds.n_interactions:,} interactions")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg")
    plt.close(fig)
