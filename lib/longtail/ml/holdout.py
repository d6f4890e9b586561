"""Time-based hold-out of the interaction log: the training part and the test part of `evaluate`.

Two modes:

* **per user** (the default): each user's interactions are ordered by time (``ts``, ties broken by
  ``item_id``, then ``weight``, so the split is deterministic) and the last
  ``n_test = min(n - 1, max(1, floor(n * test_fraction + 0.5)))`` of the user's ``n`` interactions go
  to test, the rest to train. ``n_test`` is ``n * test_fraction`` rounded half up: floor would give
  every user with fewer than ``1 / test_fraction`` interactions exactly one test item (the test
  share falls well below ``test_fraction`` on light users), ceil would over-sample them; rounding
  keeps the overall test share closest to ``test_fraction``. Every user with ``n >= 2`` keeps at
  least one interaction in train and gets at least one in test. A user with exactly one interaction
  has it in test and nothing in train: a **cold user**, whom only popularity and content can serve.
* **global cut-off** (``cutoff`` set): interactions with ``ts >= cutoff`` go to test, the rest to
  train. Users whose whole history lies after the cut-off are cold users; users with nothing after
  it have no test items and are left out of the accuracy metrics (and counted there).

Neither mode leaks the future: no test interaction of a user is older than any of that user's
training interactions (in the global mode, than any training interaction at all).

Example:
    >>> train, test = time_split(interactions, test_fraction=0.2)
    >>> split_summary(train, test, items)["cold_users"]
    3
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from longtail.core import schema as S

_POS = "_pos"
_N = "_n"
_N_TEST = "_n_test"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def n_test_expr(n: Column, test_fraction: float) -> Column:
    """How many of a user's ``n`` interactions go to test: ``min(n - 1, max(1, floor(n*f + 0.5)))``.

    For ``n == 1`` this is 1 (the ``min`` applies only from ``n >= 2``): the user is cold.
    """
    rounded = F.floor(n * F.lit(float(test_fraction)) + F.lit(0.5))
    at_least_one = F.greatest(rounded, F.lit(1))
    return F.when(n >= 2, F.least(at_least_one, n - 1)).otherwise(F.lit(1)).cast("long")


def in_user_sample(share: float, seed: int) -> Column:
    """True for about ``share`` of the users, whole users:
    ``|xxhash64(user_id, seed)| mod 10^6 < round(share x 10^6)``. A pure function of the user id,
    so the same users are kept in every run with the same seed and share, whatever the layout."""
    bucket = F.abs(F.xxhash64(F.col(S.USER_ID), F.lit(seed))) % 1_000_000
    return bucket < F.lit(round(share * 1_000_000))


def parse_cutoff(cutoff: str | dt.datetime) -> dt.datetime:
    """An aware UTC datetime from an ISO-8601 string or a datetime; a value without a zone is UTC.

    Raises:
        ValueError: the string is not ISO-8601 (the message names ``evaluate.cutoff``).
    """
    if isinstance(cutoff, dt.datetime):
        value = cutoff
    else:
        try:
            value = dt.datetime.fromisoformat(str(cutoff).strip())
        except ValueError as exc:
            raise ValueError(
                f"evaluate.cutoff: {cutoff!r} is not an ISO-8601 time (e.g. '2024-06-01T00:00:00Z')"
            ) from exc
    if value.tzinfo is None:  # the lake's timestamps are UTC; so is a zone-less cut-off
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def _cutoff_literal(cutoff: str | dt.datetime) -> Column:
    # Epoch micro-seconds, not a Python datetime literal: PySpark converts naive datetimes with the
    # driver's local zone and strings with the session zone; micro-seconds depend on neither.
    micros = (parse_cutoff(cutoff) - _EPOCH) // dt.timedelta(microseconds=1)
    return F.timestamp_micros(F.lit(micros))


def time_split(
    interactions: DataFrame,
    *,
    test_fraction: float = 0.2,
    cutoff: str | dt.datetime | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Split interactions in time into ``(train, test)``; a pure transform (no action runs).

    Args:
        interactions: ``user_id``, ``item_id``, ``ts`` (``weight`` and any extra columns are kept).
        test_fraction: per user, the share of the latest interactions that goes to test, in (0, 1);
            ``n_test = min(n - 1, max(1, floor(n * test_fraction + 0.5)))`` (see the module doc).
        cutoff: an ISO-8601 time or a datetime (no zone: UTC). When set, ``ts >= cutoff`` is test
            and the rest train, for every user alike; ``test_fraction`` is then not used.

    Returns:
        ``(train, test)`` with the input's columns in its order.

    Example:
        >>> train, test = time_split(interactions, test_fraction=0.2)
        >>> train, test = time_split(interactions, cutoff="2024-06-01")
    """
    S.require_columns(interactions, [S.USER_ID, S.ITEM_ID, S.TS], "time_split: interactions")
    columns = interactions.columns
    if cutoff is not None:
        is_test = F.col(S.TS) >= _cutoff_literal(cutoff)
        return interactions.where(~is_test), interactions.where(is_test)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"evaluate.test_fraction: must be in (0, 1), got {test_fraction!r}")

    order = [F.col(S.TS).asc(), F.col(S.ITEM_ID).asc()]
    if S.WEIGHT in columns:  # (user, item, ts) is the log's key; weight only orders true duplicates
        order.append(F.col(S.WEIGHT).asc())
    by_user = Window.partitionBy(S.USER_ID)
    ranked = interactions.select(
        *columns,
        F.row_number().over(by_user.orderBy(*order)).alias(_POS),
        F.count(F.lit(1)).over(by_user).alias(_N),
    ).withColumn(_N_TEST, n_test_expr(F.col(_N), test_fraction))
    ranked_test = F.col(_POS) > F.col(_N) - F.col(_N_TEST)
    return ranked.where(~ranked_test).select(*columns), ranked.where(ranked_test).select(*columns)


def split_summary(train: DataFrame, test: DataFrame, items: DataFrame | None = None) -> dict[str, Any]:
    """Counts that describe a split, for logs and the report (runs a few small aggregates).

    Args:
        train: the training interactions (``user_id``, ``item_id``, ``ts``).
        test: the test interactions (same columns).
        items: the catalogue (``item_id``); None leaves out the catalogue counts.

    Returns:
        A JSON-able dict: ``train_interactions``, ``test_interactions``, ``users`` (in either part),
        ``train_users``, ``test_users``, ``cold_users`` (test users without a training
        interaction), ``test_interactions_of_cold_users``, ``train_items``, ``test_items``,
        ``cold_items`` (distinct test items without a training interaction),
        ``test_interactions_on_cold_items``, ``test_share`` (test / all interactions),
        ``train_ts_min``, ``train_ts_max``, ``test_ts_min``, ``test_ts_max`` (ISO strings in UTC, or None),
        and with ``items``: ``catalog_items`` and ``catalog_items_without_train_interaction``.

    Example:
        >>> split_summary(*time_split(interactions), items)["cold_items"]
        12
    """
    parts = []
    for name, df in (("train", train), ("test", test)):
        parts.append(
            df.agg(
                F.count(F.lit(1)).alias(f"{name}_interactions"),
                F.countDistinct(S.USER_ID).alias(f"{name}_users"),
                F.countDistinct(S.ITEM_ID).alias(f"{name}_items"),
                F.min(S.TS).alias(f"{name}_ts_min"),
                F.max(S.TS).alias(f"{name}_ts_max"),
            )
        )
    train_users = train.select(S.USER_ID).distinct()
    train_items = train.select(S.ITEM_ID).distinct()
    parts.append(
        test.join(train_users, S.USER_ID, "left_anti").agg(
            F.countDistinct(S.USER_ID).alias("cold_users"),
            F.count(F.lit(1)).alias("test_interactions_of_cold_users"),
        )
    )
    parts.append(
        test.join(train_items, S.ITEM_ID, "left_anti").agg(
            F.countDistinct(S.ITEM_ID).alias("cold_items"),
            F.count(F.lit(1)).alias("test_interactions_on_cold_items"),
        )
    )
    parts.append(
        train.select(S.USER_ID)
        .unionByName(test.select(S.USER_ID))
        .agg(F.countDistinct(S.USER_ID).alias("users"))
    )
    if items is not None:
        catalogue = items.select(S.ITEM_ID).distinct()
        parts.append(catalogue.agg(F.count(F.lit(1)).alias("catalog_items")))
        parts.append(
            catalogue.join(train_items, S.ITEM_ID, "left_anti").agg(
                F.count(F.lit(1)).alias("catalog_items_without_train_interaction")
            )
        )
    row = functools.reduce(DataFrame.crossJoin, parts).first()  # one-row aggregates: one job
    assert row is not None
    out: dict[str, Any] = {}
    for key, value in row.asDict().items():
        if isinstance(value, dt.datetime):  # PySpark hands back naive local time: turn it into UTC
            out[key] = value.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat()
        else:
            out[key] = int(value) if value is not None else None
    total = out["train_interactions"] + out["test_interactions"]
    out["test_share"] = out["test_interactions"] / total if total else None
    return out
