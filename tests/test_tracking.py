"""MLflow tracking (bench/tracking.py): a run logged to a local file store, read back with MLflow's own client."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.tracking import metric_key

mlflow = pytest.importorskip("mlflow", reason="the [mlflow] extra (scripts/setup-env installs it)")
from mlflow.tracking import MlflowClient  # noqa: E402

SUITE = """
name = "tracked"
seeds = [0]
[evaluation]
k = [5, 10]
bootstrap = 50
[evaluation.systems]
enabled = false
[execution]
isolation = "none"
[[datasets]]
name = "synthetic"
params = { n_users = 150, n_items = 100, n_interactions = 3000, seed = 0 }
[[splits]]
kind = "user_coldstart"
params = { user_fraction = 0.2, shots = [0, 5] }
[[models]]
name = "pop"
[[models]]
name = "als"
params = { factors = 8, iterations = 3 }
"""


@pytest.fixture()
def file_store(monkeypatch, tmp_path: Path) -> str:
    # MLflow 3 keeps its file store behind this opt-in (its own setting, read by MLflow)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file:{tmp_path / 'mlruns'}"


def test_metric_names_are_sanitised_for_mlflow():
    assert metric_key("ndcg_10__shots=5") == "ndcg_10__shots_5"
    assert metric_key("map[denominator=test]_10__all") == "map_denominator_test__10__all"
    assert metric_key("throughput_users_per_s@batch=32__cold-items") == "throughput_users_per_s_batch_32__cold-items"


def test_each_cell_is_a_nested_run_with_the_values_of_results_csv(tmp_path, file_store, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE + f'\n[tracking]\nmlflow = "{file_store}"\n', encoding="utf-8")
    assert main(["run", "--suite", str(suite), "--out", str(tmp_path / "runs")]) == 0
    assert "mlflow: run " in capsys.readouterr().out
    run_dir = next((tmp_path / "runs").iterdir())
    table = pd.read_csv(run_dir / "results.csv")

    client = MlflowClient(tracking_uri=file_store)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == run_dir.name
    parent = parents[0]
    assert parent.data.params["models"] == '["pop", "als"]' and parent.data.params["seeds"] == "[0]"
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == ["report.html", "report.md",
                                                                                 "results.csv"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == table["cell_id"].nunique() == 2
    provenance = json.loads((run_dir / "provenance.json").read_text(encoding="utf-8"))
    for child in children:
        cell = table[table["cell_id"] == child.data.tags["bench.cell_id"]]
        first = cell.iloc[0]
        params = child.data.params
        assert (params["dataset"], params["split"], params["seed"], params["model"]) == (
            "synthetic", "user_coldstart", "0", first["model"])
        for name, value in json.loads(first["params"]).items():
            assert params[f"model.{name}"] == str(value)
        assert child.data.tags["bench.git_commit"] == str(provenance["git"]["commit"] or "unknown")
        assert child.data.tags["bench.split_fingerprint"] == first["split_fingerprint"]
        metrics = child.data.metrics
        ok = cell[cell["status"] == "ok"]
        expected = {}
        for r in ok.itertuples():
            name = f"{r.metric}_{r.k}__{r.segment}" if r.k > 0 else f"{r.metric}__{r.segment}"
            expected[metric_key(name)] = r.value
            for suffix, v in (("_ci_low", r.ci_low), ("_ci_high", r.ci_high)):
                if not math.isnan(v):
                    expected[metric_key(name + suffix)] = v
        assert set(metrics) == set(expected)
        for name, value in expected.items():
            assert metrics[name] == pytest.approx(value, rel=1e-12), name
        assert "ndcg_10__shots_5" in metrics
        # ALS cannot serve zero-shot users: no metric, not a zero
        if first["model"] == "als":
            assert not any(k.endswith("__shots_0") for k in metrics)


def test_command_line_uri_overrides_and_bad_values_stop_before_any_cell(tmp_path, file_store, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE, encoding="utf-8")
    out = tmp_path / "runs"
    assert main(["run", "--suite", str(suite), "--out", str(out), "--mlflow", "not a uri"]) == 2
    assert "--mlflow = 'not a uri' is neither a URI" in capsys.readouterr().err
    assert main(["run", "--suite", str(suite), "--out", str(out), "--mlflow", "nosuchscheme://x"]) == 2
    assert "MLflow tracking URI 'nosuchscheme://x' cannot be used" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(SUITE + "\n[tracking]\nmlflow = 5\n", encoding="utf-8")
    assert main(["run", "--suite", str(bad), "--out", str(out)]) == 2
    assert "tracking.mlflow must be a string" in capsys.readouterr().err
    bad.write_text(SUITE + "\n[tracking]\nmlfow = \"file:x\"\n", encoding="utf-8")
    assert main(["run", "--suite", str(bad), "--out", str(out)]) == 2
    assert "tracking has unknown key(s) ['mlfow']; valid: mlflow" in capsys.readouterr().err
    assert not out.exists()  # nothing ran


def test_file_store_without_mlflow_opt_in_is_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE, encoding="utf-8")
    code = main(["run", "--suite", str(suite), "--out", str(tmp_path / "runs"), "--mlflow", f"file:{tmp_path}/m"])
    assert code == 2
    assert "set MLFLOW_ALLOW_FILE_STORE=true" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_missing_extra_names_the_install_command(tmp_path):
    """In a fresh interpreter where `import mlflow` fails (sys.modules entry None), the message names the extra."""
    code = ("import sys; sys.modules['mlflow'] = None\n"
            "from bench.cli import main\n"
            f"sys.exit(main(['run', '--suite', 'smoke', '--out', {str(tmp_path / 'o')!r}, '--mlflow', 'file:x']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'bench-recsys[mlflow]'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()
