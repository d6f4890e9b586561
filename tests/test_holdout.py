"""The time-based hold-out: exact splits on hand data, the cut-off mode, no leakage on random data."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import Counter, defaultdict

import pytest

from longtail.ml.holdout import parse_cutoff, split_summary, time_split

pytestmark = pytest.mark.spark

SCHEMA = "user_id string, item_id string, ts timestamp, weight double"


def _t(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, tzinfo=dt.timezone.utc)


def _rows(df) -> set[tuple]:
    return {(r.user_id, r.item_id, r.ts.astimezone(dt.timezone.utc).day) for r in df.collect()}


@pytest.fixture(scope="module")
def hand(spark):
    rows = [
        # a: n=5 -> floor(5*0.2 + 0.5) = 1 test: the latest (a5)
        *[("a", f"a{d}", _t(d), 1.0) for d in (3, 1, 5, 2, 4)],
        # b: n=8 -> floor(8*0.2 + 0.5) = floor(2.1) = 2 test: b7, b8
        *[("b", f"b{d}", _t(d), 1.0) for d in range(1, 9)],
        # c: n=1 -> its only interaction is test: a cold user
        ("c", "c1", _t(4), 1.0),
        # d: n=2 -> floor(0.4 + 0.5) = 0 -> max(1, 0) = 1 test, min(n-1=1, 1) = 1
        ("d", "d1", _t(1), 1.0),
        ("d", "d2", _t(2), 1.0),
        # e: three interactions at the same time; ties go by item_id: x, y, z -> z is the latest
        ("e", "z", _t(6), 1.0),
        ("e", "x", _t(6), 1.0),
        ("e", "y", _t(6), 1.0),
    ]
    return spark.createDataFrame(rows, SCHEMA)


def test_per_user_split_on_hand_data(hand):
    train, test = time_split(hand, test_fraction=0.2)
    assert train.columns == test.columns == ["user_id", "item_id", "ts", "weight"]
    assert _rows(test) == {
        ("a", "a5", 5),
        ("b", "b7", 7),
        ("b", "b8", 8),
        ("c", "c1", 4),
        ("d", "d2", 2),
        ("e", "z", 6),
    }
    assert _rows(train) == {
        ("a", "a1", 1), ("a", "a2", 2), ("a", "a3", 3), ("a", "a4", 4),
        *{("b", f"b{d}", d) for d in range(1, 7)},
        ("d", "d1", 1),
        ("e", "x", 6), ("e", "y", 6),
    }  # fmt: skip


def test_half_split_rounds_half_up_but_keeps_one_in_train(hand):
    train, test = time_split(hand, test_fraction=0.5)
    n_test = Counter(r.user_id for r in test.collect())
    n_train = Counter(r.user_id for r in train.collect())
    # a: floor(2.5 + 0.5) = 3; b: 4; c: 1 (cold); d: floor(1.5) = 1 (and n-1 = 1); e: floor(2.0) = 2
    assert n_test == {"a": 3, "b": 4, "c": 1, "d": 1, "e": 2}
    assert n_train == {"a": 2, "b": 4, "d": 1, "e": 1}


def test_extra_columns_are_kept(spark):
    df = spark.createDataFrame(
        [("u", "i", _t(1), 1.0, "web"), ("u", "j", _t(2), 2.0, "app")], SCHEMA + ", channel string"
    )
    train, test = time_split(df, test_fraction=0.2)
    utc = dt.timezone.utc  # PySpark returns naive local times
    assert [(*r[:2], r.ts.astimezone(utc), *r[3:]) for r in train.collect()] == [
        ("u", "i", _t(1), 1.0, "web")
    ]
    assert [r.channel for r in test.collect()] == ["app"]


def test_bad_fraction_and_bad_cutoff_fail_with_the_key(hand):
    with pytest.raises(ValueError, match=r"evaluate\.test_fraction"):
        time_split(hand, test_fraction=1.0)
    with pytest.raises(ValueError, match=r"evaluate\.cutoff"):
        time_split(hand, cutoff="next tuesday")


def test_cutoff_mode(hand):
    train, test = time_split(hand, cutoff="2024-01-05T00:00:00Z")
    assert _rows(test) == {("a", "a5", 5), ("e", "x", 6), ("e", "y", 6), ("e", "z", 6),
                           *{("b", f"b{d}", d) for d in range(5, 9)}}  # fmt: skip
    assert {r.user_id for r in train.collect()} == {"a", "b", "c", "d"}
    # the same instant written as a naive datetime (UTC) and in another zone
    for cut in (dt.datetime(2024, 1, 5), "2024-01-05T02:00:00+02:00", "2024-01-05"):
        assert _rows(time_split(hand, cutoff=cut)[1]) == _rows(test)


def test_parse_cutoff():
    assert parse_cutoff("2024-01-05") == _t(5)
    assert parse_cutoff("2024-01-05T01:00:00+01:00") == _t(5)
    assert parse_cutoff(dt.datetime(2024, 1, 5)) == _t(5)


def _random_log(spark, seed: int):
    rng = random.Random(seed)
    rows = []
    for u in range(60):
        n = rng.choice([1, 1, 2, 3, 5, 8, 13, 21])
        items = rng.sample(range(200), n)
        for i in items:  # few distinct days: many ties in ts
            rows.append((f"u{u:02d}", f"i{i:03d}", _t(rng.randint(1, 6), rng.choice([0, 12])), 1.0))
    rng.shuffle(rows)
    return rows, spark.createDataFrame(rows, SCHEMA).repartition(3)


def test_no_leakage_and_both_parts_on_random_data(spark):
    rows, df = _random_log(spark, seed=7)
    n_by_user = Counter(r[0] for r in rows)
    train, test = time_split(df, test_fraction=0.3)
    tr, te = defaultdict(list), defaultdict(list)
    for r in train.collect():
        tr[r.user_id].append(r)
    for r in test.collect():
        te[r.user_id].append(r)
    assert sum(map(len, tr.values())) + sum(map(len, te.values())) == len(rows)
    for user, n in n_by_user.items():
        expected_test = 1 if n == 1 else min(n - 1, max(1, math.floor(n * 0.3 + 0.5)))
        assert len(te[user]) == expected_test, user
        assert len(tr[user]) == n - expected_test, user
        if tr[user]:
            # no test interaction is older than any training one; ties are ordered by item_id
            last_train = max((r.ts, r.item_id) for r in tr[user])
            first_test = min((r.ts, r.item_id) for r in te[user])
            assert last_train < first_test, user
    assert {u for u, n in n_by_user.items() if n == 1} == {u for u in te if not tr[u]}


def test_split_is_deterministic_under_ties(spark):
    rows, df = _random_log(spark, seed=11)
    first = _rows(time_split(df, test_fraction=0.2)[1])
    # the same rows in another order and partitioning
    again = spark.createDataFrame(list(reversed(rows)), SCHEMA).repartition(5)
    assert _rows(time_split(again, test_fraction=0.2)[1]) == first


def test_split_summary(spark, hand):
    train, test = time_split(hand, test_fraction=0.2)
    items = spark.createDataFrame([(i,) for i in ["a1", "a5", "b1", "c1", "x", "zz"]], "item_id string")
    s = split_summary(train, test, items)
    assert s["train_interactions"] == 13 and s["test_interactions"] == 6
    assert (s["users"], s["train_users"], s["test_users"]) == (5, 4, 5)
    assert (s["cold_users"], s["test_interactions_of_cold_users"]) == (1, 1)  # c
    # every test item here is new to train (a5, b7, b8, c1, d2, z)
    assert (s["test_items"], s["cold_items"], s["test_interactions_on_cold_items"]) == (6, 6, 6)
    assert s["test_share"] == pytest.approx(6 / 19)
    assert s["train_ts_max"] == "2024-01-06T00:00:00" and s["test_ts_min"] == "2024-01-02T00:00:00"
    # catalogue: a1, b1, x have training interactions; a5, c1, zz do not
    assert (s["catalog_items"], s["catalog_items_without_train_interaction"]) == (6, 3)
