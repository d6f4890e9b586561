"""Every metric against hand-computed values on tiny lists, and against a pure-Python reference."""

from __future__ import annotations

import math
import random
from functools import reduce
from math import log2

import numpy as np
import pandas as pd
import pytest

from longtail.ml import metrics as M

pytestmark = pytest.mark.spark

RECS = "variant string, user_id string, item_id string, rank int"
TEST = "user_id string, item_id string"
STATS = "item_id string, popularity long, n_users long, is_long_tail boolean"

# The catalogue: 10 items, head h1, h2 (is_long_tail false); tail t1..t6 (interacted); c1, c2 cold.
CATALOGUE = [
    ("h1", 10, 8, False),
    ("h2", 8, 6, False),
    ("t1", 2, 2, True),
    ("t4", 2, 2, True),
    ("t2", 1, 1, True),
    ("t3", 1, 1, True),
    ("t5", 1, 1, True),
    ("t6", 1, 1, True),
    ("c1", 0, 0, True),
    ("c2", 0, 0, True),
]
N_TRAIN_USERS = 9
LISTS = {
    "A": {
        "u1": ["h1", "t1", "c1", "t2"],  # rank 4 lies beyond both cut-offs
        "u2": ["h1", "h2"],  # shorter than K = 3
        "u3": ["t2", "t3", "h1"],
        "u4": ["h1", "h2", "t1"],  # u4 has no test item: excluded from accuracy, counted
    },
    "B": {"u1": ["c1", "h2"], "u5": ["h1"]},  # u2, u3 have no B list: they count with zeros
}
TEST_ROWS = [("u1", "t1"), ("u1", "t1"), ("u1", "c1"), ("u1", "h2"), ("u2", "h1"), ("u3", "c2"), ("u5", "h1")]
# relevant sets (segments are disjoint): u1 all {t1, c1, h2}, head {h2}, tail {t1}, cold {c1};
# u2 {h1} (head); u3 {c2} (cold); u5 {h1} (head). Evaluated: all 4 users, head 3 (u1, u2, u5),
# tail 1 (u1), cold 2 (u1, u3).

L2, L3, L4 = log2(2), log2(3), log2(4)
NDCG_A_U1_ALL = (1 / L3 + 1 / L4) / (1 / L2 + 1 / L3 + 1 / L4)  # hits at ranks 2, 3 of |rel| = 3
EXPECTED = {
    # --- variant A, K = 3 -------------------------------------------------------------------
    # u1: hits t1 (rank 2), c1 (rank 3); u2: h1 at rank 1; u3, u5: nothing
    ("A", "recall", 3, "all"): (2 / 3 + 1 + 0 + 0) / 4,
    ("A", "precision", 3, "all"): (2 / 3 + 1 / 3) / 4,  # u2's list has 2 items: still / K = 3
    ("A", "hit_rate", 3, "all"): 2 / 4,
    ("A", "ndcg", 3, "all"): (NDCG_A_U1_ALL + 1) / 4,
    ("A", "map", 3, "all"): ((1 / 2 + 2 / 3) / 3 + 1) / 4,  # u1: P@2 = 1/2, P@3 = 2/3
    ("A", "recall", 3, "head"): (0 + 1 + 0) / 3,  # u1 misses h2, u2 hits h1, u5 has no list
    ("A", "precision", 3, "head"): (1 / 3) / 3,
    ("A", "hit_rate", 3, "head"): 1 / 3,
    ("A", "ndcg", 3, "head"): 1 / 3,
    ("A", "map", 3, "head"): 1 / 3,
    # tail: only u1 ({t1}), hit at rank 2
    ("A", "recall", 3, "tail"): 1.0,
    ("A", "precision", 3, "tail"): 1 / 3,
    ("A", "hit_rate", 3, "tail"): 1.0,
    ("A", "ndcg", 3, "tail"): 1 / L3,
    ("A", "map", 3, "tail"): 1 / 2,  # P@2 = 1/2 (one tail hit in two places), / min(1, 3)
    ("A", "recall", 3, "cold"): 1 / 2,  # u1 hits c1 at rank 3, u3 misses c2
    ("A", "precision", 3, "cold"): (1 / 3) / 2,
    ("A", "hit_rate", 3, "cold"): 1 / 2,
    ("A", "ndcg", 3, "cold"): (1 / L4) / 2,
    ("A", "map", 3, "cold"): (1 / 3) / 2,  # P@3 counts only cold hits: 1/3
    # --- variant A, K = 1: only u2's h1 at rank 1 -----------------------------------------------
    **{("A", m, 1, "all"): 1 / 4 for m in M.ACCURACY_METRICS},
    **{("A", m, 1, "head"): 1 / 3 for m in M.ACCURACY_METRICS},
    **{("A", m, 1, "tail"): 0.0 for m in M.ACCURACY_METRICS},
    **{("A", m, 1, "cold"): 0.0 for m in M.ACCURACY_METRICS},
    # --- variant B, K = 3: u1 [c1, h2] hits both; u5 [h1] hits --------------------------------
    ("B", "recall", 3, "all"): (2 / 3 + 1) / 4,
    ("B", "precision", 3, "all"): (2 / 3 + 1 / 3) / 4,
    ("B", "hit_rate", 3, "all"): 2 / 4,
    ("B", "ndcg", 3, "all"): ((1 / L2 + 1 / L3) / (1 / L2 + 1 / L3 + 1 / L4) + 1) / 4,
    ("B", "map", 3, "all"): ((1 / 1 + 2 / 2) / 3 + 1) / 4,
    ("B", "recall", 3, "head"): (1 + 0 + 1) / 3,
    ("B", "precision", 3, "head"): (1 / 3 + 1 / 3) / 3,
    ("B", "hit_rate", 3, "head"): 2 / 3,
    ("B", "ndcg", 3, "head"): (1 / L3 + 1) / 3,  # u1's h2 at rank 2, u5's h1 at rank 1
    ("B", "map", 3, "head"): (1 / 2 + 1) / 3,
    **{("B", m, 3, "tail"): 0.0 for m in M.ACCURACY_METRICS},  # u1's [c1, h2] misses t1
    **{
        ("B", m, 3, "cold"): v
        for m, v in zip(M.ACCURACY_METRICS, (1 / 2, 1 / 2, 1 / 2, 1 / 2, (1 / 3) / 2), strict=True)
    },
    # --- variant B, K = 1: u1's c1, u5's h1 ------------------------------------------------------
    ("B", "recall", 1, "all"): (1 / 3 + 1) / 4,
    ("B", "precision", 1, "all"): (1 + 1) / 4,
    ("B", "hit_rate", 1, "all"): 2 / 4,
    ("B", "ndcg", 1, "all"): (1 + 1) / 4,
    ("B", "map", 1, "all"): (1 + 1) / 4,
    **{("B", m, 1, "head"): 1 / 3 for m in M.ACCURACY_METRICS},
    **{("B", m, 1, "tail"): 0.0 for m in M.ACCURACY_METRICS},
    **{("B", m, 1, "cold"): 1 / 2 for m in M.ACCURACY_METRICS},
    # --- a segment's recall over ALL 4 evaluated users (0 for users without a test item in it) ---
    ("A", "recall_all_users", 3, "head"): 1 / 4,  # u2
    ("A", "recall_all_users", 3, "tail"): 1 / 4,  # u1's t1
    ("A", "recall_all_users", 3, "cold"): 1 / 4,  # u1's c1 (= cold recall 1/2 x 2 users / 4)
    ("A", "recall_all_users", 1, "head"): 1 / 4,
    ("A", "recall_all_users", 1, "tail"): 0.0,
    ("A", "recall_all_users", 1, "cold"): 0.0,
    ("B", "recall_all_users", 3, "head"): 2 / 4,  # u1's h2, u5's h1
    ("B", "recall_all_users", 3, "tail"): 0.0,
    ("B", "recall_all_users", 3, "cold"): 1 / 4,
    ("B", "recall_all_users", 1, "head"): 1 / 4,
    ("B", "recall_all_users", 1, "tail"): 0.0,
    ("B", "recall_all_users", 1, "cold"): 1 / 4,
    # --- beyond accuracy, A, K = 3: every list of A (u4 too) -----------------------------------
    # exposure h1 4, h2 2, t1 2, c1 1, t2 1, t3 1, the other four 0; total 11
    ("A", "catalog_coverage", 3, "all"): 6 / 10,
    ("A", "long_tail_coverage", 3, "all"): 4 / 8,  # t1, c1, t2, t3 of 8 tail items
    ("A", "long_tail_coverage_interacted", 3, "all"): 3 / 6,  # t1, t2, t3 of t1..t6
    ("A", "aplt", 3, "all"): (2 / 3 + 0 / 2 + 2 / 3 + 1 / 3) / 4,
    ("A", "aplt_interacted", 3, "all"): (1 / 3 + 0 / 2 + 2 / 3 + 1 / 3) / 4,  # u1's c1 no longer counts
    ("A", "arp", 3, "all"): ((10 + 2 + 0) / 3 + (10 + 8) / 2 + (1 + 1 + 10) / 3 + (10 + 8 + 2) / 3) / 4,
    ("A", "novelty", 3, "all"): (
        4 * log2(10 / 9) + 2 * log2(10 / 7) + 2 * log2(10 / 3) + log2(10 / 1) + 2 * log2(10 / 2)
    )
    / 11,
    ("A", "entropy", 3, "all"): -(
        4 / 11 * log2(4 / 11) + 2 * (2 / 11 * log2(2 / 11)) + 3 * (1 / 11 * log2(1 / 11))
    ),
    # sorted x = [0, 0, 0, 0, 1, 1, 1, 2, 2, 4]: sum (2i - 11) x_i for i = 5..10, over n * sum x
    ("A", "gini", 3, "all"): (-1 * 1 + 1 * 1 + 3 * 1 + 5 * 2 + 7 * 2 + 9 * 4) / (10 * 11),
    # --- A, K = 1: h1, h1, t2, h1 ------------------------------------------------------------------
    ("A", "catalog_coverage", 1, "all"): 2 / 10,
    ("A", "long_tail_coverage", 1, "all"): 1 / 8,
    ("A", "long_tail_coverage_interacted", 1, "all"): 1 / 6,
    ("A", "aplt", 1, "all"): (0 + 0 + 1 + 0) / 4,
    ("A", "aplt_interacted", 1, "all"): (0 + 0 + 1 + 0) / 4,
    ("A", "arp", 1, "all"): (10 + 10 + 1 + 10) / 4,
    ("A", "novelty", 1, "all"): (3 * log2(10 / 9) + log2(10 / 2)) / 4,
    ("A", "entropy", 1, "all"): -(3 / 4 * log2(3 / 4) + 1 / 4 * log2(1 / 4)),
    ("A", "gini", 1, "all"): (7 * 1 + 9 * 3) / (10 * 4),  # x = [0 x 8, 1, 3]
    # --- B, K = 3: c1, h2 | h1 ------------------------------------------------------------------
    ("B", "catalog_coverage", 3, "all"): 3 / 10,
    ("B", "long_tail_coverage", 3, "all"): 1 / 8,
    ("B", "long_tail_coverage_interacted", 3, "all"): 0.0,  # c1 is cold
    ("B", "aplt", 3, "all"): (1 / 2 + 0 / 1) / 2,
    ("B", "aplt_interacted", 3, "all"): 0.0,
    ("B", "arp", 3, "all"): ((0 + 8) / 2 + 10 / 1) / 2,
    ("B", "novelty", 3, "all"): (log2(10 / 1) + log2(10 / 7) + log2(10 / 9)) / 3,
    ("B", "entropy", 3, "all"): log2(3),
    ("B", "gini", 3, "all"): (5 + 7 + 9) / (10 * 3),  # x = [0 x 7, 1, 1, 1]
    # --- B, K = 1: c1 | h1 ---------------------------------------------------------------------------
    ("B", "catalog_coverage", 1, "all"): 2 / 10,
    ("B", "long_tail_coverage", 1, "all"): 1 / 8,
    ("B", "long_tail_coverage_interacted", 1, "all"): 0.0,
    ("B", "aplt", 1, "all"): (1 + 0) / 2,
    ("B", "aplt_interacted", 1, "all"): 0.0,
    ("B", "arp", 1, "all"): (0 + 10) / 2,
    ("B", "novelty", 1, "all"): (log2(10 / 1) + log2(10 / 9)) / 2,
    ("B", "entropy", 1, "all"): 1.0,
    ("B", "gini", 1, "all"): (7 + 9) / (10 * 2),  # x = [0 x 8, 1, 1]
}


def _recs_rows(lists: dict[str, dict[str, list[str]]]) -> list[tuple]:
    return [
        (v, u, i, r)
        for v, by_user in lists.items()
        for u, items in by_user.items()
        for r, i in enumerate(items, 1)
    ]


@pytest.fixture(scope="module")
def hand(spark):
    recs = spark.createDataFrame(_recs_rows(LISTS), RECS)
    test = spark.createDataFrame(TEST_ROWS, TEST)
    stats = spark.createDataFrame(CATALOGUE, STATS)
    return recs, test, stats


def _as_dict(df) -> dict[tuple, float]:
    rows = df.collect()
    out = {(r.variant, r.metric, r.k, r.segment): r.value for r in rows}
    assert len(out) == len(rows), "duplicate (variant, metric, k, segment) rows"
    return out


def _assert_close(actual: dict, expected: dict, tol: float = 1e-9) -> None:
    assert set(actual) == set(expected), set(actual) ^ set(expected)
    bad = {
        key: (actual[key], want)
        for key, want in expected.items()
        if not math.isclose(actual[key], want, abs_tol=tol)
    }
    assert not bad, bad


def test_evaluate_all_on_hand_lists(hand):
    recs, test, stats = hand
    out = M.evaluate_all(recs, test, stats, ks=(3, 1), n_train_users=N_TRAIN_USERS)
    assert [(f.name, f.dataType.simpleString()) for f in out.schema.fields] == [
        ("variant", "string"),
        ("metric", "string"),
        ("k", "int"),
        ("segment", "string"),
        ("value", "double"),
    ]
    _assert_close(_as_dict(out), EXPECTED)


def test_one_function_per_metric_gives_the_same_values(hand):
    recs, test, stats = hand
    ks = (1, 3)
    parts = [
        M.recall_at_k(recs, test, stats, ks=ks),
        M.precision_at_k(recs, test, stats, ks=ks),
        M.hit_rate_at_k(recs, test, stats, ks=ks),
        M.ndcg_at_k(recs, test, stats, ks=ks),
        M.map_at_k(recs, test, stats, ks=ks),
        M.catalog_coverage(recs, stats, ks=ks),
        M.recall_all_users_at_k(recs, test, stats, ks=ks),
        M.long_tail_coverage(recs, stats, ks=ks),
        M.long_tail_coverage_interacted(recs, stats, ks=ks),
        M.aplt(recs, stats, ks=ks),
        M.aplt_interacted(recs, stats, ks=ks),
        M.arp(recs, stats, ks=ks),
        M.gini(recs, stats, ks=ks),
        M.entropy(recs, stats, ks=ks),
        M.novelty(recs, stats, ks=ks, n_train_users=N_TRAIN_USERS),
    ]
    _assert_close(_as_dict(reduce(lambda a, b: a.unionByName(b), parts)), EXPECTED)


def test_evaluated_users_are_counted(hand):
    recs, test, stats = hand
    got = M.evaluated_users_table(recs, test, stats)
    expected = pd.DataFrame(
        [
            # A lists u1..u4; u5 has test items but no A list; u4 has an A list but no test item
            ("A", "all", 4, 1, 1),
            ("A", "head", 3, 1, 2),  # head users u1, u2, u5; u3, u4 have A lists but no head item
            ("A", "tail", 1, 0, 3),  # tail user u1 (u3's c2 is cold); excluded u2, u3, u4
            ("A", "cold", 2, 0, 2),
            ("B", "all", 4, 2, 0),  # B lists u1, u5: u2, u3 count with zeros
            ("B", "head", 3, 1, 0),
            ("B", "tail", 1, 0, 1),  # u1; u5 has a B list but no tail test item
            ("B", "cold", 2, 1, 1),
        ],
        columns=["variant", "segment", "evaluated_users", "evaluated_without_list", "excluded_users"],
    )
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    summary = M.evaluated_users(recs, test, stats)
    assert summary["evaluated_users"] == {"all": 4, "head": 3, "tail": 1, "cold": 2}
    assert summary["variants"]["A"] == {
        "users_with_list": 4,
        "evaluated_without_list": {"all": 1, "head": 1, "tail": 0, "cold": 0},
        "excluded_users": {"all": 1, "head": 2, "tail": 3, "cold": 2},
    }
    assert summary["variants"]["B"]["users_with_list"] == 2


def test_gini_bounds(spark):
    stats = spark.createDataFrame([(i, 1, 1, False) for i in "abcd"], STATS)
    equal = spark.createDataFrame([("eq", f"u{n}", i, 1) for n, i in enumerate("abcd")], RECS)
    single = spark.createDataFrame([("one", f"u{n}", "a", 1) for n in range(3)], RECS)
    got = _as_dict(M.gini(equal.unionByName(single), stats, ks=(1,)))
    assert got == pytest.approx(
        {("eq", "gini", 1, "all"): 0.0, ("one", "gini", 1, "all"): (4 - 1) / 4}, abs=1e-12
    )


def test_lorenz_curve_points(hand):
    recs, _, stats = hand
    curve = M.lorenz_curve(recs, stats, k=3, points=11)
    a = curve[curve.variant == "A"]
    # A at K = 3, sorted x = [0, 0, 0, 0, 1, 1, 1, 2, 2, 4]: cumulative sums over 11
    assert a.share_of_items.tolist() == pytest.approx([j / 10 for j in range(11)])
    assert a.share_of_exposure.tolist() == pytest.approx([c / 11 for c in (0, 0, 0, 0, 0, 1, 2, 3, 5, 7, 11)])
    fine = M.lorenz_curve(recs, stats, k=3)
    assert list(fine.columns) == ["variant", "share_of_items", "share_of_exposure"]
    assert len(fine) == 2 * 101
    # between items the curve is linear: at 55% of the items, halfway from 1/11 to 2/11
    b = fine[(fine.variant == "A") & np.isclose(fine.share_of_items, 0.55)]
    assert b.share_of_exposure.item() == pytest.approx(1.5 / 11)


POP_ITEMS = [  # (item_id, popularity): 20 items, deciles of 2; ties ordered by item_id
    ("z", 9), ("d", 7), ("b", 7), ("c", 7), ("e", 5), ("g", 4), ("f", 4), ("k", 3), ("h", 3), ("j", 3),
    ("i", 3), ("l", 2), ("o", 1), ("m", 1), ("n", 1), ("p", 0), ("t", 0), ("q", 0), ("s", 0), ("r", 0),
]  # fmt: skip
# sorted: z | b c d | e | f g | h i j k | l | m n o | p q r s t
EXPECTED_DECILES = {
    "z": 1, "b": 1, "c": 2, "d": 2, "e": 3, "f": 3, "g": 4, "h": 4, "i": 5, "j": 5,
    "k": 6, "l": 6, "m": 7, "n": 7, "o": 8, "p": 8, "q": 9, "r": 9, "s": 10, "t": 10,
}  # fmt: skip


def test_popularity_deciles_with_ties(spark):
    stats = spark.createDataFrame([(i, p, p, p < 5) for i, p in POP_ITEMS], STATS)
    got = {r.item_id: r.decile for r in M.popularity_deciles(stats).collect()}
    assert got == EXPECTED_DECILES


def test_recall_by_decile(spark):
    stats = spark.createDataFrame([(i, p, p, p < 5) for i, p in POP_ITEMS], STATS)
    test = spark.createDataFrame(
        [
            ("u1", "z"),
            ("u1", "c"),
            ("u1", "s"),
            ("u2", "z"),
            ("u2", "b"),
            ("u2", "b"),
            ("u3", "t"),
            ("u3", "zz"),
        ],
        TEST,
    )  # "zz" is not in the catalogue: no decile, left out
    recs = spark.createDataFrame(
        [("V", "u1", "z", 1), ("V", "u1", "s", 2), ("V", "u1", "c", 3), ("V", "u2", "b", 1), ("V", "u3", "q", 1),
         ("W", "u3", "t", 1), ("W", "u3", "zz", 2)],
        RECS,
    )  # fmt: skip
    got = M.recall_by_decile(recs, test, stats, k=2)
    assert list(got.columns) == ["variant", "decile", "recall", "n_test"]
    assert got.decile.tolist() == list(range(1, 11)) * 2
    # decile 1 = {z, b}: test pairs (u1,z) (u2,z) (u2,b); decile 2 = {c, d}: (u1,c); decile 10 = {s, t}: (u1,s) (u3,t)
    assert got.n_test.tolist() == [3, 1, 0, 0, 0, 0, 0, 0, 0, 2] * 2
    v, w = got[got.variant == "V"], got[got.variant == "W"]
    # V top-2: u1 {z, s}, u2 {b}, u3 {q}: hits (u1,z) (u2,b) in decile 1, (u1,s) in decile 10; c is at rank 3
    assert v.recall.tolist()[:2] == [2 / 3, 0 / 1] and v.recall.tolist()[9] == 1 / 2
    assert w.recall.tolist()[:2] == [0.0, 0.0] and w.recall.tolist()[9] == 1 / 2
    assert v.recall.iloc[2:9].isna().all()


# --- the Spark implementation against a pure-Python reference on random lists ------------------
def _segments(item: str, stats: dict) -> set[str]:
    pop, _, lt = stats[item]
    return {"all", "cold" if pop == 0 else "tail" if lt else "head"}


def _reference(lists, test_pairs, stats, ks, n_train_users) -> dict:
    """The definitions of docs/evaluation.md, written out user by user with numpy."""
    rel: dict[str, set[str]] = {}
    for u, i in test_pairs:
        rel.setdefault(u, set()).add(i)
    out = {}
    catalogue = sorted(stats)
    tail_items = {i for i in catalogue if not _segments(i, stats) & {"head"}}  # tail and cold
    warm_tail = {i for i in catalogue if "tail" in _segments(i, stats)}
    all_users = {u for u, r in rel.items() if r}
    for v, by_user in lists.items():
        for k in ks:
            for seg in ("all", "head", "tail", "cold"):
                users = {u: {i for i in items if seg in _segments(i, stats)} for u, items in rel.items()}
                users = {u: r for u, r in users.items() if r}
                if not users:
                    continue
                vals = {m: [] for m in M.ACCURACY_METRICS}
                for u, r in users.items():
                    top = by_user.get(u, [])[:k]
                    flags = [i in r for i in top]
                    h = sum(flags)
                    depth = min(len(r), k)
                    vals["recall"].append(h / len(r))
                    vals["precision"].append(h / k)
                    vals["hit_rate"].append(float(h > 0))
                    dcg = sum(1 / log2(n + 2) for n, f in enumerate(flags) if f)
                    vals["ndcg"].append(dcg / sum(1 / log2(n + 2) for n in range(depth)))
                    ap = sum(sum(flags[: n + 1]) / (n + 1) for n, f in enumerate(flags) if f)
                    vals["map"].append(ap / depth)
                for m, xs in vals.items():
                    out[(v, m, k, seg)] = float(np.mean(xs))
                if seg != "all":
                    out[(v, "recall_all_users", k, seg)] = float(np.sum(vals["recall"])) / len(all_users)
            tops = {u: items[:k] for u, items in by_user.items() if items}
            pairs = [i for top in tops.values() for i in top]
            x = np.array([sum(i == j for j in pairs) for i in catalogue], dtype=float)
            p = x[x > 0] / x.sum()
            xs = np.sort(x)
            n = len(xs)
            out[(v, "catalog_coverage", k, "all")] = len(set(pairs)) / len(catalogue)
            out[(v, "long_tail_coverage", k, "all")] = len(set(pairs) & tail_items) / len(tail_items)
            out[(v, "long_tail_coverage_interacted", k, "all")] = len(set(pairs) & warm_tail) / len(warm_tail)
            out[(v, "aplt_interacted", k, "all")] = float(
                np.mean([sum(i in warm_tail for i in t) / len(t) for t in tops.values()])
            )
            out[(v, "aplt", k, "all")] = float(
                np.mean([sum(i in tail_items for i in t) / len(t) for t in tops.values()])
            )
            out[(v, "arp", k, "all")] = float(
                np.mean([np.mean([stats[i][0] for i in t]) for t in tops.values()])
            )
            out[(v, "novelty", k, "all")] = float(
                np.mean([log2((n_train_users + 1) / (stats[i][1] + 1)) for i in pairs])
            )
            out[(v, "entropy", k, "all")] = float(-(p * np.log2(p)).sum())
            out[(v, "gini", k, "all")] = float(
                ((2 * np.arange(1, n + 1) - n - 1) * xs).sum() / (n * xs.sum())
            )
    return out


def test_spark_matches_the_reference_on_random_lists(spark):
    rng = random.Random(2024)
    items = [f"i{n:02d}" for n in range(50)]
    pops = {i: rng.choice([0, 0, 1, 1, 2, 3, 5, 8, 13, 40]) for i in items}
    head = set(sorted(items, key=lambda i: (-pops[i], i))[:10])  # top 20% by training count
    stats = {i: (pops[i], min(pops[i], rng.randint(1, 8)) if pops[i] else 0, i not in head) for i in items}
    users = [f"u{n:02d}" for n in range(30)]
    lists = {
        v: {u: rng.sample(items, n) for u in users if (n := rng.randint(0, 7))}  # 0: no list at all
        for v in ("alpha", "beta")
    }
    test_pairs = [(u, rng.choice(items)) for u in users for _ in range(rng.choice([0, 1, 2, 4]))]
    ks = (3, 5)
    recs = spark.createDataFrame(_recs_rows(lists), RECS)
    test = spark.createDataFrame(test_pairs, TEST)
    item_stats = spark.createDataFrame([(i, *s) for i, s in stats.items()], STATS)
    got = _as_dict(M.evaluate_all(recs, test, item_stats, ks=ks, n_train_users=40))
    _assert_close(got, _reference(lists, test_pairs, stats, ks, 40))


def test_bad_ks_fail(hand):
    recs, test, stats = hand
    with pytest.raises(ValueError, match=r"evaluate\.k"):
        M.evaluate_all(recs, test, stats, ks=(0, 10), n_train_users=1)
