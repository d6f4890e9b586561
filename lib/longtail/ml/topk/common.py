"""What every part of the blocked top-K shares: constants, internal column names, :class:`Signal`, the plan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.sql import types as T

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
