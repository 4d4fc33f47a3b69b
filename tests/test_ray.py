"""The Ray executor on a real local Ray (``ray.init(num_cpus=2)``): same rows as the local executor, dead
workers become failed or retried cells, results travel back to the driver, and resume works across executors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import ray  # the [ray] extra; scripts/setup-env installs it, so a missing Ray fails here rather than skipping

sys.path.insert(0, str(Path(__file__).parent / "plugins"))
import faulty_models  # noqa: E402,F401  (registers self-kill)

from bench import registry  # noqa: E402
from bench.config import load_suite, parse_suite  # noqa: E402
from bench.runner import run_suite  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUN_BENCH = [sys.executable, str(REPO / "tests" / "plugins" / "run_bench.py")]
DATA = {"name": "synthetic", "params": {"n_users": 150, "n_items": 100, "n_interactions": 3000}}


@pytest.fixture(scope="module")
def local_ray():
    """A real Ray on this machine, two CPUs, no dashboard; shut down after the module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame[frame.k > 0].drop(columns=["run_id"])
    return rows.sort_values(["split", "segment", "model", "metric", "k"]).reset_index(drop=True)


def cells(run_dir: Path) -> dict[str, dict]:
    infos = [json.loads(p.read_text()) for p in (run_dir / "cells").glob("*/cell.json")]
    return {info["model"]: info for info in infos}


@pytest.mark.slow
def test_smoke_cf_cells_on_ray_equal_the_local_executor(local_ray, tmp_path):
    """The smoke suite's CF/MF cells (its four LM cells take minutes on a CPU and are left out), with its
    data, splits and parameters; systems scenarios off, since only accuracy rows are compared. Models that
    train on several threads without a fixed order (BPR, LMF) are pinned to one thread, as their
    nondeterminism declaration says: the executors cap threads differently, which would change them."""
    config = load_suite("smoke")
    config.models = [m for m in config.models if not m.name.startswith(("text-", "llm-"))]
    for m in config.models:  # implicit's BPR/LMF: lock-free parallel SGD, identical only on one thread (as declared)
        if "num_threads" in getattr(registry.models.get(m.name), "default_params", {}):
            m.params["num_threads"] = 1
    config.evaluation.systems.enabled = False
    config.execution.occupancy_dir = str(tmp_path / "node")
    local = run_suite(config, out_root=tmp_path / "local", progress=None)
    config.execution.executor = "ray"
    on_ray = run_suite(config, out_root=tmp_path / "ray", progress=None)
    assert local.failed == on_ray.failed == 0, (local.failures, on_ray.failures)
    assert on_ray.cells == local.cells == 30
    pd.testing.assert_frame_equal(accuracy(local.frame), accuracy(on_ray.frame))
    info = next(iter(cells(on_ray.run_dir).values()))
    assert info["execution"]["executor"] == "ray" and info["execution"]["ray_node_id"]
    # the driver wrote every file the cells made: top-k and per-user values of each segment
    written = 0
    for cid_dir in (on_ray.run_dir / "cells").iterdir():
        segments = json.loads((cid_dir / "cell.json").read_text())["segments"]
        for segment in (s for s, v in segments.items() if v["status"] == "ok"):
            assert (cid_dir / f"per_user-{segment}.npz").is_file() and (cid_dir / f"topk-{segment}.npz").is_file()
            written += 1
    assert written >= 30


def suite(models, tmp_path: Path, **execution):
    raw = {"name": "ray-kill", "seeds": [0], "evaluation": {"k": [5], "bootstrap": 20, "systems": {"enabled": False}},
           "datasets": [DATA], "splits": [{"kind": "random"}], "models": models,
           "execution": {"executor": "ray", "occupancy_dir": str(tmp_path / "node")} | execution}
    return parse_suite(raw, "test suite")


def test_a_cell_process_killed_on_a_ray_worker_fails_alone(local_ray, tmp_path):
    summary = run_suite(suite([{"name": "self-kill"}, {"name": "pop"}], tmp_path), out_root=tmp_path, progress=None)
    info = cells(summary.run_dir)
    assert info["self-kill"]["status"] == "failed" and "CellCrashed" in info["self-kill"]["error"]
    assert "SIGKILL" in info["self-kill"]["error"] and info["self-kill"]["execution"]["attempts"] == 1
    assert info["pop"]["status"] == "ok"
    assert not summary.frame[(summary.frame.model == "pop") & (summary.frame.metric == "ndcg")].empty


def test_a_dead_ray_worker_is_retried_once_and_the_attempt_recorded(local_ray, tmp_path):
    """isolation = "none": the cell runs in the Ray worker itself, so SIGKILL takes the worker down."""
    marker = tmp_path / "died-once"
    models = [{"name": "self-kill", "params": {"marker": str(marker)}}, {"name": "pop"}]
    summary = run_suite(suite(models, tmp_path, isolation="none", max_retries=1), out_root=tmp_path, progress=None)
    info = cells(summary.run_dir)
    assert info["self-kill"]["status"] == "ok" and info["self-kill"]["execution"]["attempts"] == 2
    (earlier,) = info["self-kill"]["execution"]["earlier_attempts"]
    assert "WorkerDied" in earlier["error"]
    assert info["pop"]["status"] == "ok" and info["pop"]["execution"]["attempts"] == 1

    # without a retry the dead worker is a failed cell, with the reason
    again = run_suite(suite([{"name": "self-kill"}, {"name": "pop"}], tmp_path, isolation="none"),
                      out_root=tmp_path / "no-retry", progress=None)
    info = cells(again.run_dir)
    assert info["self-kill"]["status"] == "failed" and "WorkerDied" in info["self-kill"]["error"]
    assert info["pop"]["status"] == "ok"


def test_ctrl_c_cancels_outstanding_ray_tasks_and_keeps_finished_cells(local_ray, tmp_path, ctrl_c_delivered):
    """SIGINT while a hanging cell runs on Ray: KeyboardInterrupt within seconds, pop's cell kept, the hanging
    task cancelled (its CPU is free again at once, not after the hour it would sleep). The interrupt comes
    while the driver is blocked in ray.wait, which once swallowed it until the cell ended."""
    config = suite([{"name": "pop"}, {"name": "hanging"}], tmp_path)
    interrupted_at: list[float] = []
    run_ended = threading.Event()

    def interrupt_after_pop() -> None:
        deadline = time.time() + 120
        while not list(tmp_path.glob("*/cells/*/cell.json")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the hanging cell is running, and the driver is back in ray.wait
        interrupted_at.append(time.time())
        os.kill(os.getpid(), signal.SIGINT)
        if not run_ended.wait(30):  # watchdog: a run deaf to the interrupt is unblocked (and the test fails)
            for marker in (tmp_path / "node").glob("running-*.json"):
                os.kill(int(marker.name.split("-")[1]), signal.SIGKILL)

    threading.Thread(target=interrupt_after_pop, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_suite(config, out_root=tmp_path, progress=None)
    finally:
        run_ended.set()
    assert time.time() - interrupted_at[0] < 10, "the interrupt waited for the running cell"
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("ray-kill")]
    assert set(cells(run_dir)) == {"pop"}
    assert set(pd.read_csv(run_dir / "results.csv").model) == {"pop"}
    deadline = time.time() + 60
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


CLI_SUITE = """
name = "ray-cli"
seeds = [0]
[evaluation]
k = [5, 10]
bootstrap = 20
[evaluation.systems]
enabled = false
[[datasets]]
name = "synthetic"
params = { n_users = 150, n_items = 100, n_interactions = 3000 }
[[splits]]
kind = "random"
[[models]]
name = "pop"
[[models]]
name = "ease"
params = { l2 = 50.0 }
[[models]]
name = "itemknn"
params = { neighbours = 20 }
"""


@pytest.mark.slow
def test_cli_executor_ray_then_resume_with_the_local_executor(tmp_path):
    """`bench run --executor ray` starts its own Ray; a cell lost afterwards is re-run by
    --resume --executor local --jobs 2 (a resumed run keeps the stored executor unless told otherwise)."""
    suite_file = tmp_path / "ray-cli.toml"
    suite_file.write_text(textwrap.dedent(CLI_SUITE))
    first = subprocess.run(RUN_BENCH + ["run", "--suite", str(suite_file), "--out", str(tmp_path / "runs"),
                                        "--executor", "ray", "--no-report"], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    before = pd.read_csv(run_dir / "results.csv")
    lost = next((run_dir / "cells").iterdir())
    shutil.rmtree(lost)  # as if the driver had been killed before this cell came back
    resumed = subprocess.run(RUN_BENCH + ["run", "--resume", str(run_dir), "--executor", "local", "--jobs", "2",
                                          "--no-report"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("reused") == 2
    assert json.loads((lost / "cell.json").read_text())["execution"]["executor"] == "local"
    after = pd.read_csv(run_dir / "results.csv")
    pd.testing.assert_frame_equal(accuracy(before), accuracy(after))


def test_executor_ray_without_ray_is_one_message_naming_the_extra(tmp_path):
    """Ray hidden from the interpreter (as on an install without the extra): exit 2, no traceback."""
    suite_file = tmp_path / "ray-cli.toml"
    suite_file.write_text(textwrap.dedent(CLI_SUITE))
    code = ("import sys; sys.modules['ray'] = None; sys.path.insert(0, %r); import faulty_models; "
            "from bench.cli import main; sys.exit(main(sys.argv[1:]))" % str(REPO / "tests" / "plugins"))
    proc = subprocess.run([sys.executable, "-c", code, "run", "--suite", str(suite_file), "--out",
                           str(tmp_path / "runs"), "--executor", "ray"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "bench-recsys[ray]" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/cells/*"))
