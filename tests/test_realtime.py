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
from bench.protocol import Capabilities, Recommender, SideInfo
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


class NextItem(Recommender):
    """Recommends the item after the user's last one; claims cold users from history, not zero-shot.

    Asking it for a user it never learnt without a history is the fallback the replay must not take,
    so that raises."""

    name = "realtime_test_next_item"
    capabilities = Capabilities(cold_users=True)

    def fit(self, train):
        self.n_items, self.histories = train.n_items, train.histories()

    def score(self, user_ids, history=None):
        if history is None:
            history = [self.histories[int(u)] for u in user_ids]
        out = np.zeros((len(user_ids), self.n_items))
        for row, h in enumerate(history):
            if len(h) == 0:
                raise AssertionError("asked to serve a user it never saw, with no history: a fallback")
            out[row, (int(h[-1]) + 1) % self.n_items] = 1.0
        return out


def test_replay_serves_unseen_users_only_as_the_model_can():
    """Train: user 0 takes item 0. Replay, one event a block: user 1 takes 1 then 2, user 2 takes 0.
    NextItem (cold users from history, no zero-shot): user 1's first event has no history -> not
    served; their second is served from the history [1] -> item 2, a hit; user 2's -> not served.
    Pop (zero-shot) serves all three (top-1 is item 0 while it leads: a hit for user 2 only)."""
    user, item, ts = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 0]), np.array([0, 10, 11, 12])
    log = realtime.event_log(user, item, np.ones(4, np.float32), ts, side(3, 3), np.array([0]), 10)
    model = NextItem(seed=0)
    model.fit(log.data(log.train_rows))
    trace = realtime.replay(model, lambda: NextItem(seed=0), log, realtime.PolicySpec("static"), k=1, block=1)
    assert trace.events == [0, 1, 0] and trace.hits == [0, 1, 0] and trace.unserved_events == [1, 0, 1]
    assert trace.new_user_events == [0, 1, 0] and trace.new_user_hits == [0, 1, 0] and trace.new_user_unserved == 2
    assert trace.hit_rate == 1.0 and trace.new_user_hit_rate == 1.0
    pop_trace = realtime.replay(fitted(log), pop, log, realtime.PolicySpec("static"), k=1, block=1)
    assert pop_trace.events == [1, 1, 1] and pop_trace.unserved_events == [0, 0, 0] and pop_trace.hits == [0, 0, 1]


def test_a_model_that_cannot_serve_new_users_is_not_served_in_the_table(tmp_path):
    """BPR declares no cold users: the new-user hit rate is "not served" (NaN, n = 0), never a number
    computed from lists of all-zero user factors."""
    raw = {
        "name": "tiny-realtime-cold", "execution": {"isolation": "none"},
        "evaluation": {"k": [5], "bootstrap": 0, "systems": {"enabled": False},
                       "realtime": {"enabled": True, "k": 10, "block": 100, "update_cost_users": 0,
                                    "update_cost_items": 0, "policies": [{"name": "static"}]}},
        "datasets": [{"name": "synthetic", "params": {"n_users": 150, "n_items": 90, "n_interactions": 4000}}],
        "splits": [{"kind": "temporal", "params": {"test_fraction": 0.7}}],  # 13 users appear after the cut
        "models": [{"name": "bpr", "params": {"factors": 4, "iterations": 2, "num_threads": 1}}, {"name": "pop"}],
    }
    summary = run_suite(parse_suite(raw, "test"), out_root=tmp_path, progress=None)
    assert summary.failed == 0, summary.failures
    frame, _ = load_results(summary.run_dir)
    new_user = frame[frame["metric"] == "prequential_new_user_hit_rate"].set_index("model")
    assert new_user.loc["bpr", "status"] == "unsupported" and new_user.loc["bpr", "n"] == 0
    assert np.isnan(new_user.loc["bpr", "value"])
    assert new_user.loc["pop", "status"] == "ok" and new_user.loc["pop", "n"] > 0
    overall = frame[frame["metric"] == "prequential_hit_rate"].set_index("model")
    assert overall.loc["bpr", "n"] + new_user.loc["pop", "n"] == overall.loc["pop", "n"]  # bpr: warm events only


def test_replay_excludes_what_the_user_already_consumed():
    # user 0 took item 0 in training (user 1 items 0 and 1) and takes item 2 after the cut: with
    # item 0 filtered, Pop's top-1 for user 0 is item 1 (1 user against item 2's none), a miss;
    # with k=2 the list is [1, 2], a hit.
    user, item, ts = np.array([0, 1, 1, 0]), np.array([0, 0, 1, 2]), np.array([0, 1, 2, 5])
    log = realtime.event_log(user, item, np.ones(4, np.float32), ts, side(2, 3), np.array([0, 1, 2]), 5)
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
            assert sum(trace["events"]) + sum(trace["unserved_events"]) == payload["replay_events"]
            if model == "pop":  # serves anyone, even with no history: every event is scored
                assert sum(trace["unserved_events"]) == 0
            row = replay_rows[(replay_rows["model"] == model) & (replay_rows["segment"] == f"replay:{label}")]
            assert row["value"].iloc[0] == pytest.approx(sum(trace["hits"]) / sum(trace["events"]))
            assert row["n"].iloc[0] == sum(trace["events"])
        assert payload["policies"]["static"]["updates"] == 0
        n_blocks = -(-payload["replay_events"] // 100)
        assert payload["policies"]["incremental/every=100"]["updates"] == n_blocks - 1  # none after the last block
    cost = frame[frame["metric"] == "update_seconds_per_new_user"]
    assert len(cost) == 2 and (cost["value"] > 0).all()
