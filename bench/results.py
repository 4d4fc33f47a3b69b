"""The tidy results table, its schema, and crash-safe writing.

One row per run x dataset x split x model x params x seed x segment x metric x k.
Accuracy metrics and systems figures share the table: a systems figure is a row
whose ``k`` is 0. Per-user values and raw top-k lists live beside it in each
cell's folder so CIs, paired tests and new metrics need no refit.

Layout of ``reports/runs/<run-id>/``::

    config.json        the suite config as run
    provenance.json    git, packages, machine, device
    splits/<fp>.npz    index arrays of every split (fingerprint-named)
    cells/<cell-id>/   cell.json (status, timings, model description, error),
                       topk-<segment>.npz, per_user-<segment>.npz
    results.csv        the tidy table; results.json = rows + provenance
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1


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
    status: str  # "ok", "unsupported", "failed"
    cell_id: str


COLUMNS = [f.name for f in fields(ResultRow)]
DTYPES = {f.name: ("float64" if f.type == "float" else "int64" if f.type == "int" else "string")
          for f in fields(ResultRow)}


def to_frame(rows: Iterable[ResultRow | dict[str, Any]]) -> pd.DataFrame:
    records = [asdict(r) if isinstance(r, ResultRow) else r for r in rows]
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    return frame.astype(DTYPES)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def dumps(obj: Any) -> str:
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=2, sort_keys=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, dumps(obj).encode("utf-8"))


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def write_tables(run_dir: Path, rows: list[dict[str, Any]], provenance: dict[str, Any]) -> pd.DataFrame:
    """results.csv and results.json for the whole run (rewritten, atomically, as cells finish)."""
    frame = to_frame(rows)
    atomic_write_bytes(run_dir / "results.csv", frame.to_csv(index=False).encode("utf-8"))
    atomic_write_json(run_dir / "results.json", {"schema_version": SCHEMA_VERSION, "provenance": provenance,
                                                 "columns": COLUMNS, "rows": rows})
    return frame


def load_results(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The tidy table and provenance of a finished (or partly finished) run."""
    payload = json.loads((Path(run_dir) / "results.json").read_text(encoding="utf-8"))
    rows = [{k: (float("nan") if v is None and DTYPES[k] == "float64" else v) for k, v in r.items()}
            for r in payload["rows"]]
    return to_frame(rows), payload["provenance"]
