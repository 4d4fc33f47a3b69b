"""The tidy results table and its schema.

One row per run x dataset x split x model x params x seed x segment x metric x k.
Accuracy metrics and systems figures share the table: a systems figure is a row
whose ``k`` is 0. Per-user values and raw top-k lists live beside it in each
cell's folder so CIs, paired tests and new metrics need no refit.

The run folder's layout and every read and write of it live in :mod:`bench.rundir`;
this module types the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench.rundir import RESULTS_SCHEMA_VERSION as SCHEMA_VERSION  # noqa: F401  (re-exported)
from bench.rundir import RunDir, atomic_write_bytes, atomic_write_json, atomic_write_npz, dumps  # noqa: F401


@dataclass
class ResultRow:
    run_id: str
    suite: str
    dataset: str
    conversion: str
    split: str
    split_params: str  # JSON
    split_fingerprint: str
    protocol: str  # "full" ranking, or a sampled-candidate protocol
    seed: int
    model: str  # the label in the suite
    model_name: str  # the registered model
    params: str  # JSON of the model's full parameters
    segment: str  # "all", "shots=3", "cold-items"
    metric: str
    k: int  # 0 for figures without a cut-off (timings, sizes)
    value: float
    ci_low: float
    ci_high: float
    n: int  # users the value is averaged over (0 for systems figures)
    status: str  # "ok", "unsupported" (not served), "first_stage" (positions a first stage ranked), "failed",
    # "too_few_requests" (a latency percentile from too few requests, bench.systems.TOO_FEW),
    # "over_budget" (a batch scenario not run: one call would overrun the systems budget, bench.systems)
    cell_id: str


COLUMNS = [f.name for f in fields(ResultRow)]
DTYPES = {f.name: ("float64" if f.type == "float" else "int64" if f.type == "int" else "string")
          for f in fields(ResultRow)}


def to_frame(rows: Iterable[ResultRow | dict[str, Any]]) -> pd.DataFrame:
    records = [asdict(r) if isinstance(r, ResultRow) else r for r in rows]
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    return frame.astype(DTYPES)


def write_tables(run_dir: Path, rows: list[dict[str, Any]], provenance: dict[str, Any]) -> pd.DataFrame:
    """results.csv and results.json for the whole run (rewritten, atomically, as cells finish)."""
    frame = to_frame(rows)
    RunDir(run_dir).write_results(frame, rows, provenance)
    return frame


def load_results(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The tidy table and provenance of a finished (or partly finished) run."""
    stored, provenance = RunDir(run_dir).read_results()
    rows = [{k: (float("nan") if v is None and DTYPES[k] == "float64" else v) for k, v in r.items()}
            for r in stored]
    return to_frame(rows), provenance
