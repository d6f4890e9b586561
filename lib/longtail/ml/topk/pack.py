"""Worker side: packing queries and items into one-row blocks (keys and float32 matrices as bytes)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from longtail.ml.topk.common import _I, _IB, _PART, _Q, _QB, _Plan
from longtail.ml.topk.kernels import repeat_of


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
