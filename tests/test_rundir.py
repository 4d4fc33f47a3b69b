"""bench.rundir is the one home of a run folder; configuration flows down only (no import cycles)."""

from __future__ import annotations

import ast
import importlib.util
from importlib.machinery import SourceFileLoader
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.results import load_results, write_tables
from bench.rundir import RunDir, runs_under

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def test_round_trip_of_every_file_of_a_run(tmp_path):
    run = RunDir(tmp_path / "suite-abc")
    run.write_config({"name": "suite", "seeds": [0]})
    run.write_provenance({"git": {"commit": "x"}})
    assert run.read_config() == {"name": "suite", "seeds": [0]}
    assert run.read_provenance() == {"git": {"commit": "x"}}

    run.splits.write_split("fp1", train=np.arange(5), test=np.arange(5, 7))
    stored = run.splits.read_split("fp1")
    np.testing.assert_array_equal(stored["test"], [5, 6])
    assert run.splits.read_split("fp2") is None
    run.splits.write_negatives("fp1", "uni10", "catalogue", users=np.array([3]), items=np.array([1, 2]))
    np.testing.assert_array_equal(run.splits.read_negatives("fp1", "uni10", "catalogue")["items"], [1, 2])
    assert run.splits.read_negatives("fp1", "pop10", "catalogue") is None

    users, items = np.array([1, 4]), np.array([[3, 2, 1], [0, 1, 2]])
    run.write_topk("c1", "shots=3", users, items, np.ones((2, 3)))
    topk = run.read_topk("c1", "shots=3")
    assert topk.k_max == 3
    np.testing.assert_array_equal(topk.items, items)
    run.write_per_user("c1", "shots=3", users, np.array([[0.5, 1.0], [0.0, 0.25]]), ["ndcg@3", "recall@3"])
    per_user = run.read_per_user("c1", "shots=3")
    np.testing.assert_array_equal(per_user.column("recall@3"), [1.0, 0.25])
    assert per_user.column("mrr@3") is None and run.read_per_user("c1", "all") is None
    run.write_realtime("c1", {"k": 10, "policies": {}})
    assert run.read_realtime("c1") == {"k": 10, "policies": {}}

    assert not run.cell_done("c1")  # files of a cell in progress do not make it finished
    run.write_cell("c1", {"status": "ok", "rows": [{"value": float("nan")}]})
    run.write_cell("c2", {"status": "failed", "error": "ValueError: boom", "rows": []})
    assert run.cell_done("c1") and run.cell_ids() == ["c1", "c2"]
    assert run.read_cell("c1")["rows"] == [{"value": None}]  # NaN is stored as JSON null
    assert "rows" not in run.cells()["c1"] and "rows" in run.cells(rows=True)["c1"]
    assert list(run.finished_cells()) == ["c1"] and run.failed_cells()["c2"]["error"] == "ValueError: boom"
    run.discard_cell("c2")
    assert run.read_cell("c2") is None and run.cell_ids() == ["c1"]
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries behind

    row = {"run_id": "r", "suite": "s", "dataset": "d", "conversion": "", "split": "random", "split_params": "{}",
           "split_fingerprint": "fp1", "protocol": "full", "seed": 0, "model": "m", "model_name": "m", "params": "{}",
           "segment": "all", "metric": "ndcg", "k": 10, "value": 0.5, "ci_low": float("nan"), "ci_high": 0.6,
           "n": 2, "status": "ok", "cell_id": "c1"}
    assert not run.has_results()
    write_tables(run.path, [row], {"machine": "here"})
    frame, provenance = load_results(run.path)
    assert run.has_results() and provenance == {"machine": "here"}
    assert frame.loc[0, "value"] == 0.5 and math.isnan(frame.loc[0, "ci_low"])
    assert pd.read_csv(run.results_csv).loc[0, "metric"] == "ndcg"
    assert [r.name for r in runs_under(tmp_path)] == ["suite-abc"]


# -- structure ------------------------------------------------------------------------------

LAYOUT_NAMES = ("cells", "splits", "cell.json", "results.json", "results.csv", "provenance.json", "config.json",
                "realtime.json", "topk-", "per_user-")


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return []


def test_only_rundir_touches_run_folder_files():
    """No module but bench/rundir.py builds a path into a run folder or reads/writes .npz files."""
    offenders = []
    for path in sorted(BENCH.rglob("*.py")):
        if path.name == "rundir.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # run_dir / "cells" / ...
                parts = _strings(node.right)
                if any(text.startswith(name) for text in parts for name in LAYOUT_NAMES):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} joins {parts}")
            if isinstance(node, ast.Attribute) and node.attr in ("load", "savez", "savez_compressed") \
                    and isinstance(node.value, ast.Name) and node.value.id == "np":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} np.{node.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "glob" \
                    and any(name in s for a in node.args for s in _strings(a) for name in LAYOUT_NAMES):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} globs a run folder")
    assert offenders == []


def _import_graph():
    script = str(REPO / "scripts" / "import-graph")  # no .py suffix: loaded as source explicitly
    spec = importlib.util.spec_from_loader("import_graph", SourceFileLoader("import_graph", script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = sorted(BENCH.rglob("*.py"))
    known = {module.module_name(p) for p in files}
    graph = {module.module_name(p): set(module.imports(p, known, with_types=True)) for p in files}
    return module, graph


def test_configuration_flows_down_only():
    """No cycles (lazy and type-checking imports included); runtime modules never import bench.config."""
    module, graph = _import_graph()
    assert module.find_cycles(graph) == []
    for runtime in ("bench.runner", "bench.execution", "bench.grid", "bench.systems", "bench.realtime",
                    "bench.rundir", "bench.specs"):
        assert "bench.config" not in graph[runtime], runtime
    assert graph["bench.specs"] <= {"bench.errors", "bench.schema"}
    assert graph["bench.rundir"] == set()


def test_results_table_is_the_same_json_value_one_row_per_line():
    """results.json's one-row-per-line writer (rundir.dumps_table) gives exactly the value the indented
    writer gives, NaN/inf as null, numpy scalars as numbers, and a line per row."""
    import json

    from bench.rundir import dumps, dumps_table

    rows = [{"metric": "ndcg", "value": 0.25, "ci_low": float("nan"), "k": np.int64(10)},
            {"metric": "recall", "value": float("inf"), "ci_low": np.float64(0.1), "k": 5}]
    header = {"schema_version": 3, "provenance": {"seed": [0], "note": "a\nb"}, "columns": ["k", "metric"]}
    text = dumps_table(header, "rows", rows)
    assert json.loads(text) == json.loads(dumps({**header, "rows": rows}))
    assert json.loads(text)["rows"][0] == {"metric": "ndcg", "value": 0.25, "ci_low": None, "k": 10}
    assert json.loads(text)["rows"][1]["value"] is None
    assert sum(line.strip().startswith('{"ci_low"') for line in text.splitlines()) == 2
    assert json.loads(dumps_table(header, "rows", [])) == {**header, "rows": []}
