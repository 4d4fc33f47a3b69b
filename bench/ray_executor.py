"""Cells as Ray Core tasks: ``bench run --executor ray [--ray-address auto|HOST:PORT]``.

One task per cell, with the model entry's ``resources`` (``num_cpus``,
``num_gpus``, ``memory_gb``) as the task's Ray resources. What travels:

- the data set, the split and its training data go into the object store
  **once** per (data set, split) with ``ray.put`` and every cell's task takes the
  reference: workers need neither the data files nor a network, data sources
  that exist only in the driver (a user's DataFrame, a synthetic set) work as
  cards do, and every cell sees the very split the driver fingerprinted;
- the rest of the cell (config, model spec, run-time registered models) goes as
  one pickled payload, unpacked on the worker after the driver's ``sys.path``;
- the :class:`~bench.execution.CellResult` (rows, info, file bytes) comes back
  through the object store and the driver writes the cell folder.

On the worker the cell runs exactly as the local executor runs it
(:func:`bench.execution.run_cell`: its own process, timeout, memory cap, thread
cap = the task's ``num_cpus``). A worker that dies (killed, OOM, node lost)
becomes a crashed cell, retried by the driver up to ``max_retries``; Ray's own
task retries are off so that every attempt is bench's and is recorded.

Ray is imported only here: without the ``[ray]`` extra, ``--executor ray`` is
one :class:`~bench.errors.ConfigError` naming it.
"""

from __future__ import annotations

import copy
import pickle
import socket
import sys
import time
from typing import Any

from bench import registry
from bench.errors import ConfigError
from bench.execution import (CellResult, CellRunner, CellTask, ExecutionSpec, Placement, _extra_preload,
                             cell_resources, execution_info, register_models, run_cell)

MISSING = ("--executor ray needs Ray, which is not installed: pip install 'bench-recsys[ray]' "
           "(the [ray] extra), or run with the local executor (--jobs N for several cells at once)")


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(MISSING) from None
    return ray


def _ray_cell(payload: bytes, sys_path: list[str], dataset: Any, split: Any, train: Any,
              spec: ExecutionSpec, placement: Placement) -> CellResult:
    """The Ray task: rebuild the cell from the payload and the object-store data, run it like a local cell."""
    import ray

    sys.path[:] = sys_path + [p for p in sys.path if p not in sys_path]
    runner, mspec, cid, registered, preload = pickle.loads(payload)
    register_models(registered)
    _extra_preload[:] = preload
    runner.dataset, runner.split, runner.train = dataset, split, train
    placement.node = socket.gethostname()
    placement.extra["ray_node_id"] = ray.get_runtime_context().get_node_id()
    return run_cell(runner, mspec, cid, spec, placement)


class RayExecutor:
    """Submits each cell as a Ray task; collects results as they finish; Ctrl-C cancels what is outstanding."""

    name = "ray"
    WAIT_SLICE_SECONDS = 0.5  # longest wait before a Ctrl-C is taken (next_done)

    def __init__(self, spec: ExecutionSpec, device: str) -> None:
        ray = self.ray = import_ray()
        self.spec, self.device = spec, device
        self.started_here = not ray.is_initialized()
        if self.started_here:
            address = spec.ray_address or None
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            except ConnectionError as exc:
                raise ConfigError(f"--ray-address {address}: no Ray cluster there ({exc}); start one with "
                                  f"`ray start --head`, or leave --ray-address out to start Ray for this run") \
                    from None
        self.remote = ray.remote(_ray_cell)
        self.capacity = spec.jobs  # 0 = submit every cell, Ray queues what the cluster cannot yet run
        self.waiting: dict[Any, CellTask] = {}
        self._stored: dict[int, tuple[Any, Any]] = {}  # id(object) -> (object, ObjectRef): each put once

    def _ref(self, obj: Any) -> Any:
        if id(obj) not in self._stored:
            self._stored[id(obj)] = (obj, self.ray.put(obj))
        return self._stored[id(obj)][1]

    def submit(self, task: CellTask) -> None:
        task.submitted = time.perf_counter()
        light = copy.copy(task.runner)
        light.dataset = light.split = light.train = None  # these travel through the object store
        payload = pickle.dumps((light, task.mspec, task.cid, dict(registry.models._objects), list(_extra_preload)),
                               protocol=pickle.HIGHEST_PROTOCOL)
        wanted = cell_resources(task.mspec, self.device)
        num_cpus = wanted.get("num_cpus", 1)
        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": wanted.get("num_gpus", 0),
                                   "max_retries": 0, "retry_exceptions": False}
        if wanted.get("memory_gb"):
            options["memory"] = int(wanted["memory_gb"] * 2**30)
        placement = Placement("ray", max(1, int(num_cpus)), self.spec.exclusive_timing, self.spec.occupancy_dir,
                              extra={"resources": wanted})
        ref = self.remote.options(**options).remote(payload, list(sys.path), self._ref(task.runner.dataset),
                                                    self._ref(task.runner.split), self._ref(task.runner.train),
                                                    self.spec, placement)
        self.waiting[ref] = task

    @property
    def outstanding(self) -> int:
        return len(self.waiting)

    def next_done(self) -> tuple[CellTask, CellResult]:
        # Short slices hand control back to Python between waits, so a Ctrl-C is taken within WAIT_SLICE_SECONDS
        # whatever Ray's own signal checks do. (A CI run that once sat here after a SIGINT had been started
        # with SIGINT ignored, so no interrupt arrived; the tests' ctrl_c_delivered fixture covers that.)
        ready: list[Any] = []
        while not ready:
            ready, _ = self.ray.wait(list(self.waiting), num_returns=1, timeout=self.WAIT_SLICE_SECONDS)
        ref = ready[0]
        task = self.waiting.pop(ref)
        try:
            return task, self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the worker died, its node was lost, Ray ran out of memory
            return task, self._lost(task, exc)

    def _lost(self, task: CellTask, exc: Exception) -> CellResult:
        runner: CellRunner = task.runner
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        rows, info = runner.record_failure(task.mspec, task.cid, f"WorkerDied: the Ray task's worker was lost "
                                                                 f"({type(exc).__name__}: {first})", str(exc))
        info["execution"] = execution_info(Placement("ray")) | {"node": "?"}
        return CellResult(rows, info, crashed=True)

    def cancel(self) -> None:
        for ref in list(self.waiting):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
        self.waiting.clear()

    def close(self) -> None:
        self._stored.clear()
        if self.started_here:
            self.ray.shutdown()
