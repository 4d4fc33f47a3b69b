"""Runs survive failures, outputs are checked before scoring, and nothing finished is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).parent / "plugins"))
import faulty_models  # noqa: E402,F401  (registers slow-pop, raising, hanging, garbage, hog, self-kill, thread-probe)

from bench.config import parse_suite  # noqa: E402
from bench.errors import ModelOutputError  # noqa: E402
from bench.runner import run_suite  # noqa: E402
from bench.validation import validate_topk  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUN_BENCH = [sys.executable, str(REPO / "tests" / "plugins" / "run_bench.py")]
DATA = {"name": "synthetic", "params": {"n_users": 150, "n_items": 100, "n_interactions": 3000}}


def suite(models, splits=({"kind": "random"},), **extra):
    raw = {"name": "reliability", "seeds": [0], "evaluation": {"k": [5], "bootstrap": 20},
           "datasets": [DATA], "splits": list(splits), "models": models} | extra
    return parse_suite(raw, "test suite")


# -- output validation (unit) ------------------------------------------------------

GOOD_ITEMS = np.array([[3, 1, 2], [0, 4, 2]])
GOOD_SCORES = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.6]])


def test_valid_output_passes():
    items, scores = validate_topk("m", GOOD_ITEMS, GOOD_SCORES, n_users=2, k=3, n_items=5)
    assert items.dtype == np.int64 and scores.shape == (2, 3)


@pytest.mark.parametrize("items,scores,kwargs,message", [
    (GOOD_ITEMS[:1], GOOD_SCORES[:1], {}, "1 rows for 2 users"),
    (GOOD_ITEMS[:, :2], GOOD_SCORES[:, :2], {}, "2 items per user, 3 requested"),
    (GOOD_ITEMS.ravel(), GOOD_SCORES.ravel(), {}, "expected 2-D arrays"),
    (np.array([[3, 3, 2], [0, 4, 2]]), GOOD_SCORES, {}, "duplicate items"),
    (np.array([[3, 1, 9], [0, 4, 2]]), GOOD_SCORES, {}, "out of range"),
    (np.array([[3, 1, -1], [0, 4, 2]]), GOOD_SCORES, {}, "out of range"),
    (GOOD_ITEMS, np.array([[0.9, np.nan, 0.1], [0.8, 0.7, 0.6]]), {}, "NaN or infinite"),
    (GOOD_ITEMS, np.array([[0.9, np.inf, 0.1], [0.8, 0.7, 0.6]]), {}, "NaN or infinite"),
    (GOOD_ITEMS, np.array([[0.1, 0.5, 0.9], [0.8, 0.7, 0.6]]), {}, "not sorted"),
    (GOOD_ITEMS, GOOD_SCORES, {"exclude": sp.csr_matrix(([1.0], ([0], [1])), shape=(2, 5))}, "excluded item"),
    (GOOD_ITEMS, GOOD_SCORES, {"candidates": np.array([0, 2, 3, 4])}, "outside the candidate set"),
    (np.array([[0.5, 1, 2], [0, 4, 2]]), GOOD_SCORES, {}, "not integers"),
], ids=["rows", "short", "1d", "duplicate", "range", "padding", "nan", "inf", "unsorted", "excluded", "candidates",
        "float-ids"])
def test_each_invalid_output_is_refused_with_the_problem_named(items, scores, kwargs, message):
    with pytest.raises(ModelOutputError, match=message) as info:
        validate_topk("bad-model", items, scores, n_users=2, k=3, n_items=5, **kwargs)
    assert "bad-model" in str(info.value)


# -- failures inside a suite -------------------------------------------------------

def cell_errors(summary):
    import json

    out = {}
    for path in (summary.run_dir / "cells").glob("*/cell.json"):
        info = json.loads(path.read_text())
        out[info["model"]] = (info["status"], info.get("error", ""), info.get("traceback", ""))
    return out


def test_raising_hanging_and_garbage_models_fail_alone(tmp_path):
    kinds = ["nan", "short", "shape", "duplicate", "out_of_range", "unsorted", "training_item"]
    models = [{"name": "pop"}, {"name": "raising"}, {"name": "hanging"}] + [
        {"name": "garbage", "label": f"garbage-{k}", "params": {"kind": k}} for k in kinds]
    config = suite(models, execution={"timeout": 3})
    start = time.perf_counter()
    summary = run_suite(config, out_root=tmp_path, progress=None)
    assert time.perf_counter() - start < 60
    errors = cell_errors(summary)
    assert errors["pop"][0] == "ok"
    assert summary.failed == len(models) - 1 and summary.cells == len(models)
    assert "boom" in errors["raising"][1] and "Traceback" in errors["raising"][2]
    assert "TimeoutError" in errors["hanging"][1] and "3 s" in errors["hanging"][1]
    expected = {"nan": "NaN", "short": "4 items per user, 5 requested", "shape": "rows for",
                "duplicate": "duplicate items", "out_of_range": "out of range", "unsorted": "not sorted",
                "training_item": "excluded item"}
    for kind, text in expected.items():
        status, error, _ = errors[f"garbage-{kind}"]
        assert status == "failed" and "ModelOutputError" in error and text in error, (kind, error)
        assert f"garbage-{kind}" in error
    frame = summary.frame
    failed = frame[frame.status == "failed"]
    assert set(failed.metric) == {"error"} and len(failed) == len(models) - 1
    assert not frame[(frame.model == "pop") & (frame.metric == "ndcg")].empty


def test_out_of_memory_cell_is_recorded_and_the_suite_goes_on(tmp_path):
    config = suite([{"name": "hog", "params": {"gib": 3.0}}, {"name": "pop"}],
                   execution={"memory_limit_gb": 1.0})
    summary = run_suite(config, out_root=tmp_path, progress=None)
    errors = cell_errors(summary)
    assert errors["hog"][0] == "failed" and "MemoryError" in errors["hog"][1]
    assert errors["pop"][0] == "ok"


def test_finished_cells_are_reused_unless_forced(tmp_path):
    config = suite([{"name": "pop"}, {"name": "random"}])
    first = run_suite(config, out_root=tmp_path, progress=None)
    again = run_suite(config, out_root=tmp_path, progress=None)
    assert again.run_dir == first.run_dir and again.skipped == 2
    forced = run_suite(config, out_root=tmp_path, force=True, progress=None)
    assert forced.skipped == 0
    accuracy = lambda f: f[f.k > 0].sort_values(["model", "metric", "k"]).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(accuracy(first.frame), accuracy(forced.frame))


# -- killed and interrupted runs (real processes) ------------------------------------

KILL_SUITE = """
name = "killme"
seeds = [0]
[evaluation]
k = [5, 10]
bootstrap = 50
[[datasets]]
name = "synthetic"
params = { n_users = 200, n_items = 150, n_interactions = 5000 }
[[splits]]
kind = "random"
[[splits]]
kind = "user_coldstart"
params = { shots = [0, 2] }
[[models]]
name = "slow-pop"
params = { delay = 0.6 }
[[models]]
name = "als"
params = { factors = 8, iterations = 5, num_threads = 1 }
[[models]]
name = "random"
"""


def accuracy_rows(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / "results.csv")
    frame = frame[frame.k > 0].drop(columns=["run_id"])
    return frame.sort_values(["split", "segment", "model", "metric", "k"]).reset_index(drop=True)


def wait_for_cells(run_root: Path, count: int, proc: subprocess.Popen, limit: float = 60) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if len(list(run_root.glob("*/cells/*/cell.json"))) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("cells did not finish in time")


def test_sigkill_mid_suite_then_resume_equals_uninterrupted_run(tmp_path):
    suite_file = tmp_path / "killme.toml"
    suite_file.write_text(textwrap.dedent(KILL_SUITE))
    full = subprocess.run(RUN_BENCH + ["run", "--suite", str(suite_file), "--out", str(tmp_path / "full")],
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr

    killed_root = tmp_path / "killed"
    proc = subprocess.Popen(RUN_BENCH + ["run", "--suite", str(suite_file), "--out", str(killed_root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    wait_for_cells(killed_root, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = killed_root.iterdir()
    done_before = len(list(run_dir.glob("cells/*/cell.json")))
    assert 2 <= done_before < 6
    # cell.json files are the truth; the derived table lags them by at most the cell being recorded
    partial = pd.read_csv(run_dir / "results.csv")
    assert partial.cell_id.nunique() >= done_before - 1

    resumed = subprocess.run(RUN_BENCH + ["run", "--resume", str(run_dir)], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("reused") == done_before
    # same seed and config in separate processes: identical fingerprints and metrics
    pd.testing.assert_frame_equal(accuracy_rows(run_dir), accuracy_rows(next((tmp_path / "full").iterdir())))


def test_ctrl_c_stops_cleanly_and_keeps_finished_cells(tmp_path, ctrl_c_delivered):
    suite_file = tmp_path / "killme.toml"
    suite_file.write_text(textwrap.dedent(KILL_SUITE))
    root = tmp_path / "interrupted"
    proc = subprocess.Popen(RUN_BENCH + ["run", "--suite", str(suite_file), "--out", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_cells(root, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    (run_dir,) = root.iterdir()
    saved = pd.read_csv(run_dir / "results.csv")
    assert saved.cell_id.nunique() == len(list(run_dir.glob("cells/*/cell.json"))) >= 1


def test_cells_run_safely_after_this_process_used_openmp(tmp_path):
    """Forking a process whose OpenMP pool is live can deadlock the child (GNU libgomp);
    cells therefore start from a clean forkserver. Fit ALS here first, then run ALS cells."""
    from bench.contract import checkerboard

    ALS = faulty_models.registry.models.get("als")
    in_process = ALS(seed=0, factors=4, iterations=3)
    in_process.fit(checkerboard())
    config = suite([{"name": "als", "params": {"factors": 8, "iterations": 3}}, {"name": "pop"}],
                   execution={"timeout": 120})
    summary = run_suite(config, out_root=tmp_path, progress=None)
    assert summary.failed == 0, summary.failures
