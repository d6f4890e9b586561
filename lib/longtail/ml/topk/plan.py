"""Driver side of the blocked top-K: argument checks, sizes, block assignment, the Spark plan pieces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from longtail.core.schema import require_columns

# --- driver side: validation and sizes ----------------------------------------------------------
from longtail.ml.topk.common import _I, _IB, _INT_TYPES, _KEY_OFFSET, _PART, _Q, _QB, Signal, _Plan
from longtail.ml.topk.pack import _pack_items_fn, _pack_queries_fn


def _check_args(
    queries: DataFrame,
    items: DataFrame,
    signals: Sequence[Signal],
    query_key: str,
    item_key: str,
    exclude: DataFrame | None,
    moments: Sequence[str],
) -> None:
    if not signals:
        raise ValueError("blocked_top_k: at least one signal is needed")
    names = [s.name for s in signals]
    if isinstance(moments, str) or not set(moments) <= set(names):
        raise ValueError(f"blocked_top_k: moments must be a list of signal names {names}, got {moments!r}")
    outputs = [query_key, item_key] + [c for n in names for c in (n, f"{n}_rank")]
    outputs += [c for n in names if n in moments for c in (f"{n}_mean", f"{n}_std")]
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"blocked_top_k: output column names collide: {outputs}")
    for s in signals:
        if not isinstance(s.k, int) or s.k < 1:
            raise ValueError(f"blocked_top_k: signal {s.name!r}: k must be an integer >= 1, got {s.k!r}")
    require_columns(queries, [query_key, *(s.query_col for s in signals)], "blocked_top_k queries")
    require_columns(items, [item_key, *(s.item_col for s in signals)], "blocked_top_k items")
    if exclude is not None:
        require_columns(exclude, [query_key, item_key], "blocked_top_k exclude")
    for df, key, what in [(queries, query_key, "queries"), (items, item_key, "items")]:
        if not isinstance(df.schema[key].dataType, _INT_TYPES):
            raise ValueError(
                f"blocked_top_k: {what}.{key} must be an integer column, got {df.schema[key].dataType}"
            )
    for s in signals:
        for df, col, what in [(queries, s.query_col, "queries"), (items, s.item_col, "items")]:
            dtype = df.schema[col].dataType
            if not (
                isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.FloatType | T.DoubleType)
            ):
                raise ValueError(
                    f"blocked_top_k: {what}.{col} must be array<float> or array<double>, got {dtype}"
                )


def _sizes(
    queries: DataFrame, items: DataFrame, signals: Sequence[Signal], query_key: str, item_key: str
) -> tuple[int, int, list[int]]:
    """Counts and the common vector length per signal, from ONE aggregate job (nothing collected)."""

    def length(col: str) -> Any:
        return F.when(F.col(col).isNotNull(), F.size(col))

    q_aggs = [F.count(F.lit(1)).alias("n_q")]
    i_aggs = [F.count(F.lit(1)).alias("n_i"), F.min(item_key).alias("min_i"), F.max(item_key).alias("max_i")]
    for j, s in enumerate(signals):
        q_aggs += [F.min(length(s.query_col)).alias(f"qlo{j}"), F.max(length(s.query_col)).alias(f"qhi{j}")]
        i_aggs += [F.min(length(s.item_col)).alias(f"ilo{j}"), F.max(length(s.item_col)).alias(f"ihi{j}")]
    row = queries.agg(*q_aggs).crossJoin(items.agg(*i_aggs)).first()
    assert row is not None  # an aggregate without grouping has exactly one row
    if row["n_i"] and (row["min_i"] < -_KEY_OFFSET or row["max_i"] >= _KEY_OFFSET):
        raise ValueError(
            f"blocked_top_k: items.{item_key} must fit in 32-bit int, got [{row['min_i']}, {row['max_i']}]"
        )
    dims = []
    for j, s in enumerate(signals):
        for lo, hi, col in [
            (row[f"qlo{j}"], row[f"qhi{j}"], s.query_col),
            (row[f"ilo{j}"], row[f"ihi{j}"], s.item_col),
        ]:
            if lo != hi:
                raise ValueError(
                    f"blocked_top_k: column {col!r} holds vectors of different lengths ({lo} to {hi})"
                )
        q_d, i_d = row[f"qlo{j}"], row[f"ilo{j}"]
        if q_d is not None and i_d is not None and q_d != i_d:
            raise ValueError(
                f"blocked_top_k: signal {s.name!r}: {s.query_col!r} has length {q_d}, {s.item_col!r} has {i_d}"
            )
        dims.append(0 if q_d is None or i_d is None else int(q_d))  # all-null on a side: no scores
    return int(row["n_q"]), int(row["n_i"]), dims


def _output_schema(
    queries: DataFrame,
    items: DataFrame,
    signals: Sequence[Signal],
    query_key: str,
    item_key: str,
    moments: Sequence[str],
) -> T.StructType:
    fields = [
        T.StructField(query_key, queries.schema[query_key].dataType, False),
        T.StructField(item_key, items.schema[item_key].dataType, False),
    ]
    for s in signals:
        fields += [
            T.StructField(s.name, T.DoubleType(), True),
            T.StructField(f"{s.name}_rank", T.IntegerType(), True),
        ]
        if s.name in moments:
            fields += [
                T.StructField(f"{s.name}_mean", T.DoubleType(), True),
                T.StructField(f"{s.name}_std", T.DoubleType(), True),
            ]
    return T.StructType(fields)


# --- Spark plan pieces ---------------------------------------------------------------------------
def _bucket(col: str, n: int) -> Any:
    """The block of a key: a pure function of the key (int64-cast, so int and long keys agree)."""
    return F.pmod(F.xxhash64(F.col(col).cast("long")), F.lit(n)).cast("int")


def _query_blocks(
    queries: DataFrame,
    exclude: DataFrame | None,
    signals: Sequence[Signal],
    plan: _Plan,
    query_key: str,
    item_key: str,
    labels: np.ndarray,
) -> DataFrame:
    vecs = [F.col(s.query_col).alias(f"_v{j}") for j, s in enumerate(signals)]
    rows = queries.select(
        _bucket(query_key, plan.n_query_blocks).alias(_QB), F.col(query_key).cast("long").alias(_Q), *vecs
    )
    fn = _pack_queries_fn(plan, labels)
    ddl = _query_block_ddl(plan)
    if exclude is None:
        return rows.groupBy(_QB).applyInArrow(lambda t: fn(t, None), ddl)
    ex = exclude.select(
        _bucket(query_key, plan.n_query_blocks).alias(_QB),
        F.col(query_key).cast("long").alias(_Q),
        F.col(item_key).cast("long").alias(_I),
        _bucket(item_key, plan.n_item_blocks).alias(_IB),
    ).where(F.col(_Q).isNotNull() & F.col(_I).isNotNull())
    return rows.groupBy(_QB).cogroup(ex.groupBy(_QB)).applyInArrow(fn, ddl)


def _item_blocks(
    items: DataFrame, signals: Sequence[Signal], plan: _Plan, item_key: str, labels: np.ndarray
) -> DataFrame:
    vecs = [F.col(s.item_col).alias(f"_v{j}") for j, s in enumerate(signals)]
    rows = items.select(
        _bucket(item_key, plan.n_item_blocks).alias(_IB), F.col(item_key).cast("long").alias(_I), *vecs
    )
    # Items whose vector (of a signal) occurs more than once: their scores are computed so that
    # equal vectors tie exactly (see the module docstring). One window over (signal, vector hash)
    # for all signals; only (block, key, signal, hash) rows are shuffled, not the vectors.
    fps = rows.select(
        _IB,
        _I,
        F.explode(
            F.array(
                *[
                    F.when(
                        F.col(f"_v{j}").isNotNull(),
                        F.struct(F.lit(j).alias("_sig"), F.xxhash64(f"_v{j}").alias("_fp")),
                    )
                    for j in range(len(signals))
                ]
            )
        ).alias("_h"),
    ).where(F.col("_h").isNotNull())
    same = Window.partitionBy(F.col("_h._sig"), F.col("_h._fp"))
    dups = (
        fps.withColumn("_n", F.count(F.lit(1)).over(same))
        .where(F.col("_n") > 1)
        # fresh names: the two cogroup sides come from the same rows (an ambiguous self-join otherwise)
        .select(F.col(_IB).alias("_dib"), F.col(_I).alias("_dk"), F.col("_h._sig").alias("_sig"))
    )
    fn = _pack_items_fn(plan, labels)
    return rows.groupBy(_IB).cogroup(dups.groupBy("_dib")).applyInArrow(fn, _item_block_ddl(plan))


def _query_block_ddl(plan: _Plan) -> str:
    sig = ", ".join(f"q_v{j} binary, q_m{j} binary" for j in range(len(plan.ks)))
    return f"{_QB} int, {_PART} int, q_ids binary, {sig}, ex_rows binary, ex_items binary, ex_ib binary"


def _item_block_ddl(plan: _Plan) -> str:
    sig = ", ".join(
        f"i_v{j} binary, i_m{j} binary, i_d{j} binary, i_s{j} binary" for j in range(len(plan.ks))
    )
    return f"{_IB} int, {_PART} int, i_ids binary, {sig}"


def _partial_ddl(plan: _Plan) -> str:
    sig = ", ".join(f"c{j} binary, x{j} binary, m{j} binary" for j in range(len(plan.ks)))
    return f"{_QB} int, q_ids binary, {sig}"


def _merged_ddl(plan: _Plan) -> str:
    sig = ", ".join(
        f"_s{j} double, _r{j} int" + (f", _mean{j} double, _std{j} double" if plan.moments[j] else "")
        for j in range(len(plan.ks))
    )
    return f"{_Q} long, {_I} long, {sig}"


def spark_hash_partition(values: np.ndarray, n: int) -> np.ndarray:
    """The partition that ``repartition(n, col)`` gives an int ``col`` value: pmod(murmur3(v, 42), n).

    Spark's ``HashPartitioning`` on one int column is ``Murmur3_x86_32.hashInt(v, 42)`` taken
    ``pmod n``; this is the same function, vectorised (uint32 arithmetic wraps like Java's int).
    """
    u32 = np.uint32
    with np.errstate(over="ignore"):
        k = np.asarray(values, np.int64).astype(np.int32).view(u32) * u32(0xCC9E2D51)
        k = ((k << u32(15)) | (k >> u32(17))) * u32(0x1B873593)
        h = u32(42) ^ k
        h = ((h << u32(13)) | (h >> u32(19))) * u32(5) + u32(0xE6546B64)
        h ^= u32(4)
        h ^= h >> u32(16)
        h *= u32(0x85EBCA6B)
        h ^= h >> u32(13)
        h *= u32(0xC2B2AE35)
        h ^= h >> u32(16)
    return np.mod(h.view(np.int32).astype(np.int64), n)


def balanced_labels(n_blocks: int, n_parts: int) -> np.ndarray:
    """An int label per block such that ``repartition(n_parts, label)`` puts block b in partition b % n_parts.

    Labels are the smallest non-negative ints that hash to each partition (vectorised search).
    """
    need = np.bincount(np.arange(n_blocks) % n_parts, minlength=n_parts)
    size = 8 * n_blocks + 64
    while True:
        cand = np.arange(size)
        parts = spark_hash_partition(cand, n_parts)
        counts = np.bincount(parts, minlength=n_parts)
        if (counts >= need).all():
            break
        size *= 2
    order = np.argsort(parts, kind="stable")  # by partition, then by value
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    blocks = np.arange(n_blocks)
    return cand[order[starts[blocks % n_parts] + blocks // n_parts]].astype(np.int32)
