"""Worker side, pure numpy: composite keys, per-block top-k, running top-k, exact tie handling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# --- worker side: scoring and top-k (pure numpy) --------------------------------------------------
from longtail.ml.topk.common import _KEY_OFFSET, EMPTY


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
