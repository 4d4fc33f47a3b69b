"""Executors on one machine: --jobs N, thread caps, retries of dead cells, occupancy records, exclusive timing,
and the execution keys' validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "plugins"))
import faulty_models  # noqa: E402,F401  (registers self-kill, thread-probe, slow-pop)

from bench.config import parse_suite  # noqa: E402
from bench.errors import ConfigError  # noqa: E402
from bench.report.rundata import load_run  # noqa: E402
from bench.report.tables import CONCURRENT_MARK, CONCURRENT_NOTE, systems_tables  # noqa: E402
from bench.runner import cell_id, plan_cells, run_suite  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUN_BENCH = [sys.executable, str(REPO / "tests" / "plugins" / "run_bench.py")]
DATA = {"name": "synthetic", "params": {"n_users": 150, "n_items": 100, "n_interactions": 3000}}
CHEAP_SYSTEMS = {"warmup": 1, "latency_requests": 10, "batch_sizes": [0], "max_seconds": 0.5}


def suite(models, tmp_path: Path, splits=({"kind": "random"},), evaluation=None, **execution):
    """A small synthetic suite; cells leave their occupancy markers in tmp_path, apart from other runs."""
    raw = {"name": "executors", "seeds": [0], "evaluation": {"k": [5, 10], "bootstrap": 20} | (evaluation or {}),
           "datasets": [DATA], "splits": list(splits), "models": models,
           "execution": {"occupancy_dir": str(tmp_path / "node")} | execution}
    return parse_suite(raw, "test suite")


def cells(summary) -> dict[str, dict]:
    infos = [json.loads(p.read_text()) for p in (summary.run_dir / "cells").glob("*/cell.json")]
    return {info["model"]: info for info in infos}


def accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame[frame.k > 0].drop(columns=["run_id"])
    return rows.sort_values(["split", "segment", "model", "metric", "k"]).reset_index(drop=True)


CF_MODELS = [{"name": "pop"}, {"name": "random"}, {"name": "als", "params": {"factors": 8, "iterations": 5}},
             {"name": "ease", "params": {"l2": 50.0}}, {"name": "itemknn", "params": {"neighbours": 20}},
             {"name": "puresvd", "params": {"factors": 8}},
             {"name": "lightfm", "params": {"no_components": 8, "epochs": 3}}]
TWO_SPLITS = ({"kind": "random"}, {"kind": "user_coldstart", "params": {"shots": [0, 2]}})


def test_jobs_2_gives_the_accuracy_rows_of_jobs_1_and_records_the_sharing(tmp_path):
    one = run_suite(suite(CF_MODELS, tmp_path, TWO_SPLITS, jobs=1), out_root=tmp_path / "one", progress=None)
    two = run_suite(suite(CF_MODELS, tmp_path, TWO_SPLITS, jobs=2), out_root=tmp_path / "two", progress=None)
    assert one.failed == two.failed == 0, (one.failures, two.failures)
    pd.testing.assert_frame_equal(accuracy(one.frame), accuracy(two.frame))
    ones = [json.loads(p.read_text())["execution"] for p in (one.run_dir / "cells").glob("*/cell.json")]
    twos = [json.loads(p.read_text())["execution"] for p in (two.run_dir / "cells").glob("*/cell.json")]
    assert len(ones) == len(twos) == 14
    # one at a time: no cell shared the node; two at a time: cells overlapped, with threads capped to cores/2
    assert all(e["shared_node_with"] == 0 and e["threads"] == 0 and e["executor"] == "local" for e in ones)
    assert sum(e["shared_node_with"] > 0 for e in twos) >= 2
    assert all(e["threads"] == max(1, (os.cpu_count() or 1) // 2) and e["jobs"] == 2 for e in twos)
    assert all(e["attempts"] == 1 and e["node"] for e in ones + twos)
    # the report marks the timings measured beside other cells, and only those
    assert not any(r[0].endswith(CONCURRENT_MARK) for t in systems_tables(load_run(one.run_dir)) for r in t.rows)
    marked = [t for t in systems_tables(load_run(two.run_dir)) if any(r[0].endswith(CONCURRENT_MARK) for r in t.rows)]
    assert marked and all(t.note == CONCURRENT_NOTE for t in marked)
    # results.csv keeps the plan's order whatever order the cells finished in
    config = suite(CF_MODELS, tmp_path, TWO_SPLITS, jobs=2)
    plan = [cell_id(d, s, m, seed, config) for d, seed, s, m in plan_cells(config)]
    saved = pd.read_csv(two.run_dir / "results.csv")
    assert list(dict.fromkeys(saved.cell_id)) == plan


def test_thread_caps_reach_the_cell_process(tmp_path):
    capped = run_suite(suite([{"name": "thread-probe"}, {"name": "slow-pop", "params": {"delay": 0.1}}], tmp_path,
                             jobs=2), out_root=tmp_path / "capped", progress=None)
    probe = cells(capped)["thread-probe"]
    cap = max(1, (os.cpu_count() or 1) // 2)
    assert probe["model_description"]["omp_num_threads"] == str(cap)
    pools = probe["model_description"]["pools"]
    assert pools and all(threads <= cap for _api, threads in pools), pools


def test_a_killed_cell_process_fails_alone_or_succeeds_on_its_recorded_retry(tmp_path):
    failing = run_suite(suite([{"name": "self-kill"}, {"name": "pop"}, {"name": "ease"}], tmp_path, jobs=2),
                        out_root=tmp_path / "fail", progress=None)
    info = cells(failing)
    assert info["self-kill"]["status"] == "failed" and "CellCrashed" in info["self-kill"]["error"]
    assert "SIGKILL" in info["self-kill"]["error"] and info["self-kill"]["execution"]["attempts"] == 1
    assert info["pop"]["status"] == info["ease"]["status"] == "ok"
    frame = failing.frame
    assert not frame[(frame.model == "ease") & (frame.metric == "ndcg")].empty

    marker = tmp_path / "died-once"
    retried = run_suite(suite([{"name": "self-kill", "params": {"marker": str(marker)}}, {"name": "pop"}], tmp_path,
                              jobs=2, max_retries=1), out_root=tmp_path / "retry", progress=None)
    info = cells(retried)["self-kill"]
    assert info["status"] == "ok" and info["execution"]["attempts"] == 2
    (earlier,) = info["execution"]["earlier_attempts"]
    assert "CellCrashed" in earlier["error"] and "SIGKILL" in earlier["error"]


def test_exclusive_timing_measures_systems_with_the_node_to_itself(tmp_path):
    models = [{"name": "slow-pop", "params": {"delay": 0.5}}, {"name": "ease", "params": {"l2": 50.0}},
              {"name": "itemknn", "params": {"neighbours": 20}}]
    summary = run_suite(suite(models, tmp_path, evaluation={"systems": CHEAP_SYSTEMS}, jobs=2,
                              exclusive_timing=True), out_root=tmp_path / "alone", progress=None)
    assert summary.failed == 0, summary.failures
    executions = [info["execution"] for info in cells(summary).values()]
    assert all(e["systems_alone"] for e in executions)
    serving = [t for t in systems_tables(load_run(summary.run_dir)) if t.title.endswith("serving")]
    assert serving and not any(r[0].endswith(CONCURRENT_MARK) for t in serving for r in t.rows)
    for mine in executions:  # no other cell held the node during any of this cell's systems windows
        for other in executions:
            if other is mine:
                continue
            for lo, hi in mine["alone_windows"]:
                assert all(h_hi <= lo or h_lo >= hi for h_lo, h_hi in other["holds"]), (mine, other)


def test_execution_keys_are_validated_before_any_cell(tmp_path):
    with pytest.raises(ConfigError, match="executor = 'spark'.*local, ray"):
        suite([{"name": "pop"}], tmp_path, executor="spark")
    with pytest.raises(ConfigError, match="ray_address.*executor = \"ray\""):
        suite([{"name": "pop"}], tmp_path, ray_address="auto")
    with pytest.raises(ConfigError, match="jobs > 1 need isolation"):
        suite([{"name": "pop"}], tmp_path, jobs=2, isolation="none")
    with pytest.raises(ConfigError, match="max_retries must be >= 0"):
        suite([{"name": "pop"}], tmp_path, max_retries=-1)
    with pytest.raises(ConfigError, match="resources has unknown key 'gpus'.*num_gpus"):
        suite([{"name": "pop", "resources": {"gpus": 1}}], tmp_path)
    with pytest.raises(ConfigError, match="num_cpus must be a number > 0"):
        suite([{"name": "pop", "resources": {"num_cpus": 0}}], tmp_path)


def test_command_line_execution_flags_are_checked_before_any_cell(tmp_path, capsys):
    from bench.cli import main

    base = ["run", "--suite", "smoke", "--out", str(tmp_path / "runs")]
    assert main(base + ["--jobs", "-1"]) == 2
    assert "jobs and max_retries must be >= 0" in capsys.readouterr().err
    assert main(base + ["--executor", "local", "--ray-address", "auto"]) == 2
    assert "--ray-address names a Ray cluster; use it with --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_api_execution_arguments_replace_the_suite_keys_also_on_resume(tmp_path):
    from bench import api
    from bench.rundir import RunDir

    config = api.load_config("smoke", jobs=2)
    assert (config.execution.executor, config.execution.jobs) == ("local", 2)
    on_ray = api.load_config("smoke")
    on_ray.execution.executor, on_ray.execution.ray_address = "ray", "auto"  # a run that Ray started
    RunDir(tmp_path / "run").write_config(on_ray.as_dict())
    resumed = api.load_config(resume=tmp_path / "run", executor="local", jobs=1)
    assert (resumed.execution.executor, resumed.execution.ray_address, resumed.execution.jobs) == ("local", "", 1)
    with pytest.raises(ConfigError, match="ray_address= names a Ray cluster; use it with executor='ray'"):
        api.load_config("smoke", executor="local", ray_address="auto")
    with pytest.raises(ConfigError, match="jobs= must be an integer"):
        api.load_config("smoke", jobs="2")
    with pytest.raises(ConfigError, match="jobs and max_retries must be >= 0"):
        api.load_config(resume=tmp_path / "run", executor="local", jobs=-1)


def test_resources_say_where_a_cell_runs_not_what_it_is(tmp_path):
    plain = suite([{"name": "als"}], tmp_path)
    placed = suite([{"name": "als", "resources": {"num_cpus": 2, "memory_gb": 1.5}}], tmp_path)
    assert placed.models[0].resources == {"num_cpus": 2, "memory_gb": 1.5}
    ids = [cell_id(d, s, m, seed, c) for c in (plain, placed) for d, seed, s, m in plan_cells(c)]
    assert ids[0] == ids[1]


def test_cuda_capable_models_default_to_one_gpu_on_device_cuda(tmp_path):
    from bench.execution import cell_resources

    class Gpu(faulty_models.Pop):
        capabilities = faulty_models.Pop.capabilities.__class__(devices=("cpu", "cuda"))

    faulty_models.registry.models.register("gpu-pop", Gpu)
    try:
        spec = suite([{"name": "gpu-pop"}, {"name": "pop"}], tmp_path).models
        assert cell_resources(spec[0], "cuda") == {"num_gpus": 1}
        assert cell_resources(spec[0], "cpu") == {}
        assert cell_resources(spec[1], "cuda") == {}  # a CPU-only model asks for no GPU
    finally:
        faulty_models.registry.models._objects.pop("gpu-pop", None)


KILL_SUITE = """
name = "interrupt"
seeds = [0]
[evaluation]
k = [5, 10]
bootstrap = 50
[[datasets]]
name = "synthetic"
params = { n_users = 200, n_items = 150, n_interactions = 5000 }
[[splits]]
kind = "random"
[[models]]
name = "slow-pop"
params = { delay = 0.5 }
[[models]]
name = "pop"
[[models]]
name = "hanging"
[[models]]
name = "random"
"""


def _session_processes(sid: int) -> list[str]:
    """'pid cmdline' of every live process in session ``sid`` (Linux /proc), zombies left out."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp sid
                found.append(f"{entry.name} {(entry / 'cmdline').read_bytes().replace(bytes(1), b' ').decode()[:200]}")
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return found


def test_ctrl_c_with_jobs_2_cancels_running_cells_and_keeps_finished_ones(tmp_path, ctrl_c_delivered):
    """Ctrl-C with two cells in flight: bench exits 130, finished cells stay, the `hanging` cell's process is
    killed (nothing of the run outlives it). The run has its own session and writes to files, not pipes: a
    cell process that outlived the run would otherwise hold a pipe open and block the test; here every wait
    has a limit and the whole session is SIGKILLed on the way out."""
    suite_file = tmp_path / "interrupt.toml"
    suite_file.write_text(textwrap.dedent(KILL_SUITE))
    root = tmp_path / "runs"
    out, err_file = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as stdout, open(err_file, "w") as stderr:
        proc = subprocess.Popen(RUN_BENCH + ["run", "--suite", str(suite_file), "--out", str(root), "--jobs", "2"],
                                stdout=stdout, stderr=stderr, text=True, start_new_session=True,
                                env=os.environ | {"PYTHONFAULTHANDLER": "1"})
    left: list[str] = []
    try:
        deadline = time.time() + 180
        while len(list(root.glob("*/cells/*/cell.json"))) < 2:  # slow-pop and pop done; `hanging` holds a slot
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"run ended or stalled before 2 cells finished (exit {proc.poll()}); "
                                     f"stderr: {err_file.read_text()[-6000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack goes to stderr
            time.sleep(2)
            raise AssertionError(f"no exit 60 s after Ctrl-C; stderr: {err_file.read_text()[-6000:]}") from None
        grace = time.time() + 10  # the forkserver leaves when the driver's pipe to it closes
        while (left := _session_processes(proc.pid)) and time.time() < grace:
            time.sleep(0.1)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # never leave a cell process of this run behind
        except ProcessLookupError:
            pass
        if proc.returncode is None:
            proc.wait(timeout=30)
    err = err_file.read_text()
    assert proc.returncode == 130, err
    assert not left, f"processes of the run still alive 10 s after it exited: {left}"
    assert "--resume" in err and "Traceback" not in err
    (run_dir,) = root.iterdir()
    saved = pd.read_csv(run_dir / "results.csv")
    assert saved.cell_id.nunique() == len(list(run_dir.glob("cells/*/cell.json"))) >= 2
    hanging = [p for p in run_dir.glob("cells/*/cell.json") if json.loads(p.read_text())["model"] == "hanging"]
    assert not hanging  # cancelled, not recorded: --resume runs it again


def test_occupancy_records_are_counted_by_name_and_pruned(tmp_path):
    """A cell counts the records that overlap its run from their names alone (it opens none of them, so a
    node with thousands of records costs no reading per cell), and forgets records older than KEEP_SECONDS
    and markers of dead processes."""
    from bench.execution import NodeSlot

    folder = tmp_path / "node"
    folder.mkdir()
    now = time.time()
    overlapping = folder / NodeSlot.finished_name(11, "aaaaaaaaaaaa", now - 5, now + 3600)
    overlapping.write_text("not json: never read")
    earlier = folder / NodeSlot.finished_name(12, "bbbbbbbbbbbb", now - 100, now - 50)
    expired = folder / NodeSlot.finished_name(13, "cccccccccccc", now - 3 * 86400, now - 3 * 86400 + 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_marker = folder / f"running-{dead.pid}-dddddddddddd.json"
    for path in (earlier, expired, dead_marker):
        path.write_text("{}")
    with NodeSlot(folder, "eeeeeeeeeeee", exclusive_timing=False) as slot:
        pass
    assert not expired.exists() and not dead_marker.exists() and earlier.exists()
    assert slot.shared_with() == 1  # the overlapping record; not the earlier one, nor its own
    assert NodeSlot.finished_times(NodeSlot.finished_name(slot.pid, "eeeeeeeeeeee", slot.start, slot.end)) == (
        round(slot.start, 6), round(slot.end, 6))
    assert (folder / NodeSlot.finished_name(slot.pid, "eeeeeeeeeeee", slot.start, slot.end)).exists()


def test_cell_processes_leave_no_semaphores_for_the_resource_tracker(tmp_path):
    """implicit's ALS fit makes a tqdm bar (hidden), and tqdm a multiprocessing lock; a cell process ends with
    os._exit, which skipped that lock's cleanup, and every such cell made the run end with "leaked semaphore
    objects" (22 in the main job). A fresh interpreter, so the resource tracker is this run's alone."""
    suite_file = tmp_path / "semaphores.toml"
    suite_file.write_text(textwrap.dedent("""
        name = "semaphores"
        seeds = [0]
        [evaluation]
        k = [5]
        bootstrap = 0
        [evaluation.systems]
        enabled = false
        [[datasets]]
        name = "synthetic"
        params = { n_users = 60, n_items = 40, n_interactions = 600 }
        [[splits]]
        kind = "random"
        [[models]]
        name = "als"
        params = { factors = 4, iterations = 2, num_threads = 1 }
        [[models]]
        name = "bpr"
        params = { factors = 4, iterations = 2, num_threads = 1 }
        """))
    done = subprocess.run(RUN_BENCH + ["run", "--suite", str(suite_file), "--out", str(tmp_path / "runs"),
                                       "--no-report"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 cells, 0 failed" in done.stdout
    assert "leaked semaphore" not in done.stderr, done.stderr[-2000:]
