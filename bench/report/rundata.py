"""A finished (or partly finished) run folder, as the report reads it.

Everything the report shows comes from the run folder alone (no dataset, no
model is reloaded), so a report can be rebuilt anywhere the folder is copied.
It reads the folder through :class:`bench.rundir.RunDir`: the tidy table and
provenance, the suite as run (model order, evaluation settings), each cell's
description, status and error text, and per-user values for CIs and paired tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError
from bench.results import load_results
from bench.rundir import PerUser, RunDir  # noqa: F401  (PerUser re-exported: report code imports it from here)


class ReportError(BenchError):
    """The folder given to ``bench report`` is not a usable run folder."""


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
        present = set(self.frame["model"].unique())
        order = [m.get("label") or m.get("name") for m in self.config.get("models", [])]
        order = [m for m in order if m in present]
        return order + sorted(present - set(order))

    def per_user(self, cell_id: str, segment: str) -> PerUser | None:
        """Per-user values of a cell's segment, or None when the file is absent (failed/unsupported)."""
        key = (cell_id, segment)
        if key not in self._per_user:
            self._per_user[key] = RunDir(self.run_dir).read_per_user(cell_id, segment)
        return self._per_user[key]

    def realtime(self, cell_id: str) -> dict[str, Any] | None:
        """The replay traces of a cell (``realtime.json``), or None when it has none."""
        return RunDir(self.run_dir).read_realtime(cell_id)

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
    folder = RunDir(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder '{run_dir}' does not exist; pass a folder under reports/runs/ "
                          f"(printed at the end of `bench run`)")
    if not folder.has_results():
        raise ReportError(f"'{run_dir}' has no results.json, so it is not a bench run folder (or no cell finished); "
                          f"pass the folder printed at the end of `bench run`")
    try:
        frame, provenance = load_results(run_dir)
    except (ValueError, KeyError) as exc:
        raise ReportError(f"'{folder.results_file}' cannot be read ({exc}); re-run the suite with "
                          f"`bench run --resume {run_dir}`") from exc
    return RunData(run_dir, frame, provenance or {}, folder.read_config() or {}, folder.cells())
