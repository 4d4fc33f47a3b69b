"""bench.systems: fit cost, serving scenarios, memory, timer overhead, config and runner rows.

Service times below come from ``time.sleep`` inside plain functions, so the
expected figures follow from queueing arithmetic, with bounds loose enough for
a busy shared machine (sleep never returns early, so lower bounds are hard).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bench import systems
from bench.config import parse_suite
from bench.data import load_dataset
from bench.errors import ConfigError
from bench.results import load_results
from bench.runner import run_suite


class Recorder:
    """A recommend() that sleeps a fixed time per call and records batch sizes."""

    def __init__(self, service_s: float = 0.0) -> None:
        self.service_s = service_s
        self.batches: list[int] = []

    def __call__(self, users, k, *, history=None, candidates=None, exclude=None):
        self.batches.append(len(users))
        if self.service_s:
            time.sleep(self.service_s)
        return np.zeros((len(users), k), np.int64), np.zeros((len(users), k))


def requests(n: int = 50) -> systems.Requests:
    return systems.Requests(np.arange(n), 5)


def test_percentiles_hand_worked():
    seconds = np.arange(1, 101) / 1000  # 1..100 ms
    p = systems.percentiles_ms(seconds)
    # numpy's linear interpolation: p50 between 50 and 51, p99 = 99 + 0.01
    assert p["p50"] == pytest.approx(50.5)
    assert p["p90"] == pytest.approx(90.1)
    assert p["p99"] == pytest.approx(99.01)
    assert p["mean"] == pytest.approx(50.5)


def test_single_stream_warms_up_then_measures_one_user_per_request():
    rec = Recorder(0.002)
    spec = systems.SystemsSpec(warmup=3, latency_requests=20)
    lat = systems.single_stream(rec, requests(), spec, systems.Clock(), np.random.default_rng(0))
    assert len(rec.batches) == 23 and set(rec.batches) == {1}
    assert len(lat) == 20
    assert lat.min() >= 0.002  # sleep never returns early


def test_single_stream_stops_at_budget():
    rec = Recorder(0.01)
    spec = systems.SystemsSpec(warmup=0, latency_requests=1000, max_seconds=0.05)
    lat = systems.single_stream(rec, requests(), spec, systems.Clock(), np.random.default_rng(0))
    assert 1 <= len(lat) < 1000


def test_offline_throughput_batches_cover_every_user():
    rec = Recorder()
    rate, done = systems.offline_throughput(rec, requests(70), 32, systems.Clock(), 10.0)
    assert rec.batches == [32, 32, 6] and done == 70 and rate > 0
    rec = Recorder()
    systems.offline_throughput(rec, requests(70), 0, systems.Clock(), 10.0)
    assert rec.batches == [70]


def test_server_below_capacity_achieves_the_offered_rate():
    rec = Recorder(0.001)
    result = systems.server(rec, requests(), rate=100.0, n_requests=200, clock=systems.Clock(),
                            rng=np.random.default_rng(1), max_seconds=30)
    assert len(result.latencies) == 200
    assert result.latencies.min() >= 0.001
    # 200 Poisson arrivals at 100/s: the achieved rate is the empirical arrival rate (sd ~ 7%)
    assert 70 < result.achieved_rate < 130


def test_server_above_capacity_saturates_and_queues():
    rec = Recorder(0.002)  # capacity 500 requests/s at most
    result = systems.server(rec, requests(), rate=2000.0, n_requests=100, clock=systems.Clock(),
                            rng=np.random.default_rng(2), max_seconds=30)
    assert result.achieved_rate < 520
    # the 100th request arrives after ~50 ms but completes after >= 200 ms: queueing counts
    assert result.p99_ms > 100


def test_max_rate_search_with_an_unreachable_target_is_capacity_bound():
    rec = Recorder(0.0)
    # 100 requests per step: the fewest a p99 is read from (bench.systems.MIN_REQUESTS)
    best = systems.max_rate_at_p99(rec, requests(), target_ms=1e9, n_requests=100, clock=systems.Clock(),
                                   rng=np.random.default_rng(3), max_seconds=5, mean_service_s=0.001, steps=4)
    # every bisection step passes: low = capacity * (1 - 2**-4) with capacity = 1000/s
    assert best == pytest.approx(1000 * (1 - 2 ** -4))
    none = systems.max_rate_at_p99(Recorder(0.002), requests(), target_ms=0.5, n_requests=100,
                                   clock=systems.Clock(), rng=np.random.default_rng(3), max_seconds=5,
                                   mean_service_s=0.002, steps=3)
    assert none == 0.0  # a 2 ms service can never meet a 0.5 ms p99


def _measure_allocation_in_fresh_process() -> tuple[systems.FitCost, systems.FitCost]:
    held = []

    def fit():
        held.append(np.ones(40_000_000))  # 305 MiB, touched
        time.sleep(0.05)

    cost = systems.measure_fit(fit, lambda: 1234)
    held.clear()
    small = systems.measure_fit(lambda: None, lambda: 0)
    return cost, small


def test_measure_fit_sees_allocation_and_cpu_versus_wall():
    # In a fresh interpreter: a long test session's heap (GBs of freed, still-resident
    # pages) makes RSS arithmetic in this process unreliable.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        cost, small = pool.submit(_measure_allocation_in_fresh_process).result(timeout=120)
    assert cost.model_bytes == 1234
    assert cost.wall_seconds >= 0.05
    assert cost.cpu_seconds < cost.wall_seconds
    if cost.peak_is_per_fit:
        assert cost.rss_increase_mb is not None and cost.rss_increase_mb > 250
    assert cost.peak_rss_mb > 300
    assert small.process_peak_before_mb > 300  # the reset erases the earlier peak; it is kept here
    if small.peak_is_per_fit:  # the high-water mark was reset: the earlier 305 MiB does not count
        assert small.rss_increase_mb is not None and small.rss_increase_mb < 100
    assert set(small.figures()) >= {"fit_seconds", "fit_cpu_seconds", "model_bytes", "fit_peak_rss_mb"}


def test_timer_overhead_is_small_and_positive():
    ns = systems.Clock().overhead_ns(200)
    assert 0 < ns < 1e6


def test_measure_serving_names_and_counts():
    spec = systems.SystemsSpec(warmup=1, latency_requests=10, batch_sizes=[1, 8, 0], server_rate=500.0,
                               server_requests=20)
    figures, details = systems.measure_serving(Recorder(), requests(20), spec)
    assert {"latency_p50_ms", "latency_p99_ms", "throughput_users_per_s@batch=1",
            "throughput_users_per_s@batch=8", "throughput_users_per_s@batch=all", "server_achieved_rate",
            "server_latency_p99_ms", "timer_overhead_ns"} <= set(figures)
    assert figures["latency_p50_ms"][1] == 10
    assert figures["throughput_users_per_s@batch=all"][1] == 20
    assert details["users"] == 20 and details["device"] == "cpu"


def test_batches_not_smaller_than_the_segment_are_measured_once():
    """With 20 users, batch 256 and batch 'all' are the same single call: one measurement, both names."""
    rec = Recorder()
    spec = systems.SystemsSpec(warmup=0, latency_requests=0, batch_sizes=[8, 256, 0, 20])
    figures, _ = systems.measure_serving(rec, requests(20), spec)
    assert rec.batches == [8, 8, 4, 20]  # batch 8 in three calls, then one call of all 20 users
    assert figures["throughput_users_per_s@batch=256"] == figures["throughput_users_per_s@batch=all"] \
        == figures["throughput_users_per_s@batch=20"]
    assert figures["throughput_users_per_s@batch=all"][1] == 20


def test_a_batch_whose_one_call_would_overrun_the_budget_is_not_run():
    """0.1 s per user and a 0.5 s budget: batch 8 (0.8 s) runs, batch 20 (2 s > 2 x 0.5 s) is skipped."""
    rec = Recorder()
    spec = systems.SystemsSpec(warmup=0, latency_requests=0, batch_sizes=[1, 8, 0], max_seconds=0.5)
    figures, details = systems.measure_serving(rec, requests(20), spec, per_user_seconds=0.1)
    assert rec.batches == [1] * 20 + [8, 8, 4]  # the 20-user call never happened
    assert details["over_budget"] == {"throughput_users_per_s@batch=all": pytest.approx(2.0)}
    value, n = figures["throughput_users_per_s@batch=all"]
    assert np.isnan(value) and n == 0
    assert systems.figure_status("throughput_users_per_s@batch=all", n, details["over_budget"]) == systems.OVER_BUDGET
    assert systems.figure_status("throughput_users_per_s@batch=8", 20, details["over_budget"]) == "ok"


def test_machine_mismatch():
    a = {"machine": {"cpu": "Xeon", "cpu_count": 2, "memory_gib": 24.0, "gpu": None}, "device": "cpu"}
    assert systems.machine_mismatch(a, a) is None
    b = {**a, "machine": {**a["machine"], "cpu": "EPYC"}}
    assert "cpu: 'Xeon' vs 'EPYC'" in systems.machine_mismatch(a, b)


@pytest.mark.parametrize("table, culprit", [
    ({"latency_request": 5}, "latency_request"),
    ({"batch_sizes": [1, -2]}, "batch_sizes"),
    ({"server_rate": "fast"}, "server_rate"),
    ({"max_seconds": 0}, "max_seconds"),
    ({"warmup": 0}, "warmup"),
    ({"warmup": -1}, "warmup"),
    ({"server_p99_ms": 50.0, "server_requests": 20}, "server_requests"),
])
def test_bad_systems_config_names_the_key(table, culprit):
    with pytest.raises(ConfigError, match=culprit):
        systems.parse_systems(table, "suite.toml")


def tiny_suite(systems_table: dict) -> dict:
    return {
        "name": "tiny", "execution": {"isolation": "none"}, "evaluation": {"k": [5, 10], "bootstrap": 0, "systems": systems_table},
        "datasets": [{"name": "synthetic", "params": {"n_users": 120, "n_items": 80, "n_interactions": 3000}}],
        "splits": [{"kind": "random"}],
        "models": [{"name": "pop"}, {"name": "als", "params": {"factors": 8, "iterations": 3}}],
    }


def test_runner_writes_systems_rows(tmp_path):
    config = parse_suite(tiny_suite({"latency_requests": 15, "warmup": 2, "batch_sizes": [1, 0]}), "test")
    summary = run_suite(config, out_root=tmp_path, progress=None)
    frame, _ = load_results(summary.run_dir)
    sys_rows = frame[frame["k"] == 0]
    for model in ("pop", "als"):
        mine = sys_rows[sys_rows["model"] == model]
        metrics = set(mine["metric"])
        assert {"fit_seconds", "fit_cpu_seconds", "model_bytes", "fit_peak_rss_mb", "latency_p50_ms",
                "latency_p99_ms", "throughput_users_per_s@batch=1", "throughput_users_per_s@batch=all",
                "timer_overhead_ns"} <= metrics
        p50 = mine[mine["metric"] == "latency_p50_ms"].iloc[0]
        p90 = mine[mine["metric"] == "latency_p90_ms"].iloc[0]
        p99 = mine[mine["metric"] == "latency_p99_ms"].iloc[0]
        assert p50["n"] == 15 and 0 < p50["value"] <= p90["value"] and p50["status"] == "ok"
        # 15 requests cannot support a p95 or p99: a row that says so, with its count, and no value
        assert p99["status"] == systems.TOO_FEW and p99["n"] == 15 and np.isnan(p99["value"])
        assert (mine[mine["metric"] == "fit_peak_rss_mb"]["segment"] == "fit").all()
    als_bytes = sys_rows[(sys_rows["model"] == "als") & (sys_rows["metric"] == "model_bytes")]["value"].iloc[0]
    data = load_dataset("synthetic", None, None, n_users=120, n_items=80, n_interactions=3000)
    assert als_bytes == (data.n_users + data.n_items) * 8 * 4  # float32 user + item factors, 8 each


def test_systems_can_be_switched_off(tmp_path):
    config = parse_suite(tiny_suite({"enabled": False}), "test")
    frame, _ = load_results(run_suite(config, out_root=tmp_path, progress=None).run_dir)
    assert not frame["metric"].str.startswith("latency_").any()
    assert "fit_seconds" in set(frame["metric"])


def test_systems_segments_limit_which_segments_are_measured(tmp_path):
    raw = tiny_suite({"latency_requests": 10, "warmup": 1, "batch_sizes": [0], "segments": ["shots=2"]})
    raw["splits"] = [{"kind": "user_coldstart", "params": {"user_fraction": 0.3, "shots": [0, 2]}}]
    frame, _ = load_results(run_suite(parse_suite(raw, "test"), out_root=tmp_path, progress=None).run_dir)
    latency = frame[frame["metric"] == "latency_p50_ms"]
    assert set(latency["segment"]) == {"shots=2"} and set(latency["model"]) == {"pop", "als"}
    # accuracy is still scored on every segment
    assert set(frame[frame["metric"] == "ndcg"]["segment"]) == {"shots=0", "shots=2"}


def test_a_model_that_serves_no_segment_of_a_split_is_not_fitted(tmp_path):
    raw = tiny_suite({"latency_requests": 10, "warmup": 1, "batch_sizes": [0]})
    raw["splits"] = [{"kind": "item_coldstart", "params": {"item_fraction": 0.2}}]
    raw["models"].append({"name": "lightfm-hybrid", "params": {"no_components": 4, "epochs": 1}})
    summary = run_suite(parse_suite(raw, "test"), out_root=tmp_path, progress=None)
    frame, _ = load_results(summary.run_dir)
    infos = {json.loads(p.read_text())["model"]: json.loads(p.read_text())
             for p in (summary.run_dir / "cells").glob("*/cell.json")}
    # ALS cannot serve cold items: no fit, no timing rows, every accuracy row "unsupported", the reason recorded
    als = frame[frame["model"] == "als"]
    assert set(als["status"]) == {"unsupported"} and not (als["k"] == 0).any()
    assert infos["als"]["status"] == "ok" and "not fitted" in infos["als"]["fit_skipped"]
    # a model with the capability is fitted and scored as before
    hybrid = frame[frame["model"] == "lightfm-hybrid"]
    assert "fit_seconds" in set(hybrid["metric"]) and (hybrid[hybrid["k"] > 0]["status"] == "ok").all()
    assert "fit_skipped" not in infos["lightfm-hybrid"]


@pytest.mark.parametrize("segments, culprit", [(["shots=3"], "no split of this suite produces"),
                                               (["warm"], "name no segment"), ([3], "name no segment")])
def test_systems_segments_must_name_a_segment_of_the_suite(segments, culprit):
    raw = tiny_suite({"segments": segments})
    raw["splits"] = [{"kind": "user_coldstart", "params": {"shots": [0, 2]}}]
    with pytest.raises(ConfigError, match=culprit):
        parse_suite(raw, "test")


def test_cuda_timing_and_peak_memory():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    held = []
    cost = systems.measure_fit(lambda: held.append(torch.ones(64 * 2**20 // 4, device="cuda")), lambda: 0, "cuda")
    assert cost.peak_gpu_mb is not None and cost.peak_gpu_mb >= 64
    assert systems.Clock("cuda").overhead_ns(50) > 0


def test_percentiles_need_enough_requests():
    """p_q needs at least one request beyond it (n >= 1/(1-q)) and never fewer than 10: p50/p90 from 10,
    p95 from 20, p99 from 100 (bench.systems.MIN_REQUESTS)."""
    three = systems.percentiles_ms(np.array([0.001, 0.002, 0.003]))
    assert all(np.isnan(three[p]) for p in ("p50", "p90", "p95", "p99")) and three["mean"] == pytest.approx(2.0)
    ten = systems.percentiles_ms(np.arange(1, 11) / 1000)
    assert ten["p50"] == pytest.approx(5.5) and ten["p90"] == pytest.approx(9.1)
    assert np.isnan(ten["p95"]) and np.isnan(ten["p99"])
    assert not np.isnan(systems.percentiles_ms(np.arange(1, 101) / 1000)["p99"])
    assert systems.figure_status("latency_p99_ms", 99) == systems.TOO_FEW
    assert systems.figure_status("server_latency_p99_ms", 100) == "ok"
    assert systems.figure_status("latency_mean_ms", 1) == "ok"


def test_builtin_suites_warm_up_and_time_enough_requests():
    """Every shipped suite parses (warm-up >= 1) and times enough single-stream requests for a median."""
    from bench.config import builtin_suites, load_suite

    for name in builtin_suites():
        if name != "reproduce":  # a list of experiments (bench.reproduce), not a suite
            spec = load_suite(name).evaluation.systems
            assert spec.warmup >= 1 and spec.latency_requests >= systems.MIN_REQUESTS["p50"], name


def test_report_says_too_few_requests(tmp_path):
    from bench.report import load_run
    from bench.report.tables import systems_tables

    config = parse_suite(tiny_suite({"latency_requests": 12, "warmup": 1, "batch_sizes": [0]}), "test")
    run = load_run(run_suite(config, out_root=tmp_path, progress=None).run_dir)
    (serving,) = [t for t in systems_tables(run) if t.title.endswith("serving")]
    column = serving.headers.index("latency p99")
    assert {row[column] for row in serving.rows} == {"too few requests (n = 12)"}
    assert all(row[serving.headers.index("latency p50")][0].isdigit() for row in serving.rows)


def _slow_first_call_model():
    """A model whose first recommend call pays a one-off 0.3 s (a lazy load); later calls are fast."""
    from baselines.simple import Pop

    class SlowFirstPop(Pop):
        name = "slow-first-pop"

        def fit(self, train):
            super().fit(train)
            self.loaded = False

        def recommend(self, user_ids, k, **kwargs):
            if not self.loaded:
                time.sleep(0.3)
                self.loaded = True
            return super().recommend(user_ids, k, **kwargs)

    return SlowFirstPop


def test_recommend_seconds_is_warm_calls_only(tmp_path):
    """The one-off first-call cost is its own row; recommend_seconds and users/s cover the warm calls only.

    Before, the 0.3 s lazy load and the output validation were inside recommend_seconds.
    """
    from bench import registry

    if "slow-first-pop" not in registry.models:
        registry.models.register("slow-first-pop", _slow_first_call_model())
    suite = tiny_suite({"enabled": False})
    suite["models"] = [{"name": "slow-first-pop"}]
    frame, _ = load_results(run_suite(parse_suite(suite, "test"), out_root=tmp_path, progress=None).run_dir)
    rows = frame[(frame["k"] == 0) & (frame["segment"] == "all")].set_index("metric")
    assert rows.loc["first_call_seconds", "value"] >= 0.3
    assert rows.loc["recommend_seconds", "value"] < 0.3
    assert rows.loc["validate_seconds", "value"] > 0
    assert rows.loc["users_per_second", "value"] == pytest.approx(
        rows.loc["users_per_second", "n"] / rows.loc["recommend_seconds", "value"])


def test_execution_settings_are_in_the_run_key():
    from bench.runner import run_key

    process = parse_suite(tiny_suite({"enabled": False}) | {"execution": {"isolation": "process"}}, "test")
    inline = parse_suite(tiny_suite({"enabled": False}), "test")
    assert run_key(process) != run_key(inline)  # the two modes' timings never share a run folder


def test_fit_records_whether_process_caches_were_warm(tmp_path):
    """In one process (isolation = "none") the first fit loads a registered cache, the next finds it warm."""
    import functools

    from baselines.simple import Pop
    from bench import registry

    loads: list[int] = []

    @functools.lru_cache(maxsize=1)
    def load_weights() -> int:
        loads.append(1)
        return 1

    class CachedPop(Pop):
        name = "cached-pop"

        def fit(self, train):
            load_weights()
            super().fit(train)

    systems.register_process_cache("test.weights", systems.lru_probe(load_weights))
    if "cached-pop" not in registry.models:
        registry.models.register("cached-pop", CachedPop)
    suite = tiny_suite({"enabled": False}) | {"seeds": [0, 1]}
    suite["models"] = [{"name": "cached-pop"}, {"name": "pop"}]
    summary = run_suite(parse_suite(suite, "test"), out_root=tmp_path, progress=None)
    frame, _ = load_results(summary.run_dir)
    warm = frame[frame["metric"] == "fit_caches_warm"].sort_values("seed")
    assert warm["model"].tolist() == ["cached-pop", "cached-pop"]  # pop uses no cache: no row
    assert warm["value"].tolist() == [0.0, 1.0] and len(loads) == 1
    cells = [json.loads(p.read_text()) for p in (summary.run_dir / "cells").glob("*/cell.json")]
    flags = sorted((c["seed"], c["model"], c["caches_warm"]) for c in cells)
    assert flags == [(0, "cached-pop", False), (0, "pop", None), (1, "cached-pop", True), (1, "pop", None)]
    assert {c["systems"]["process_caches"].get("test.weights") for c in cells if c["model"] == "cached-pop"} \
        == {"cold", "warm"}
