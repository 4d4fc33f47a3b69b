"""Experiment tracking: a finished run logged to MLflow (`bench run --mlflow URI`, ``[tracking] mlflow``).

The suite becomes one MLflow run (experiment = suite name, run name = run id)
and each cell (dataset x split x model x seed) a run nested under it:

- params: the model's full parameters, plus dataset, split, split params, seed,
  model label and name, protocol;
- metrics: every ``ok`` row of the tidy table, accuracy rows as
  ``<metric>_<k>__<segment>`` (``ndcg_10__shots_5``) with ``..._ci_low`` /
  ``..._ci_high`` beside them, systems rows (k = 0) as ``<metric>__<segment>``,
  sanitised to the characters MLflow allows (:func:`metric_key`);
- tags: provenance (commit, dirty flag, machine, device, package versions),
  split fingerprint, cell id and status (and the error of a failed cell).

The parent gets the suite's outline as params and report.html, report.md and
results.csv as artifacts. Logging reads the run folder after the suite has
finished (through :mod:`bench.report.rundata`), so it never slows a cell and a
resumed run logs every cell. MLflow is the optional ``[mlflow]`` extra,
imported only here.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError
from bench.specs import DEFAULT_TRACKING_URI, TrackingSpec

if TYPE_CHECKING:  # pragma: no cover
    from bench.report.rundata import RunData

INSTALL_HINT = "pip install 'bench-recsys[mlflow]'"
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_\-. /]")  # MLflow keys: alphanumerics, _ - . space /
_BATCH = 100  # MLflow's log_batch limit on params and tags per call (metrics: 1000)


def metric_key(name: str) -> str:
    """An MLflow-safe metric or param key: disallowed characters become ``_`` (``shots=5`` -> ``shots_5``)."""
    return _NOT_ALLOWED.sub("_", name)


def _client(uri: str):
    """An MlflowClient for ``uri``, checked by one cheap call so a bad store stops the run before any cell."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ConfigError(f"--mlflow / [tracking] mlflow needs MLflow, which is not installed ({exc}); "
                          f"install the extra: {INSTALL_HINT}") from None
    try:
        client = MlflowClient(tracking_uri=None if uri == DEFAULT_TRACKING_URI else uri)
        client.search_experiments(max_results=1)
    except MlflowException as exc:
        if "MLFLOW_ALLOW_FILE_STORE" in str(exc):
            reason = ("MLflow 3 keeps its local file store behind an opt-in: set MLFLOW_ALLOW_FILE_STORE=true, "
                      "or use a tracking server (http://host:5000) or a database URI")
        else:
            reason = str(exc).strip().splitlines()[0]
        raise ConfigError(f"MLflow tracking URI {uri!r} cannot be used: {reason}") from None
    return client


class MlflowTracker:
    """Opened before the suite runs (so a bad URI or missing extra exits 2 first), used after it finishes."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = _client(uri)

    def log(self, run: "RunData") -> str:
        """Log the run folder's cells as nested MLflow runs; returns the parent MLflow run id."""
        from mlflow.entities import Metric, Param, RunTag

        client = self.client
        experiment = client.get_experiment_by_name(run.suite)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(run.suite)
        prov_tags = provenance_tags(run.provenance)
        parent = client.create_run(experiment_id, run_name=run.run_id,
                                   tags={**prov_tags, "bench.suite": run.suite, "bench.run_id": run.run_id,
                                         "bench.run_dir": str(run.run_dir)})
        pid = parent.info.run_id
        client.log_batch(pid, params=[Param(k, v) for k, v in suite_params(run.config).items()])
        failed = 0
        frame = run.frame
        for cell_id, rows in frame.groupby("cell_id", sort=False):
            first = rows.iloc[0]
            info = run.cells.get(str(cell_id), {})
            status = "FAILED" if (rows["status"] == "failed").any() else "FINISHED"
            failed += status == "FAILED"
            child = client.create_run(experiment_id, run_name=f"{first['dataset']} {first['split']} "
                                                              f"seed={first['seed']} {first['model']}",
                                      tags={"mlflow.parentRunId": pid})
            cid = child.info.run_id
            params = cell_params(first)
            tags = {**prov_tags, "bench.cell_id": str(cell_id), "bench.status": status.lower(),
                    "bench.split_fingerprint": str(first["split_fingerprint"])}
            if info.get("error"):
                tags["bench.error"] = str(info["error"])[:5000]
            metrics = [Metric(key, value, 0, 0) for key, value in cell_metrics(rows).items()]
            for lo in range(0, max(len(params), len(tags), len(metrics)), _BATCH):
                client.log_batch(cid, metrics=metrics[lo:lo + _BATCH],
                                 params=[Param(k, v) for k, v in list(params.items())[lo:lo + _BATCH]],
                                 tags=[RunTag(k, v) for k, v in list(tags.items())[lo:lo + _BATCH]])
            client.set_terminated(cid, status=status)
        for name in ("report.html", "report.md", "results.csv"):
            path = run.run_dir / name
            if path.is_file():
                client.log_artifact(pid, str(path))
        client.set_terminated(pid, status="FAILED" if failed else "FINISHED")
        return pid


def suite_params(config: dict[str, Any]) -> dict[str, str]:
    """What the suite ran, as params of the parent run (the full config is in the run folder's config.json)."""
    ev = config.get("evaluation") or {}
    params = {"suite": config.get("name", ""), "device": config.get("device", ""),
              "seeds": json.dumps(config.get("seeds", [])),
              "datasets": json.dumps([d.get("name") for d in config.get("datasets", [])]),
              "splits": json.dumps([s.get("kind") for s in config.get("splits", [])]),
              "models": json.dumps([m.get("label") or m.get("name") for m in config.get("models", [])]),
              "k": json.dumps(ev.get("k", [])), "protocol": ev.get("protocol", "")}
    return {k: str(v)[:6000] for k, v in params.items()}


def cell_params(row: Any) -> dict[str, str]:
    """The cell's identity and its model's full parameters (nested values as JSON), as MLflow params."""
    params = {"dataset": row["dataset"], "split": row["split"], "split_params": row["split_params"],
              "seed": row["seed"], "model": row["model"], "model_name": row["model_name"],
              "protocol": row["protocol"], "conversion": row["conversion"]}
    try:
        model_params = json.loads(str(row["params"]))
    except ValueError:
        model_params = {}
    for name, value in (model_params or {}).items():
        params[metric_key(f"model.{name}")] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return {k: str(v)[:6000] for k, v in params.items()}


def cell_metrics(rows: Any) -> dict[str, float]:
    """``ok`` rows of one cell as MLflow metrics (finite values only: a CI may be undefined)."""
    out: dict[str, float] = {}
    for r in rows[rows["status"] == "ok"].itertuples(index=False):
        base = f"{r.metric}_{int(r.k)}__{r.segment}" if int(r.k) > 0 else f"{r.metric}__{r.segment}"
        for suffix, value in (("", r.value), ("_ci_low", r.ci_low), ("_ci_high", r.ci_high)):
            if value is not None and math.isfinite(float(value)):
                out[metric_key(base + suffix)] = float(value)
    return out


def provenance_tags(prov: dict[str, Any]) -> dict[str, str]:
    """Provenance (bench.provenance) flattened to MLflow tags: git, machine, device, package versions."""
    git = prov.get("git") or {}
    tags = {"bench.git_commit": str(git.get("commit") or "unknown"), "bench.git_dirty": str(git.get("dirty")),
            "bench.device": str(prov.get("device", "")), "bench.created": str(prov.get("created", ""))}
    if git.get("commit"):
        tags["mlflow.source.git.commit"] = str(git["commit"])
    for key, value in (prov.get("machine") or {}).items():
        tags[metric_key(f"bench.machine.{key}")] = str(value)[:5000]
    for name, version in (prov.get("packages") or {}).items():
        if version:
            tags[metric_key(f"bench.package.{name}")] = str(version)
    return tags


def open_tracker(spec: TrackingSpec) -> MlflowTracker | None:
    """The tracker a suite asks for, connected now (exit 2 on a bad URI or missing extra), or None."""
    return MlflowTracker(spec.mlflow) if spec.mlflow else None
