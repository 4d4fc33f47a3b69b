"""bench from Python: run a suite, read a run folder, compare two runs.

This is the one typed entry point: ``bench run`` / ``bench report`` / ``bench
list`` (bench/cli.py) only turn argv and the environment into these calls. A
notebook gets the same behaviour, the same run folders and the same numbers::

    import bench
    run = bench.run("smoke", models=["pop", "als"])
    run.results                                  # the tidy table (pandas)
    run.leaderboard("ndcg@10", segment="all")    # the report's leaderboard, with CIs
    run.report("out.html")
    bench.compare(bench.load_run("reports/runs/smoke-..."), run)

Run folders are read only through :mod:`bench.report.rundata`, the leaderboard
and the comparison are the report's own (:mod:`bench.report.tables`), so a
number here is the number in report.html.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import pandas as pd

from bench import registry
from bench.errors import ConfigError
from bench.report.render import DEFAULT_METRIC

if TYPE_CHECKING:  # imported where used: `import bench` stays light and config/report load on demand
    from bench.config import SuiteConfig
    from bench.report.rundata import RunData

PathLike = str | Path


@dataclass
class Run:
    """A run folder and, when it was just run, what the run did (cells, failures, report problems)."""

    run_dir: Path
    cells: int = 0
    failed: int = 0
    reused: int = 0
    failures: list[str] = field(default_factory=list)
    report_error: str | None = None  # why report.html could not be written at the end of the run
    mlflow_run_id: str | None = None  # the parent MLflow run, when the run was tracked
    tracking_error: str | None = None  # why logging to MLflow failed after the run (results are saved)
    _data: Any = field(default=None, repr=False)

    @property
    def data(self) -> "RunData":
        """The run folder as the report reads it (:class:`bench.report.rundata.RunData`), read once."""
        if self._data is None:
            from bench.report import load_run as read_run_folder

            self._data = read_run_folder(self.run_dir)
        return self._data

    @property
    def results(self) -> pd.DataFrame:
        """The tidy table: one row per dataset x split x model x seed x segment x metric x k (a copy)."""
        return self.data.frame.copy()

    @property
    def run_id(self) -> str:
        return self.data.run_id

    def leaderboard(self, metric: str = DEFAULT_METRIC, *, segment: str | None = None, dataset: str | None = None,
                    split: str | None = None, protocol: str | None = None) -> pd.DataFrame:
        """One row per model and leaderboard (dataset x split x protocol x segment) for ``metric`` ("ndcg@10").

        Columns: value, ci_low, ci_high (95%), n, status ("ok", "unsupported" = not served,
        "failed", "missing"), best, tied (not significantly different from the best), p_adj.
        The same cells the report shows, computed by the same code.
        """
        from bench.report import tables

        boards = [b for b in tables.leaderboards(self.data) if _matches(b, segment, dataset, split, protocol)]
        if not boards:
            raise ConfigError(_no_board_message(self.data, segment, dataset, split, protocol))
        available = sorted({c.key for b in boards for c in b.columns})
        if metric not in available:
            raise ConfigError(f"metric '{metric}' is not in these leaderboards; choose one of: {', '.join(available)}")
        rows = []
        for board in boards:
            if board.column(metric) is None:
                continue
            for model in board.models:
                cell = board.cell(model, metric)
                rows.append({"dataset": board.dataset, "split": board.split, "protocol": board.protocol,
                             "segment": board.segment, "model": model, "metric": metric, "value": cell.value,
                             "ci_low": cell.ci_low, "ci_high": cell.ci_high, "n": cell.n, "status": cell.status,
                             "best": cell.best, "tied": cell.tied, "p_adj": cell.p_adj})
        return pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)

    def report(self, path: PathLike | None = None, *, compare: "Run | PathLike | None" = None,
               metric: str = DEFAULT_METRIC, markdown: bool = False) -> Path:
        """Write the self-contained HTML report (default ``run_dir/report.html``); ``markdown=True``
        also writes the Markdown leaderboard beside it (same name, ``.md``). Returns the HTML path."""
        from bench.report import write_report

        other = None if compare is None else _run_dir_of(compare)
        files = write_report(self.run_dir, compare=other, out=None if path is None else Path(path), metric=metric,
                             markdown=markdown)
        return files.html

    def __repr__(self) -> str:
        done = f", {self.cells} cells, {self.failed} failed" if self.cells else ""
        return f"Run({str(self.run_dir)!r}{done})"


LEADERBOARD_COLUMNS = ["dataset", "split", "protocol", "segment", "model", "metric", "value", "ci_low", "ci_high",
                       "n", "status", "best", "tied", "p_adj"]
COMPARE_COLUMNS = ["dataset", "split", "protocol", "segment", "model", "metric", "old", "new", "delta", "p_adj",
                   "significant", "better"]


def _matches(board: Any, segment: str | None, dataset: str | None, split: str | None, protocol: str | None) -> bool:
    return all(want is None or got == want for want, got in ((segment, board.segment), (dataset, board.dataset),
                                                             (split, board.split), (protocol, board.protocol)))


def _no_board_message(data: Any, segment: str | None, dataset: str | None, split: str | None,
                      protocol: str | None) -> str:
    frame = data.frame[data.frame["k"] > 0]
    asked = {"segment": segment, "dataset": dataset, "split": split, "protocol": protocol}
    parts = [f"{key}={value!r} (present: {', '.join(sorted(map(str, frame[key].unique()))) or 'none'})"
             for key, value in asked.items() if value is not None]
    return f"no leaderboard in run '{data.run_id}' matches " + "; ".join(parts)


def _run_dir_of(run: "Run | PathLike") -> Path:
    return run.run_dir if isinstance(run, Run) else Path(run)


def load_run(path: PathLike) -> Run:
    """A finished (or partly finished) run folder, e.g. ``reports/runs/coldstart-1a2b3c4d5e``.

    A wrong path is one clear error (:class:`bench.report.ReportError`) naming it."""
    run = Run(Path(path))
    run.data  # noqa: B018  (read now: a wrong path fails here, not at first use)
    return run


def compare(old: "Run | PathLike", new: "Run | PathLike", *, metric: str | None = None) -> pd.DataFrame:
    """Deltas of ``new`` against ``old``: what `bench report NEW --compare OLD` shows, as a table.

    One row per leaderboard cell both runs scored: old and new value, delta, the
    Holm-adjusted p-value of its test (paired over the users both scored when the
    split fingerprints match, else Welch), significant, better (direction-aware).
    ``frame.attrs["notes"]`` says what could not be matched, ``attrs["method"]`` the test.
    """
    from bench.report import tables

    old_run = old if isinstance(old, Run) else load_run(old)
    new_run = new if isinstance(new, Run) else load_run(new)
    boards = tables.leaderboards(new_run.data)
    notes = tables.add_deltas(boards, new_run.data, old_run.data)
    rows = []
    for board in boards:
        for model in board.models:
            for column in board.columns:
                if metric is not None and column.key != metric:
                    continue
                cell = board.cell(model, column.key)
                if cell.delta is None:
                    continue
                rows.append({"dataset": board.dataset, "split": board.split, "protocol": board.protocol,
                             "segment": board.segment, "model": model, "metric": column.key,
                             "old": cell.delta.other, "new": cell.value, "delta": cell.delta.value,
                             "p_adj": cell.delta.p_adj, "significant": cell.delta.significant,
                             "better": cell.delta.better})
    frame = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    frame.attrs["notes"] = notes
    frame.attrs["method"] = tables.COMPARE_METHOD
    return frame


# -- running ---------------------------------------------------------------------------------------

def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _dataset_entry(entry: Any) -> Any:
    """A registered name as is; a bench ``Dataset`` object (``bench.dataset_from_frame``) is registered
    first, and the suite entry that registration returns (a DatasetSpec carrying the content hash) is used."""
    if isinstance(entry, str):
        return entry
    try:
        from bench.data.frames import register  # user datasets from DataFrames
    except ImportError:
        raise NotImplementedError(
            f"datasets= got a {type(entry).__name__} object; running a Dataset object needs "
            f"bench.data.frames.register (user datasets from DataFrames), which this bench does not have yet. "
            f"Pass registered dataset names (bench.list_datasets()) instead.") from None
    registered = register(entry)
    return str(getattr(entry, "name")) if registered is None else registered


def narrow(config: "SuiteConfig", *, datasets: Sequence[Any] | None = None, models: Sequence[str] | None = None,
           seeds: Sequence[int] | None = None, device: str | None = None, where: str = "bench.run()") -> "SuiteConfig":
    """Run only these datasets / models (names, or suite labels) / seeds, on this device; checked by name."""
    from bench.config import DatasetSpec, ModelSpec, _check_model_params, _known

    cli = where == "command line"  # name the flag the user typed, or the keyword argument
    if datasets:
        by_name = {d.name: d for d in config.datasets}
        chosen_datasets = []
        for entry in map(_dataset_entry, datasets):
            if isinstance(entry, str):
                _known(registry.datasets, entry, "--dataset" if cli else "datasets=", where)
                entry = by_name.get(entry, DatasetSpec(entry))
            chosen_datasets.append(entry)
        config.datasets = chosen_datasets
    if models:
        by_name: dict[str, list[Any]] = {}
        for m in config.models:
            by_name.setdefault(m.name, []).append(m)
            by_name.setdefault(m.label, []).append(m)
        chosen = []
        for name in models:
            if name not in by_name:
                _known(registry.models, name, "--model" if cli else "models=", where)
            for spec in by_name.get(name, [ModelSpec(name)]):
                if spec not in chosen:
                    chosen.append(spec)
                    _check_model_params(spec, f"model '{spec.label}'", where)
        config.models = chosen
    if seeds:
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigError(f"{where}: seeds must be integers, got {list(seeds)!r}")
        config.seeds = list(seeds)
    if device:
        if device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"{where}: device = {device!r} is not valid; use cpu, cuda or auto")
        config.device = device
    return config


def execution_overrides(config: "SuiteConfig", *, executor: str | None = None, jobs: int | None = None,
                        ray_address: str | None = None, where: str = "bench.run()") -> "SuiteConfig":
    """``executor`` / ``jobs`` / ``ray_address`` (``--executor/--jobs/--ray-address``) replace the suite's
    [execution] keys, also when resuming: where cells run does not change what they compute."""
    cli = where == "command line"  # name the flag the user typed, or the keyword argument
    ex = config.execution
    if executor:
        ex.executor = executor
    if jobs is not None:
        if isinstance(jobs, bool) or not isinstance(jobs, int):
            raise ConfigError(f"{where}: {'--jobs' if cli else 'jobs='} must be an integer, got {jobs!r}")
        ex.jobs = jobs
    if ray_address:
        if executor == "local":
            flag, ray = ("--ray-address", "--executor ray") if cli else ("ray_address=", "executor='ray'")
            raise ConfigError(f"{where}: {flag} names a Ray cluster; use it with {ray} (or drop it)")
        ex.executor, ex.ray_address = "ray", ray_address
    if ex.executor != "ray":
        ex.ray_address = ""  # e.g. --executor local to resume a run that Ray started
    ex.validate(where)
    if ex.executor == "ray":
        from bench.ray_executor import import_ray

        import_ray()  # a missing extra is one message before any cell runs
    return config


def load_config(suite: "str | Path | SuiteConfig | None" = None, *, resume: PathLike | None = None,
                datasets: Sequence[Any] | None = None, models: Sequence[str] | None = None,
                seeds: Sequence[int] | None = None, device: str | None = None,
                mlflow: str | None = None, executor: str | None = None, jobs: int | None = None,
                ray_address: str | None = None, where: str = "bench.run()") -> "SuiteConfig":
    """The typed suite config: a built-in name, a .toml path or a SuiteConfig, narrowed; or the one stored
    in ``resume`` (a run folder), which cannot be narrowed (its execution settings can be replaced)."""
    from bench.config import SuiteConfig, config_from_dict, load_suite
    from bench.rundir import RunDir
    from bench.specs import check_tracking_uri, parse_tracking

    if resume is not None:
        folder = RunDir(Path(resume))
        stored = folder.read_config()
        if stored is None:
            raise ConfigError(f"resume {resume}: no config.json there; pass the folder of an earlier run")
        if suite is not None or datasets or models or seeds:
            raise ConfigError("resume continues a run with the config stored in it; drop the suite, datasets, "
                              "models and seeds (start a new run to change them)")
        config = config_from_dict(stored, str(folder.config_file))
        config = narrow(config, device=device, where=where)
    elif suite is None:
        raise ConfigError(f"{where}: give a suite (a built-in name, a .toml path or a SuiteConfig) or resume=RUN_DIR")
    else:
        config = copy.deepcopy(suite) if isinstance(suite, SuiteConfig) else load_suite(str(suite))
        config = narrow(config, datasets=_as_list(datasets), models=_as_list(models), seeds=_as_list(seeds),
                        device=device, where=where)
    if mlflow is not None:
        flag = "--mlflow" if where == "command line" else f"{where}: mlflow="
        config.tracking = parse_tracking({"mlflow": check_tracking_uri(mlflow, flag)}, where)
    return execution_overrides(config, executor=executor, jobs=jobs, ray_address=ray_address, where=where)


def run(suite: "str | Path | SuiteConfig | None" = None, *, mirror: PathLike | Sequence[PathLike] = (),
        models: Sequence[str] | str | None = None, datasets: Sequence[Any] | Any | None = None,
        seeds: Sequence[int] | int | None = None, device: str | None = None, out: PathLike = "reports/runs",
        force: bool = False, resume: PathLike | None = None, cache_dir: PathLike | None = None,
        download: bool = True, report: bool = True, mlflow: str | None = None, executor: str | None = None,
        jobs: int | None = None, ray_address: str | None = None, progress: bool | Callable[[str], None] = True,
        source: str = "bench.run()") -> Run:
    """Run a suite (built-in name, .toml path or SuiteConfig) and return its :class:`Run`.

    ``models`` / ``datasets`` / ``seeds`` / ``device`` narrow or override the suite
    (as ``--model`` etc. do); ``datasets`` takes names or bench ``Dataset`` objects.
    ``mirror``: folders with the publishers' files, checked before downloading.
    The run folder is ``out/<suite>-<run key>``: the same config on the same code
    resumes there (``force=True`` re-runs finished cells). ``mlflow``: a tracking URI
    (needs the ``[mlflow]`` extra). ``executor`` ("local" or "ray", the ``[ray]`` extra), ``jobs`` (cells
    at once) and ``ray_address`` replace the suite's [execution] keys, also with ``resume``
    (docs/distributed.md). ``source`` names the caller in error messages.
    A bad argument raises :class:`bench.errors.ConfigError` before any cell runs;
    a failed cell does not raise (see ``Run.failed``).
    In a script, call it under ``if __name__ == "__main__":`` (cells run in worker processes).
    """
    from bench.data import DataOptions
    from bench.runner import run_suite, stderr_progress
    from bench.tracking import open_tracker

    import bench.data  # noqa: F401  (registers datasets)
    import bench.metrics  # noqa: F401  (registers metrics)

    config = load_config(suite, resume=resume, datasets=datasets, models=models, seeds=seeds, device=device,
                         mlflow=mlflow, executor=executor, jobs=jobs, ray_address=ray_address, where=source)
    mirrors = tuple(Path(m) for m in ([mirror] if isinstance(mirror, (str, Path)) else mirror))
    options = {"mirrors": mirrors, "allow_download": download}
    if cache_dir is not None:
        options["cache_dir"] = Path(cache_dir)
    tracker = open_tracker(config.tracking)  # before any cell: a bad URI or missing extra stops here
    say = stderr_progress if progress is True else (progress or None)
    summary = run_suite(config, out_root=Path(out), data=DataOptions(**options),
                        run_dir=None if resume is None else Path(resume), force=force, progress=say)
    result = Run(summary.run_dir, cells=summary.cells, failed=summary.failed, reused=summary.skipped,
                 failures=list(summary.failures))
    if report:
        result.report_error = _write_report_safely(result)
    if tracker is not None:
        try:
            result.mlflow_run_id = tracker.log(result.data)
        except Exception as exc:  # noqa: BLE001 - a tracking server going away must not lose the run
            first_line = (str(exc).strip().splitlines() or [""])[0]
            result.tracking_error = f"{type(exc).__name__}: {first_line}"
    return result


def _write_report_safely(run: Run) -> str | None:
    """The report at the end of a run; a report problem never loses the run's results."""
    try:
        run.report(markdown=True)
    except Exception as exc:  # noqa: BLE001 - results are saved; say how to retry
        return f"{type(exc).__name__}: {exc}"
    return None


# -- what is registered ------------------------------------------------------------------------------

def list_models() -> pd.DataFrame:
    """Registered models: family, summary, what they serve, devices, determinism, missing extra."""
    from bench.listing import list_models as listing

    return listing()


def list_datasets() -> pd.DataFrame:
    """Registered datasets with size, license and source (from their cards)."""
    from bench.listing import list_datasets as listing

    return listing()


def list_metrics() -> pd.DataFrame:
    """Registered metrics (and named variants) with direction, formula and what they need."""
    import bench.metrics  # noqa: F401  (registers metrics)
    from bench.listing import list_metrics as listing

    return listing()


def list_suites() -> pd.DataFrame:
    """Built-in and plug-in suites with their description."""
    from bench.listing import list_suites as listing

    return listing()


def model_params(name: str) -> pd.DataFrame:
    """A model's parameters with their defaults and where each default is set."""
    from bench.listing import model_params as listing

    return listing(name)


__all__ = ["Run", "run", "load_run", "compare", "load_config", "narrow", "execution_overrides", "list_models",
           "list_datasets", "list_metrics", "list_suites", "model_params"]
