"""Systems cost of a model cell: fit cost, serving latency/throughput, memory, timer overhead.

Accuracy alone does not choose a production recommender, so every cell also
measures what it costs, on CPU and on CUDA with the same code (GPU work is
bracketed by ``torch.cuda.synchronize()``, so timings cover the kernels and not
just their launch). Serving follows the scenarios MLPerf Inference names:

- **single-stream**: one user per request, one request at a time, after
  ``warmup`` requests; latency percentiles over ``latency_requests`` requests;
- **offline**: the whole segment's users scored at each of ``batch_sizes``
  (0 = all users in one call; a batch not smaller than the segment is that same
  call, measured once); throughput in users per second;
- **server**: open-loop Poisson arrivals at ``server_rate`` requests/s against
  one in-process FIFO worker. Arrival times are drawn up front, independently
  of the worker (open loop), and each request's latency is its completion time
  minus its *scheduled arrival*, so queueing delay counts. With one worker the
  event loop below is exactly that queue; no load-generator thread competes
  for the GIL. ``server_p99_ms`` > 0 additionally bisects the highest rate whose
  p99 latency meets that target.

Every scenario stops early when it has used ``max_seconds`` (a slow model must
not stall a suite); the ``n`` column of a row says how many requests/users it
measured.

Rows written to the tidy table (``k`` = 0, ``segment`` = the scored segment, or
``fit`` for the fit figures):

==============================  ============================================================
fit_seconds, fit_cpu_seconds    wall and CPU (user+system, all threads) seconds of ``fit``
model_bytes                     ``model.size_bytes()``: factors / parameters / index
fit_peak_rss_mb                 peak resident memory of the fitting process during ``fit``
                                (Linux VmHWM, reset just before fit; falls back to
                                ``ru_maxrss``, the process high-water mark, which is per cell
                                when each cell runs in its own forked child)
fit_rss_increase_mb             fit_peak_rss_mb minus the resident memory just before fit
fit_peak_gpu_mb                 (cuda only) ``torch.cuda.max_memory_allocated`` during fit
latency_mean_ms                 single-stream mean latency
latency_p50_ms ... p99_ms       single-stream percentiles p50, p90, p95, p99, each only from
                                enough timed requests (:data:`MIN_REQUESTS`); fewer give a row
                                with status ``too_few_requests``, value NaN and the count in ``n``
throughput_users_per_s@batch=B  offline throughput at batch size B (``all`` = one call)
server_target_rate              the Poisson arrival rate asked for (requests/s)
server_achieved_rate            completed requests / (last completion - first arrival)
server_latency_p50_ms, _p99_ms  server-scenario latency including queueing (same minimum counts)
server_max_rate_at_p99          highest rate found whose p99 meets ``server_p99_ms``
serve_peak_gpu_mb               (cuda only) peak GPU memory while serving the segment
timer_overhead_ns               median cost of one timer read pair (+ sync on cuda)
==============================  ============================================================

Machine and device descriptions travel in ``provenance.json`` (run level) and
in ``cell.json["systems"]`` (device name); :func:`machine_mismatch` says when two
result sets come from different machines so their timings should not be compared.
"""

from __future__ import annotations

import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from bench.diskcache import lookups_between
from bench.specs import MIN_REQUESTS, SystemsSpec, parse_systems  # noqa: F401  (specs live with the config)


# -- clocks and devices ------------------------------------------------------------


class Clock:
    """Wall clock that waits for queued GPU work before each reading on CUDA devices."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.cuda = device.startswith("cuda")
        self._torch = sys.modules.get("torch") if self.cuda else None
        if self.cuda and self._torch is None:
            import torch

            self._torch = torch

    def sync(self) -> None:
        if self._torch is not None:
            self._torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def overhead_ns(self, repeats: int = 2000) -> float:
        """Median cost of one ``now()`` pair: the floor under every latency we report."""
        samples = np.empty(repeats)
        for i in range(repeats):
            a = self.now()
            b = self.now()
            samples[i] = b - a
        return float(np.median(samples) * 1e9)

    def reset_peak_gpu(self) -> None:
        if self._torch is not None:
            self._torch.cuda.reset_peak_memory_stats()

    def peak_gpu_mb(self) -> float | None:
        if self._torch is None:
            return None
        return float(self._torch.cuda.max_memory_allocated()) / 2**20

    def device_name(self) -> str:
        if self._torch is not None:
            return str(self._torch.cuda.get_device_name(self.device if ":" in self.device else 0))
        from bench.provenance import cpu_model

        return cpu_model()


def machine_mismatch(provenance_a: dict[str, Any], provenance_b: dict[str, Any]) -> str | None:
    """A warning when two runs' timings come from different machines or devices, else None."""
    from bench.provenance import machine_key

    key_a = machine_key(provenance_a.get("machine", {})) + (provenance_a.get("device"),)
    key_b = machine_key(provenance_b.get("machine", {})) + (provenance_b.get("device"),)
    if key_a == key_b:
        return None
    names = ("cpu", "cpu_count", "memory_gib", "gpu", "device")
    diff = [f"{n}: {a!r} vs {b!r}" for n, a, b in zip(names, key_a, key_b) if a != b]
    return "timings come from different machines (" + "; ".join(diff) + "); compare them with care"


# -- memory --------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field_name: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mb() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False if impossible.

    Side effect, by design of the kernel: ``ru_maxrss`` of this process (and what a
    parent's ``wait4`` later reports for it) forgets every peak before the reset.
    :func:`measure_fit` therefore keeps the earlier high-water mark in
    ``FitCost.process_peak_before_mb``.
    """
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Resident high-water mark since the last reset (or since the process / forked child began)."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = raw / 1024 if sys.platform == "darwin" else raw
    return float(kib) / 1024


# -- fit ----------------------------------------------------------------------------


@dataclass
class FitCost:
    wall_seconds: float
    cpu_seconds: float
    model_bytes: int
    peak_rss_mb: float
    rss_increase_mb: float | None
    peak_gpu_mb: float | None
    peak_is_per_fit: bool  # False when the high-water mark could not be reset (covers the process so far)
    process_peak_before_mb: float = 0.0  # the process's high-water mark before the reset erased it

    def figures(self) -> dict[str, float]:
        out = {"fit_seconds": self.wall_seconds, "fit_cpu_seconds": self.cpu_seconds,
               "model_bytes": float(self.model_bytes), "fit_peak_rss_mb": self.peak_rss_mb}
        if self.rss_increase_mb is not None:
            out["fit_rss_increase_mb"] = self.rss_increase_mb
        if self.peak_gpu_mb is not None:
            out["fit_peak_gpu_mb"] = self.peak_gpu_mb
        return out


def measure_fit(fit: Callable[[], None], size_bytes: Callable[[], int], device: str = "cpu") -> FitCost:
    """Run ``fit()`` once and measure wall/CPU seconds, peak RSS, peak GPU memory and model size."""
    clock = Clock(device)
    before = current_rss_mb()
    peak_before = peak_rss_mb()
    per_fit = reset_peak_rss()
    clock.reset_peak_gpu()
    wall, cpu = clock.now(), time.process_time()
    fit()
    wall_seconds = clock.now() - wall
    cpu_seconds = time.process_time() - cpu
    peak = peak_rss_mb()
    increase = None if before is None or not per_fit else max(0.0, peak - before)
    return FitCost(wall_seconds, cpu_seconds, int(size_bytes()), peak, increase, clock.peak_gpu_mb(), per_fit,
                   peak_before)


# -- serving ----------------------------------------------------------------------------


@dataclass
class Requests:
    """The per-user inputs of one segment, sliceable into requests of any batch size."""

    users: np.ndarray
    k: int
    history: list[np.ndarray] | None = None
    exclude: sp.csr_matrix | None = None
    candidates: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    def request(self, index: slice) -> tuple[np.ndarray, dict[str, Any]]:
        """The arguments of one recommend() call, sliced *before* timing starts.

        Slicing a CSR exclusion row costs tens of microseconds; left inside the
        timed region it would inflate sub-millisecond latencies.
        """
        users = self.users[index]
        if isinstance(index, slice):
            hist = None if self.history is None else self.history[index]
        else:
            hist = None if self.history is None else [self.history[i] for i in index]
        excl = None if self.exclude is None else self.exclude[index]
        # per-user candidate rows (sampled protocols, bench.protocols) follow their users; a shared pool does not
        cand = self.candidates if self.candidates is None or np.ndim(self.candidates) == 1 else self.candidates[index]
        return users, {"history": hist, "candidates": cand, "exclude": excl}

    def call(self, recommend: Callable[..., Any], index: slice) -> None:
        users, kwargs = self.request(index)
        recommend(users, self.k, **kwargs)


TOO_FEW = "too_few_requests"  # status of a percentile row measured from fewer than MIN_REQUESTS requests
OVER_BUDGET = "over_budget"  # status of a throughput row whose one call would take far more than max_seconds
# A batch scenario is skipped when one call of it is expected to take more than this many budgets: a scenario
# stops only between calls, so one 50-user call of a 0.5 s/user LM would hold a 2 s budget for 25 s.
OVER_BUDGET_FACTOR = 2.0


def enough_requests(name: str, n: int) -> bool:
    """Whether ``n`` timed requests support the figure ``name`` (``p99``...; the mean needs one)."""
    return n >= MIN_REQUESTS.get(name, 1)


def percentiles_ms(seconds: np.ndarray) -> dict[str, float]:
    """Mean and p50/p90/p95/p99 in ms; a percentile with too few samples (:data:`MIN_REQUESTS`) is NaN."""
    ms = np.asarray(seconds) * 1e3
    out = {name: float(np.percentile(ms, int(name[1:]))) if enough_requests(name, ms.size) else float("nan")
           for name in MIN_REQUESTS}
    return out | {"mean": float(ms.mean()) if ms.size else float("nan")}


def single_stream(recommend: Callable[..., Any], requests: Requests, spec: SystemsSpec, clock: Clock,
                  rng: np.random.Generator) -> np.ndarray:
    """Seconds per one-user request, one at a time, after warm-up (users drawn with a seeded RNG)."""
    if len(requests) == 0 or spec.latency_requests == 0:
        return np.zeros(0)
    order = rng.integers(0, len(requests), spec.warmup + spec.latency_requests)
    for i in order[:spec.warmup]:
        requests.call(recommend, slice(i, i + 1))
    prepared = [requests.request(slice(i, i + 1)) for i in order[spec.warmup:]]
    latencies = []
    deadline = time.perf_counter() + spec.max_seconds
    for users, kwargs in prepared:
        start = clock.now()
        recommend(users, requests.k, **kwargs)
        latencies.append(clock.now() - start)
        if time.perf_counter() > deadline:
            break
    return np.asarray(latencies)


def offline_throughput(recommend: Callable[..., Any], requests: Requests, batch_size: int, clock: Clock,
                       max_seconds: float) -> tuple[float, int]:
    """Users per second scoring the segment in batches of ``batch_size`` (0 = all); users measured."""
    n = len(requests)
    if n == 0:
        return float("nan"), 0
    batch = batch_size or n
    prepared = [requests.request(slice(lo, min(n, lo + batch))) for lo in range(0, n, batch)]
    done = 0
    start = clock.now()
    for users, kwargs in prepared:
        recommend(users, requests.k, **kwargs)
        done += len(users)
        if clock.now() - start > max_seconds:
            break
    return done / max(clock.now() - start, 1e-12), done


@dataclass
class ServerResult:
    target_rate: float
    achieved_rate: float
    latencies: np.ndarray  # seconds, completion minus scheduled arrival

    @property
    def p99_ms(self) -> float:
        """p99 in ms, NaN from fewer than ``MIN_REQUESTS["p99"]`` completed requests."""
        return percentiles_ms(self.latencies)["p99"]


def server(recommend: Callable[..., Any], requests: Requests, rate: float, n_requests: int, clock: Clock,
           rng: np.random.Generator, max_seconds: float) -> ServerResult:
    """Open-loop Poisson arrivals at ``rate``/s served by one FIFO worker (see the module docstring)."""
    if len(requests) == 0 or n_requests == 0 or rate <= 0:
        return ServerResult(rate, float("nan"), np.zeros(0))
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n_requests))
    prepared = [requests.request(slice(i, i + 1)) for i in rng.integers(0, len(requests), n_requests)]
    origin = clock.now()
    latencies = []
    finished = origin
    for arrival, (users, kwargs) in zip(arrivals, prepared):
        wait = origin + arrival - time.perf_counter()
        if wait > 0:
            time.sleep(wait)  # the worker is idle until the next request arrives
        recommend(users, requests.k, **kwargs)
        finished = clock.now()
        latencies.append(finished - (origin + arrival))
        if finished - origin > max_seconds:
            break
    done = len(latencies)
    span = finished - (origin + arrivals[0])
    return ServerResult(rate, done / max(span, 1e-12), np.asarray(latencies))


def max_rate_at_p99(recommend: Callable[..., Any], requests: Requests, target_ms: float, n_requests: int,
                    clock: Clock, rng: np.random.Generator, max_seconds: float, mean_service_s: float,
                    steps: int = 6) -> float:
    """Bisect the highest Poisson rate whose p99 latency meets ``target_ms`` (0 if none does).

    The upper bound is the worker's capacity 1/mean service time; above it the
    queue grows without bound.
    """
    if mean_service_s <= 0 or len(requests) == 0:
        return float("nan")
    low, high = 0.0, 1.0 / mean_service_s
    for _ in range(steps):
        mid = (low + high) / 2
        result = server(recommend, requests, mid, n_requests, clock, rng, max_seconds)
        if result.p99_ms <= target_ms:
            low = mid
        else:
            high = mid
    return low


def measure_serving(recommend: Callable[..., Any], requests: Requests, spec: SystemsSpec, *, device: str = "cpu",
                    seed: int = 0, per_user_seconds: float = 0.0) -> tuple[dict[str, tuple[float, int]], dict[str, Any]]:
    """All serving scenarios of one segment: ``{metric: (value, n)}`` plus details for cell.json.

    ``per_user_seconds`` (the warm accuracy pass's seconds per user) sizes each batch scenario before it
    runs: a batch whose one call would take more than ``OVER_BUDGET_FACTOR * max_seconds`` is not run, and
    ``details["over_budget"]`` names it with that estimate (its row: status ``over_budget``, no value).
    """
    clock = Clock(device)
    rng = np.random.default_rng([seed, 5])
    figures: dict[str, tuple[float, int]] = {"timer_overhead_ns": (clock.overhead_ns(), 0)}
    clock.reset_peak_gpu()
    latencies = single_stream(recommend, requests, spec, clock, rng)
    if len(latencies):
        for name, value in percentiles_ms(latencies).items():
            figures[f"latency_{name}_ms"] = (value, len(latencies))  # NaN + n: a "too few requests" row
    measured: dict[int, tuple[float, int]] = {}
    over_budget: dict[str, float] = {}
    for batch in spec.batch_sizes:
        # a batch at least as large as the segment is one call with every user: measured once, reported under
        # each name asked for (a slow model on a 50-user sample would otherwise repeat its slowest scenario)
        effective = min(batch or len(requests), len(requests))
        name = f"throughput_users_per_s@batch={batch or 'all'}"
        expected = effective * per_user_seconds
        if effective > 1 and expected > OVER_BUDGET_FACTOR * spec.max_seconds:
            over_budget[name] = expected
            figures[name] = (float("nan"), 0)
            continue
        if effective not in measured:
            measured[effective] = offline_throughput(recommend, requests, batch, clock, spec.max_seconds)
        figures[name] = measured[effective]
    if spec.server_rate > 0:
        result = server(recommend, requests, spec.server_rate, spec.server_requests, clock, rng, spec.max_seconds)
        n = len(result.latencies)
        figures["server_target_rate"] = (spec.server_rate, n)
        figures["server_achieved_rate"] = (result.achieved_rate, n)
        if n:
            server_ms = percentiles_ms(result.latencies)
            figures["server_latency_p50_ms"] = (server_ms["p50"], n)
            figures["server_latency_p99_ms"] = (server_ms["p99"], n)
    if spec.server_p99_ms > 0 and len(latencies):
        best = max_rate_at_p99(recommend, requests, spec.server_p99_ms, spec.server_requests, clock, rng,
                               spec.max_seconds, float(latencies.mean()))
        figures["server_max_rate_at_p99"] = (best, spec.server_requests)
    peak_gpu = clock.peak_gpu_mb()
    if peak_gpu is not None:
        figures["serve_peak_gpu_mb"] = (peak_gpu, 0)
    details = {"device": device, "device_name": clock.device_name(), "users": len(requests), "k": requests.k,
               "spec": spec.as_dict()}
    if over_budget:
        details["over_budget"] = over_budget  # scenario -> expected seconds of its one call
    return figures, details



_PERCENTILE_ROW = re.compile(r"(?:server_)?latency_(p\d+)_ms")


def figure_status(name: str, n: int, over_budget: dict[str, float] | None = None) -> str:
    """Row status of a serving figure: ``too_few_requests`` for a percentile from too few requests,
    ``over_budget`` for a batch scenario not run (:func:`measure_serving`), else ok."""
    if over_budget and name in over_budget:
        return OVER_BUDGET
    match = _PERCENTILE_ROW.fullmatch(name)
    return TOO_FEW if match and not enough_requests(match.group(1), n) else "ok"


# -- process caches ------------------------------------------------------------------------
# Plug-ins that keep loaded files or encodings for the life of the process (llm_models.runtime) register
# a probe here, so a fit can record whether it found them warm: in an ``isolation = "none"`` run the
# first cell pays a load that later cells skip, and fit_seconds alone cannot say so.

CacheProbe = Callable[[], tuple[int, int]]  # -> (lookups so far, misses so far), e.g. from lru_cache.cache_info()
_PROCESS_CACHES: dict[str, CacheProbe] = {}


def register_process_cache(name: str, probe: CacheProbe) -> None:
    """Declare a process-wide cache whose warmth changes what a fit costs."""
    _PROCESS_CACHES[name] = probe


def lru_probe(cached: Any) -> CacheProbe:
    """The probe of a ``functools.lru_cache``-wrapped function."""
    def probe() -> tuple[int, int]:
        info = cached.cache_info()
        return info.hits + info.misses, info.misses
    return probe


def cache_counters() -> dict[str, tuple[int, int]]:
    return {name: probe() for name, probe in _PROCESS_CACHES.items()}


def caches_used(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Caches consulted between two :func:`cache_counters` readings: "warm" (no miss) or "cold" (loaded)."""
    return lookups_between(before, after, "cold", "warm")


# -- calibration ---------------------------------------------------------------------------
# A fixed workload timed inside every run: the reference that timing gates divide by, so a model's
# time is compared as "how many calibrations" between two runs, cancelling the machine's speed and
# much of its load. A dense product (as in every factor model's fit and scoring) and a top-k selection
# (the heart of serving), on seeded data of fixed size, single-threaded on purpose (einsum, not BLAS):
# its CPU time then means the same on any core count, and a gate on fit_cpu_seconds can divide by it.
# Timed twice: for the run (start and end, provenance.json) and in every cell right before and after its
# fit (rows calibration_seconds / calibration_cpu_seconds): under a load that comes and goes, the cell's
# own bracket tracks what its fit met (ratios within ~20% on a 2-core machine loaded 10x over, against
# ~2x for the run-level figure), so timing gates divide by it where it exists.

CALIBRATION_WORKLOAD = ("2 x float64 product 384x384 @ 384x384 (einsum, one thread) + top-100 of 1,000,000 "
                        "(argpartition + sort), seeded")
CALIBRATION_REPEATS = 2  # at the start and again at the end of a run: the median of all covers drifting load


def _calibration_once(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(2):
        np.einsum("ij,jk->ik", a, b)
    top = np.argpartition(-x, 100)[:100]
    top[np.argsort(-x[top])]
    return time.perf_counter() - wall, time.process_time() - cpu


class Calibration:
    """The calibration workload on its seeded arrays, ready to time (the arrays are built, and one untimed
    run pays the page faults of its temporaries, ~2x slower, at construction)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.a, self.b = rng.standard_normal((384, 384)), rng.standard_normal((384, 384))
        self.x = rng.standard_normal(1_000_000)
        _calibration_once(self.a, self.b, self.x)

    def run(self) -> tuple[float, float]:
        """(wall, CPU) seconds of one run: about 0.04 s of CPU on the development machine."""
        return _calibration_once(self.a, self.b, self.x)


def calibrate(repeats: int = CALIBRATION_REPEATS) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each of ``repeats`` runs of the calibration workload.

    About 0.04 s of CPU each on the development machine (0.16 s wall when it was loaded with 16
    runnable processes on 2 cores); shorter workloads proved too noisy to divide by.
    """
    calibration = Calibration()
    return [calibration.run() for _ in range(repeats)]


def calibration_record(runs: list[tuple[float, float]]) -> dict[str, Any]:
    """What ``provenance.json["calibration"]`` holds: median wall and CPU seconds, every run, the workload."""
    return {"seconds": float(np.median([w for w, _ in runs])), "cpu_seconds": float(np.median([c for _, c in runs])),
            "runs": [[float(w), float(c)] for w, c in runs], "workload": CALIBRATION_WORKLOAD}
