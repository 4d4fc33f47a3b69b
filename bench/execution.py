"""Runs cells so that nothing one of them does can take the suite down, one at a time or many at once.

**Executors.** The suite loop (:func:`bench.runner.run_suite`) hands cells to an
executor and receives each cell's :class:`CellResult` back: its rows, its
``cell.json`` info and the bytes of every file it made. The *driver* alone writes
the cell folder (:func:`write_cell`, ``cell.json`` last), so no shared file system
is needed and resume works the same whichever executor ran a cell.

- ``local`` (default): each cell in its own process on this machine; ``jobs = N``
  runs up to N at once, each with its BLAS/OpenMP/torch threads capped to
  ``cpu_count // N`` so N cells do not oversubscribe the cores.
- ``ray``: one Ray Core task per cell (:mod:`bench.ray_executor`, the ``[ray]`` extra).

**Isolation on the node.** With ``isolation = "process"`` (the default) each cell
runs in a child process: an exception, a hang past ``timeout`` seconds, a crash
or an out-of-memory kill (``memory_limit_gb`` caps the child's address space)
becomes a *failed cell* with its error text, and the suite goes on. A cell whose
process died (a signal, an exit before its result) is retried up to
``max_retries`` times; every attempt is written in ``cell.json``. The child
computes in a scratch folder and hands its result back through a file there; the
child dies with its parent (``PR_SET_PDEATHSIG``) so a killed run leaves no orphan.

Children are forked from a *forkserver* (a clean interpreter with bench
preloaded), not from the calling process: forking a process that has already run
OpenMP code (implicit, LightFM, torch) can deadlock the child in GNU libgomp, and
a notebook or test session that fitted a model in-process is exactly that. The
cell is pickled to the child; models registered at run time travel with it. A
cell that cannot be pickled (e.g. a model class defined inside a function) falls
back to a plain fork.

**Timing honesty.** Every cell records its node and how many other cells ran on
that node while it did (:class:`NodeSlot`, markers in a node-local folder, so it
counts cells of any executor and any bench run on the node). With
``exclusive_timing = true`` the systems scenarios of a cell wait until they have
the node to themselves.
"""

from __future__ import annotations

import copy
import ctypes
import fcntl
import json
import multiprocessing
import multiprocessing.util
import os
import pickle
import queue
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from bench import registry
from bench.rundir import RunDir
from bench.specs import ExecutionSpec, ModelSpec, check_resources  # noqa: F401  (re-exported)

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")


class CellRunner(Protocol):
    """What an executor needs of a cell (``bench.runner.CellRunner``): run it, or record why it failed.

    A protocol rather than an import, so the executor does not depend on the runner that calls it.
    """

    run_dir: Path
    rundir: RunDir

    def run(self, mspec: ModelSpec, cid: str) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...

    def record_failure(self, mspec: ModelSpec, cid: str, error: str,
                       trace: str) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...


def cell_resources(mspec: ModelSpec, device: str) -> dict[str, float]:
    """The model entry's resources; a model that can run on CUDA, on device = "cuda", defaults to one whole GPU."""
    wanted = dict(mspec.resources)
    if "num_gpus" not in wanted and device == "cuda":
        cls = registry.models.get(mspec.name)
        if "cuda" in getattr(getattr(cls, "capabilities", None), "devices", ()):
            wanted["num_gpus"] = 1
    return wanted


# -- what travels ----------------------------------------------------------------

@dataclass
class CellResult:
    """A finished (or failed) cell as it travels back to the driver, which writes it (:func:`write_cell`)."""

    rows: list[dict[str, Any]]
    info: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)  # paths relative to the run folder -> contents
    crashed: bool = False  # the cell's process or worker died: worth a retry (max_retries)

    @property
    def status(self) -> str:
        return str(self.info.get("status"))


@dataclass
class Placement:
    """How a cell runs on its node: told by the driver, completed on the node."""

    executor: str = "local"
    threads: int = 0  # cap on BLAS / OpenMP / torch threads in the cell's process; 0 = no cap
    exclusive_timing: bool = False
    occupancy_dir: str = ""
    node: str = ""  # filled in on the node
    extra: dict[str, Any] = field(default_factory=dict)  # executor details (e.g. Ray node id)


def write_cell(run_dir: Path, cid: str, result: CellResult) -> None:
    """The one place a cell's result becomes its folder, for every executor (``cell.json`` last)."""
    RunDir(run_dir).write_cell_result(cid, result.info | {"rows": result.rows}, result.files)


# -- on the node: occupancy and exclusive timing ----------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NodeSlot:
    """One running cell's presence on its node, and the shared/exclusive node lock.

    A marker file says the cell runs; a record left at the end gives its start and
    end, so a cell counts every other cell whose run overlapped its own, whichever
    process, executor or bench run it came from. Each cell holds the node lock
    *shared* while it runs; :meth:`alone` takes it *exclusive* (through a gate
    lock, so cells starting meanwhile wait and cannot starve it).
    """

    KEEP_SECONDS = 2 * 86400

    def __init__(self, folder: Path, cid: str, exclusive_timing: bool) -> None:
        self.folder, self.cid, self.exclusive_timing = folder, cid, exclusive_timing
        self.pid = os.getpid()
        self.start = self.end = 0.0
        self.holds: list[list[float]] = []  # intervals this cell held the node lock shared
        self.alone_windows: list[list[float]] = []

    def __enter__(self) -> "NodeSlot":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._prune(time.time())
        self._gate = open(self.folder / "gate.lock", "a+b")
        self._node = open(self.folder / "node.lock", "a+b")
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        fcntl.flock(self._node, fcntl.LOCK_SH)
        fcntl.flock(self._gate, fcntl.LOCK_UN)
        self.start = time.time()
        self.holds.append([self.start, 0.0])
        self.marker = self.folder / f"running-{self.pid}-{self.cid}.json"
        self.marker.write_text(json.dumps({"pid": self.pid, "cell": self.cid, "start": self.start}))
        return self

    @contextmanager
    def alone(self) -> Iterator[None]:
        """The node to this cell alone (exclusive_timing), else nothing."""
        if not self.exclusive_timing:
            yield
            return
        self.holds[-1][1] = time.time()
        fcntl.flock(self._node, fcntl.LOCK_UN)
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        fcntl.flock(self._node, fcntl.LOCK_EX)
        window = [time.time(), 0.0]
        try:
            yield
        finally:
            window[1] = time.time()
            self.alone_windows.append(window)
            fcntl.flock(self._node, fcntl.LOCK_SH)
            fcntl.flock(self._gate, fcntl.LOCK_UN)
            self.holds.append([time.time(), 0.0])

    def __exit__(self, *exc: Any) -> None:
        self.end = time.time()
        self.holds[-1][1] = self.end
        fcntl.flock(self._node, fcntl.LOCK_UN)
        self._node.close()
        self._gate.close()
        (self.folder / self.finished_name(self.pid, self.cid, self.start, self.end)).touch()
        self.marker.unlink(missing_ok=True)

    @staticmethod
    def finished_name(pid: int, cid: str, start: float, end: float) -> str:
        """A finished cell's record: its times are in the name, so counting overlaps opens no file."""
        return f"finished-{pid}-{cid}-{start:.6f}-{end:.6f}.json"

    @staticmethod
    def finished_times(name: str) -> tuple[float, float] | None:
        """(start, end) of a record named by :meth:`finished_name`; None for any other name."""
        parts = name[:-len(".json")].split("-")
        if len(parts) != 5 or parts[0] != "finished":
            return None
        try:
            return float(parts[3]), float(parts[4])
        except ValueError:
            return None

    def _prune(self, now: float) -> None:
        """Forget records older than ``KEEP_SECONDS`` and markers of processes that died without a record.

        Every cell lists the folder; without pruning by name, a busy node (CI, repeated runs) keeps thousands
        of records and each cell paid ~0.5 s reading them (measured with 6,400 records on the 2-core VM).
        """
        for path in self.folder.glob("*.json"):
            try:
                times = self.finished_times(path.name)
                if times is not None:
                    if now - times[1] > self.KEEP_SECONDS:
                        path.unlink()
                elif path.name.startswith("finished-"):  # a record of an older bench: times inside the file
                    if now - path.stat().st_mtime > self.KEEP_SECONDS:
                        path.unlink()
                elif path.name.startswith("running-") and not _pid_alive(int(path.name.split("-")[1])):
                    path.unlink()
            except (OSError, ValueError):
                pass

    def shared_with(self) -> int:
        """Other cells whose run on this node overlapped this one's (still running, or finished after we began)."""
        count = 0
        own = self.finished_name(self.pid, self.cid, self.start, self.end)
        for path in self.folder.glob("*.json"):
            if path.name in (self.marker.name, own):
                continue
            times = self.finished_times(path.name)
            if times is not None:
                count += times[1] > self.start and times[0] < self.end
                continue
            if not path.name.startswith(("running-", "finished-")):
                continue
            try:  # a running marker, or a finished record of an older bench (written at its end: mtime)
                if path.name.startswith("finished-") and path.stat().st_mtime < self.start:
                    continue
                other = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if path.name.startswith("running-"):
                count += other["start"] < self.end and _pid_alive(int(other["pid"]))
            else:
                count += other["end"] > self.start and other["start"] < self.end
        return count


_slot: NodeSlot | None = None  # the cell running in this process, for :func:`alone_on_node`


@contextmanager
def alone_on_node() -> Iterator[None]:
    """Around a systems scenario: with ``exclusive_timing`` it runs with no other cell on the node."""
    if _slot is None:
        yield
    else:
        with _slot.alone():
            yield


def cap_threads(threads: int) -> None:
    """Cap BLAS / OpenMP / torch threads of this (cell) process.

    Environment variables reach libraries loaded from now on; threadpoolctl reaches
    those already loaded (the forkserver preloads numpy and the models' modules).
    """
    if threads <= 0:
        return
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def run_here(runner: CellRunner, mspec: ModelSpec, cid: str, placement: Placement) -> CellResult:
    """Run the cell in this process, in a scratch folder, and collect what it made."""
    global _slot
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-cell-{cid}-"))
    local = copy.copy(runner)
    local.run_dir, local.rundir = scratch, RunDir(scratch)  # what the cell writes lands here, and travels back
    # one folder per user, so it is always writable; other users' cells are not seen
    folder = Path(placement.occupancy_dir or Path(tempfile.gettempdir()) / f"bench-node-{os.getuid()}")
    try:
        with NodeSlot(folder, cid, placement.exclusive_timing) as slot:
            _slot = slot
            try:
                rows, info = local.run(mspec, cid)
            finally:
                _slot = None
        info["execution"] = execution_info(placement) | {
            "shared_node_with": slot.shared_with(), "started": slot.start, "finished": slot.end,
            "systems_alone": bool(slot.alone_windows), "alone_windows": slot.alone_windows, "holds": slot.holds}
        files = {str(p.relative_to(scratch)): p.read_bytes() for p in sorted(scratch.rglob("*")) if p.is_file()}
        return CellResult(rows, info, files)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def execution_info(placement: Placement) -> dict[str, Any]:
    return {"executor": placement.executor, "node": placement.node or socket.gethostname(),
            "threads": placement.threads, **placement.extra}


# -- one cell in its own process ---------------------------------------------------------

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
                memory_limit_gb: float, result_path: str, placement: Placement) -> None:
    """Entry point of the cell's process: unpack the cell (forkserver) or use it (fork), run it, hand back, exit."""
    code = 1
    try:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        cap_threads(placement.threads)
        if memory_limit_gb:
            # The child inherits its parent's address space; the limit is what the cell may add to it.
            limit = _address_space_bytes() + int(memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if payload is not None:
            sys.path[:] = sys_path + [p for p in sys.path if p not in sys_path]
            runner, mspec, cid, registered = pickle.loads(payload)
            register_models(registered)
        else:
            mspec, cid = runner._pending  # type: ignore[union-attr]
        result = run_here(runner, mspec, cid, placement)  # type: ignore[arg-type]
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        tmp = result_path + ".tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, result_path)  # its presence means a whole result
        code = 0
    except BaseException:  # noqa: BLE001 - report anything, then exit
        traceback.print_exc()
    finally:
        _release_multiprocessing_objects()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _release_multiprocessing_objects() -> None:
    """Unlink the named semaphores this process made, as a normal exit would (``os._exit`` skips it).

    tqdm makes a multiprocessing lock on its first bar, shown or not (implicit's fits and
    peft's merge do); left behind by every such cell, they made the resource tracker warn of
    "22 leaked semaphore objects" at the end of the main job. multiprocessing's finalizers
    act only in the process that registered them, so those inherited from the forkserver
    are left alone.
    """
    try:
        multiprocessing.util._run_finalizers(0)  # exit priority >= 0: semaphores (0), pools, queues
    except Exception:  # noqa: BLE001 - the cell's result is already written; never fail here
        traceback.print_exc()


def register_models(registered: dict[str, Any]) -> None:
    """Models the driver registered at run time (plug-ins of a test or notebook), registered here too."""
    for name, obj in registered.items():
        if name not in registry.models._objects and name not in registry.models._lazy:
            registry.models.register(name, obj)


_PRELOAD = ["bench.runner", "bench.data", "bench.metrics", "numpy", "scipy.sparse", "pandas"]
_extra_preload: list[str] = []


def preload_for(model_classes: list[type]) -> list[str]:
    """Import the suite's models' heavy modules once, in the forkserver, not in every cell.

    Takes effect when the forkserver starts (the first cell of the process); importing a
    module starts no OpenMP pool, so children forked from the server stay safe.
    """
    wanted = [m for cls in model_classes for m in (cls.__module__, *getattr(cls, "preload_modules", ()))]
    _extra_preload[:] = [m for m in dict.fromkeys(wanted) if m not in _PRELOAD]
    return list(_extra_preload)


def _start_child(runner: CellRunner, mspec: ModelSpec, cid: str, memory_limit_gb: float, result_path: str,
                 placement: Placement):
    """Start the cell's process: from the forkserver when the cell pickles, else a plain fork."""
    registered = dict(registry.models._objects)
    try:
        payload = pickle.dumps((runner, mspec, cid, registered), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        payload = None
    args = (list(sys.path), memory_limit_gb, result_path, placement)
    if payload is not None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD + _extra_preload)
        child = ctx.Process(target=_child_main, args=(payload, None, *args), daemon=True)
    else:
        runner._pending = (mspec, cid)  # type: ignore[attr-defined]
        child = multiprocessing.get_context("fork").Process(target=_child_main, args=(None, runner, *args),
                                                            daemon=True)
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


def _start_uninterrupted(runner: CellRunner, mspec: ModelSpec, cid: str, memory_limit_gb: float,
                         result_path: str, placement: Placement):
    """Start the cell's process with Ctrl-C held back until the start is complete.

    A Ctrl-C while the cell is being sent to its process would leave that process
    reading a truncated pickle (and printing its traceback); the interrupt is
    instead taken right after, and the just-started process is stopped. (Started
    from a worker thread, as ``jobs > 1`` does, the main thread takes the Ctrl-C.)
    """
    if threading.current_thread() is not threading.main_thread():
        return _start_child(runner, mspec, cid, memory_limit_gb, result_path, placement)
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        child = _start_child(runner, mspec, cid, memory_limit_gb, result_path, placement)
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        child.kill()
        child.join()
        raise KeyboardInterrupt
    return child


class Cancelled(Exception):
    """The run is being stopped: the cell's result is not wanted."""


def run_cell(runner: CellRunner, mspec: ModelSpec, cid: str, spec: ExecutionSpec, placement: Placement,
             live: "LiveChildren | None" = None) -> CellResult:
    """Run one cell on this node as ``spec`` says and return its result (failures included, never raised)."""
    if spec.isolation == "none":
        return run_here(runner, mspec, cid, placement)
    scratch = tempfile.mkdtemp(prefix=f"bench-result-{cid}-")
    result_path = os.path.join(scratch, "result.pickle")
    try:
        child = _start_uninterrupted(runner, mspec, cid, spec.memory_limit_gb, result_path, placement)
        if live is not None:
            live.add(child)
        try:
            child.join(spec.timeout or None)
        except KeyboardInterrupt:
            child.kill()
            child.join()
            raise
        finally:
            if live is not None:
                live.discard(child)
        if live is not None and live.cancelled:
            raise Cancelled(cid)
        if child.is_alive():
            child.kill()
            child.join()
            rows, info = runner.record_failure(mspec, cid, f"TimeoutError: cell exceeded its {spec.timeout:g} s "
                                                            f"limit (execution.timeout); it was stopped", "")
            info["execution"] = execution_info(placement)
            return CellResult(rows, info)
        if os.path.exists(result_path):
            with open(result_path, "rb") as handle:
                return pickle.load(handle)
        rows, info = runner.record_failure(
            mspec, cid, f"CellCrashed: {_describe_exit(child.exitcode, spec.memory_limit_gb)}", "")
        info["execution"] = execution_info(placement)
        return CellResult(rows, info, crashed=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class LiveChildren:
    """The cell processes running now, so that a Ctrl-C can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: set[Any] = set()
        self.cancelled = False

    def add(self, child: Any) -> None:
        with self._lock:
            self._children.add(child)
            if self.cancelled:
                child.kill()

    def discard(self, child: Any) -> None:
        with self._lock:
            self._children.discard(child)

    def kill_all(self) -> None:
        with self._lock:
            self.cancelled = True
            for child in self._children:
                child.kill()


# -- executors ---------------------------------------------------------------------

@dataclass
class CellTask:
    """One cell as the driver hands it to an executor."""

    runner: CellRunner
    mspec: ModelSpec
    cid: str
    label: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)  # earlier attempts whose process died
    submitted: float = 0.0


class LocalExecutor:
    """Cells on this machine: one process per cell, up to ``jobs`` at once.

    ``jobs`` daemon threads each take a cell, start its process and wait on it;
    finished cells come back through a queue. Plain threads and queues rather than
    ``concurrent.futures``: a Ctrl-C may land anywhere in the main thread, and
    ``futures.wait`` interrupted while it holds the futures' locks would leave a
    worker unable to finish, and the interpreter unable to exit.
    """

    name = "local"

    def __init__(self, spec: ExecutionSpec) -> None:
        self.spec = spec
        self.jobs = max(1, spec.jobs)
        cpus = os.cpu_count() or 1
        self.threads = max(1, cpus // self.jobs) if self.jobs > 1 else 0
        self.live = LiveChildren()
        self.todo: queue.Queue[CellTask | None] = queue.Queue()
        self.done: queue.Queue[tuple[CellTask, CellResult | BaseException]] = queue.Queue()
        self.outstanding = 0
        self.workers: list[threading.Thread] = []
        if spec.isolation == "process":  # isolation = "none" runs each cell in this thread (debugging)
            self.workers = [threading.Thread(target=self._work, name=f"bench-cell-{i}", daemon=True)
                            for i in range(self.jobs)]
            for worker in self.workers:
                worker.start()

    def placement(self) -> Placement:
        return Placement("local", self.threads, self.spec.exclusive_timing, self.spec.occupancy_dir,
                         extra={"jobs": self.jobs})

    @property
    def capacity(self) -> int:
        return self.jobs

    def _work(self) -> None:
        while (task := self.todo.get()) is not None:
            try:
                result: CellResult | BaseException = run_cell(task.runner, task.mspec, task.cid, self.spec,
                                                              self.placement(), self.live)
            except Cancelled:
                continue
            except BaseException as exc:  # noqa: BLE001 - a bug in bench itself: re-raised in the driver
                result = exc
            self.done.put((task, result))

    def submit(self, task: CellTask) -> None:
        task.submitted = time.perf_counter()
        self.outstanding += 1
        self.todo.put(task)

    def next_done(self) -> tuple[CellTask, CellResult]:
        if not self.workers:
            task = self.todo.get()
            self.outstanding -= 1
            return task, run_cell(task.runner, task.mspec, task.cid, self.spec, self.placement())  # type: ignore
        while True:
            try:
                task, result = self.done.get(timeout=1.0)  # a short wait keeps Ctrl-C prompt
                break
            except queue.Empty:
                continue
        self.outstanding -= 1
        if isinstance(result, BaseException):
            raise result
        return task, result

    def cancel(self) -> None:
        """Ctrl-C: stop every running cell process and drop the queued ones."""
        self.live.kill_all()
        while True:
            try:
                self.todo.get_nowait()
            except queue.Empty:
                break

    def close(self) -> None:
        for _ in self.workers:
            self.todo.put(None)
        for worker in self.workers:
            worker.join(timeout=10)
        if self.live.cancelled:
            self.live.kill_all()  # a process whose start was under way at the Ctrl-C: it must not outlive us
