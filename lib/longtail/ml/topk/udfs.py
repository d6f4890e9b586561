"""Worker side: the ``mapInArrow`` functions that score block pairs and merge partial top-k lists."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from longtail.ml.topk.common import _I, _IB, _KEY_OFFSET, _Q, _QB, EMPTY, _Plan
from longtail.ml.topk.kernels import RunningTopK, composite_keys, score_block
from longtail.ml.topk.pack import _bin, _limit_threads


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
