"""Runs one cell so that nothing it does can take the suite down.

With ``isolation = "process"`` (the default) each cell runs in a child process:
an exception, a hang past ``timeout`` seconds, a crash or an out-of-memory kill
(``memory_limit_gb`` caps the child's address space) becomes a *failed cell*
with its error text, and the suite goes on. The child writes its own
``cell.json`` atomically; the parent only reads it, so a SIGKILL of either
process loses at most the cell in progress. The child dies with its parent
(``PR_SET_PDEATHSIG``) so a killed run leaves no orphan still writing.

Children are forked from a *forkserver* (a clean interpreter with bench
preloaded), not from the calling process: forking a process that has already run
OpenMP code (implicit, LightFM, torch) can deadlock the child in GNU libgomp, and
a notebook or test session that fitted a model in-process is exactly that. The
cell is pickled to the child; models registered at run time travel with it. A
cell that cannot be pickled (e.g. a model class defined inside a function) falls
back to a plain fork.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import resource
import signal
import sys
import traceback
from typing import Any, Protocol

from bench import registry
from bench.rundir import RunDir
from bench.specs import ISOLATION_MODES, ExecutionSpec, ModelSpec  # noqa: F401  (ExecutionSpec re-exported)

CellResult = tuple[list[dict[str, Any]], dict[str, Any]]


class CellRunner(Protocol):
    """What an executor needs of a cell (``bench.runner.CellRunner``): run it, or record why it failed.

    A protocol rather than an import, so the executor does not depend on the runner that calls it.
    """

    rundir: RunDir

    def run(self, mspec: ModelSpec, cid: str) -> CellResult: ...

    def record_failure(self, mspec: ModelSpec, cid: str, error: str, trace: str) -> CellResult: ...


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _address_space_bytes() -> int:
    """Current virtual memory size of this process (VmSize), 0 where unknown."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child_main(payload: bytes | None, runner: CellRunner | None, sys_path: list[str],
                memory_limit_gb: float) -> None:
    """Entry point of the cell's process: unpack the cell (forkserver) or use it (fork), run it, exit."""
    code = 1
    try:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        if memory_limit_gb:
            # The child inherits its parent's address space; the limit is what the cell may add to it.
            limit = _address_space_bytes() + int(memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if payload is not None:
            sys.path[:] = sys_path + [p for p in sys.path if p not in sys_path]
            runner, mspec, cid, registered = pickle.loads(payload)
            for name, obj in registered.items():  # models the parent registered at run time
                if name not in registry.models._objects and name not in registry.models._lazy:
                    registry.models.register(name, obj)
        else:
            mspec, cid = runner._pending  # type: ignore[union-attr]
        runner.run(mspec, cid)  # type: ignore[union-attr]
        code = 0
    except BaseException:  # noqa: BLE001 - report anything, then exit
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


_PRELOAD = ["bench.runner", "bench.data", "bench.metrics", "numpy", "scipy.sparse", "pandas"]
_extra_preload: list[str] = []


def preload_for(model_classes: list[type]) -> None:
    """Import the suite's models' heavy modules once, in the forkserver, not in every cell.

    Takes effect when the forkserver starts (the first cell of the process); importing a
    module starts no OpenMP pool, so children forked from the server stay safe.
    """
    wanted = [m for cls in model_classes for m in (cls.__module__, *getattr(cls, "preload_modules", ()))]
    _extra_preload[:] = [m for m in dict.fromkeys(wanted) if m not in _PRELOAD]


def _start_child(runner: CellRunner, mspec: ModelSpec, cid: str, memory_limit_gb: float):
    """Start the cell's process: from the forkserver when the cell pickles, else a plain fork."""
    registered = dict(registry.models._objects)
    try:
        payload = pickle.dumps((runner, mspec, cid, registered), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        payload = None
    if payload is not None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD + _extra_preload)
        child = ctx.Process(target=_child_main, args=(payload, None, list(sys.path), memory_limit_gb), daemon=True)
    else:
        runner._pending = (mspec, cid)  # type: ignore[attr-defined]
        child = multiprocessing.get_context("fork").Process(
            target=_child_main, args=(None, runner, list(sys.path), memory_limit_gb), daemon=True)
    child.start()
    return child


def _describe_exit(exitcode: int | None, memory_limit_gb: float) -> str:
    if exitcode is None:
        return "did not finish"
    if exitcode < 0:
        sig = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else str(-exitcode)
        hint = " (likely out of memory: the kernel's OOM killer sends SIGKILL)" if exitcode == -signal.SIGKILL else ""
        return f"the cell's process was killed by {sig}{hint}"
    limit = f" (memory limit {memory_limit_gb:g} GiB)" if memory_limit_gb else ""
    return f"the cell's process exited with code {exitcode} before recording a result{limit}"


def _start_uninterrupted(runner: CellRunner, mspec: ModelSpec, cid: str, memory_limit_gb: float):
    """Start the cell's process with Ctrl-C held back until the start is complete.

    A Ctrl-C while the cell is being sent to its process would leave that process
    reading a truncated pickle (and printing its traceback); the interrupt is
    instead taken right after, and the just-started process is stopped.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _start_child(runner, mspec, cid, memory_limit_gb)
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        child = _start_child(runner, mspec, cid, memory_limit_gb)
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        child.kill()
        child.join()
        raise KeyboardInterrupt
    return child


def execute_cell(runner: CellRunner, mspec: ModelSpec, cid: str,
                 spec: ExecutionSpec) -> CellResult:
    """Run the cell as ``spec`` says and return its rows and cell info."""
    if spec.isolation == "none":
        return runner.run(mspec, cid)
    runner.rundir.discard_cell(cid)  # a forced re-run: the child's fresh cell.json is the only truth
    child = _start_uninterrupted(runner, mspec, cid, spec.memory_limit_gb)
    try:
        child.join(spec.timeout or None)
    except KeyboardInterrupt:
        child.kill()
        child.join()
        raise
    if child.is_alive():
        child.kill()
        child.join()
        return runner.record_failure(mspec, cid, f"TimeoutError: cell exceeded its {spec.timeout:g} s limit "
                                                  f"(execution.timeout); it was stopped", "")
    done = runner.rundir.read_cell(cid)
    if done is not None:
        return done["rows"], done
    return runner.record_failure(mspec, cid, f"CellCrashed: {_describe_exit(child.exitcode, spec.memory_limit_gb)}",
                                 "")
