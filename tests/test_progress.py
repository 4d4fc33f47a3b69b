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
