"""Spark-native blocked top-K: every query's best items under one or more dot-product signals.

The pattern of Spark MLlib ALS ``recommendForAllUsers``, without a row-by-row cross join and without a
driver-side loop; nothing of catalogue or user-base size reaches the driver:

1. **Sizes** (the one eager step, a single small aggregate job): row counts, key ranges and the
   min/max vector length of every column, to validate dimensions and to size the blocks.
2. **Blocks.** Query ``q`` goes to block ``pmod(xxhash64(q), n_query_blocks)``, item ``i`` to
   ``pmod(xxhash64(i), n_item_blocks)``: a pure function of the key, so a retried task or a
   re-read input lands in the same block, and the excluded pairs can be routed to their blocks
   without a join. A block is ONE row: its keys (sorted, int64 bytes) and, per signal, the float32
   matrix (bytes, zero rows for null vectors) and a validity mask. Query blocks are packed by a
   cogroup with ``exclude`` keyed the same way, so each carries its own excluded pairs (row in the
   block, item key, item block), sorted by item block.
3. **Block pairs.** Query blocks x item blocks as a ``CartesianProduct`` (hint
   ``shuffle_replicate_nl``): the task for (query partition a, item partition b) buffers item
   partition b and streams every query block of a against all of its item blocks, so the rows reach
   Python grouped by query block. ``mapInArrow`` computes, per pair, one float32 matrix product per
   signal, masks null vectors and excluded pairs with ``-inf``, keeps each signal's per-block top-k
   (``np.argpartition``) and folds it into a running top-k of the query block; it emits once per
   query block per task. Arrow input batches are cut at ``spark.sql.execution.arrow.maxBytesPerBatch``
   (64 MiB by default), so a Python worker holds a handful of block pairs at a time.
4. **Merge.** The partial top-k's of a query block (one per item partition) are grouped by query
   block (one Python call per block of ``block_queries`` queries, never one per query), reduced to
   the final top-k of each signal, sorted, united over signals and exploded to rows in numpy.

Order and ties. Within a signal, items are ordered by score descending, then item key ascending. The
selection keys are composite ``uint64`` values (order-preserving bits of the float32 score, then the
key), so every partition/merge step is exact, ties included. Float32 GEMM alone would not give exact
ties: OpenBLAS computes an entry through different kernels depending on its position in the matrix,
so two identical item vectors can score a few ulps apart (measured). Items whose vector occurs more
than once in the catalogue are therefore flagged (a Spark aggregate on ``xxhash64`` of the vector)
and their columns are re-scored with a matrix-vector product ``Q @ v``, whose result depends only on
the query block (identical for every item block of a query block), the query's row and ``v``: equal
vectors get bit-identical scores, and the key decides. Distinct vectors whose exact dot products are
equal are ordered by their float32 values, like any brute-force float32 computation.

Threads. Spark runs one Python worker per task slot; each worker limits BLAS to ``spark.task.cpus``
threads (threadpoolctl), so ``local[N]`` runs N single-threaded products instead of N x N threads.

Memory per task (B_q = block_queries, B_i = block_items, d = sum of the signals' dimensions,
k = sum of the signals' k): the item partition buffered by the cartesian join,
``item_blocks_per_task x B_i x d x 4`` bytes (JVM); per Python worker about 64 MiB of Arrow input,
``n_signals x B_q x B_i x 4`` bytes of score matrices plus ``B_q x B_i x 8`` of argpartition indices,
and the running top-k, ``B_q x k x (8 + 4 x n_signals)`` bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from longtail.schema import require_columns

EMPTY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # composite of "no item": after every real candidate
_KEY_OFFSET = 2**31  # int32 key -> uint32, order-preserving
_INT_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_MAX_BLOCK_BYTES = 1 << 30  # one packed matrix must stay far below Arrow's 2 GiB binary limit

# internal column names (user-given names only appear in the final select)
_QB, _IB, _Q, _I, _PART = "_qb", "_ib", "_q", "_i", "_part"


@dataclass(frozen=True)
class Signal:
    """One dot-product signal: ``score(q, i) = queries[query_col] . items[item_col]``.

    Attributes:
        name: the output score column (e.g. ``cf_score``); ``<name>_rank`` holds the rank.
        query_col: an ``array<float>`` column of the queries; null: no score for that query.
        item_col: an ``array<float>`` column of the items; null: never a candidate of this signal.
        k: how many top items of this signal to keep per query.
    """

    name: str
    query_col: str
    item_col: str
    k: int


@dataclass(frozen=True)
class _Plan:
    """What the workers need to know: sizes decided on the driver from the aggregate."""

    ks: tuple[int, ...]
    dims: tuple[int, ...]  # 0: the signal has no vectors on one side (no scores at all)
    n_query_blocks: int
    n_item_blocks: int
    row_chunk: int
    moments: tuple[bool, ...]  # per signal: accumulate the per-query mean and std of its scores


def blocked_top_k(
    queries: DataFrame,
    items: DataFrame,
    signals: Sequence[Signal],
    *,
    query_key: str = "user_idx",
    item_key: str = "item_idx",
    exclude: DataFrame | None = None,
    block_queries: int = 1024,
    block_items: int = 4096,
    query_blocks_per_task: int = 1,
    item_blocks_per_task: int = 16,
    row_chunk: int = 512,
    moments: Sequence[str] = (),
) -> DataFrame:
    """Each query's top-k items under every signal, united over signals, as a lazy DataFrame.

    Args:
        queries: ``query_key`` (integral, unique) and every signal's ``query_col``.
        items: ``item_key`` (integral, unique, within the int32 range) and every ``item_col``.
        signals: the signals; names must be distinct.
        query_key: the key column of ``queries`` (and of ``exclude``).
        item_key: the key column of ``items`` (and of ``exclude``).
        exclude: ``(query_key, item_key)`` pairs never returned (e.g. items already seen); pairs
            whose keys are in neither input are ignored.
        block_queries: queries per block (the expected size; blocks are hash buckets).
        block_items: items per block.
        query_blocks_per_task: query blocks per partition of the block cross product.
        item_blocks_per_task: item blocks per partition of the block cross product; a task holds
            that many item blocks in memory, and the merge moves ``n_item_partitions`` partial top-k
            lists per query, so larger means less shuffle and more memory.
        row_chunk: query rows scored at a time inside a block pair; a Python worker holds
            ``row_chunk x block_items`` scores per signal (float32) and as many int64 indices.
        moments: names of signals whose per-query score distribution over ALL eligible items
            (a vector, not excluded) is also returned: ``<name>_mean`` and ``<name>_std``
            (population standard deviation), the same on every row of a query, null where the
            query's vector is null or no item is eligible (e.g. for z-scores over the catalogue).
            Computed in float64 from per-item-block sums (``sum i``, ``sum i i^T``) without a
            second pass: about ``2 x d`` extra FLOPs per query and item block.

    Returns:
        One row per (query, item) in the union of the signals' top-k lists, excluded pairs left out:
        ``query_key``, ``item_key`` (their input types), and per signal ``<name>`` double (the dot
        product, for every returned pair; null only when one of the two vectors is null) and
        ``<name>_rank`` int (1-based rank in that signal's list, null when not in it), then
        ``<name>_mean``, ``<name>_std`` double for the signals named in ``moments``. Rows with a
        null key are ignored.

    Raises:
        MissingColumnsError: a column is missing.
        ValueError: bad arguments, non-integral keys, vector columns whose non-null vectors differ
            in length (the column is named), or item keys outside the int32 range. Non-finite or
            null vector elements and duplicate keys fail the Spark job with a ValueError that names
            the column.

    Example:
        >>> recs = blocked_top_k(
        ...     user_vectors, item_vectors,
        ...     [Signal("cf_score", "user_factors", "item_factors", k=100),
        ...      Signal("content_score", "profile", "embedding", k=100)],
        ...     exclude=seen.select("user_idx", "item_idx"),
        ... )
        >>> recs.columns
        ['user_idx', 'item_idx', 'cf_score', 'cf_score_rank', 'content_score', 'content_score_rank']
    """
    _check_args(queries, items, signals, query_key, item_key, exclude, moments)
    for name, value in [
        ("block_queries", block_queries),
        ("block_items", block_items),
        ("query_blocks_per_task", query_blocks_per_task),
        ("item_blocks_per_task", item_blocks_per_task),
        ("row_chunk", row_chunk),
    ]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"blocked_top_k: {name} must be an integer >= 1, got {value!r}")
    queries = queries.where(F.col(query_key).isNotNull())
    items = items.where(F.col(item_key).isNotNull())
    n_q, n_i, dims = _sizes(queries, items, signals, query_key, item_key)
    out_schema = _output_schema(queries, items, signals, query_key, item_key, moments)
    if n_q == 0 or n_i == 0:
        return queries.sparkSession.createDataFrame([], out_schema)
    for sig, d in zip(signals, dims, strict=True):
        if max(block_queries, block_items) * d * 4 > _MAX_BLOCK_BYTES:
            raise ValueError(
                f"blocked_top_k: a block of {sig.name} vectors would pass 1 GiB; use smaller blocks"
            )
    plan = _Plan(
        ks=tuple(s.k for s in signals),
        dims=tuple(dims),
        n_query_blocks=math.ceil(n_q / block_queries),
        n_item_blocks=math.ceil(n_i / block_items),
        row_chunk=row_chunk,
        moments=tuple(s.name in moments for s in signals),
    )
    # The layout of the cross product: a task = (query partition, item partition). Each packed block
    # carries a partition label chosen so that Spark's hash partitioning puts block b in partition
    # b % n_partitions (plain hash partitioning of block ids leaves some partitions empty and
    # others with 2-3 blocks: unequal tasks). Repartitioning also makes the packed blocks shuffle
    # output, so the cartesian's re-reads of a partition (once per task) read bytes instead of
    # re-running the Python packing.
    q_parts = math.ceil(plan.n_query_blocks / query_blocks_per_task)
    i_parts = math.ceil(plan.n_item_blocks / item_blocks_per_task)
    q_labels = balanced_labels(plan.n_query_blocks, q_parts)
    i_labels = balanced_labels(plan.n_item_blocks, i_parts)
    qblocks = _query_blocks(queries, exclude, signals, plan, query_key, item_key, q_labels)
    iblocks = _item_blocks(items, signals, plan, item_key, i_labels)
    qblocks = qblocks.repartition(q_parts, _PART).drop(_PART)
    iblocks = iblocks.repartition(i_parts, _PART).drop(_PART)
    pairs = qblocks.hint("shuffle_replicate_nl").crossJoin(iblocks)
    if i_parts == 1:
        # every task holds all item blocks: each query block's list is final when the task has
        # streamed it against them, so the pair UDF writes the result rows (no merge shuffle)
        merged = pairs.mapInArrow(_score_pairs_fn(plan, final=True), _merged_ddl(plan))
    else:
        partial = pairs.mapInArrow(_score_pairs_fn(plan, final=False), _partial_ddl(plan))
        merged = partial.groupBy(_QB).applyInArrow(_merge_fn(plan), _merged_ddl(plan))
    cols = [F.col(_Q).cast(out_schema[0].dataType).alias(query_key)]
    cols.append(F.col(_I).cast(out_schema[1].dataType).alias(item_key))
    for j, sig in enumerate(signals):
        cols += [F.col(f"_s{j}").alias(sig.name), F.col(f"_r{j}").alias(f"{sig.name}_rank")]
        if plan.moments[j]:
            cols += [F.col(f"_mean{j}").alias(f"{sig.name}_mean"), F.col(f"_std{j}").alias(f"{sig.name}_std")]
    return merged.select(cols)


# --- driver side: validation and sizes ----------------------------------------------------------
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


# --- worker side: packing ------------------------------------------------------------------------
def _limit_threads() -> None:
    """BLAS threads of this Python worker = the task's cpus (set once per worker process)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    n = ctx.cpus() if ctx is not None else 1
    if _THREADS.get(os.getpid()) != n:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
        _THREADS[os.getpid()] = n


_THREADS: dict[int, int] = {}


def _matrix(arr: pa.Array | pa.ChunkedArray, d: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as an (n, d) float32 matrix (zero rows for nulls) and its validity mask."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    mat = np.zeros((n, d), np.float32)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if d == 0:
        return mat, np.zeros(n, bool)
    if valid.any():
        lengths = pc.list_value_length(arr).fill_null(d).to_numpy(zero_copy_only=False)
        if (lengths != d).any():
            raise ValueError(
                f"blocked_top_k: column {what!r} holds a vector of length {lengths[lengths != d][0]}, not {d}"
            )
        flat = arr.flatten()
        values = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if flat.null_count or not np.isfinite(values).all():
            raise ValueError(
                f"blocked_top_k: column {what!r} holds a vector with null, NaN or infinite elements"
            )
        mat[valid] = values.reshape(-1, d)
    return mat, valid


def _sorted_keys(table: pa.Table, col: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    keys = table.column(col).to_numpy().astype(np.int64, copy=False)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    if keys.size > 1 and (keys[1:] == keys[:-1]).any():
        dup = keys[1:][keys[1:] == keys[:-1]][0]
        raise ValueError(f"blocked_top_k: {what} key {dup} occurs more than once")
    return keys, order


def _bin(*values: bytes) -> pa.Array:
    return pa.array(list(values), pa.binary())


def _pack_queries_fn(plan: _Plan, labels: np.ndarray) -> Callable[[pa.Table, pa.Table | None], pa.Table]:
    n_sig = len(plan.ks)
    schema = pa.schema(
        [(_QB, pa.int32()), (_PART, pa.int32()), ("q_ids", pa.binary())]
        + [(f"q_{x}{j}", pa.binary()) for j in range(n_sig) for x in "vm"]
        + [("ex_rows", pa.binary()), ("ex_items", pa.binary()), ("ex_ib", pa.binary())]
    )

    def pack(rows: pa.Table, ex: pa.Table | None) -> pa.Table:
        if rows.num_rows == 0:  # a cogroup group with exclusions only
            return schema.empty_table()
        ids, order = _sorted_keys(rows, _Q, "query")
        qb = rows.column(_QB)[0].as_py()
        cols: dict[str, pa.Array] = {
            _QB: pa.array([qb], pa.int32()),
            _PART: pa.array([labels[qb]], pa.int32()),
            "q_ids": _bin(ids.tobytes()),
        }
        for j, d in enumerate(plan.dims):
            mat, valid = _matrix(rows.column(f"_v{j}"), d, f"query vector {j}")
            cols[f"q_v{j}"] = _bin(mat[order].tobytes())
            cols[f"q_m{j}"] = _bin(valid[order].tobytes())
        ex_rows, ex_items, ex_ib = np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32)
        if ex is not None and ex.num_rows:
            q = ex.column(_Q).to_numpy().astype(np.int64)
            pos = np.minimum(np.searchsorted(ids, q), ids.size - 1)
            hit = ids[pos] == q  # pairs of queries outside this block's input are ignored
            pairs = np.stack(
                [
                    ex.column(_IB).to_numpy().astype(np.int64)[hit],
                    pos[hit],
                    ex.column(_I).to_numpy().astype(np.int64)[hit],
                ],
                axis=1,
            )
            pairs = np.unique(pairs, axis=0)  # by item block; a pair listed twice is excluded once
            ex_ib, ex_rows, ex_items = pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32), pairs[:, 2]
        cols["ex_rows"], cols["ex_items"], cols["ex_ib"] = (
            _bin(ex_rows.tobytes()),
            _bin(ex_items.tobytes()),
            _bin(ex_ib.tobytes()),
        )
        return pa.table(cols, schema=schema)

    return pack


def _pack_items_fn(plan: _Plan, labels: np.ndarray) -> Callable[[pa.Table, pa.Table], pa.Table]:
    n_sig = len(plan.ks)
    schema = pa.schema(
        [(_IB, pa.int32()), (_PART, pa.int32()), ("i_ids", pa.binary())]
        + [(f"i_{x}{j}", pa.binary()) for j in range(n_sig) for x in "vmds"]
    )

    def pack(rows: pa.Table, dups: pa.Table) -> pa.Table:
        if rows.num_rows == 0:
            return schema.empty_table()
        ids, order = _sorted_keys(rows, _I, "item")
        dup_keys = dups.column("_dk").to_numpy().astype(np.int64) if dups.num_rows else np.zeros(0, np.int64)
        dup_sig = dups.column("_sig").to_numpy() if dups.num_rows else np.zeros(0, np.int32)
        ib = rows.column(_IB)[0].as_py()
        cols: dict[str, pa.Array] = {
            _IB: pa.array([ib], pa.int32()),
            _PART: pa.array([labels[ib]], pa.int32()),
            "i_ids": _bin(ids.tobytes()),
        }
        for j, d in enumerate(plan.dims):
            mat, valid = _matrix(rows.column(f"_v{j}"), d, f"item vector {j}")
            mat, valid = mat[order], valid[order]
            cols[f"i_v{j}"] = _bin(mat.tobytes())
            cols[f"i_m{j}"] = _bin(valid.tobytes())
            repeated = valid & np.isin(ids, dup_keys[dup_sig == j])
            cols[f"i_d{j}"] = _bin(repeat_of(mat, repeated).tobytes())
            sums = b""
            if plan.moments[j]:  # the block's sum i and sum i i^T (float64): the moments' sums
                v = mat[valid].astype(np.float64)
                sums = np.concatenate([v.sum(axis=0), (v.T @ v).reshape(-1)]).tobytes()
            cols[f"i_s{j}"] = _bin(sums)
        return pa.table(cols, schema=schema)

    return pack


# --- worker side: scoring and top-k (pure numpy) --------------------------------------------------
def composite(scores: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Order-preserving ``uint64`` of (score descending, key ascending); ``-inf`` scores -> EMPTY.

    The high 32 bits are the float32 score's bits mapped so that unsigned order is descending score
    order (``-0.0`` counts as ``0.0``); the low 32 bits are ``key + 2**31``. Smaller = better.
    """
    s = np.asarray(scores, np.float32) + np.float32(0.0)  # -0.0 -> +0.0
    u = s.view(np.uint32)
    ascending = np.where(u >> 31, ~u, u | np.uint32(0x8000_0000))
    comp = ((~ascending).astype(np.uint64) << np.uint64(32)) | (
        np.asarray(keys, np.int64) + _KEY_OFFSET
    ).astype(np.uint64)
    return np.where(s == -np.inf, EMPTY, comp)


def composite_keys(comp: np.ndarray) -> np.ndarray:
    """The item keys back from :func:`composite` values."""
    return (comp & np.uint64(0xFFFF_FFFF)).astype(np.int64) - _KEY_OFFSET


def block_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's top ``k`` (score descending, lower column first on ties), unsorted.

    ``np.argpartition`` picks an arbitrary subset of the values tied at the k-th place; only rows
    that have such a tie (more than k values >= the k-th) are redone with a stable sort, so that
    the lower columns win, as the keys of a block are sorted. ``-inf`` (not a candidate) may be
    among the k when a row has fewer candidates; the caller drops them.
    """
    n, m = scores.shape
    if m <= k:
        return np.broadcast_to(np.arange(m), (n, m))
    idx = np.argpartition(scores, m - k, axis=1)[:, m - k :]
    kth = _gather(scores, idx).min(axis=1)
    tied = (np.count_nonzero(scores >= kth[:, None], axis=1) > k) & (kth > -np.inf)
    if tied.any():
        rows = np.flatnonzero(tied)
        idx[rows] = np.argsort(-scores[rows], axis=1, kind="stable")[:, :k]
    return idx


def candidates(scores: np.ndarray, k: int, floor: np.ndarray) -> np.ndarray:
    """Column indices of the entries of each row that may enter a top-k whose k-th score is ``floor``.

    Once a row's running top-k is full, only entries ``>= floor`` can enter (``>=``: an equal score
    with a lower key can), and after the first item blocks they are few: those rows take a compare
    and a ``flatnonzero`` instead of a full ``argpartition``. Rows with more than ``k`` such entries
    (``floor = -inf``: the top-k is not full yet) go through :func:`block_top_k`.

    Returns:
        (n, w) int64 column indices, ``-1`` = padding.
    """
    n, m = scores.shape
    if m <= k or not (floor > -np.inf).any():
        return block_top_k(scores, k)
    mask = scores >= floor[:, None]
    counts = np.count_nonzero(mask, axis=1)
    heavy = counts > k
    width = max(int(counts[~heavy].max(initial=0)), k if heavy.any() else 0)
    out = np.full((n, max(width, 1)), -1, np.int64)
    if heavy.any():
        rows = np.flatnonzero(heavy)
        out[rows, :k] = block_top_k(scores[rows], k)
        mask[rows] = False
        counts[rows] = 0
    flat = np.flatnonzero(mask)
    rows = flat // m
    starts = np.cumsum(counts) - counts
    out[rows, np.arange(flat.size) - starts[rows]] = flat - rows * m
    return out


def _gather(matrix: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``matrix[r, idx[r, j]]`` for every r, j (a flat take: faster than ``take_along_axis``)."""
    n, m = matrix.shape
    return matrix.reshape(-1).take(idx + (np.arange(n) * m)[:, None])


def repeat_of(mat: np.ndarray, repeated: np.ndarray) -> np.ndarray:
    """Per row: the first row of the block with the same vector, for the ``repeated`` rows; else -1.

    Vectors of length 0 or 1 need none: a one-term dot product is a single rounding, the same
    wherever the GEMM computes it.
    """
    out = np.full(mat.shape[0], -1, np.int32)
    rows = np.flatnonzero(repeated)
    if rows.size and mat.shape[1] > 1:
        _, first, inverse = np.unique(mat[rows], axis=0, return_index=True, return_inverse=True)
        out[rows] = rows[first][inverse.reshape(-1)]
    return out


def score_block(
    q: np.ndarray, q_valid: np.ndarray, i: np.ndarray, i_valid: np.ndarray, i_rep: np.ndarray
) -> np.ndarray:
    """``q @ i.T`` in float32, ``-inf`` where either vector is null.

    Columns of vectors that occur more than once in the catalogue (``i_rep >= 0``: the block's first
    column with that vector) get ``q @ v``, one matrix-vector product per distinct vector: its
    result depends only on ``q`` and ``v``, so equal vectors score bit-identically wherever they
    sit (a GEMM entry depends on its position in the matrix).
    """
    out = np.full((q.shape[0], i.shape[0]), -np.inf, np.float32)
    if q.shape[1] == 0 or not q_valid.any() or not i_valid.any():
        return out
    np.matmul(q, i.T, out=out)
    cols = np.flatnonzero(i_rep >= 0)
    if cols.size:
        reps, inverse = np.unique(i_rep[cols], return_inverse=True)
        canonical = np.stack([q @ i[c] for c in reps], axis=1)
        out[:, cols] = canonical[:, inverse.reshape(-1)]
    if not q_valid.all():
        out[~q_valid] = -np.inf
    if not i_valid.all():
        out[:, ~i_valid] = -np.inf
    return out


class RunningTopK:
    """The running top-k of one query block, per signal: composites and the scores of all signals.

    ``comp[s]`` is (n, k_s) ``uint64`` (EMPTY = free slot), ``xs[s]`` is (n, k_s, n_signals) float32:
    for each kept item the scores of every signal (``-inf`` = null), so that a pair found by one
    signal carries the others' scores too.
    """

    def __init__(self, n: int, ks: Sequence[int]):
        self.ks = tuple(ks)
        self.comp = [np.full((n, k), EMPTY, np.uint64) for k in ks]
        self.xs = [np.full((n, k, len(ks)), -np.inf, np.float32) for k in ks]
        self.moments = [np.zeros((n, 3)) for _ in ks]  # per query: eligible items, sum, sum of squares

    def add_block(
        self,
        scores: Sequence[np.ndarray],
        keys: np.ndarray,
        active: Sequence[bool],
        rows: slice = slice(None),
    ) -> None:
        """Fold one item block in: ``scores[s]`` (rows, m), ``-inf`` = not a candidate; ``keys`` (m,).

        ``active[s]`` False: signal s has no candidate in this block (skipped). ``rows``: the query
        rows that ``scores`` covers (the pair is scored in row chunks).
        """
        for s, k in enumerate(self.ks):
            if not active[s]:
                continue
            floor = self.xs[s][rows, :, s].min(axis=1)  # the k-th kept score; -inf while a slot is free
            idx = candidates(scores[s], k, floor)
            pad = idx < 0
            flat = np.where(pad, 0, idx) + (np.arange(idx.shape[0]) * scores[s].shape[1])[:, None]
            xs = np.stack([m.reshape(-1).take(flat) for m in scores], axis=-1)
            xs[pad] = -np.inf
            comp = composite(xs[:, :, s], keys.take(np.where(pad, 0, idx)))
            self.fold(s, comp, xs, rows)

    def fold(self, s: int, comp: np.ndarray, xs: np.ndarray, rows: slice = slice(None)) -> None:
        """Merge candidates ``comp`` (n, m) with their scores ``xs`` (n, m, n_signals) into signal s."""
        k = self.ks[s]
        comp = np.concatenate([self.comp[s][rows], comp], axis=1)
        xs = np.concatenate([self.xs[s][rows], xs], axis=1)
        sel = np.argpartition(comp, k - 1, axis=1)[:, :k]  # composites are unique per row: exact
        self.comp[s][rows] = np.take_along_axis(comp, sel, 1)
        self.xs[s][rows] = np.take_along_axis(xs, sel[:, :, None], 1)


def _blob(batch: pa.RecordBatch, col: str, row: int, dtype: Any) -> np.ndarray:
    """A binary cell as a numpy array, without copying."""
    return np.frombuffer(batch.column(col)[row].as_buffer(), dtype=dtype)


def _score_pairs_fn(
    plan: _Plan, *, final: bool
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function over block pairs: partial top-k lists, or (``final``) result rows.

    ``final`` is only right when every task holds all item blocks (one item partition); then a
    query block must reach the task as one run of rows, which the cartesian product's nested loop
    gives. A query block that comes back after another one fails the task rather than giving a
    list that missed items.
    """
    n_sig = len(plan.ks)
    schema = pa.schema(
        [(_QB, pa.int32()), ("q_ids", pa.binary())]
        + [(f"{x}{j}", pa.binary()) for j in range(n_sig) for x in "cxm"]
    )

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        _limit_threads()
        current: _QueryBlock | None = None
        done: set[int] = set()
        for batch in batches:
            for r in range(batch.num_rows):
                if current is None or batch.column(_QB)[r].as_py() != current.qb:
                    # rows come grouped by query block: the previous one has seen all its item blocks
                    if current is not None:
                        yield emit(current)
                        done.add(current.qb)
                    current = _QueryBlock(batch, r, plan)
                    if final and current.qb in done:
                        raise RuntimeError(f"blocked_top_k: query block {current.qb} came back in a task")
                _score_pair(batch, r, plan, current)
        if current is not None:
            yield emit(current)

    def emit(block: _QueryBlock) -> pa.RecordBatch:
        if final:
            return _result_batch(block.ids, block.top.comp, block.top.xs, block.top.moments, plan)
        cols: list[pa.Array] = [pa.array([block.qb], pa.int32()), _bin(block.ids.tobytes())]
        for j in range(n_sig):
            top = block.top
            cols += [_bin(top.comp[j].tobytes()), _bin(top.xs[j].tobytes()), _bin(top.moments[j].tobytes())]
        return pa.RecordBatch.from_arrays(cols, schema=schema)

    return score


class _QueryBlock:
    """A query block as the pair UDF sees it: views on its Arrow row, and its running top-k."""

    def __init__(self, batch: pa.RecordBatch, r: int, plan: _Plan):
        self.qb: int = batch.column(_QB)[r].as_py()
        self.ids = _blob(batch, "q_ids", r, np.int64)
        n = self.ids.size
        self.vectors = [_blob(batch, f"q_v{j}", r, np.float32).reshape(n, d) for j, d in enumerate(plan.dims)]
        self.valid = [_blob(batch, f"q_m{j}", r, np.bool_) for j in range(len(plan.dims))]
        self.ex_rows = _blob(batch, "ex_rows", r, np.int32)
        self.ex_items = _blob(batch, "ex_items", r, np.int64)
        self.ex_ib = _blob(batch, "ex_ib", r, np.int32)
        self.top = RunningTopK(n, plan.ks)


def _score_pair(batch: pa.RecordBatch, r: int, plan: _Plan, block: _QueryBlock) -> None:
    """One (query block, item block) pair: products, masks, per-block top-k folded into the block's.

    Scored in chunks of ``plan.row_chunk`` query rows: the score matrices and the argpartition
    indices of a chunk stay small (cache, memory) whatever ``block_queries`` is. The chunk
    boundaries depend only on the query block, so the ``q @ v`` of repeated vectors stays
    bit-identical across item blocks.
    """
    keys = _blob(batch, "i_ids", r, np.int64)
    items = []
    for j, d in enumerate(plan.dims):
        items.append(
            (
                _blob(batch, f"i_v{j}", r, np.float32).reshape(keys.size, d),
                _blob(batch, f"i_m{j}", r, np.bool_),
                _blob(batch, f"i_d{j}", r, np.int32),
                _blob(batch, f"i_s{j}", r, np.float64),
            )
        )
    ib = batch.column(_IB)[r].as_py()
    lo, hi = np.searchsorted(block.ex_ib, ib, "left"), np.searchsorted(block.ex_ib, ib, "right")
    ex_rows, ex_cols = block.ex_rows[lo:hi], np.zeros(0, np.int64)
    if hi > lo:  # this query block's excluded pairs whose item falls in this item block
        ex_items = block.ex_items[lo:hi]
        pos = np.minimum(np.searchsorted(keys, ex_items), keys.size - 1)
        hit = keys[pos] == ex_items
        ex_rows, ex_cols = ex_rows[hit], pos[hit]
    for start in range(0, block.ids.size, plan.row_chunk):
        rows = slice(start, min(start + plan.row_chunk, block.ids.size))
        mine = (ex_rows >= rows.start) & (ex_rows < rows.stop)
        chunk_ex = (ex_rows[mine] - rows.start, ex_cols[mine])
        scores, active = [], []
        for j, (i_mat, i_valid, i_rep, i_sums) in enumerate(items):
            q, q_valid = block.vectors[j][rows], block.valid[j][rows]
            scores.append(score_block(q, q_valid, i_mat, i_valid, i_rep))
            active.append(i_mat.shape[1] > 0 and bool(q_valid.any()) and bool(i_valid.any()))
            if plan.moments[j] and active[j]:
                block.top.moments[j][rows] += _moment_sums(q, q_valid, i_mat, i_valid, i_sums, chunk_ex)
        for m in scores:
            m[chunk_ex] = -np.inf
        block.top.add_block(scores, keys, active, rows)


def _moment_sums(
    q: np.ndarray,
    q_valid: np.ndarray,
    i_mat: np.ndarray,
    i_valid: np.ndarray,
    i_sums: np.ndarray,
    excluded: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Per query row: (eligible items, sum of scores, sum of squared scores) over one item block.

    ``sum_i q.i = q . (sum_i i)`` and ``sum_i (q.i)^2 = q^T (sum_i i i^T) q``, from the block's sums
    (computed once when the block was packed), minus the excluded pairs' own scores.
    """
    d = q.shape[1]
    q64 = q.astype(np.float64)
    out = np.empty((q.shape[0], 3))
    out[:, 0] = np.count_nonzero(i_valid)
    out[:, 1] = q64 @ i_sums[:d]
    out[:, 2] = np.einsum("ij,ij->i", q64 @ i_sums[d:].reshape(d, d), q64)
    ex_r, ex_c = excluded
    keep = i_valid[ex_c]
    ex_r, ex_c = ex_r[keep], ex_c[keep]
    raw = np.einsum("ij,ij->i", q64[ex_r], i_mat[ex_c].astype(np.float64))
    np.subtract.at(out[:, 0], ex_r, 1.0)
    np.subtract.at(out[:, 1], ex_r, raw)
    np.subtract.at(out[:, 2], ex_r, raw * raw)
    out[~q_valid] = 0.0
    return out


def final_lists(
    comps: Sequence[np.ndarray], xss: Sequence[np.ndarray], ks: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Final top-k per signal from partial lists, united over signals, one entry per (row, item).

    Args:
        comps: per signal, (n, m_s) composites (partials side by side; EMPTY = none).
        xss: per signal, (n, m_s, n_signals) scores of all signals (``-inf`` = null).
        ks: per signal, how many to keep.

    Returns:
        ``rows`` (query row in the block), ``keys`` (item keys), ``scores`` (entries x n_signals
        float64, NaN = null), ``ranks`` (entries x n_signals int32, 0 = not in that list); entries
        sorted by (row, key).
    """
    n_sig = len(ks)
    parts_rows, parts_keys, parts_x, parts_sig, parts_rank = [], [], [], [], []
    for s, k in enumerate(ks):
        comp, xs = comps[s], xss[s]
        if comp.shape[1] > k:
            sel = np.argpartition(comp, k - 1, axis=1)[:, :k]
            comp, xs = np.take_along_axis(comp, sel, 1), np.take_along_axis(xs, sel[:, :, None], 1)
        order = np.argsort(comp, axis=1)
        comp, xs = np.take_along_axis(comp, order, 1), np.take_along_axis(xs, order[:, :, None], 1)
        rows, pos = np.nonzero(comp != EMPTY)
        parts_rows.append(rows)
        parts_keys.append(composite_keys(comp[rows, pos]))
        parts_x.append(xs[rows, pos])
        parts_sig.append(np.full(rows.size, s))
        parts_rank.append(pos + 1)
    rows, keys = np.concatenate(parts_rows), np.concatenate(parts_keys)
    code = (rows.astype(np.int64) << 32) | (keys + _KEY_OFFSET)
    uniq, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    scores = np.concatenate(parts_x)[first].astype(np.float64)
    scores[scores == -np.inf] = np.nan
    ranks = np.zeros((uniq.size, n_sig), np.int32)
    ranks[inverse, np.concatenate(parts_sig)] = np.concatenate(parts_rank)
    return rows[first], keys[first], scores, ranks


def _result_batch(
    ids: np.ndarray,
    comps: Sequence[np.ndarray],
    xss: Sequence[np.ndarray],
    moments: Sequence[np.ndarray],
    plan: _Plan,
) -> pa.RecordBatch:
    """The result rows of one query block (see :func:`final_lists`), as an Arrow batch."""
    rows, keys, scores, ranks = final_lists(comps, xss, plan.ks)
    cols: list[pa.Array] = [pa.array(ids[rows]), pa.array(keys)]
    names = [_Q, _I]
    for j in range(len(plan.ks)):
        cols.append(pa.array(scores[:, j], pa.float64(), mask=np.isnan(scores[:, j])))
        cols.append(pa.array(ranks[:, j], pa.int32(), mask=ranks[:, j] == 0))
        names += [f"_s{j}", f"_r{j}"]
        if plan.moments[j]:
            n, total, squares = moments[j][rows].T
            none = n < 0.5
            n = np.where(none, 1.0, n)
            mean = total / n
            std = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
            cols += [pa.array(mean, pa.float64(), mask=none), pa.array(std, pa.float64(), mask=none)]
            names += [f"_mean{j}", f"_std{j}"]
    return pa.RecordBatch.from_arrays(cols, names=names)


def _merge_fn(plan: _Plan) -> Callable[[pa.Table], pa.Table]:
    n_sig = len(plan.ks)

    def merge(partials: pa.Table) -> pa.Table:
        ids = np.frombuffer(partials.column("q_ids")[0].as_buffer(), np.int64)
        comps, xss = [], []
        for j, k in enumerate(plan.ks):
            comps.append(
                np.concatenate(
                    [
                        np.frombuffer(b.as_buffer(), np.uint64).reshape(ids.size, k)
                        for b in partials.column(f"c{j}")
                    ],
                    axis=1,
                )
            )
            xss.append(
                np.concatenate(
                    [
                        np.frombuffer(b.as_buffer(), np.float32).reshape(ids.size, k, n_sig)
                        for b in partials.column(f"x{j}")
                    ],
                    axis=1,
                )
            )
        moments = [
            np.sum(
                [
                    np.frombuffer(b.as_buffer(), np.float64).reshape(ids.size, 3)
                    for b in partials.column(f"m{j}")
                ],
                axis=0,
            )
            for j in range(n_sig)
        ]
        return pa.Table.from_batches([_result_batch(ids, comps, xss, moments, plan)])

    return merge
