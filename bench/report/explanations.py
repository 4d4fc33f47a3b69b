"""The report's *Explanations* section: what the reasons of explaining models name, and examples.

Figures come from the tidy table (the k = 0 rows of bench.explanations, one
table per dataset x split); the examples are the stored reasons
(``cells/<cell>/explanations-<segment>.jsonl``, read through bench.rundir), a
few per model, exactly as a user would read them. The template autoescapes
every string, so a reason holding markup shows as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.explanations import EXPLAIN_SECONDS, METRIC_FIELDS
from bench.report import units
from bench.report.rundata import RunData
from bench.report.tables import fmt, segment_sort_key, split_rank
from bench.rundir import RunDir

ROW_NAMES = (*METRIC_FIELDS, EXPLAIN_SECONDS)  # shown here, never as systems figures
EXAMPLES_PER_MODEL = 4


@dataclass
class ExplanationTable:
    title: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Example:
    segment: str
    user: str
    rank: int
    title: str
    reason: str
    verdict: str


def _with_ci(value: float, low: float, high: float) -> str:
    text = fmt(value)
    return text + (f" [{fmt(low)}, {fmt(high)}]" if pd.notna(low) and pd.notna(high) else "")


def explanation_tables(run: RunData) -> list[ExplanationTable]:
    """Per dataset x split: grounding and hallucination rates (95% CI over users), mean words, n, time."""
    frame = run.frame
    rows = frame[(frame["k"] == 0) & frame["metric"].isin(ROW_NAMES) & (frame["status"] == "ok")]
    out = []
    order = run.model_order()
    for (dataset, split), sub in sorted(rows.groupby(["dataset", "split"]),
                                        key=lambda kv: (kv[0][0], split_rank(run, kv[0][1]))):
        table = []
        for model in [m for m in order if m in set(sub["model"])]:
            msub = sub[sub["model"] == model]
            for segment in sorted(msub["segment"].unique(), key=segment_sort_key):
                seg = msub[msub["segment"] == segment].groupby("metric").first()  # one seed: as stored

                def cell(name: str) -> str:
                    if name not in seg.index:
                        return "–"
                    r = seg.loc[name]
                    return _with_ci(r["value"], r["ci_low"], r["ci_high"])

                n = int(seg.loc["explanation_grounding", "n"]) if "explanation_grounding" in seg.index else 0
                seconds = seg.loc[EXPLAIN_SECONDS, "value"] if EXPLAIN_SECONDS in seg.index else float("nan")
                length = fmt(seg.loc["explanation_length", "value"]) if "explanation_length" in seg.index else "–"
                table.append([model, segment, str(n), cell("explanation_grounding"),
                              cell("explanation_history_grounding"), cell("explanation_hallucination"), length,
                              units.seconds(seconds)])
        out.append(ExplanationTable(f"{dataset} · {split} split", ["model", "segment", "reasons", "grounding",
                                                                  "of which history", "hallucination", "words",
                                                                  "time"], table))
    return out


def _verdict(record: dict[str, Any]) -> str:
    parts = [("grounded by " + "; ".join(record.get("grounded_by") or [])) if record.get("grounded")
             else "not grounded"]
    if record.get("hallucinated"):
        parts.append("names no catalogue item: " + "; ".join(record.get("unknown_mentions") or []))
    return " · ".join(parts)


def examples(run: RunData, per_model: int = EXAMPLES_PER_MODEL) -> dict[str, list[Example]]:
    """model -> its first stored reasons (cells in dataset/split order, segments in report order)."""
    folder = RunDir(run.run_dir)
    out: dict[str, list[Example]] = {}
    cells = sorted(run.cells.items(), key=lambda kv: (str(kv[1].get("dataset")),
                                                      split_rank(run, str(kv[1].get("split"))),
                                                      int(kv[1].get("seed", 0))))
    for cid, info in cells:
        model = str(info.get("model"))
        chosen = out.setdefault(model, [])
        stored = folder.read_explanations(cid)
        for segment in sorted(stored, key=segment_sort_key):
            for record in stored[segment]:
                if len(chosen) >= per_model:
                    break
                chosen.append(Example(f"{info.get('dataset')} · {info.get('split')} · {segment}",
                                      str(record.get("user_id", record.get("user"))), int(record.get("rank", 0)),
                                      str(record.get("title", "")), str(record.get("reason", "")), _verdict(record)))
    return {m: out[m] for m in [*run.model_order(), *sorted(set(out) - set(run.model_order()))] if out.get(m)}
