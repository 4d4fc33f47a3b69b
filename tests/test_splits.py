"""Every split kind: leakage check, determinism, and the properties it promises."""

from __future__ import annotations

import numpy as np
import pytest

from bench.data import load_dataset
from bench.errors import ConfigError
from bench.splits import LeakageError, Split, check_leakage, make_split

KINDS = ["random", "leave_last_out", "temporal", "user_coldstart", "item_coldstart"]


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_by_seed_and_leak_free(ml100k, kind):
    a = make_split(ml100k, kind, 0)
    b = make_split(ml100k, kind, 0)
    assert a.fingerprint == b.fingerprint
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    c = make_split(ml100k, kind, 1)
    same = all(np.array_equal(getattr(a, f), getattr(c, f))
               for f in ("train", "test", "valid", "history", "cold_users", "cold_items"))
    # the fingerprint names the split, not the seed: equal exactly when the splits are equal
    # (a temporal cut ignores the seed; the other kinds draw from it on ml-100k)
    assert (c.fingerprint == a.fingerprint) == same
    assert same == (kind == "temporal")
    check_leakage(a, ml100k)  # make_split already ran it; it must hold on the result
    # train and test together never exceed the data
    assert len(a.train) + len(a.test) + len(a.history) + len(a.valid) <= ml100k.n_interactions


def test_fingerprint_ignores_a_seed_that_decides_nothing():
    """leave_last_out draws from the seed only to order equal timestamps at the cut: without such ties,
    two seeds give the same split and one fingerprint; with one, they differ."""
    import pandas as pd

    from bench.data.dataset import ImplicitConfig, build_dataset

    def data(ts):  # users 0 and 1, three items each, at the given times
        frame = pd.DataFrame({"user": [0, 0, 0, 1, 1, 1], "item": [0, 1, 2, 0, 1, 2], "value": 1.0,
                              "timestamp": ts})
        items = pd.DataFrame({"text": ["a", "b", "c"], "categories": [[], [], []]}, index=[0, 1, 2])
        return build_dataset("ties", frame, items, ImplicitConfig())

    distinct = data([1, 2, 3, 4, 5, 6])
    first, second = make_split(distinct, "leave_last_out", 0), make_split(distinct, "leave_last_out", 1)
    assert first.fingerprint == second.fingerprint
    tied = data([1, 2, 3, 4, 6, 6])  # user 1's last two share a time: the seed picks the test row
    fps = {make_split(tied, "leave_last_out", s).fingerprint for s in range(8)}
    tests = {tuple(make_split(tied, "leave_last_out", s).test) for s in range(8)}
    assert len(tests) == 2 and len(fps) == 8


def test_random_holds_out_a_fifth_per_user(ml100k):
    split = make_split(ml100k, "random", 0, test_fraction=0.2)
    per_user_test = np.bincount(ml100k.user[split.test], minlength=ml100k.n_users)
    per_user_all = np.bincount(ml100k.user, minlength=ml100k.n_users)
    eligible = per_user_all >= 2
    assert np.array_equal(per_user_test[eligible], np.maximum(1, np.round(0.2 * per_user_all[eligible])))
    assert len(split.train) + len(split.test) == ml100k.n_interactions


def test_leave_last_out_holds_out_each_users_latest(ml100k):
    split = make_split(ml100k, "leave_last_out", 0)
    ts = ml100k.timestamp
    latest_train = np.full(ml100k.n_users, -1)
    np.maximum.at(latest_train, ml100k.user[split.train], ts[split.train])
    assert np.all(ts[split.test] >= latest_train[ml100k.user[split.test]])
    assert np.all(np.bincount(ml100k.user[split.test]) <= 1)


def test_temporal_cut_and_warm_filter(ml100k):
    split = make_split(ml100k, "temporal", 0, test_fraction=0.2)
    assert ml100k.timestamp[split.train].max() < ml100k.timestamp[split.test].min()
    assert np.isin(ml100k.user[split.test], ml100k.user[split.train]).all()
    assert np.isin(ml100k.item[split.test], ml100k.item[split.train]).all()


def test_user_coldstart_shots_and_fixed_test(ml100k):
    split = make_split(ml100k, "user_coldstart", 0, user_fraction=0.2, shots=[0, 1, 3, 5, 10])
    assert len(split.cold_users) == round(0.2 * ml100k.n_users)
    assert not np.isin(ml100k.user[split.train], split.cold_users).any()
    assert set(np.unique(ml100k.user[split.test])) <= set(split.cold_users)
    segments = {s.name: s for s in split.segments(ml100k)}
    assert list(segments) == ["shots=0", "shots=1", "shots=3", "shots=5", "shots=10"]
    for n in (1, 3, 5, 10):
        rows = segments[f"shots={n}"].history_rows
        assert np.all(np.bincount(ml100k.user[rows])[split.cold_users] == n)
    # the shots are each user's *first* interactions: all earlier than every test interaction
    ts = ml100k.timestamp
    last_shot = np.zeros(ml100k.n_users, dtype=np.int64)
    np.maximum.at(last_shot, ml100k.user[split.history], ts[split.history])
    assert np.all(ts[split.test] >= last_shot[ml100k.user[split.test]])
    assert segments["shots=0"].needs == "cold_users_zero_shot" and segments["shots=3"].needs == "cold_users"


def test_user_coldstart_excludes_every_known_pre_test_interaction():
    """At n shots a cold user's interactions n..max(shots)-1 are neither shown, nor test: they are known
    positives, so they are excluded from the ranking at every n (as a warm user's training items are),
    never counted against a model that ranks them. Checked with Pop, which lists them when allowed to."""
    from baselines.simple import Pop
    from bench.runner import segment_data, train_data

    data = load_dataset("synthetic", None, None, n_users=120, n_items=40, n_interactions=2400)
    split = make_split(data, "user_coldstart", 0, user_fraction=0.25, shots=[0, 1, 3, 5])
    train = train_data(data, split.train)
    pop = Pop(seed=0)
    pop.fit(train)
    for segment in split.segments(data):
        n = int(segment.name.split("=")[1])
        seg = segment_data(data, split, segment, train.matrix, True, 0)
        assert seg.history is not None and seg.exclude is not None
        items, _ = pop.recommend(seg.users, 10, history=seg.history, exclude=seg.exclude)
        for row, user in enumerate(seg.users):
            known = data.item[split.history][data.user[split.history] == user]  # the first max(shots), in order
            assert len(known) == 5 and seg.history[row].tolist() == known[:n].tolist()
            assert sorted(seg.exclude[row].indices.tolist()) == sorted(known.tolist())
            assert not np.isin(items[row], known).any(), (segment.name, user)


def test_item_coldstart_ranks_among_cold_items(ml100k):
    split = make_split(ml100k, "item_coldstart", 0, item_fraction=0.2)
    assert not np.isin(ml100k.item[split.train], split.cold_items).any()
    assert np.isin(ml100k.item[split.test], split.cold_items).all()
    (segment,) = split.segments(ml100k)
    assert np.array_equal(segment.candidates, split.cold_items) and segment.needs == "cold_items"
    everything = make_split(ml100k, "item_coldstart", 0, candidates="all")
    assert everything.segments(ml100k)[0].candidates is None


def test_leakage_check_catches_injected_leaks(ml100k):
    good = make_split(ml100k, "random", 0)
    overlapping = Split("random", {}, 0, train=good.train, test=np.r_[good.test, good.train[:1]])
    with pytest.raises(LeakageError, match="share interaction rows"):
        check_leakage(overlapping, ml100k)
    cold = make_split(ml100k, "user_coldstart", 0)
    leaked_user = Split("user_coldstart", {}, 0, train=np.r_[cold.train, cold.test[:1]], test=cold.test[1:],
                        cold_users=cold.cold_users)
    with pytest.raises(LeakageError, match="cold user"):
        check_leakage(leaked_user, ml100k)
    item = make_split(ml100k, "item_coldstart", 0)
    leaked_item = Split("item_coldstart", {}, 0, train=np.r_[item.train, item.test[:1]], test=item.test[1:],
                        cold_items=item.cold_items)
    with pytest.raises(LeakageError, match="cold item"):
        check_leakage(leaked_item, ml100k)


def test_time_splits_refuse_data_without_timestamps(data_options):
    lastfm = load_dataset("lastfm-hetrec", data_options)
    with pytest.raises(ConfigError, match="needs timestamps"):
        make_split(lastfm, "temporal", 0)
    split = make_split(lastfm, "user_coldstart", 0)  # falls back to a seeded order, and says so
    assert split.order.startswith("random")


def test_bad_split_parameters_are_config_errors(ml100k):
    with pytest.raises(ConfigError, match="unknown parameter"):
        make_split(ml100k, "random", 0, test_fracton=0.2)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        make_split(ml100k, "random", 0, test_fraction=1.5)
    with pytest.raises(ConfigError, match="did you mean 'random'"):
        make_split(ml100k, "randon", 0)
