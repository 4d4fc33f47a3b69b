"""bench.realtime: prequential replay (hand-worked with Pop), update cost, config, the suite hook."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from baselines.simple import Pop
from bench import realtime, registry
from bench.config import expand_capability_selectors, load_suite, parse_suite
from bench.errors import ConfigError
from bench.protocol import SideInfo
from bench.results import load_results
from bench.runner import run_suite


def side(n_users: int, n_items: int) -> SideInfo:
    empty = sp.csr_matrix((n_items, 0))
    return SideInfo(n_users, n_items, [""] * n_items, empty, [], empty, [], None, [])


def hand_log() -> realtime.EventLog:
    """Train: user 0 took item 0. Replay, in time order: users 1..4 each take item 1."""
    user = np.array([0, 1, 2, 3, 4])
    item = np.array([0, 1, 1, 1, 1])
    ts = np.array([0, 10, 11, 12, 13])
    return realtime.event_log(user, item, np.ones(5, np.float32), ts, side(5, 3), np.array([0]), cut_timestamp=10)


def pop() -> Pop:
    return Pop(seed=0)


def fitted(log: realtime.EventLog) -> Pop:
    model = pop()
    model.fit(log.data(log.train_rows))
    return model


@pytest.mark.parametrize("policy, hits, rate, updates", [
    # block 1 (users 1, 2): Pop knows only item 0 -> top-1 is item 0, no hit.
    # static: still item 0 in block 2 -> 0 / 4.
    (realtime.PolicySpec("static"), [0, 0], 0.0, 0),
    # incremental/retrain after block 1: item 1 has 2 users > item 0's 1 -> both block-2 events hit.
    (realtime.PolicySpec("incremental", 2), [0, 2], 0.5, 1),
    (realtime.PolicySpec("retrain", 2), [0, 2], 0.5, 1),
])
def test_replay_hand_worked(policy, hits, rate, updates):
    log = hand_log()
    trace = realtime.replay(fitted(log), pop, log, policy, k=1, block=2)
    assert trace.hits == hits and trace.events == [2, 2] and trace.block_end == [2, 4]
    assert trace.hit_rate == rate and trace.updates == updates
    assert trace.new_user_events == [2, 2] and trace.new_user_hits == hits  # users 1..4 are all new


def test_replay_excludes_what_the_user_already_consumed():
    # user 0 took item 0 in training and takes item 2 after the cut: with item 0 filtered,
    # Pop's top-1 for user 0 is the lowest-index tie among unseen items: item 1, a miss;
    # with k=2 the list is [1, 2], a hit.
    user, item, ts = np.array([0, 1, 0]), np.array([0, 0, 2]), np.array([0, 1, 5])
    log = realtime.event_log(user, item, np.ones(3, np.float32), ts, side(2, 3), np.array([0, 1]), 5)
    assert realtime.replay(fitted(log), pop, log, realtime.PolicySpec("static"), 1, 1).hits == [0]
    assert realtime.replay(fitted(log), pop, log, realtime.PolicySpec("static"), 2, 1).hits == [1]


def test_event_log_is_time_ordered_and_disjoint_from_train():
    rng = np.random.default_rng(0)
    ts = rng.integers(0, 100, 500)
    train = np.flatnonzero(ts < 70)
    log = realtime.event_log(rng.integers(0, 20, 500), rng.integers(0, 30, 500), np.ones(500, np.float32), ts,
                             side(20, 30), train, cut_timestamp=70)
    assert np.intersect1d(log.replay_rows, train).size == 0
    assert len(log.replay_rows) + len(train) == 500
    assert (np.diff(ts[log.replay_rows]) >= 0).all()
    capped = realtime.event_log(log.user, log.item, log.weight, ts, log.side, train, 70, max_events=7)
    assert np.array_equal(capped.replay_rows, log.replay_rows[:7])


def test_replay_needs_timestamps():
    with pytest.raises(ConfigError, match="timestamps"):
        realtime.event_log(np.zeros(2, int), np.zeros(2, int), np.ones(2), None, side(1, 1), np.array([0]), 0)


def test_update_cost_with_implicit_als():
    from baselines.implicit_models import ALS
    from bench.data import load_dataset

    data = load_dataset("synthetic", None, None, n_users=200, n_items=100, n_interactions=5000)
    train = np.flatnonzero(data.timestamp < np.quantile(data.timestamp, 0.8))
    log = realtime.event_log(data.user, data.item, data.weight, data.timestamp, side(data.n_users, data.n_items),
                             train, np.quantile(data.timestamp, 0.8))
    cost = realtime.update_cost(lambda: ALS(seed=0, factors=8, iterations=3), log, 10, 5, seed=0)
    assert cost.new_users == 10 and cost.new_items == 5
    assert cost.seconds_per_new_user > 0 and cost.seconds_per_new_item > 0


@pytest.mark.parametrize("table, culprit", [
    ({"policies": [{"name": "sometimes"}]}, "sometimes"),
    ({"policies": [{"name": "incremental"}]}, "every"),
    ({"block": 300, "policies": [{"name": "retrain", "every": 1000}]}, "multiple of block"),
    ({"blok": 3}, "did you mean 'block'"),
])
def test_bad_realtime_config_names_the_culprit(table, culprit):
    with pytest.raises(ConfigError, match=culprit):
        realtime.parse_realtime(table, "suite.toml")


def test_capability_selector_follows_the_registry():
    expanded = expand_capability_selectors([{"name": "als", "params": {"factors": 4}}, {"capability": "update"}],
                                           "test")
    names = [t["name"] for t in expanded]
    expected = {"als"}
    for name in registry.models.names():
        try:
            if registry.models.get(name).capabilities.update:
                expected.add(name)
        except ConfigError:
            pass
    assert set(names) == expected and len(names) == len(set(names))
    assert expanded[0] == {"name": "als", "params": {"factors": 4}}  # explicit entries keep their params
    with pytest.raises(ConfigError, match="capability"):
        expand_capability_selectors([{"capability": "teleport"}], "test")


def test_builtin_realtime_suite_loads():
    config = load_suite("realtime")
    assert config.evaluation.realtime.enabled
    assert {d.name for d in config.datasets} == {"ml-100k", "ml-latest-small"}
    assert {"pop", "als"} <= {m.name for m in config.models}


def test_suite_writes_replay_rows_and_curves(tmp_path):
    raw = {
        "name": "tiny-realtime",
        # in-process: faster, and independent of how the runner isolates cells
        "execution": {"isolation": "none"},
        "evaluation": {"k": [5, 10], "bootstrap": 0, "systems": {"enabled": False},
                       "realtime": {"enabled": True, "k": 10, "block": 100, "update_cost_users": 5,
                                    "update_cost_items": 5,
                                    "policies": [{"name": "static"}, {"name": "incremental", "every": 100},
                                                 {"name": "retrain", "every": 300}]}},
        "datasets": [{"name": "synthetic", "params": {"n_users": 150, "n_items": 90, "n_interactions": 4000}}],
        "splits": [{"kind": "temporal", "params": {"test_fraction": 0.2}}],
        "models": [{"name": "pop"}, {"name": "als", "params": {"factors": 8, "iterations": 3}}],
    }
    summary = run_suite(parse_suite(raw, "test"), out_root=tmp_path, progress=None)
    assert summary.failed == 0
    frame, _ = load_results(summary.run_dir)
    replay_rows = frame[frame["metric"] == "prequential_hit_rate"]
    assert set(replay_rows["segment"]) == {"replay:static", "replay:incremental/every=100",
                                           "replay:retrain/every=300"}
    for cell_dir in (summary.run_dir / "cells").iterdir():
        payload = json.loads((cell_dir / "realtime.json").read_text())
        model = json.loads((cell_dir / "cell.json").read_text())["model"]
        assert payload["update_cost"]["new_users"] == 5
        for label, trace in payload["policies"].items():
            assert sum(trace["events"]) == payload["replay_events"]
            row = replay_rows[(replay_rows["model"] == model) & (replay_rows["segment"] == f"replay:{label}")]
            assert row["value"].iloc[0] == pytest.approx(sum(trace["hits"]) / sum(trace["events"]))
            assert row["n"].iloc[0] == payload["replay_events"]
        assert payload["policies"]["static"]["updates"] == 0
        n_blocks = -(-payload["replay_events"] // 100)
        assert payload["policies"]["incremental/every=100"]["updates"] == n_blocks - 1  # none after the last block
    cost = frame[frame["metric"] == "update_seconds_per_new_user"]
    assert len(cost) == 2 and (cost["value"] > 0).all()
