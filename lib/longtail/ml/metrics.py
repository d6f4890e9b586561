"""Accuracy and long-tail metrics of top-K lists, computed in Spark for several variants at once.

Inputs (column names from :mod:`longtail.schema`):

* ``recs``: ``variant``, ``user_id``, ``item_id``, ``rank`` (1 = best). One list per (variant,
  user), each item at most once in it; a list may be longer than K (``rank <= K`` is the top-K) or
  shorter.
* ``test``: ``user_id``, ``item_id``: the held-out interactions. Relevance is binary: repeated
  (user, item) pairs count once.
* ``item_stats``: ``item_id``, ``popularity`` (the item's number of training interactions, 0 for
  cold items), ``n_users`` (distinct training users of the item), ``is_long_tail``, one row per
  item of the WHOLE catalogue, as :func:`longtail.ml.segments.item_segments` makes it. Three
  disjoint item segments: **cold** = ``popularity == 0`` (whatever ``is_long_tail`` says: a cold
  item is never head), **head** = not long tail and not cold, **tail** = long tail and not cold.
  "Long tail" in the long-tail metrics means tail AND cold unless the metric's name ends in
  ``_interacted`` (tail only). Test or recommended items missing from ``item_stats`` are treated
  as cold items (popularity 0, no users); the catalogue-wide metrics (coverage, Gini, entropy)
  count only catalogue items.

Every metric comes out in the long shape of the ``metrics`` table (without ``run_id``, which the
caller adds): ``variant`` string, ``metric`` string, ``k`` int, ``segment`` string, ``value``
double. Accuracy metrics come per segment (``all``, ``head``, ``tail``, ``cold``): a segment's
relevant set is the user's test items of that segment (a hit counts for the segment of the test
item), averaged over the users with at least one test item in the segment; a segment without any
test item gives no rows. ``recall_all_users`` (segments head, tail, cold) averages the same
per-user segment recall over ALL evaluated users instead, a user without a test item in the
segment counting 0. A test user without a list from a variant counts with zeros; users without
test items are left out (:func:`evaluated_users` counts both). Beyond-accuracy metrics use every
list in ``recs`` and segment ``all``. A ratio whose denominator is 0 is null.

Each metric has its own function (formula and source in its docstring), built as a per-user or
per-item DataFrame and reduced once. :func:`evaluate_all` computes all of them sharing that work:
one join of the lists with the test set for the accuracy metrics, one per-user pass for APLT, ARP
and novelty, one per-item pass for coverage, Gini and entropy.

Example:
    >>> metrics = evaluate_all(recs, test, item_stats, ks=(10, 20), n_train_users=6040)
    >>> metrics.where("metric = 'ndcg' AND segment = 'tail'").show()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from longtail.core import schema as S

# --- metric and segment names: a contract with the metrics table and outside scripts -------------
RECALL = "recall"
NDCG = "ndcg"
HIT_RATE = "hit_rate"
MAP = "map"
PRECISION = "precision"
CATALOG_COVERAGE = "catalog_coverage"
LONG_TAIL_COVERAGE = "long_tail_coverage"  # tail items, cold ones included
LONG_TAIL_COVERAGE_INTERACTED = "long_tail_coverage_interacted"  # tail items with interactions only
APLT = "aplt"  # tail items, cold ones included
APLT_INTERACTED = "aplt_interacted"  # tail items with interactions only
RECALL_ALL_USERS = "recall_all_users"  # a segment's recall averaged over all evaluated users
ARP = "arp"
GINI = "gini"
ENTROPY = "entropy"
NOVELTY = "novelty"
ACCURACY_METRICS = (RECALL, NDCG, HIT_RATE, MAP, PRECISION)
LIST_METRICS = (APLT, APLT_INTERACTED, ARP, NOVELTY)  # per user list
# per catalogue item
EXPOSURE_METRICS = (CATALOG_COVERAGE, LONG_TAIL_COVERAGE, LONG_TAIL_COVERAGE_INTERACTED, GINI, ENTROPY)
METRIC_NAMES = (*ACCURACY_METRICS, RECALL_ALL_USERS, *EXPOSURE_METRICS, *LIST_METRICS)

ALL = "all"
HEAD = "head"
TAIL = "tail"
COLD = "cold"
SEGMENTS = (ALL, HEAD, TAIL, COLD)

N_USERS = "n_users"  # item_stats: distinct training users of the item
ITEM_STATS_COLUMNS = (S.ITEM_ID, S.POPULARITY, N_USERS, S.IS_LONG_TAIL)
RECS_COLUMNS = (S.VARIANT, S.USER_ID, S.ITEM_ID, S.RANK)
DECILE = "decile"
N_TEST = "n_test"
SHARE_OF_ITEMS = "share_of_items"
SHARE_OF_EXPOSURE = "share_of_exposure"

# internal columns
_N_REL = "_n_rel"
_HITS = "_hits"
_DCG = "_dcg"
_AP = "_ap"
_N_EVAL = "_n_eval"
_EXPOSURE = "_exposure"
_TAIL = "_tail"  # long tail: tail or cold
_WARM_TAIL = "_warm_tail"  # tail with interactions
_COLD = "_cold"
_N_ITEMS = "_n_items"
_N_TAIL_ITEMS = "_n_tail_items"
_N_WARM_TAIL_ITEMS = "_n_warm_tail_items"
_COUNT = "_count"
_LESS = "_less"
_TOTAL = "_total"


# --- shared building blocks ----------------------------------------------------------------------
def _to_pandas(df: DataFrame) -> pd.DataFrame:
    """Collect a small result (a few rows per variant) as a pandas DataFrame."""
    return cast(pd.DataFrame, df.toPandas())


def _check_ks(ks: Iterable[int]) -> list[int]:
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1:
        raise ValueError(f"evaluate.k: cut-offs must be integers >= 1, got {list(ks)!r}")
    return out


def _div(num: Column, den: Column) -> Column:
    """``num / den`` as a double, null where ``den`` is 0 (ANSI mode would raise)."""
    return F.when(den != 0, num.cast("double") / den.cast("double"))


def _stats(item_stats: DataFrame) -> DataFrame:
    """item_stats with the flags every metric uses: ``_tail`` (long tail: tail or cold),
    ``_warm_tail`` (tail with interactions), ``_cold``."""
    S.require_columns(item_stats, ITEM_STATS_COLUMNS, "metrics: item_stats")
    pop = F.coalesce(F.col(S.POPULARITY), F.lit(0)).cast("long")
    tail = F.coalesce(F.col(S.IS_LONG_TAIL), F.lit(True))
    return item_stats.select(
        F.col(S.ITEM_ID),
        pop.alias(S.POPULARITY),
        F.coalesce(F.col(N_USERS), F.lit(0)).cast("long").alias(N_USERS),
        (tail | (pop == 0)).alias(_TAIL),
        (tail & (pop > 0)).alias(_WARM_TAIL),
        (pop == 0).alias(_COLD),
    )


def flags(item_stats: DataFrame) -> DataFrame:
    """``(item_id, popularity, n_users, _tail, _warm_tail, _cold)``: the segment flags every metric
    uses (``_tail`` = long tail: tail or cold; ``_warm_tail`` = tail with interactions)."""
    return _stats(item_stats)


def _recs(recs: DataFrame, max_k: int) -> DataFrame:
    S.require_columns(recs, RECS_COLUMNS, "metrics: recs")
    return recs.select(*RECS_COLUMNS).where(F.col(S.RANK) <= max_k)


def _top_k(recs: DataFrame, ks: Sequence[int]) -> DataFrame:
    """(variant, k, user_id, item_id, rank): each list row once per cut-off k with rank <= k."""
    return (
        _recs(recs, max(ks))
        .withColumn(S.K, F.explode(F.array(*[F.lit(k) for k in ks])))
        .where(F.col(S.RANK) <= F.col(S.K))
    )


def _variants(recs: DataFrame) -> DataFrame:
    return recs.select(S.VARIANT).distinct()


def _long(wide: DataFrame, metrics: Sequence[str], segment: str | None = None) -> DataFrame:
    """Unpivot (variant, k[, segment], <metrics>...) to (variant, metric, k, segment, value)."""
    if segment is not None:
        wide = wide.withColumn(S.SEGMENT, F.lit(segment))
    wide = wide.select(
        S.VARIANT, F.col(S.K).cast("int").alias(S.K), S.SEGMENT, *[F.col(m).cast("double") for m in metrics]
    )
    return wide.unpivot([S.VARIANT, S.K, S.SEGMENT], list(metrics), S.METRIC, S.VALUE).select(
        S.VARIANT, S.METRIC, S.K, S.SEGMENT, S.VALUE
    )


# --- accuracy ------------------------------------------------------------------------------------
def relevant_items(test: DataFrame, item_stats: DataFrame) -> DataFrame:
    """(user_id, item_id, segment): each distinct test pair once per segment its item belongs to.

    Every pair is in ``all`` and in exactly one of ``head``, ``tail``, ``cold`` (items missing
    from ``item_stats`` are cold).
    """
    S.require_columns(test, [S.USER_ID, S.ITEM_ID], "metrics: test")
    pairs = test.select(S.USER_ID, S.ITEM_ID).distinct()
    flags = pairs.join(_stats(item_stats).select(S.ITEM_ID, _TAIL, _COLD), S.ITEM_ID, "left")
    tail = F.coalesce(F.col(_TAIL), F.lit(True))
    cold = F.coalesce(F.col(_COLD), F.lit(True))
    segments = F.array(F.lit(ALL), F.when(cold, F.lit(COLD)).when(tail, F.lit(TAIL)).otherwise(F.lit(HEAD)))
    return flags.select(
        S.USER_ID, S.ITEM_ID, F.explode(F.filter(segments, lambda s: s.isNotNull())).alias(S.SEGMENT)
    )


def _idcg_table(max_k: int) -> Column:
    """IDCG of m relevant items at the top, m = 1..max_k, as a literal array (1-based lookup)."""
    values, acc = [], 0.0
    for r in range(1, max_k + 1):
        acc += 1.0 / math.log2(r + 1)
        values.append(acc)
    return F.array(*[F.lit(v) for v in values])


# Per-user value of each accuracy metric, from the per-user sums. Users without a hit have 0 for
# every one of them, which is why only users with a hit need a row (see _accuracy).
def _per_user_accuracy(metric: str, ks: Sequence[int]) -> Column:
    hits, n_rel, k = F.col(_HITS), F.col(_N_REL), F.col(S.K)
    depth = F.least(n_rel, k)
    if metric == RECALL:
        return hits / n_rel
    if metric == PRECISION:
        return hits / k
    if metric == HIT_RATE:
        return F.when(hits > 0, F.lit(1.0)).otherwise(F.lit(0.0))
    if metric == NDCG:
        return F.col(_DCG) / F.element_at(_idcg_table(max(ks)), depth.cast("int"))
    if metric == MAP:
        return F.col(_AP) / depth
    raise ValueError(f"not an accuracy metric: {metric!r}")


def user_accuracy(recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """Per (variant, k, segment, user) with at least one hit in the top-K: the per-user sums.

    Columns: ``variant``, ``k``, ``segment``, ``user_id``, ``_n_rel`` (|rel| in the segment),
    ``_hits`` (|rel ∩ top-K|), ``_dcg`` (sum over hits of 1/log2(rank+1)), ``_ap`` (sum over hits
    at rank r of P@r). Users with no hit are absent: all their accuracy values are 0.
    """
    ks = _check_ks(ks)
    rel = relevant_items(test, item_stats)
    return _user_accuracy(recs, rel, _relevant_counts(rel), ks)


def _relevant_counts(rel: DataFrame) -> DataFrame:
    """(user_id, segment, _n_rel): the size of each user's relevant set per segment."""
    return rel.groupBy(S.USER_ID, S.SEGMENT).agg(F.count(F.lit(1)).alias(_N_REL))


def _user_accuracy(recs: DataFrame, rel: DataFrame, n_rel: DataFrame, ks: Sequence[int]) -> DataFrame:
    hits = _recs(recs, max(ks)).join(rel.join(n_rel, [S.USER_ID, S.SEGMENT]), [S.USER_ID, S.ITEM_ID])
    # P@r at a hit of rank r = (hits at ranks <= r) / r; the same for every k >= r.
    nth_hit = F.row_number().over(Window.partitionBy(S.VARIANT, S.USER_ID, S.SEGMENT).orderBy(S.RANK))
    return (
        hits.withColumn(_AP, nth_hit / F.col(S.RANK))
        .withColumn(S.K, F.explode(F.array(*[F.lit(k) for k in ks])))
        .where(F.col(S.RANK) <= F.col(S.K))
        .groupBy(S.VARIANT, S.K, S.SEGMENT, S.USER_ID)
        .agg(
            F.count(F.lit(1)).alias(_HITS),
            F.sum(1.0 / F.log2(F.col(S.RANK).cast("double") + 1.0)).alias(_DCG),
            F.sum(_AP).alias(_AP),
            F.first(_N_REL).alias(_N_REL),
        )
    )


def _accuracy(
    recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, ks: Sequence[int], metrics: Sequence[str]
) -> DataFrame:
    """Mean over evaluated users of each metric's per-user value, per (variant, k, segment).

    Reduced once: sum over the users with a hit, divided by the number of users with a test item
    in the segment (users without a hit, with or without a list, add 0).
    """
    ks = _check_ks(ks)
    rel = relevant_items(test, item_stats)
    n_rel = _relevant_counts(rel)
    per_user = _user_accuracy(recs, rel, n_rel, ks)
    base = [m for m in metrics if m != RECALL_ALL_USERS]
    sums_of = [*base, *([RECALL] if RECALL_ALL_USERS in metrics and RECALL not in base else [])]
    sums = per_user.groupBy(S.VARIANT, S.K, S.SEGMENT).agg(
        *[F.sum(_per_user_accuracy(m, ks)).alias(m) for m in sums_of]
    )
    n_eval = n_rel.groupBy(S.SEGMENT).agg(F.count(F.lit(1)).alias(_N_EVAL))
    n_all = n_eval.where(F.col(S.SEGMENT) == ALL).select(F.col(_N_EVAL).alias("_n_all"))
    ks_df = _variants(recs).select(S.VARIANT, F.explode(F.array(*[F.lit(k) for k in ks])).alias(S.K))
    grid = ks_df.crossJoin(n_eval).crossJoin(n_all)
    joined = grid.join(sums, [S.VARIANT, S.K, S.SEGMENT], "left")
    wide = joined.select(
        S.VARIANT,
        S.K,
        S.SEGMENT,
        *[(F.coalesce(F.col(m), F.lit(0.0)) / F.col(_N_EVAL)).alias(m) for m in base],
    )
    out = _long(wide, base) if base else None
    if RECALL_ALL_USERS in metrics:
        # the same per-user sums over every evaluated user: users without a test item in the
        # segment add 0 (segment `all` would repeat `recall`: left out)
        wide_all = joined.where(F.col(S.SEGMENT) != ALL).select(
            S.VARIANT,
            S.K,
            S.SEGMENT,
            (F.coalesce(F.col(RECALL), F.lit(0.0)) / F.col("_n_all")).alias(RECALL_ALL_USERS),
        )
        extra = _long(wide_all, [RECALL_ALL_USERS])
        out = extra if out is None else out.unionByName(extra)
    assert out is not None
    return out


def recall_at_k(recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """Recall@K = |rel(u) ∩ top-K(u)| / |rel(u)|, averaged over users with a test item (per segment).

    ``rel(u)`` is the user's distinct test items (of the segment). Source: the standard definition,
    as in microsoft/recommenders ``SparkRankingEvaluation.recall_at_k``.

    Example:
        >>> recall_at_k(recs, test, item_stats, ks=(10,)).show()
    """
    return _accuracy(recs, test, item_stats, ks=ks, metrics=(RECALL,))


def recall_all_users_at_k(
    recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]
) -> DataFrame:
    """A segment's Recall@K averaged over ALL evaluated users: (1/|U_all|) sum_{u in U_s} recall_s(u).

    ``recall_s(u) = |rel_s(u) ∩ top-K(u)| / |rel_s(u)|`` with ``rel_s(u)`` the user's test items of
    segment s (head, tail or cold); ``U_s`` the users with such an item, ``U_all`` every user with a
    test item. Users without a test item in the segment count 0, so this is ``recall`` of the
    segment times ``|U_s| / |U_all|``: for ``cold`` it answers "how much cold recall does the
    average user get", where segment ``recall`` answers "how well are cold test items found by the
    users who have one". Segment ``all`` is left out (it equals ``recall``). Source: Recall@K as
    in :func:`recall_at_k`; the all-users average is our naming (docs/evaluation.md).

    Example:
        >>> recall_all_users_at_k(recs, test, item_stats, ks=(20,)).where("segment = 'cold'").show()
    """
    return _accuracy(recs, test, item_stats, ks=ks, metrics=(RECALL_ALL_USERS,))


def user_values(
    recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, ks: Sequence[int], segment: str = ALL
) -> DataFrame:
    """Per (variant, k, evaluated user): ``recall`` and ``ndcg`` of the segment, zeros included.

    One row for every user with a test item in ``segment`` and every variant of ``recs`` (a user
    without a hit, or without a list, gets 0), so the mean of a column over a (variant, k) is that
    metric's value. The input of the paired bootstrap (:mod:`longtail.ml.bootstrap`); its size is
    evaluated users x variants x ks rows.

    Example:
        >>> user_values(recs, test, item_stats, ks=(10,)).toPandas()
    """
    ks = _check_ks(ks)
    rel = relevant_items(test, item_stats).where(F.col(S.SEGMENT) == segment)
    n_rel = _relevant_counts(rel)
    per_user = _user_accuracy(recs, rel, n_rel, ks).select(
        S.VARIANT,
        S.K,
        S.USER_ID,
        _per_user_accuracy(RECALL, ks).alias(RECALL),
        _per_user_accuracy(NDCG, ks).alias(NDCG),
    )
    grid = (
        _variants(recs)
        .crossJoin(n_rel.select(S.USER_ID).distinct())
        .select(S.VARIANT, S.USER_ID, F.explode(F.array(*[F.lit(k) for k in ks])).alias(S.K))
    )
    return grid.join(per_user, [S.VARIANT, S.K, S.USER_ID], "left").select(
        S.VARIANT,
        F.col(S.K).cast("int").alias(S.K),
        S.USER_ID,
        *[F.coalesce(F.col(m), F.lit(0.0)).cast("double").alias(m) for m in (RECALL, NDCG)],
    )


def precision_at_k(
    recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]
) -> DataFrame:
    """Precision@K = |rel(u) ∩ top-K(u)| / K, averaged over users with a test item (per segment).

    The denominator is K even when the user's list is shorter than K (a short list is not rewarded
    for its brevity). Source: microsoft/recommenders ``SparkRankingEvaluation.precision_at_k``.

    Example:
        >>> precision_at_k(recs, test, item_stats, ks=(10,)).show()
    """
    return _accuracy(recs, test, item_stats, ks=ks, metrics=(PRECISION,))


def hit_rate_at_k(recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """HitRate@K = 1 if |rel(u) ∩ top-K(u)| > 0 else 0, averaged over users with a test item.

    Source: Deshpande & Karypis, "Item-based top-N recommendation algorithms" (TOIS 2004), as the
    share of users with at least one hit.

    Example:
        >>> hit_rate_at_k(recs, test, item_stats, ks=(10,)).show()
    """
    return _accuracy(recs, test, item_stats, ks=ks, metrics=(HIT_RATE,))


def ndcg_at_k(recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """NDCG@K = DCG@K / IDCG@K with binary gains, averaged over users with a test item.

    DCG@K = sum over hits at rank r <= K of 1 / log2(r + 1); IDCG@K = sum_{r=1..min(|rel|, K)}
    1 / log2(r + 1), the DCG of a list with all relevant items on top. Source: Järvelin &
    Kekäläinen, "Cumulated gain-based evaluation of IR techniques" (TOIS 2002), binary relevance as
    in microsoft/recommenders ``SparkRankingEvaluation.ndcg_at_k``.

    Example:
        >>> ndcg_at_k(recs, test, item_stats, ks=(10,)).show()
    """
    return _accuracy(recs, test, item_stats, ks=ks, metrics=(NDCG,))


def map_at_k(recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """MAP@K = mean over users of AP@K, AP@K = (1 / min(|rel|, K)) * sum_{r<=K} P@r * rel(r).

    ``rel(r)`` is 1 if the item at rank r is relevant; P@r = hits at ranks <= r, divided by r.
    Truncated at K: the normaliser is min(|rel|, K), so a perfect top-K scores 1. Source: the
    ``apk``/``mapk`` definition of Hamner's ml_metrics (Kaggle's MAP@K).

    Example:
        >>> map_at_k(recs, test, item_stats, ks=(10,)).show()
    """
    return _accuracy(recs, test, item_stats, ks=ks, metrics=(MAP,))


def evaluated_users_table(recs: DataFrame, test: DataFrame, item_stats: DataFrame) -> pd.DataFrame:
    """Who the accuracy metrics average over, per variant and segment (small; collected).

    Returns:
        pandas DataFrame with columns ``variant``, ``segment``, ``evaluated_users`` (users with at
        least one test item in the segment: the denominator), ``evaluated_without_list`` (of those,
        users without a list from the variant: they count with zeros) and ``excluded_users`` (users
        with a list from the variant but no test item in the segment: left out). One row per variant
        and segment of :data:`SEGMENTS`, in that order.

    Example:
        >>> evaluated_users_table(recs, test, item_stats).query("segment == 'all'")
    """
    S.require_columns(recs, [S.VARIANT, S.USER_ID], "metrics: recs")
    rel_users = relevant_items(test, item_stats).select(S.USER_ID, S.SEGMENT).distinct()
    segments = recs.sparkSession.createDataFrame([(s,) for s in SEGMENTS], f"{S.SEGMENT} string")
    n_eval = rel_users.groupBy(S.SEGMENT).agg(F.count(F.lit(1)).alias("_n_eval"))
    with_list = (
        recs.select(S.VARIANT, S.USER_ID)
        .distinct()
        .crossJoin(segments)
        .join(rel_users.withColumn("_rel", F.lit(1)), [S.USER_ID, S.SEGMENT], "left")
        .groupBy(S.VARIANT, S.SEGMENT)
        .agg(F.count(F.lit(1)).alias("_n_list"), F.count("_rel").alias("_n_list_rel"))
    )
    n_eval_col = F.coalesce(F.col("_n_eval"), F.lit(0))
    out = _to_pandas(
        with_list.join(n_eval, S.SEGMENT, "left").select(
            S.VARIANT,
            S.SEGMENT,
            n_eval_col.cast("long").alias("evaluated_users"),
            (n_eval_col - F.col("_n_list_rel")).cast("long").alias("evaluated_without_list"),
            (F.col("_n_list") - F.col("_n_list_rel")).cast("long").alias("excluded_users"),
        )
    )
    order = {s: i for i, s in enumerate(SEGMENTS)}
    out = out.sort_values([S.VARIANT, S.SEGMENT], key=lambda c: c.map(order) if c.name == S.SEGMENT else c)
    return out.reset_index(drop=True)


def evaluated_users(recs: DataFrame, test: DataFrame, item_stats: DataFrame) -> dict[str, Any]:
    """:func:`evaluated_users_table` as a JSON-able dict, for logs, the runs table and the report.

    Returns:
        ``{"evaluated_users": {segment: n}, "variants": {variant: {"users_with_list": n,
        "evaluated_without_list": {segment: n}, "excluded_users": {segment: n}}}}``: per segment the
        users with a test item in it (the denominator of its accuracy metrics); per variant the
        users it gave a list, the evaluated users without one (counted with zeros) and the users
        with a list but no test item in the segment (left out).

    Example:
        >>> evaluated_users(recs, test, item_stats)["variants"]["cf"]["excluded_users"]["all"]
        0
    """
    table = evaluated_users_table(recs, test, item_stats)
    users_with_list = recs.groupBy(S.VARIANT).agg(F.countDistinct(S.USER_ID).alias("n")).collect()
    n_list = {r[S.VARIANT]: int(r["n"]) for r in users_with_list}
    first = table.drop_duplicates(S.SEGMENT)
    out: dict[str, Any] = {
        "evaluated_users": {str(r.segment): int(r.evaluated_users) for r in first.itertuples()},
        "variants": {},
    }
    for variant, rows in table.groupby(S.VARIANT, sort=False):
        out["variants"][str(variant)] = {
            "users_with_list": n_list.get(str(variant), 0),
            "evaluated_without_list": {
                str(r.segment): int(r.evaluated_without_list) for r in rows.itertuples()
            },
            "excluded_users": {str(r.segment): int(r.excluded_users) for r in rows.itertuples()},
        }
    return out


# --- beyond accuracy: per user list --------------------------------------------------------------
def _list_metrics(
    recs: DataFrame,
    item_stats: DataFrame,
    *,
    ks: Sequence[int],
    metrics: Sequence[str],
    n_train_users: int | None = None,
) -> DataFrame:
    """APLT, ARP and novelty from one per-(variant, k, user) pass over the top-K lists."""
    ks = _check_ks(ks)
    stats = _stats(item_stats).select(S.ITEM_ID, S.POPULARITY, N_USERS, _TAIL, _WARM_TAIL)
    rows = _top_k(recs, ks).join(stats, S.ITEM_ID, "left")
    aggs = [F.count(F.lit(1)).alias("_n")]
    if APLT in metrics:
        aggs.append(F.sum(F.when(F.coalesce(F.col(_TAIL), F.lit(True)), 1).otherwise(0)).alias("_n_tail"))
    if APLT_INTERACTED in metrics:
        warm = F.coalesce(F.col(_WARM_TAIL), F.lit(False))
        aggs.append(F.sum(F.when(warm, 1).otherwise(0)).alias("_n_warm_tail"))
    if ARP in metrics:
        aggs.append(F.sum(F.coalesce(F.col(S.POPULARITY), F.lit(0))).alias("_pop"))
    if NOVELTY in metrics:
        if n_train_users is None or n_train_users < 0:
            raise ValueError(f"novelty needs n_train_users >= 0, got {n_train_users!r}")
        n_users_i = F.coalesce(F.col(N_USERS), F.lit(0)).cast("double")
        self_info = F.log2(F.lit(float(n_train_users) + 1.0) / (n_users_i + 1.0))
        aggs.append(F.sum(self_info).alias("_info"))
    per_user = rows.groupBy(S.VARIANT, S.K, S.USER_ID).agg(*aggs)
    reduce: list[Column] = []
    if APLT in metrics:
        reduce.append(F.avg(F.col("_n_tail") / F.col("_n")).alias(APLT))
    if APLT_INTERACTED in metrics:
        reduce.append(F.avg(F.col("_n_warm_tail") / F.col("_n")).alias(APLT_INTERACTED))
    if ARP in metrics:
        reduce.append(F.avg(F.col("_pop") / F.col("_n")).alias(ARP))
    if NOVELTY in metrics:
        reduce.append(_div(F.sum("_info"), F.sum("_n")).alias(NOVELTY))
    wide = per_user.groupBy(S.VARIANT, S.K).agg(*reduce)
    return _long(wide, [m for m in LIST_METRICS if m in metrics], segment=ALL)


def aplt(recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """APLT@K = (1/|U|) * sum_u |top-K(u) ∩ long tail| / |top-K(u)|, over users with a list.

    Average percentage of long-tail items: the denominator is the length of the user's top-K list
    (shorter than K when the list is). Cold items count as long tail here (see
    :func:`aplt_interacted` for the tail with interactions only). Source: Abdollahpouri, Burke &
    Mobasher, "Controlling popularity bias in learning-to-rank recommendation" (RecSys 2017).

    Example:
        >>> aplt(recs, item_stats, ks=(10,)).show()
    """
    return _list_metrics(recs, item_stats, ks=ks, metrics=(APLT,))


def aplt_interacted(recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """APLT@K over the interacted tail: (1/|U|) * sum_u |top-K(u) ∩ T| / |top-K(u)|, T = tail
    items with at least one training interaction (cold items excluded).

    Separates "reaches the long tail that has a history" from "fills lists with never-seen items",
    which :func:`aplt` counts alike. Source: APLT of Abdollahpouri, Burke & Mobasher (RecSys 2017),
    restricted to the interacted tail (the split is ours, docs/evaluation.md).

    Example:
        >>> aplt_interacted(recs, item_stats, ks=(10,)).show()
    """
    return _list_metrics(recs, item_stats, ks=ks, metrics=(APLT_INTERACTED,))


def arp(recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """ARP@K = (1/|U|) * sum_u (sum_{i in top-K(u)} popularity(i)) / |top-K(u)|.

    Average recommendation popularity, ``popularity`` = the item's number of training interactions
    (lower: the lists lean less on popular items). Source: Yin et al., "Challenging the long tail
    recommendation" (PVLDB 2012); with APLT in Abdollahpouri, Burke & Mobasher, "Managing popularity
    bias in recommender systems with personalized re-ranking" (FLAIRS 2019).

    Example:
        >>> arp(recs, item_stats, ks=(10,)).show()
    """
    return _list_metrics(recs, item_stats, ks=ks, metrics=(ARP,))


def novelty(recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int], n_train_users: int) -> DataFrame:
    """Novelty@K = mean over recommended (u, i) pairs in top-K of log2((N + 1) / (n_users(i) + 1)).

    The self-information (bits) of recommending item i, where N = ``n_train_users`` and
    ``n_users(i)`` = the item's distinct training users; +1 is Laplace smoothing so that cold items
    (n_users = 0) get a finite log2(N + 1). Averaged over pairs (micro), i.e. users with longer
    lists weigh more. Source: Zhou et al., "Solving the apparent diversity-accuracy dilemma of
    recommender systems" (PNAS 2010); Vargas & Castells, "Rank and relevance in novelty and
    diversity metrics for recommender systems" (RecSys 2011).

    Example:
        >>> novelty(recs, item_stats, ks=(10,), n_train_users=6040).show()
    """
    return _list_metrics(recs, item_stats, ks=ks, metrics=(NOVELTY,), n_train_users=n_train_users)


# --- beyond accuracy: per catalogue item ---------------------------------------------------------
def item_exposure(recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """Per (variant, k, recommended catalogue item): ``_exposure`` = the number of top-K lists with it.

    Also ``_tail``, ``_warm_tail`` and the catalogue sizes ``_n_items``, ``_n_tail_items`` and
    ``_n_warm_tail_items`` (every item of ``item_stats``). Unrecommended items have no row: their
    exposure is 0.
    """
    ks = _check_ks(ks)
    stats = _stats(item_stats)
    sizes = stats.agg(
        F.count(F.lit(1)).alias(_N_ITEMS),
        F.sum(F.when(F.col(_TAIL), 1).otherwise(0)).alias(_N_TAIL_ITEMS),
        F.sum(F.when(F.col(_WARM_TAIL), 1).otherwise(0)).alias(_N_WARM_TAIL_ITEMS),
    )
    exposure = _top_k(recs, ks).groupBy(S.VARIANT, S.K, S.ITEM_ID).agg(F.count(F.lit(1)).alias(_EXPOSURE))
    return exposure.join(stats.select(S.ITEM_ID, _TAIL, _WARM_TAIL), S.ITEM_ID).crossJoin(sizes)


def _exposure_groups(exposure: DataFrame) -> DataFrame:
    """Per (variant, k, exposure value x > 0): ``_count`` items with it and ``_less`` items below it.

    The sorted exposure vector of the whole catalogue, compressed: ``_less`` counts the
    unrecommended items (x = 0) and the recommended items with a smaller x. Distinct exposure values
    are few (at most sqrt(2 * K * users)), so the window per (variant, k) stays small.
    """
    groups = exposure.groupBy(S.VARIANT, S.K, _EXPOSURE, _N_ITEMS).agg(F.count(F.lit(1)).alias(_COUNT))
    by_value = Window.partitionBy(S.VARIANT, S.K).orderBy(_EXPOSURE)
    upto = by_value.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    everything = Window.partitionBy(S.VARIANT, S.K)
    recommended = F.sum(_COUNT).over(everything)
    total = F.sum(F.col(_EXPOSURE) * F.col(_COUNT)).over(everything)
    return groups.select(
        S.VARIANT,
        S.K,
        _EXPOSURE,
        _COUNT,
        _N_ITEMS,
        (F.col(_N_ITEMS) - recommended + F.sum(_COUNT).over(upto) - F.col(_COUNT)).alias(_LESS),
        total.alias(_TOTAL),
    )


def _exposure_metrics(
    recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int], metrics: Sequence[str]
) -> DataFrame:
    """Coverage, long-tail coverage, entropy and Gini from one per-item exposure DataFrame."""
    exposure = item_exposure(recs, item_stats, ks=ks)
    x = F.col(_EXPOSURE).cast("double")
    parts: list[DataFrame] = []
    simple = [
        m
        for m in (CATALOG_COVERAGE, LONG_TAIL_COVERAGE, LONG_TAIL_COVERAGE_INTERACTED, ENTROPY)
        if m in metrics
    ]
    if simple:
        reduce: list[Column] = []
        if CATALOG_COVERAGE in metrics:
            reduce.append(_div(F.count(F.lit(1)), F.first(_N_ITEMS)).alias(CATALOG_COVERAGE))
        if LONG_TAIL_COVERAGE in metrics:
            n_tail_recommended = F.sum(F.when(F.col(_TAIL), 1).otherwise(0))
            reduce.append(_div(n_tail_recommended, F.first(_N_TAIL_ITEMS)).alias(LONG_TAIL_COVERAGE))
        if LONG_TAIL_COVERAGE_INTERACTED in metrics:
            n_warm = F.sum(F.when(F.col(_WARM_TAIL), 1).otherwise(0))
            reduce.append(_div(n_warm, F.first(_N_WARM_TAIL_ITEMS)).alias(LONG_TAIL_COVERAGE_INTERACTED))
        if ENTROPY in metrics:
            # H = -sum p log2 p with p = x / T, rewritten as log2 T - (sum x log2 x) / T
            total = F.sum(x)
            reduce.append((F.log2(total) - F.sum(x * F.log2(x)) / total).alias(ENTROPY))
        parts.append(_long(exposure.groupBy(S.VARIANT, S.K).agg(*reduce), simple, segment=ALL))
    if GINI in metrics:
        g = _exposure_groups(exposure)
        # positions i = less+1 .. less+count all hold x: sum (2i - n - 1) = count * (2*less + count - n)
        term = x * F.col(_COUNT) * (2 * F.col(_LESS) + F.col(_COUNT) - F.col(_N_ITEMS))
        wide = g.groupBy(S.VARIANT, S.K).agg(
            _div(F.sum(term), F.first(_N_ITEMS) * F.first(_TOTAL)).alias(GINI)
        )
        parts.append(_long(wide, [GINI], segment=ALL))
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def catalog_coverage(recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """Catalogue coverage@K = |union_u top-K(u)| / |I|, I = every item of ``item_stats``.

    Source: Ge, Delgado-Battenfeld & Jannach, "Beyond accuracy" (RecSys 2010); microsoft/recommenders
    ``SparkDiversityEvaluation.catalog_coverage`` (there the denominator is the training items; here
    it is the whole catalogue, cold items included).

    Example:
        >>> catalog_coverage(recs, item_stats, ks=(10,)).show()
    """
    return _exposure_metrics(recs, item_stats, ks=ks, metrics=(CATALOG_COVERAGE,))


def long_tail_coverage(recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """Long-tail coverage@K = |union_u top-K(u) ∩ L| / |L|, L = the catalogue's long-tail items.

    The share of long-tail items (tail and cold: every item outside the head) recommended to at
    least one user. Source: Abdollahpouri, Burke & Mobasher (RecSys 2017), "long-tail coverage";
    catalogue coverage (Ge et al. 2010) restricted to the tail.

    Example:
        >>> long_tail_coverage(recs, item_stats, ks=(10,)).show()
    """
    return _exposure_metrics(recs, item_stats, ks=ks, metrics=(LONG_TAIL_COVERAGE,))


def long_tail_coverage_interacted(recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """Long-tail coverage@K of the interacted tail: |union_u top-K(u) ∩ T| / |T|, T = tail items
    with at least one training interaction (cold items excluded from both sides).

    When most of the catalogue is cold, :func:`long_tail_coverage` is dominated by cold items; this
    one says how much of the tail that has a history gets shown. Source: long-tail coverage of
    Abdollahpouri, Burke & Mobasher (RecSys 2017), restricted to the interacted tail (the split is
    ours, docs/evaluation.md).

    Example:
        >>> long_tail_coverage_interacted(recs, item_stats, ks=(10,)).show()
    """
    return _exposure_metrics(recs, item_stats, ks=ks, metrics=(LONG_TAIL_COVERAGE_INTERACTED,))


def entropy(recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """Shannon entropy@K of exposure, in bits: H = -sum_i p(i) log2 p(i), p(i) = x_i / sum_j x_j.

    ``x_i`` = the number of top-K lists that hold item i; unrecommended items add 0 (0 log 0 = 0).
    Log base 2: the maximum is log2(|I|) for a perfectly even exposure. Source: Shani &
    Gunawardana, "Evaluating recommendation systems" (Recommender Systems Handbook, 2011);
    microsoft/recommenders ``SparkDiversityEvaluation.distributional_coverage`` (same formula).

    Example:
        >>> entropy(recs, item_stats, ks=(10,)).show()
    """
    return _exposure_metrics(recs, item_stats, ks=ks, metrics=(ENTROPY,))


def gini(recs: DataFrame, item_stats: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """Gini index@K of exposure over the whole catalogue: G = sum_i (2i - n - 1) x_(i) / (n sum_i x_i).

    ``x_(1) <= ... <= x_(n)`` are the exposures (number of top-K lists that hold the item) of all n
    catalogue items in ascending order, unrecommended items as 0. G = 0 for perfectly equal
    exposure, (n - 1) / n when one item takes all. Computed over the distinct exposure values (see
    ``_exposure_groups``), not a catalogue-wide sort. Source: Fleder & Hosanagar, "Blockbuster
    culture's next rise or fall" (Management Science 2009); Shani & Gunawardana (2011).

    Example:
        >>> gini(recs, item_stats, ks=(10,)).show()
    """
    return _exposure_metrics(recs, item_stats, ks=ks, metrics=(GINI,))


# --- all at once ---------------------------------------------------------------------------------
def evaluate_all(
    recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, ks: Sequence[int], n_train_users: int
) -> DataFrame:
    """Every metric of this module, for every variant in ``recs`` and every K in ``ks``.

    Returns:
        A DataFrame (``variant`` string, ``metric`` string, ``k`` int, ``segment`` string,
        ``value`` double): the ``metrics`` table without ``run_id``. Accuracy metrics for each
        segment that has test items, beyond-accuracy metrics with segment ``all``. Lazy: nothing
        runs until the caller writes or collects it.

    Example:
        >>> evaluate_all(recs, test, item_stats, ks=(10, 20), n_train_users=6040).toPandas()
    """
    ks = _check_ks(ks)
    return (
        _accuracy(recs, test, item_stats, ks=ks, metrics=(*ACCURACY_METRICS, RECALL_ALL_USERS))
        .unionByName(_exposure_metrics(recs, item_stats, ks=ks, metrics=EXPOSURE_METRICS))
        .unionByName(
            _list_metrics(recs, item_stats, ks=ks, metrics=LIST_METRICS, n_train_users=n_train_users)
        )
    )


# --- report helpers ------------------------------------------------------------------------------
def lorenz_curve(recs: DataFrame, item_stats: DataFrame, *, k: int, points: int = 101) -> pd.DataFrame:
    """The Lorenz curve of top-K exposure over the whole catalogue, per variant, at ``points`` points.

    Items sorted by exposure ascending (unrecommended items first, with 0); at share p of the items
    the curve is the share of all exposure those least-exposed p * n items receive, linearly
    interpolated between items (exact for the piecewise-linear curve). The diagonal is equality;
    twice the area between it and the curve is the Gini index (up to its (n-1)/n finite-n bound).
    Computed in Spark; only the points are collected.

    Returns:
        pandas DataFrame (``variant``, ``share_of_items``, ``share_of_exposure``), ``points`` rows
        per variant, sorted.

    Example:
        >>> lorenz_curve(recs, item_stats, k=10).query("variant == 'fused'")
    """
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    g = _exposure_groups(item_exposure(recs, item_stats, ks=[k]))
    share = F.col("_j").cast("double") / float(points - 1)
    position = share * F.col(_N_ITEMS)  # the first p * n items
    # the part of this exposure group among the first p*n items: clamp(p*n - less, 0, count)
    inside = F.least(F.greatest(position - F.col(_LESS), F.lit(0.0)), F.col(_COUNT).cast("double"))
    curve = _to_pandas(
        g.withColumn("_j", F.explode(F.sequence(F.lit(0), F.lit(points - 1))))
        .groupBy(S.VARIANT, "_j")
        .agg(_div(F.sum(F.col(_EXPOSURE) * inside), F.first(_TOTAL)).alias(SHARE_OF_EXPOSURE))
        .select(S.VARIANT, (F.col("_j") / float(points - 1)).alias(SHARE_OF_ITEMS), SHARE_OF_EXPOSURE)
    )
    return curve.sort_values([S.VARIANT, SHARE_OF_ITEMS]).reset_index(drop=True)


def popularity_deciles(item_stats: DataFrame) -> DataFrame:
    """(item_id, decile): the catalogue ranked by training popularity, split into 10 equal parts.

    Items are sorted by ``popularity`` descending, ties by ``item_id`` ascending; the item at
    0-based position p of n goes to decile ``floor(10 p / n) + 1`` (decile 1 = the most popular
    10%; sizes differ by at most one). The position is the number of items with a higher
    popularity (a small window over the distinct popularity values) plus the rank within its
    popularity (a window per value), so no single task sorts the whole catalogue.
    """
    stats = _stats(item_stats).select(S.ITEM_ID, S.POPULARITY)
    counts = stats.groupBy(S.POPULARITY).agg(F.count(F.lit(1)).alias(_COUNT))
    # one partition, but only as many rows as there are distinct popularity values
    above = F.sum(_COUNT).over(Window.orderBy(F.desc(S.POPULARITY))) - F.col(_COUNT)
    offsets = counts.select(S.POPULARITY, above.alias(_LESS))
    n = stats.agg(F.count(F.lit(1)).alias(_N_ITEMS))
    within = F.row_number().over(Window.partitionBy(S.POPULARITY).orderBy(S.ITEM_ID)) - 1
    return (
        stats.withColumn("_within", within)
        .join(offsets, S.POPULARITY)
        .crossJoin(n)
        .select(
            S.ITEM_ID,
            (F.floor((F.col(_LESS) + F.col("_within")) * 10 / F.col(_N_ITEMS)) + 1).cast("int").alias(DECILE),
        )
    )


def recall_by_decile(recs: DataFrame, test: DataFrame, item_stats: DataFrame, *, k: int) -> pd.DataFrame:
    """Recall@K per item-popularity decile, per variant (micro-averaged; small, collected).

    recall(d) = |{(u, i) in test : i in decile d and i in top-K(u)}| / |{(u, i) in test : i in d}|:
    the hits on the test pairs of decile d over the test pairs of d, pooled over users (micro), so
    heavy users weigh more than in the per-user :func:`recall_at_k`. Deciles as in
    :func:`popularity_deciles` (decile 1 = the most popular 10% of the catalogue). Test items
    missing from ``item_stats`` have no decile and are left out.

    Returns:
        pandas DataFrame (``variant``, ``decile`` 1..10, ``recall``, ``n_test``): 10 rows per
        variant; ``recall`` is NaN where the decile has no test pair.

    Example:
        >>> recall_by_decile(recs, test, item_stats, k=10).pivot(index="decile", columns="variant")
    """
    S.require_columns(test, [S.USER_ID, S.ITEM_ID], "metrics: test")
    deciles = popularity_deciles(item_stats)
    pairs = test.select(S.USER_ID, S.ITEM_ID).distinct().join(deciles, S.ITEM_ID)
    n_test = pairs.groupBy(DECILE).agg(F.count(F.lit(1)).alias(N_TEST))
    top = _recs(recs, k).select(S.VARIANT, S.USER_ID, S.ITEM_ID).distinct()
    hits = (
        top.join(pairs, [S.USER_ID, S.ITEM_ID]).groupBy(S.VARIANT, DECILE).agg(F.count(F.lit(1)).alias(_HITS))
    )
    grid = _variants(recs).crossJoin(
        recs.sparkSession.range(1, 11).select(F.col("id").cast("int").alias(DECILE))
    )
    out = _to_pandas(
        grid.join(n_test, DECILE, "left")
        .join(hits, [S.VARIANT, DECILE], "left")
        .select(
            S.VARIANT,
            DECILE,
            _div(F.coalesce(F.col(_HITS), F.lit(0)), F.coalesce(F.col(N_TEST), F.lit(0))).alias("recall"),
            F.coalesce(F.col(N_TEST), F.lit(0)).cast("long").alias(N_TEST),
        )
    )
    out["recall"] = out["recall"].astype(float)
    return out.sort_values([S.VARIANT, DECILE]).reset_index(drop=True)
