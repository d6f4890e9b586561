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
from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from longtail.core.config import RecommendConfig
from longtail.ml.topk.common import _I, _MAX_BLOCK_BYTES, _PART, _Q, _QB, Signal, _Plan
from longtail.ml.topk.plan import (
    _check_args,
    _item_blocks,
    _merged_ddl,
    _output_schema,
    _partial_ddl,
    _query_blocks,
    _sizes,
    balanced_labels,
)
from longtail.ml.topk.udfs import _merge_fn, _score_pairs_fn

# The block sizes have one source, the config (recommend.block_users / recommend.block_items, sized in
# docs/scaling.md): `recommend` passes the configured values, other callers get the same defaults.
DEFAULT_BLOCK_QUERIES: int = RecommendConfig.block_users
DEFAULT_BLOCK_ITEMS: int = RecommendConfig.block_items


def blocked_top_k(
    queries: DataFrame,
    items: DataFrame,
    signals: Sequence[Signal],
    *,
    query_key: str = "user_idx",
    item_key: str = "item_idx",
    exclude: DataFrame | None = None,
    block_queries: int = DEFAULT_BLOCK_QUERIES,
    block_items: int = DEFAULT_BLOCK_ITEMS,
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
        block_queries: queries per block (the expected size; blocks are hash buckets); default
            ``recommend.block_users``'s.
        block_items: items per block; default ``recommend.block_items``'s.
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
