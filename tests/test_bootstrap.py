"""Paired bootstrap intervals: hand-checkable cases, seeding, and a numpy reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from longtail.ml import bootstrap as B


def _values(per_variant: dict[str, list[float]], k: int = 10) -> pd.DataFrame:
    rows = [
        (v, k, f"u{i}", x, x) for v, xs in per_variant.items() for i, x in enumerate(xs)
    ]  # ndcg = recall here: the same numbers serve both
    return pd.DataFrame(rows, columns=["variant", "k", "user_id", "recall", "ndcg"])


def test_a_constant_per_user_difference_has_a_zero_width_interval():
    values = _values({"cf": [0.2, 0.5, 0.0], "fused": [0.3, 0.6, 0.1]})
    got = B.paired_bootstrap_means(values, baseline="cf", metrics=["ndcg"], n_boot=200, seed=1)
    assert len(got) == 1
    row = got.iloc[0]
    # every resample's mean difference is 0.1: paired resampling cancels the user-to-user spread
    assert (row.variant, row.metric, row.k, row.segment) == ("fused", "ndcg", 10, "all")
    assert row["diff"] == pytest.approx(0.1) and row.lo == pytest.approx(0.1) and row.hi == pytest.approx(0.1)
    assert (row.n_users, row.n_boot) == (3, 200)


def test_two_users_differences_zero_and_one():
    # per-user differences [0, 1]: a resample's mean is 0 (p 1/4), 1/2 (p 1/2) or 1 (p 1/4), so the
    # 2.5th percentile is 0 and the 97.5th is 1; the point estimate is 1/2
    values = _values({"cf": [0.0, 0.0], "x": [0.0, 1.0]})
    got = B.paired_bootstrap_means(values, baseline="cf", metrics=["recall"], n_boot=2000, seed=7).iloc[0]
    assert (got["diff"], got.lo, got.hi) == (0.5, 0.0, 1.0)


def test_seeded_and_matching_a_numpy_reference():
    rng = np.random.default_rng(3)
    cf, fused = rng.random(40), rng.random(40)
    values = _values({"cf": list(cf), "fused": list(fused)})
    a = B.paired_bootstrap_means(values, baseline="cf", metrics=["ndcg"], n_boot=500, seed=11)
    b = B.paired_bootstrap_means(values, baseline="cf", metrics=["ndcg"], n_boot=500, seed=11)
    pd.testing.assert_frame_equal(a, b)
    # reference: the same multinomial draws, means of resampled per-user differences, percentiles
    draws = np.random.default_rng(11).multinomial(40, np.full(40, 1 / 40), size=500)
    users = sorted(f"u{i}" for i in range(40))  # the pivot orders users by id
    d = pd.Series(fused - cf, index=[f"u{i}" for i in range(40)]).loc[users].to_numpy()
    boot = draws @ d / 40
    lo, hi = np.quantile(boot, [0.025, 0.975])
    assert a.iloc[0]["diff"] == pytest.approx(d.mean())
    assert (a.iloc[0].lo, a.iloc[0].hi) == pytest.approx((lo, hi))
    assert a.iloc[0].lo < d.mean() < a.iloc[0].hi
    other = B.paired_bootstrap_means(values, baseline="cf", metrics=["ndcg"], n_boot=500, seed=12)
    assert other.iloc[0].lo != a.iloc[0].lo


def test_no_baseline_or_no_resamples_gives_no_rows():
    values = _values({"fused": [0.1, 0.2]})
    assert B.paired_bootstrap_means(values, baseline="cf", metrics=["ndcg"], n_boot=10, seed=1).empty
    values = _values({"cf": [0.1], "fused": [0.2]})
    assert B.paired_bootstrap_means(values, baseline="cf", metrics=["ndcg"], n_boot=0, seed=1).empty


def test_coverage_difference_recomputed_per_resample_and_shifted_by_the_bias():
    # 4 long-tail items. cf shows x to u1 and x to u2; fused shows x to u1 and y to u2; popular
    # shows no long-tail item at all. Full data: fused covers 2, cf 1 -> diff 1/4 (1 item).
    # A resample holds both users (p 1/2: 1 item more), only u1 (p 1/4: both cover x, 0) or only
    # u2 (p 1/4: x vs y, 0). Resampled differences are 0 or 1 item, mean m (about 1/2) below the
    # full-data 1: shifted by 1 - m they are 1 - m or 2 - m, so the interval is [1 - m, 2 - m] / 4.
    lists = pd.DataFrame(
        [("cf", 10, "u1", "x"), ("cf", 10, "u2", "x"), ("fused", 10, "u1", "x"), ("fused", 10, "u2", "y")],
        columns=["variant", "k", "user_id", "item_id"],
    ).assign(long_tail_coverage=True)
    got = B.paired_bootstrap_coverage(
        lists,
        ["u1", "u2"],
        variants=["popular", "cf", "fused"],
        baseline="cf",
        sizes={"long_tail_coverage": 4},
        n_boot=1000,
        seed=3,
    )
    m = float(np.mean([np.all(w > 0) for chunk in B._draws(2, 1000, 3) for w in chunk]))
    assert 0.4 < m < 0.6
    row = got.set_index("variant").loc["fused"]
    assert (row.metric, row.k) == ("long_tail_coverage", 10)
    assert row["diff"] == 0.25
    assert (row.lo, row.hi) == pytest.approx(((1 - m) / 4, (2 - m) / 4))
    # popular has no long-tail row: it covers nothing; cf's x is lost in every resample: -1/4 exactly
    assert got.set_index("variant").loc["popular", ["diff", "lo", "hi"]].tolist() == pytest.approx(
        [-0.25] * 3
    )


def test_coverage_counts_only_the_flagged_items_and_the_given_users():
    lists = pd.DataFrame(
        [
            ("cf", 5, "u1", "a", False),
            ("fused", 5, "u1", "a", False),  # not interacted tail: does not count
            ("fused", 5, "u1", "b", True),
            ("fused", 5, "u9", "c", True),  # not an evaluated user: left out
        ],
        columns=["variant", "k", "user_id", "item_id", "long_tail_coverage_interacted"],
    )
    got = B.paired_bootstrap_coverage(
        lists,
        ["u1"],
        variants=["cf", "fused"],
        baseline="cf",
        sizes={"long_tail_coverage_interacted": 2},
        n_boot=50,
        seed=1,
    ).iloc[0]
    # one user, always drawn: fused covers b (1 of 2), cf nothing
    assert (got["diff"], got.lo, got.hi) == (0.5, 0.5, 0.5)
