"""Head / tail / cold: one rule, interacted items only in the head, ties never split by id."""

from __future__ import annotations

import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from longtail.ml import metrics as M
from longtail.ml.segments import item_segments

pytestmark = pytest.mark.spark

INTER = "user_id string, item_id string"
RECS = "variant string, user_id string, item_id string, rank int"


def _log(spark, counts: dict[str, int]):
    rows = [(f"u{n}", item) for item, c in counts.items() for n in range(c)]
    return spark.createDataFrame(rows, INTER)


def _catalogue(spark, ids):
    return spark.createDataFrame([(i,) for i in ids], "item_id string")


def _segments(df) -> dict[str, str]:
    return {r.item_id: r.item_segment for r in df.collect()}


@pytest.fixture(scope="module")
def sparse_catalogue(spark):
    """20 items, 80% never interacted: a 6, b 3, c 2, d 1 (12 interactions); x00..x15 cold."""
    counts = {"a": 6, "b": 3, "c": 2, "d": 1}
    cold = [f"x{n:02d}" for n in range(16)]
    return _log(spark, counts), _catalogue(spark, [*counts, *cold]), cold


def test_mass_rule_on_a_mostly_cold_catalogue(sparse_catalogue):
    log, catalogue, cold = sparse_catalogue
    got = item_segments(log, catalogue, rule="mass", head_share=0.8)
    # running totals 6, 9, 11, 12 of 12; limit 0.8 x 12 = 9.6: a, b head; c, d tail; the rest cold.
    # (The old rule, the top 20% of the 20-item catalogue, made all four interacted items head.)
    assert _segments(got) == {
        "a": "head",
        "b": "head",
        "c": "tail",
        "d": "tail",
        **dict.fromkeys(cold, "cold"),
    }
    rows = {r.item_id: r for r in got.collect()}
    assert rows["a"].popularity == 6 and rows["a"].n_users == 6 and not rows["a"].is_long_tail
    assert rows["c"].is_long_tail and rows["x00"].is_long_tail and rows["x00"].popularity == 0


def test_items_rule_counts_interacted_items_only(sparse_catalogue):
    log, catalogue, cold = sparse_catalogue
    got = item_segments(log, catalogue, rule="items", head_fraction=0.5)
    # 4 interacted items, at most 0.5 x 4 = 2 in the head: a, b
    assert _segments(got) == {
        "a": "head",
        "b": "head",
        "c": "tail",
        "d": "tail",
        **dict.fromkeys(cold, "cold"),
    }
    small = item_segments(log, catalogue, rule="items", head_fraction=0.2)  # 0.8 items: none fits
    assert {s for s in _segments(small).values()} == {"tail", "cold"}


def test_tied_items_share_their_segment_whatever_their_ids(spark):
    counts = {"z": 5, "a": 2, "m": 2, "b": 2, "y": 1}  # 12 interactions; limit 9.6
    got = item_segments(_log(spark, counts), _catalogue(spark, counts), rule="mass", head_share=0.8)
    # z: 5 <= 9.6 head; the three items at 2 would bring it to 11 > 9.6: all three stay tail
    assert _segments(got) == {"z": "head", "a": "tail", "m": "tail", "b": "tail", "y": "tail"}
    tied = item_segments(_log(spark, counts), _catalogue(spark, counts), rule="items", head_fraction=0.8)
    # 5 interacted, limit 4 items: z (1) and the tie group at 2 (1 + 3 = 4) fit; y does not
    assert _segments(tied) == {"z": "head", "a": "head", "m": "head", "b": "head", "y": "tail"}
    even = item_segments(_log(spark, dict.fromkeys("abcd", 3)), _catalogue(spark, "abcd"), head_share=0.8)
    assert set(_segments(even).values()) == {"tail"}  # no item is more popular than another


def test_both_long_tail_coverages_and_aplts_on_the_mostly_cold_catalogue(spark, sparse_catalogue):
    log, catalogue, _ = sparse_catalogue
    stats = item_segments(log, catalogue, rule="mass", head_share=0.8)
    recs = spark.createDataFrame(
        [("V", "u1", "a", 1), ("V", "u1", "c", 2), ("V", "u1", "x00", 3), ("V", "u2", "x01", 1), ("V", "u2", "b", 2)],
        RECS,
    )  # fmt: skip
    got = {
        (r.metric, r.k): r.value
        for df in (
            M.long_tail_coverage(recs, stats, ks=[3]),
            M.long_tail_coverage_interacted(recs, stats, ks=[3]),
            M.aplt(recs, stats, ks=[3]),
            M.aplt_interacted(recs, stats, ks=[3]),
        )
        for r in df.collect()
    }
    # long tail = c, d + 16 cold = 18 items, of which c, x00, x01 shown; interacted tail = c, d
    assert got[("long_tail_coverage", 3)] == pytest.approx(3 / 18)
    assert got[("long_tail_coverage_interacted", 3)] == pytest.approx(1 / 2)
    # u1 [a, c, x00]: 2 long-tail, 1 interacted tail; u2 [x01, b]: 1 long-tail, 0 interacted tail
    assert got[("aplt", 3)] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert got[("aplt_interacted", 3)] == pytest.approx((1 / 3 + 0) / 2)


def test_unknown_rule_names_the_key(sparse_catalogue):
    log, catalogue, _ = sparse_catalogue
    with pytest.raises(ValueError, match=r"recommend\.head_rule"):
        item_segments(log, catalogue, rule="top")


def _children(node) -> list:
    children = node.children()
    return [children.apply(i) for i in range(children.size())]


def _over_popularity_values(window) -> bool:
    """Whether a Window's input is one row per distinct popularity value: below it (through
    projections, sorts, filters, other windows) an aggregate grouped by ``popularity`` alone."""
    node = window
    while node.nodeName() in ("Window", "Sort", "Project", "Filter", "Exchange"):
        node = _children(node)[0]
    if not node.nodeName().endswith("Aggregate"):
        return False
    keys = node.groupingExpressions()
    return keys.size() == 1 and keys.apply(0).name() == "popularity"


def _whole_table_windows(df) -> list[str]:
    """The Window operators of ``df``'s physical plan that have no partition spec (Spark moves all
    their input to one partition and logs "No Partition Defined for Window operation") and whose
    input is not the distinct popularity values: those are few by construction, as d distinct
    values need d (d + 1) / 2 interactions (d <= 44,721 at 10^9), and stay single-partition."""
    found, todo = [], [df._jdf.queryExecution().sparkPlan()]
    while todo:
        node = todo.pop()
        if (
            node.nodeName() == "Window"
            and node.partitionSpec().isEmpty()
            and not _over_popularity_values(node)
        ):
            found.append(node.toString())
        todo.extend(_children(node))
    return found


def test_no_window_moves_a_whole_table_to_one_partition(spark, sparse_catalogue):
    log, catalogue, _ = sparse_catalogue
    stats = item_segments(log, catalogue, rule="mass", head_share=0.8)
    recs = spark.createDataFrame([("V", "u1", "a", 1), ("V", "u2", "x01", 1)], RECS)
    plans = {
        "item_segments": stats,
        "items rule": item_segments(log, catalogue, rule="items", head_fraction=0.5),
        "popularity_deciles": M.popularity_deciles(stats),
        "gini": M.gini(recs, stats, ks=[1]),
        "long_tail_coverage": M.long_tail_coverage(recs, stats, ks=[1]),
    }
    # the check sees a whole-table window where there is one
    assert _whole_table_windows(stats.withColumn("_r", F.row_number().over(Window.orderBy("item_id"))))
    assert {name: _whole_table_windows(df) for name, df in plans.items()} == {name: [] for name in plans}
