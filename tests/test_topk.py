"""Blocked top-K against a brute-force numpy top-K: whole results, ties, nulls, exclusions, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame

from longtail.core.schema import MissingColumnsError
from longtail.ml.topk import blocked_top_k
from longtail.ml.topk.common import EMPTY, Signal
from longtail.ml.topk.kernels import (
    block_top_k,
    candidates,
    composite,
    composite_keys,
    repeat_of,
    score_block,
)
from longtail.ml.topk.plan import balanced_labels, spark_hash_partition

pytestmark = pytest.mark.spark

N_Q, N_I = 37, 101
DIMS = {"a": 8, "b": 5}
KS = {"a": 6, "b": 15}
SIGNALS = [Signal("a_score", "qa", "ia", KS["a"]), Signal("b_score", "qb", "ib", KS["b"])]
NULL_Q = {"a": {2, 9}, "b": {9, 20}}  # query 9 has no vector at all: no rows
NULL_I = {"a": {5, 6, 70}, "b": {7, 71}}
FEW = 12  # the query that has only 4 eligible items (fewer than either k)


def make_data(seed: int = 7) -> dict:
    """Random vectors (float32-exact) with exact ties, nulls, gaps in the keys and exclusions."""
    rng = np.random.default_rng(seed)
    q_keys = np.sort(rng.choice(np.arange(10**12, 10**12 + 10**6), N_Q, replace=False))  # long, gaps
    i_keys = np.sort(rng.choice(np.arange(-5000, 5000), N_I, replace=False))  # negative, gaps
    i_keys[0], i_keys[-1] = -(2**31), 2**31 - 1  # the int32 extremes
    vec = {
        "qa": rng.standard_normal((N_Q, DIMS["a"])),
        "qb": rng.standard_normal((N_Q, DIMS["b"])),
        "ia": rng.standard_normal((N_I, DIMS["a"])),
        "ib": rng.standard_normal((N_I, DIMS["b"])),
    }
    vec = {n: v.astype(np.float32).astype(np.float64) for n, v in vec.items()}
    vec["ia"][[17, 40, 88]] = vec["ia"][3]  # identical item vectors: exact ties
    vec["qa"][1] = vec["ia"][3]  # ... at the top of query 1's list
    vec["qa"][4] = 0.0  # every item ties for query 4: the k lowest keys win
    vec["ib"][50:60] = vec["ib"][49]  # a group of 11 equal vectors ...
    vec["ib"][30:40] = 2 * vec["ib"][49]  # ... behind a group of 10: query 8's k=15 cuts the 11
    vec["qb"][8] = vec["ib"][49]
    excluded = {(u, i) for u in range(N_Q) for i in range(N_I) if rng.random() < 0.1}
    excluded = {(u, i) for u, i in excluded if u != FEW} | {(FEW, i) for i in range(4, N_I)}
    excluded |= {(8, 52), (1, 40)}  # inside tie groups
    return {"q_keys": q_keys, "i_keys": i_keys, "vec": vec, "excluded": excluded}


def frames(spark, data: dict) -> tuple[DataFrame, DataFrame, DataFrame]:
    vec, q_keys, i_keys = data["vec"], data["q_keys"], data["i_keys"]

    def cell(side: str, sig: str, row: int) -> list[float] | None:
        nulls = NULL_Q if side == "q" else NULL_I
        return None if row in nulls[sig] else vec[side + sig][row].tolist()

    queries = spark.createDataFrame(
        [(int(q_keys[u]), cell("q", "a", u), cell("q", "b", u)) for u in range(N_Q)],
        "user_idx long, qa array<float>, qb array<float>",
    )
    items = spark.createDataFrame(
        [(int(i_keys[i]), cell("i", "a", i), cell("i", "b", i)) for i in range(N_I)],
        "item_idx int, ia array<float>, ib array<float>",
    )
    pairs = [(int(q_keys[u]), int(i_keys[i])) for u, i in sorted(data["excluded"])]
    pairs += [
        (int(q_keys[0]), 123456),
        (7, int(i_keys[0])),
        (int(q_keys[3]), int(i_keys[5])),
    ] * 2  # unknown ids, repeats
    exclude = spark.createDataFrame(pairs, "user_idx long, item_idx int")
    return queries, items, exclude


def brute_force(data: dict, *, with_exclusions: bool = True, moments: bool = False) -> pd.DataFrame:
    """Every query's top-k per signal by sorting all its eligible items: (-score, key).

    ``moments``: also each query's mean and population std of every signal over all its eligible
    items (numpy's ``mean``/``std``), null without a query vector.
    """
    vec, q_keys, i_keys = data["vec"], data["q_keys"], data["i_keys"]
    excluded = data["excluded"] if with_exclusions else set()
    # float64 products summed per pair: equal vectors give equal scores
    scores = {s: (vec["q" + s][:, None, :] * vec["i" + s][None, :, :]).sum(-1) for s in DIMS}
    ranks: dict[tuple[int, int], dict[str, int]] = {}
    stats: dict[tuple[int, str], tuple[float, float]] = {}
    for s, k in KS.items():
        for u in set(range(N_Q)) - NULL_Q[s]:
            eligible = [i for i in range(N_I) if i not in NULL_I[s] and (u, i) not in excluded]
            stats[(u, s)] = (scores[s][u, eligible].mean(), scores[s][u, eligible].std())
            best = sorted(eligible, key=lambda i: (-scores[s][u, i], i_keys[i]))[:k]
            for r, i in enumerate(best):
                ranks.setdefault((u, i), {})[s] = r + 1
    rows = []
    for (u, i), rk in ranks.items():
        row = {"user_idx": int(q_keys[u]), "item_idx": int(i_keys[i])}
        for s in DIMS:
            null = u in NULL_Q[s] or i in NULL_I[s]
            row[f"{s}_score"] = np.nan if null else scores[s][u, i]
            row[f"{s}_score_rank"] = rk.get(s, 0)
            if moments:
                row[f"{s}_score_mean"], row[f"{s}_score_std"] = stats.get((u, s), (np.nan, np.nan))
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["user_idx", "item_idx"], ignore_index=True)


def collect(result: DataFrame) -> pd.DataFrame:
    pdf = result.toPandas().sort_values(["user_idx", "item_idx"], ignore_index=True)
    for s in DIMS:
        pdf[f"{s}_score_rank"] = pdf[f"{s}_score_rank"].fillna(0).astype(int)
    return pdf


def assert_same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    np.testing.assert_array_equal(actual[["user_idx", "item_idx"]], expected[["user_idx", "item_idx"]])
    for s in DIMS:
        np.testing.assert_array_equal(actual[f"{s}_score_rank"], expected[f"{s}_score_rank"], err_msg=s)
        np.testing.assert_allclose(actual[f"{s}_score"], expected[f"{s}_score"], atol=1e-5, err_msg=s)
        for m in ("mean", "std"):
            if f"{s}_score_{m}" in expected:
                got, want = actual[f"{s}_score_{m}"], expected[f"{s}_score_{m}"]
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=f"{s} {m}")


@pytest.fixture(scope="module")
def data() -> dict:
    return make_data()


@pytest.fixture(scope="module")
def inputs(spark, data):
    return frames(spark, data)


def test_reference_covers_the_cases(data):
    """The data really holds what the Spark tests claim to check."""
    ref = brute_force(data)
    q = data["q_keys"]
    few = ref[ref.user_idx == q[FEW]]
    assert len(few) == 4 and (few.a_score_rank > 0).all() and (few.b_score_rank > 0).all()
    assert not (ref.user_idx == q[9]).any()
    tied_a = ref[(ref.user_idx == q[4]) & (ref.a_score_rank > 0)]
    assert len(tied_a) == KS["a"] and (tied_a.a_score == 0).all()  # all items tie: keys decide
    cut = ref[(ref.user_idx == q[8]) & (ref.b_score_rank > 0)]
    low = cut[cut.b_score == cut.b_score.min()]
    assert len(cut) == KS["b"] and 0 < len(low) < 11  # the group of 11 equal vectors is cut by k
    assert ref.a_score.isna().any() and ref.b_score.isna().any()


@pytest.mark.parametrize(
    "blocks",
    [
        dict(block_queries=1000, block_items=1000),  # one block a side, larger than the input
        dict(block_queries=5, block_items=7),  # sizes that divide nothing
        dict(block_queries=8, block_items=13, query_blocks_per_task=2, item_blocks_per_task=2, row_chunk=3),
    ],
    ids=["one-block", "5x7", "several-item-partitions"],
)
def test_matches_brute_force(inputs, data, blocks):
    queries, items, exclude = inputs
    moments = [] if blocks["block_queries"] == 1000 else ["a_score", "b_score"]
    result = blocked_top_k(queries, items, SIGNALS, exclude=exclude, moments=moments, **blocks)
    types = {"user_idx": "bigint", "item_idx": "int"}
    for s in ("a_score", "b_score"):
        types |= {s: "double", f"{s}_rank": "int"} | (
            {f"{s}_mean": "double", f"{s}_std": "double"} if moments else {}
        )
    assert dict(result.dtypes) == types
    assert_same(collect(result), brute_force(data, moments=bool(moments)))


def test_without_exclusions(inputs, data):
    queries, items, _ = inputs
    result = blocked_top_k(queries, items, SIGNALS, block_queries=16, block_items=32, item_blocks_per_task=3)
    assert_same(collect(result), brute_force(data, with_exclusions=False))


def test_plan_crosses_blocks_not_rows(inputs, capsys):
    queries, items, exclude = inputs
    blocked_top_k(queries, items, SIGNALS, exclude=exclude, block_queries=8, block_items=16).explain()
    plan = capsys.readouterr().out
    assert plan.count("CartesianProduct") == 1 and "MapInArrow" in plan
    assert "BroadcastNestedLoopJoin" not in plan


def test_empty_items_give_an_empty_result(spark, inputs):
    queries, items, _ = inputs
    result = blocked_top_k(queries, items.limit(0), SIGNALS)
    assert result.count() == 0 and result.columns[:2] == ["user_idx", "item_idx"]


def test_balanced_labels_fill_every_partition_evenly(spark):
    from pyspark.sql import functions as F

    values = np.arange(-3000, 3000)
    spark_side = spark.createDataFrame([(int(v),) for v in values], "v int").select(
        F.pmod(F.hash("v"), F.lit(7))
    )
    np.testing.assert_array_equal(spark_hash_partition(values, 7), [r[0] for r in spark_side.collect()])
    labels = balanced_labels(23, 5)
    placed = (
        spark.createDataFrame([(b, int(x)) for b, x in enumerate(labels)], "b int, label int")
        .repartition(5, "label")
        .select("b", F.spark_partition_id().alias("p"))
        .collect()
    )
    assert all(r.p == r.b % 5 for r in placed) and len(placed) == 23


# --- the numpy kernels ---------------------------------------------------------------------------
def test_composite_orders_by_score_then_key():
    scores = np.array([1.5, -0.0, 0.0, -2.0, 1.5, np.inf, -np.inf, -1e-30], np.float32)
    keys = np.array([3, 2, 1, -(2**31), -5, 9, 0, 2**31 - 1])
    comp = composite(scores, keys)
    assert comp[6] == EMPTY
    order = [int(k) for k in keys[np.argsort(comp)]]
    assert order == [9, -5, 3, 1, 2, 2**31 - 1, -(2**31), 0]  # -0.0 ties with 0.0: key decides
    np.testing.assert_array_equal(composite_keys(comp[comp != EMPTY]), keys[comp != EMPTY])


def test_block_top_k_breaks_boundary_ties_by_column():
    scores = np.array(
        [[1, 5, 3, 3, 3, 0], [2, 2, 2, 2, 2, 2], [-np.inf, 4, -np.inf, -np.inf, 1, -np.inf]], np.float32
    )
    got = [sorted(r) for r in block_top_k(scores, 3).tolist()]
    assert got[0] == [1, 2, 3] and got[1] == [0, 1, 2] and {1, 4} <= set(got[2])


def test_equal_vectors_score_equal_wherever_they_sit():
    """A GEMM entry depends on its position; the repeated vectors' scores must not."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((300, 384), dtype=np.float32)
    v = rng.standard_normal(384, dtype=np.float32)
    got = []
    for n, places in [(17, [0, 5, 16]), (1000, [3, 500, 999]), (4097, [4096])]:
        mat = rng.standard_normal((n, 384), dtype=np.float32)
        mat[places] = v
        rep = repeat_of(mat, np.isin(np.arange(n), places))
        assert set(rep[places]) == {places[0]} and (np.delete(rep, places) == -1).all()
        scores = score_block(q, np.ones(300, bool), mat, np.ones(n, bool), rep)
        got += [scores[:, c] for c in places]
    assert all((g == got[0]).all() for g in got)


def test_candidates_keep_every_entry_that_can_enter():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 20, (50, 40)).astype(np.float32)  # many ties
    floor = np.where(rng.random(50) < 0.3, -np.inf, rng.integers(5, 25, 50)).astype(np.float32)
    idx = candidates(scores, 4, floor)
    for r in range(50):
        got = set(idx[r][idx[r] >= 0].tolist())
        need = set(np.flatnonzero(scores[r] >= floor[r]).tolist())
        if len(need) <= 4:
            assert got == need
        else:  # the row's own exact top 4 (lower column on ties)
            assert got == set(sorted(range(40), key=lambda c: (-scores[r, c], c))[:4])


# --- errors --------------------------------------------------------------------------------------
def test_bad_arguments(inputs):
    queries, items, _ = inputs
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        blocked_top_k(queries, items, [Signal("a_score", "qa", "ia", 0)])
    with pytest.raises(ValueError, match="block_items must be an integer >= 1"):
        blocked_top_k(queries, items, SIGNALS, block_items=0)
    with pytest.raises(ValueError, match="collide"):
        blocked_top_k(queries, items, [SIGNALS[0], Signal("a_score", "qb", "ib", 3)])
    with pytest.raises(ValueError, match="at least one signal"):
        blocked_top_k(queries, items, [])
    with pytest.raises(ValueError, match="moments must be a list of signal names"):
        blocked_top_k(queries, items, SIGNALS, moments=["c_score"])
    with pytest.raises(MissingColumnsError, match="nope"):
        blocked_top_k(queries, items, [Signal("x", "nope", "ia", 3)])
    with pytest.raises(MissingColumnsError, match="user_idx"):
        blocked_top_k(queries, items, SIGNALS, exclude=items.select("item_idx"))
    with pytest.raises(ValueError, match="must be an integer column"):
        blocked_top_k(queries.withColumn("user_idx", queries.user_idx.cast("string")), items, SIGNALS)
    with pytest.raises(ValueError, match="array<float> or array<double>"):
        blocked_top_k(queries, items.withColumn("ia", items.ia.cast("array<string>")), SIGNALS)


def test_vector_lengths_are_checked(spark):
    q = spark.createDataFrame([(1, [1.0, 2.0]), (2, None), (3, [1.0, 0.0])], "user_idx int, v array<float>")
    ragged = spark.createDataFrame([(1, [1.0, 2.0]), (2, [1.0, 2.0, 3.0])], "item_idx int, w array<float>")
    with pytest.raises(ValueError, match="column 'w' holds vectors of different lengths"):
        blocked_top_k(q, ragged, [Signal("s", "v", "w", 1)])
    wider = spark.createDataFrame([(1, [1.0, 2.0, 3.0])], "item_idx int, w array<float>")
    with pytest.raises(ValueError, match="'v' has length 2, 'w' has 3"):
        blocked_top_k(q, wider, [Signal("s", "v", "w", 1)])
    big = spark.createDataFrame([(2**40, [1.0, 2.0])], "item_idx long, w array<float>")
    with pytest.raises(ValueError, match="32-bit"):
        blocked_top_k(q, big, [Signal("s", "v", "w", 1)])


def test_bad_rows_fail_the_job_with_the_reason(spark):
    q = spark.createDataFrame([(1, [1.0, 2.0]), (1, [0.0, 1.0])], "user_idx int, v array<float>")
    i = spark.createDataFrame([(1, [1.0, 2.0])], "item_idx int, w array<float>")
    with pytest.raises(Exception, match="query key 1 occurs more than once"):
        blocked_top_k(q, i, [Signal("s", "v", "w", 1)]).collect()
    nan = spark.createDataFrame([(1, [1.0, float("nan")])], "item_idx int, w array<float>")
    with pytest.raises(Exception, match="NaN or infinite"):
        blocked_top_k(q.limit(1), nan, [Signal("s", "v", "w", 1)]).collect()
