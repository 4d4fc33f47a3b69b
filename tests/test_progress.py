"""Progress lines from inside long cells (bench.progress): printed on a heartbeat, silent for quick cells."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "plugins"))
import faulty_models  # noqa: E402,F401  (registers slow-pop)

from bench import progress  # noqa: E402
from bench.config import parse_suite  # noqa: E402
from bench.runner import run_suite  # noqa: E402


def test_steps_are_printed_by_the_heartbeat_with_the_latest_state_only():
    out = io.StringIO()
    with progress.cell("[3/9] ml-100k random sasrec", interval=0.05, stream=out):
        progress.phase("fit")
        for epoch in range(1, 4):
            progress.step(epoch, 3, "epoch", "loss 0.50")
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert lines, "a cell running past the interval printed nothing"
    assert all(line.startswith("  [3/9] ml-100k random sasrec: fit: epoch 3/3 loss 0.50 (") for line in lines)


def test_a_part_of_a_phase_frames_the_models_steps_and_a_new_phase_clears_it():
    out = io.StringIO()
    with progress.cell("llm-rerank", interval=0.05, stream=out):
        progress.phase("recommend all (100 users)")
        progress.part("users 61-70")
        progress.step(6, 10, "users scored")
        time.sleep(0.2)
        progress.phase("systems all")
        time.sleep(0.2)
    lines = out.getvalue().splitlines()
    assert "  llm-rerank: recommend all (100 users), users 61-70: users scored 6/10 (" in lines[0]
    assert lines[-1].startswith("  llm-rerank: systems all (")


def test_the_runner_says_which_users_of_a_segment_a_model_is_scoring(tmp_path, capsys):
    raw = {"name": "parts", "seeds": [0],
           "evaluation": {"k": [5], "bootstrap": 0, "batch_size": 20, "systems": {"enabled": False}},
           "datasets": [{"name": "synthetic", "params": {"n_users": 60, "n_items": 40, "n_interactions": 600}}],
           "splits": [{"kind": "random"}],
           "models": [{"name": "slow-pop", "params": {"delay": 0.0, "recommend_delay": 0.3}}],
           "execution": {"isolation": "none", "occupancy_dir": str(tmp_path / "node")}}
    result = run_suite(parse_suite(raw, "test suite"), out_root=tmp_path, progress=lambda _m: None,
                       progress_interval=0.1)
    assert result.failed == 0
    err = capsys.readouterr().err
    (segment_users,) = {int(line.split("(")[1].split()[0]) for line in err.splitlines() if "recommend all (" in line}
    assert segment_users > 40  # three batches of at most 20 users
    assert "slow-pop: recommend all (" in err
    assert "users 1-20" in err and f"users 41-{segment_users}" in err


def test_a_quick_cell_prints_nothing_and_calls_outside_a_cell_are_no_ops():
    out = io.StringIO()
    progress.step(1, 2, "epoch")  # no active cell: nothing happens, nothing fails
    assert not progress.active()
    with progress.cell("quick", interval=5.0, stream=out):
        assert progress.active()
        progress.phase("fit")
    assert out.getvalue() == ""
    assert not progress.active()
    with progress.cell("silent", interval=0, stream=out):  # interval 0: no reporting at all
        assert not progress.active()
        time.sleep(0.05)
    assert out.getvalue() == ""


def test_a_long_cell_in_its_own_process_reports_its_phase_to_the_terminal(tmp_path):
    # A fresh interpreter, so the forkserver that runs the cell is started here and its stderr is this
    # pipe: in the pytest session a forkserver started by an earlier test keeps that test's stderr.
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent / "plugins")!r})
import faulty_models
from bench.config import parse_suite
from bench.runner import run_suite
raw = {{"name": "progress", "seeds": [0], "evaluation": {{"k": [5], "bootstrap": 0, "systems": {{"enabled": False}}}},
       "datasets": [{{"name": "synthetic", "params": {{"n_users": 60, "n_items": 40, "n_interactions": 600}}}}],
       "splits": [{{"kind": "random"}}], "models": [{{"name": "slow-pop", "params": {{"delay": 1.0}}}}],
       "execution": {{"occupancy_dir": {str(tmp_path / "node")!r}}}}}
loud = run_suite(parse_suite(raw, "test suite"), out_root={str(tmp_path / "loud")!r}, progress=lambda _m: None,
                 progress_interval=0.2)
print("---quiet---", file=sys.stderr, flush=True)
quiet = run_suite(parse_suite(raw, "test suite"), out_root={str(tmp_path / "quiet")!r}, progress=None,
                  progress_interval=0.2)
assert loud.failed == 0 and quiet.failed == 0
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loud, quiet = done.stderr.split("---quiet---")
    # the child process (forkserver) writes to the terminal's stderr while its fit sleeps
    assert "  [1/1] synthetic random seed=0 slow-pop: fit (" in loud
    # without a progress callback (notebooks, tests) the cell stays silent
    assert "slow-pop: fit" not in quiet
