"""Turn a run folder into ``report.html`` (self-contained) and ``report.md`` beside it.

The page is rendered by Jinja2 with autoescaping on, from templates shipped as
package data (``bench/report/templates``), so every data-derived string (model
labels, parameters, error text) is HTML-escaped. The page carries a
Content-Security-Policy that forbids scripts and any network fetch: even text
that slipped past escaping could not run or phone home.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from bench.report import explanations as explain_lib
from bench.report import plots as plot_lib
from bench.report import pointwise as pointwise_report
from bench.report import tables, units
from bench.report.markdown import leaderboard_markdown
from bench.report.style import GLYPHS, by_family, run_styles
from bench.report.which_model import which_model
from bench.report.rundata import ReportError, RunData, load_run
from bench.rundir import atomic_write_bytes
from bench.systems import machine_mismatch

DEFAULT_METRIC = "ndcg@10"
FOLD_ROWS = 10  # longer systems / real-time tables are folded behind their one-line summary


@dataclass
class ReportFiles:
    html: Path
    markdown: Path


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("bench.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = tables.fmt
    env.filters["seconds"] = units.seconds
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=1, sort_keys=True, default=str)
    return env


def _css() -> str:
    return resources.files("bench.report").joinpath("templates", "report.css").read_text(encoding="utf-8")


def header(run: RunData) -> dict[str, Any]:
    """Where the numbers come from: suite, data, splits, machine, code, packages, seeds."""
    frame, prov, config = run.frame, run.provenance, run.config
    splits = []
    groups = sorted(frame.groupby(["dataset", "split", "split_params"]),
                    key=lambda kv: (kv[0][0], tables.split_rank(run, kv[0][1])))
    for (dataset, split, params), sub in groups:
        splits.append({"dataset": dataset, "split": split, "params": params,
                       "fingerprints": sorted(sub["split_fingerprint"].unique()),
                       "segments": sorted(sub[~tables.is_realtime(sub["segment"]) & (sub["k"] > 0)]["segment"]
                                          .unique(), key=tables.segment_sort_key),
                       "seeds": sorted(int(s) for s in sub["seed"].unique())})
    datasets = []
    for spec in config.get("datasets", []):
        conv = frame[frame["dataset"] == spec.get("name")]["conversion"]
        datasets.append({"name": spec.get("name"), "params": spec.get("params") or {},
                         "conversion": str(conv.iloc[0]) if len(conv) else ""})
    git = prov.get("git", {})
    return {
        "run_id": run.run_id, "suite": run.suite, "description": config.get("description", ""),
        "created": prov.get("created", ""), "commit": git.get("commit") or "unknown",
        "dirty": git.get("dirty"), "machine": prov.get("machine", {}), "device": prov.get("device", ""),
        "packages": {k: v for k, v in sorted(prov.get("packages", {}).items()) if v},
        "datasets": datasets, "splits": splits, "seeds": config.get("seeds") or sorted(frame["seed"].unique()),
        "evaluation": config.get("evaluation", {}), "run_dir": str(run.run_dir),
        "cells": len(run.cells), "failed": sum(1 for c in run.cells.values() if c.get("status") == "failed"),
    }


def build_context(run: RunData, other: RunData | None, metric: str) -> dict[str, Any]:
    boards = tables.leaderboards(run)
    available = [c.key for c in sorted({(c.metric, c.k): c for b in boards for c in b.columns}.values(),
                                       key=lambda c: (tables.metric_sort_key(c.metric), c.k))]
    if boards and metric not in available:
        raise ReportError(f"metric '{metric}' is not in this run; choose one of: {', '.join(available)}")
    compare = None
    if other is not None:
        notes = tables.add_deltas(boards, run, other)
        compare = {"run_id": other.run_id, "run_dir": str(other.run_dir), "notes": notes,
                   "machine_warning": machine_mismatch(run.provenance, other.provenance),
                   "method": tables.COMPARE_METHOD, "created": other.provenance.get("created", ""),
                   "commit": (other.provenance.get("git") or {}).get("commit") or "unknown"}
    styles = run_styles(run, other)
    tradeoff = plot_lib.tradeoff_plots(run, metric, styles)
    coldstart, coldstart_notes = plot_lib.coldstart_plots(run, metric, styles)
    realtime, realtime_notes = plot_lib.realtime_plots(run, styles)
    systems = tables.systems_tables(run)
    paired = tables.paired_comparisons(run, boards)
    losses = plot_lib.loss_plots(run, styles)
    pointwise = pointwise_report.pointwise_tables(run)  # CTR-style runs (bench.pointwise); [] otherwise
    pointwise_plots = pointwise_report.few_shot_plots(run, styles)
    metric_docs = []
    for key in available:
        name = key.split("@")[0]
        if name not in [m["name"] for m in metric_docs]:
            direction = tables.metric_direction(name)
            try:
                from bench import registry

                doc = getattr(registry.metrics.get(name), "description", "") or ""
            except Exception:  # noqa: BLE001 - unregistered metric from another plug-in
                doc = ""
            metric_docs.append({"name": name, "doc": doc,
                                "direction": {True: "higher is better", False: "lower is better",
                                              None: "direction unknown"}[direction]})
    verdicts = tables.verdicts(boards, metric)
    in_overview = {m for v in verdicts for m in v.board.models}
    return {
        "h": header(run), "boards": boards, "metric": metric, "verdicts": verdicts,
        "which": which_model(run, boards, metric), "verdict_of": {v.board.anchor: v for v in verdicts}, "styles": styles, "glyphs": GLYPHS,
        "families": by_family(styles, run.model_order()), "fold_rows": FOLD_ROWS,
        "overview_models": [m for m in run.model_order() if m in in_overview],
        "method": tables.SIGNIFICANCE_METHOD, "alpha": tables.ALPHA, "compare": compare,
        "tradeoff": tradeoff, "coldstart": coldstart, "coldstart_notes": coldstart_notes,
        "realtime": realtime, "realtime_notes": realtime_notes, "realtime_tables": tables.realtime_tables(run),
        "systems": systems, "models": tables.model_details(run),
        "paired": paired, "paired_method": tables.PAIRED_METHOD, "losses": losses, "loss_table": tables.loss_table(run),
        "explanation_tables": explain_lib.explanation_tables(run), "explanation_examples": explain_lib.examples(run),
        "pointwise": pointwise, "pointwise_plots": pointwise_plots,
        "model_index": {m: i for i, m in enumerate(run.model_order())}, "metric_docs": metric_docs,
        "css": _css(), "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "isfinite": math.isfinite,
    }


def render_html(run: RunData, other: RunData | None = None, metric: str = DEFAULT_METRIC) -> tuple[str, dict]:
    """The page and the context it was rendered from (the Markdown summary reuses its tables)."""
    context = build_context(run, other, metric)
    return _environment().get_template("report.html.j2").render(**context), context


def write_report(run_dir: Path, *, compare: Path | None = None, out: Path | None = None,
                 metric: str = DEFAULT_METRIC, markdown: bool = True) -> ReportFiles:
    """Render ``run_dir`` (optionally against ``compare``) to ``out`` (default ``run_dir/report.html``)
    and, unless ``markdown`` is False, the Markdown leaderboard beside it (same name, ``.md``)."""
    run = load_run(run_dir)
    other = load_run(compare) if compare is not None else None
    html_path = Path(out) if out is not None else run.run_dir / "report.html"
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"--out {html_path}: give a file name ending in .html (the Markdown summary is written "
                          f"beside it as .md)")
    text, context = render_html(run, other, metric)
    md_path = html_path.with_suffix(".md")
    summary = leaderboard_markdown(context["boards"], suite=run.suite, run_id=run.run_id, headline=metric,
                                   html_name=html_path.name, compare_id=other.run_id if other else None,
                                   which=context["which"], paired=context["paired"], losses=context["loss_table"])
    written = [html_path] + ([md_path] if markdown else [])
    atomic_write_bytes(html_path, text.encode("utf-8"))
    if markdown:
        atomic_write_bytes(md_path, summary.encode("utf-8"))
    for path in written:  # made to be shared: readable like any other file, not 0600
        path.chmod(0o644)
    return ReportFiles(html_path, md_path)
