"""A finished (or partly finished) run folder, as the report reads it.

Everything the report shows comes from the run folder alone (no dataset, no
model is reloaded), so a report can be rebuilt anywhere the folder is copied:

- ``results.json`` via :func:`bench.results.load_results`: the tidy table + provenance;
- ``config.json``: the suite as run (model order, evaluation settings);
- ``cells/<id>/cell.json``: model description, capabilities, status, error text;
- ``cells/<id>/per_user-<segment>.npz``: per-user values for CIs and paired tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.results import load_results


class ReportError(BenchError):
    """The folder given to ``bench report`` is not a usable run folder."""


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


@dataclass
class RunData:
    run_dir: Path
    frame: pd.DataFrame
    provenance: dict[str, Any]
    config: dict[str, Any]
    cells: dict[str, dict[str, Any]]  # cell_id -> cell.json without its rows
    _per_user: dict[tuple[str, str], PerUser | None] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        ids = self.frame["run_id"].dropna().unique() if len(self.frame) else []
        return str(ids[0]) if len(ids) else self.run_dir.name

    @property
    def suite(self) -> str:
        return str(self.config.get("name") or (self.frame["suite"].iloc[0] if len(self.frame) else "?"))

    def model_order(self) -> list[str]:
        """Model labels in suite order, then any others found in the table."""
        order = [m.get("label") or m.get("name") for m in self.config.get("models", [])]
        order = [m for m in order if m in set(self.frame["model"])]
        return order + sorted(set(self.frame["model"]) - set(order))

    def per_user(self, cell_id: str, segment: str) -> PerUser | None:
        """Per-user values of a cell's segment, or None when the file is absent (failed/unsupported)."""
        key = (cell_id, segment)
        if key not in self._per_user:
            path = self.run_dir / "cells" / cell_id / f"per_user-{segment}.npz"
            if not path.is_file():
                self._per_user[key] = None
            else:
                with np.load(path, allow_pickle=False) as npz:
                    self._per_user[key] = PerUser(np.asarray(npz["users"]), np.asarray(npz["values"], dtype=float),
                                                  [str(c) for c in npz["columns"]])
        return self._per_user[key]

    def paired_values(self, cell_ids: list[tuple[int, str]], segment: str, column: str) -> dict[tuple[int, int], float]:
        """``(seed, user) -> value`` over the given ``(seed, cell_id)`` pairs: the pairing key of tests."""
        out: dict[tuple[int, int], float] = {}
        for seed, cid in cell_ids:
            pu = self.per_user(cid, segment)
            values = None if pu is None else pu.column(column)
            if values is None:
                continue
            for user, value in zip(pu.users.tolist(), values.tolist()):
                out[(int(seed), int(user))] = float(value)
        return out


def load_run(run_dir: Path) -> RunData:
    """Read a run folder; a wrong path gets one message naming it and what a run folder holds."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder '{run_dir}' does not exist; pass a folder under reports/runs/ "
                          f"(printed at the end of `bench run`)")
    if not (run_dir / "results.json").is_file():
        raise ReportError(f"'{run_dir}' has no results.json, so it is not a bench run folder (or no cell finished); "
                          f"pass the folder printed at the end of `bench run`")
    try:
        frame, provenance = load_results(run_dir)
    except (ValueError, KeyError) as exc:
        raise ReportError(f"'{run_dir / 'results.json'}' cannot be read ({exc}); re-run the suite with "
                          f"`bench run --resume {run_dir}`") from exc
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    cells: dict[str, dict[str, Any]] = {}
    for path in sorted((run_dir / "cells").glob("*/cell.json")):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue  # a cell being written; the table still has its rows if it finished
        info.pop("rows", None)
        cells[path.parent.name] = info
    return RunData(run_dir, frame, provenance or {}, config, cells)
