"""One home for a run folder: its layout, and every read and write of it.

The runner, the executors, resume, the gate, the report and ``bench score`` all go
through :class:`RunDir`; no other module opens these files, so the format of a run
lives in one place. Layout of ``reports/runs/<run>/``::

    config.json                     the suite exactly as run (``bench run --resume`` reads it)
    provenance.json                 git, packages, machine, device, calibration timing (bench.systems)
    results.csv, results.json       the tidy table (bench.results); .json = rows + provenance
    splits/<fp>.npz                 index arrays of every split, named by its fingerprint
    splits/<fp>-seed<seed>-<protocol>-<pool>.npz   sampled negatives / candidates (bench.protocols)
    cells/<cell-id>/cell.json       status, timings, model description, error; written last,
                                    so its presence marks the cell finished
    cells/<cell-id>/topk-<seg>.npz  raw lists: users, items[n, k_max], scores[n, k_max]
    cells/<cell-id>/per_user-<seg>.npz  per-user metric values: users, values[n, c], columns
    cells/<cell-id>/realtime.json   prequential replay traces (bench.realtime)
    cells/<cell-id>/explanations-<seg>.jsonl  a model's reasons, one JSON object a line, with the
                                    verdicts of bench.explanations (models with capability ``explains``)

Every write is atomic (a temporary file in the same folder, then a rename), so a
killed run never leaves a half-written file, only finished ones.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

RESULTS_SCHEMA_VERSION = 1  # results.json format

CONFIG = "config.json"
PROVENANCE = "provenance.json"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
CELL = "cell.json"
REALTIME = "realtime.json"
EXPLANATIONS = "explanations"


# -- crash-safe writing ------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file."""
    path = Path(path)
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


def _clean_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def dumps_table(header: dict[str, Any], key: str, rows: list[dict[str, Any]]) -> str:
    """``header`` as :func:`dumps` writes it, plus ``key``: the flat ``rows``, one compact row per line.

    results.json is rewritten after every cell; with thousands of rows, indent=2 (json's pure-Python
    encoder) made that ~0.3 s per cell at the end of `coldstart`. One row per line goes through the C
    encoder and stays readable and diff-friendly. Same JSON value as :func:`dumps` of the whole.
    """
    head = dumps(header)
    lines = ",\n".join("    " + json.dumps(_clean_row(row), default=_json_default, sort_keys=True) for row in rows)
    body = f'  "{key}": [\n{lines}\n  ]' if rows else f'  "{key}": []'
    return head[:-2] + ",\n" + body + "\n}" if header else "{\n" + body + "\n}"


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when there is no such file."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Every array in ``path`` (loaded, the file closed), or None when there is no such file."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        return {name: np.asarray(npz[name]) for name in npz.files}


# -- what the files hold -------------------------------------------------------------------

@dataclass
class TopK:
    """The raw lists of one cell and segment: row i is ``users[i]``'s list, best first, ``k_max`` long."""

    users: np.ndarray
    items: np.ndarray
    scores: np.ndarray

    @property
    def k_max(self) -> int:
        return int(self.items.shape[1]) if self.items.ndim == 2 else 0


@dataclass
class PerUser:
    """Per-user values of one cell and segment: ``values[:, j]`` is column ``columns[j]`` (``ndcg@10``)."""

    users: np.ndarray
    values: np.ndarray
    columns: list[str]

    def column(self, name: str) -> np.ndarray | None:
        if name not in self.columns:
            return None
        return self.values[:, self.columns.index(name)]


class SplitStore:
    """``splits/``: the index arrays of every split and the candidates drawn for it, shared by all cells."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def write_split(self, fingerprint: str, **arrays: np.ndarray) -> None:
        atomic_write_npz(self.folder / f"{fingerprint}.npz", **arrays)

    def read_split(self, fingerprint: str) -> dict[str, np.ndarray] | None:
        return _read_npz(self.folder / f"{fingerprint}.npz")

    def _negatives_file(self, fingerprint: str, draw_tag: str, pool_tag: str) -> Path:
        return self.folder / f"{fingerprint}-{draw_tag}-{pool_tag}.npz"

    def read_negatives(self, fingerprint: str, draw_tag: str, pool_tag: str) -> dict[str, np.ndarray] | None:
        return _read_npz(self._negatives_file(fingerprint, draw_tag, pool_tag))

    def write_negatives(self, fingerprint: str, draw_tag: str, pool_tag: str, **arrays: np.ndarray) -> None:
        atomic_write_npz(self._negatives_file(fingerprint, draw_tag, pool_tag), **arrays)


# -- the run folder ---------------------------------------------------------------------------

class RunDir:
    """A run folder ``reports/runs/<run>/`` (it need not exist yet: writing creates it)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # run level

    @property
    def results_file(self) -> Path:
        """results.json: named in messages ("no results.json there")."""
        return self.path / RESULTS_JSON

    @property
    def results_csv(self) -> Path:
        return self.path / RESULTS_CSV

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    def has_results(self) -> bool:
        return self.results_file.is_file()

    def has_config(self) -> bool:
        return self.config_file.is_file()

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.config_file, config)

    def read_config(self) -> dict[str, Any] | None:
        """The suite as run (``SuiteConfig.as_dict()``), or None when the folder has none."""
        return _read_json(self.config_file)

    def write_provenance(self, provenance: dict[str, Any]) -> None:
        atomic_write_json(self.path / PROVENANCE, provenance)

    def read_provenance(self) -> dict[str, Any] | None:
        return _read_json(self.path / PROVENANCE)

    def write_results(self, frame: pd.DataFrame, rows: list[dict[str, Any]], provenance: dict[str, Any]) -> None:
        """results.csv (the typed ``frame``) and results.json (``rows`` + provenance), rewritten atomically."""
        atomic_write_bytes(self.results_csv, frame.to_csv(index=False).encode("utf-8"))
        header = {"schema_version": RESULTS_SCHEMA_VERSION, "provenance": provenance, "columns": list(frame.columns)}
        atomic_write_bytes(self.results_file, dumps_table(header, "rows", rows).encode("utf-8"))

    def read_results(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Rows (NaN stored as null) and provenance of results.json; bench.results types them."""
        payload = json.loads(self.results_file.read_text(encoding="utf-8"))
        return payload["rows"], payload["provenance"]

    # splits and candidates

    @property
    def splits_dir(self) -> Path:
        """The folder of :class:`SplitStore` (bench.protocols keeps drawn negatives there)."""
        return self.path / "splits"

    @property
    def splits(self) -> SplitStore:
        return SplitStore(self.splits_dir)

    # cells

    def cell_dir(self, cell_id: str) -> Path:
        return self.path / "cells" / cell_id

    def write_cell(self, cell_id: str, info: dict[str, Any]) -> None:
        """cell.json, written last by a cell: its presence marks the cell finished (ok or failed)."""
        atomic_write_json(self.cell_dir(cell_id) / CELL, info)

    def write_cell_result(self, cell_id: str, info: dict[str, Any], files: dict[str, bytes]) -> None:
        """A cell that ran in another process or on another node (bench.execution): the files it made,
        given relative to the run folder, then cell.json last. Drawn negatives under splits/ are
        deterministic in the split: a copy already there is kept."""
        self.discard_cell(cell_id)  # until the new cell.json lands, the cell is unfinished
        for rel, data in sorted(files.items()):
            parts = Path(rel).parts
            if Path(rel).is_absolute() or ".." in parts:
                raise ValueError(f"cell {cell_id} returned a file outside the run folder: {rel}")
            target = self.path / rel
            if parts[0] == self.splits_dir.name and target.exists():
                continue
            atomic_write_bytes(target, data)
        self.write_cell(cell_id, info)

    def cell_done(self, cell_id: str) -> bool:
        return (self.cell_dir(cell_id) / CELL).is_file()

    def read_cell(self, cell_id: str) -> dict[str, Any] | None:
        """cell.json with its rows, or None when the cell has not finished."""
        return _read_json(self.cell_dir(cell_id) / CELL)

    def discard_cell(self, cell_id: str) -> None:
        """Forget a finished cell (a forced re-run): the fresh cell.json becomes the only truth."""
        (self.cell_dir(cell_id) / CELL).unlink(missing_ok=True)

    def cell_ids(self) -> list[str]:
        """Every finished cell (one with a cell.json), sorted."""
        return sorted(p.parent.name for p in (self.path / "cells").glob(f"*/{CELL}"))

    def cells(self, *, rows: bool = False) -> dict[str, dict[str, Any]]:
        """cell id -> cell.json (without its rows unless asked); a file being written is skipped."""
        out: dict[str, dict[str, Any]] = {}
        for cid in self.cell_ids():
            try:
                info = self.read_cell(cid)
            except ValueError:
                continue  # a cell being written; the table still has its rows if it finished
            if info is None:
                continue
            if not rows:
                info.pop("rows", None)
            out[cid] = info
        return out

    def finished_cells(self) -> dict[str, dict[str, Any]]:
        """Cells that finished with status ok."""
        return {cid: info for cid, info in self.cells().items() if info.get("status") == "ok"}

    def failed_cells(self) -> dict[str, dict[str, Any]]:
        """Cells recorded as failed (exception, timeout, crash), with their error text."""
        return {cid: info for cid, info in self.cells().items() if info.get("status") == "failed"}

    # a cell's files

    def write_topk(self, cell_id: str, segment: str, users: np.ndarray, items: np.ndarray,
                   scores: np.ndarray) -> None:
        atomic_write_npz(self.cell_dir(cell_id) / f"topk-{segment}.npz", users=users, items=items, scores=scores)

    def read_topk(self, cell_id: str, segment: str) -> TopK | None:
        arrays = _read_npz(self.cell_dir(cell_id) / f"topk-{segment}.npz")
        return None if arrays is None else TopK(arrays["users"], arrays["items"], arrays["scores"])

    def write_per_user(self, cell_id: str, segment: str, users: np.ndarray, values: np.ndarray,
                       columns: list[str]) -> None:
        atomic_write_npz(self.cell_dir(cell_id) / f"per_user-{segment}.npz", users=users, values=values,
                         columns=np.array(columns))

    def read_per_user(self, cell_id: str, segment: str) -> PerUser | None:
        """Per-user values of a cell's segment, or None when the file is absent (failed/unsupported)."""
        arrays = _read_npz(self.cell_dir(cell_id) / f"per_user-{segment}.npz")
        if arrays is None:
            return None
        return PerUser(arrays["users"], np.asarray(arrays["values"], dtype=float), [str(c) for c in arrays["columns"]])

    def write_pairs(self, cell_id: str, segment: str, **arrays: np.ndarray) -> None:
        """The pointwise protocol's scored test pairs (users, items, labels, scores) of a cell's segment."""
        atomic_write_npz(self.cell_dir(cell_id) / f"pairs-{segment}.npz", **arrays)

    def read_pairs(self, cell_id: str, segment: str) -> dict[str, np.ndarray] | None:
        return _read_npz(self.cell_dir(cell_id) / f"pairs-{segment}.npz")

    def write_realtime(self, cell_id: str, payload: dict[str, Any]) -> None:
        atomic_write_json(self.cell_dir(cell_id) / REALTIME, payload)

    def read_realtime(self, cell_id: str) -> dict[str, Any] | None:
        return _read_json(self.cell_dir(cell_id) / REALTIME)


    def write_explanations(self, cell_id: str, segment: str, records: list[dict[str, Any]]) -> None:
        """One JSON object per line (UTF-8, non-ASCII kept): readable with ``jq`` or pandas.read_json(lines=True)."""
        text = "".join(json.dumps(_clean(r), ensure_ascii=False, sort_keys=True, default=_json_default) + "\n"
                       for r in records)
        atomic_write_bytes(self.cell_dir(cell_id) / f"{EXPLANATIONS}-{segment}.jsonl", text.encode("utf-8"))

    def read_explanations(self, cell_id: str) -> dict[str, list[dict[str, Any]]]:
        """segment -> the reasons stored for it (empty when the cell explained nothing)."""
        out: dict[str, list[dict[str, Any]]] = {}
        prefix = f"{EXPLANATIONS}-"
        for path in sorted(self.cell_dir(cell_id).glob(f"{prefix}*.jsonl")):
            lines = path.read_text(encoding="utf-8").splitlines()
            out[path.stem[len(prefix):]] = [json.loads(line) for line in lines if line.strip()]
        return out


def runs_under(folder: Path) -> Iterator[RunDir]:
    """The run folders directly inside ``folder`` (those with a results.json), sorted by name."""
    folder = Path(folder)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if RunDir(path).has_results():
                yield RunDir(path)
