"""Runs one cell so that nothing it does can take the suite down.

With ``isolation = "process"`` (the default) each cell runs in a forked child:
an exception, a hang past ``timeout`` seconds, a crash or an out-of-memory kill
(``memory_limit_gb`` caps the child's address space) becomes a *failed cell*
with its error text, and the suite goes on. The child writes its own
``cell.json`` atomically; the parent only reads it, so a SIGKILL of either
process loses at most the cell in progress. The child dies with its parent
(``PR_SET_PDEATHSIG``) so a killed run leaves no orphan still writing.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import resource
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError

if TYPE_CHECKING:
    from bench.config import ModelSpec
    from bench.runner import CellRunner

ISOLATION_MODES = ("process", "none")


@dataclass
class ExecutionSpec:
    """How cells run; not part of a cell's identity (changing it keeps finished cells)."""

    isolation: str = "process"  # "process": forked child per cell; "none": in this process (debugging)
    timeout: float = 0.0  # seconds per cell; 0 = no limit (needs isolation = "process")
    memory_limit_gb: float = 0.0  # address space a cell may add to what it inherits; 0 = none (needs "process")

    def validate(self, source: str) -> None:
        if self.isolation not in ISOLATION_MODES:
            raise ConfigError(f"{source}: execution.isolation = '{self.isolation}' is not valid; "
                              f"use one of {', '.join(ISOLATION_MODES)}")
        if self.timeout < 0 or self.memory_limit_gb < 0:
            raise ConfigError(f"{source}: execution.timeout and memory_limit_gb must be >= 0")
        if self.isolation == "none" and (self.timeout or self.memory_limit_gb):
            raise ConfigError(f"{source}: execution.timeout / memory_limit_gb need isolation = \"process\"")


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


def _child_main(runner: "CellRunner", mspec: "ModelSpec", cid: str, memory_limit_gb: float) -> None:
    code = 1
    try:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        if memory_limit_gb:
            # The child inherits the parent's address space; the limit is what the cell may add to it.
            limit = _address_space_bytes() + int(memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        runner.run(mspec, cid)
        code = 0
    except BaseException:  # noqa: BLE001 - report anything, then exit
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _describe_exit(exitcode: int | None, memory_limit_gb: float) -> str:
    if exitcode is None:
        return "did not finish"
    if exitcode < 0:
        sig = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else str(-exitcode)
        hint = " (likely out of memory: the kernel's OOM killer sends SIGKILL)" if exitcode == -signal.SIGKILL else ""
        return f"the cell's process was killed by {sig}{hint}"
    limit = f" (memory limit {memory_limit_gb:g} GiB)" if memory_limit_gb else ""
    return f"the cell's process exited with code {exitcode} before recording a result{limit}"


def execute_cell(runner: "CellRunner", mspec: "ModelSpec", cid: str,
                 spec: ExecutionSpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the cell as ``spec`` says and return its rows and cell info."""
    if spec.isolation == "none":
        return runner.run(mspec, cid)
    done_file = runner.cell_dir(cid) / "cell.json"
    if done_file.exists():
        done_file.unlink()  # a forced re-run: the child's fresh file is the only truth
    child = multiprocessing.get_context("fork").Process(
        target=_child_main, args=(runner, mspec, cid, spec.memory_limit_gb), daemon=True)
    child.start()
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
    if done_file.exists():
        return runner.load_done(cid)
    return runner.record_failure(mspec, cid, f"CellCrashed: {_describe_exit(child.exitcode, spec.memory_limit_gb)}",
                                 "")
