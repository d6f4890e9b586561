"""Head, tail and cold: the one place where an item's popularity segment is decided.

Every catalogue item gets exactly one segment, from the training interactions only:

* **cold**: no training interaction (``popularity == 0``). Never head, whatever the rule.
* **head**: among the items WITH interactions, the most popular ones, chosen by
  ``recommend.head_rule``:

  - ``mass`` (default): the most popular items that together hold at most ``head_share`` of all
    training interactions (default 0.8: the Pareto reading of the "short head", the few items that
    draw most of the demand). Items are taken in popularity order while the running total of
    their interactions stays ``<= head_share x total``.
  - ``items``: the most popular items, at most ``head_fraction`` of the items that HAVE
    interactions (default 0.2). Counting only interacted items keeps the head meaningful when most
    of the catalogue is cold: the old rule (top 20% of the whole catalogue) filled the head with
    zero-interaction items picked by id order once fewer than 20% of items had interactions.

* **tail**: interacted, not head.

**Ties.** Items with the same popularity are in the same segment: a group of tied items enters the
head only if ALL of it fits under the limit (items at or above its popularity hold at most
``head_share`` of the interactions, resp. number at most ``head_fraction`` x interacted items).
So the head never exceeds its limit, and item ids never decide anything; with perfectly even
popularity the head is empty.

The decision is computed per distinct popularity value (a window over the few distinct values,
not a sort of the catalogue): items at or above ``p`` = the sum of the counts of the values ``>= p``.

Sources: the short head / long tail split of the popularity curve as in Abdollahpouri, Burke &
Mobasher, "Controlling popularity bias in learning-to-rank recommendation" (RecSys 2017) and
"Managing popularity bias in recommender systems with personalized re-ranking" (FLAIRS 2019), where
the head is cut from the top of the popularity curve by its share of the ratings (their figure:
the top items holding most of the ratings); the 80% default is the Pareto 80/20 convention, our
choice (docs/evaluation.md).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from longtail.core import schema as S

HEAD, TAIL, COLD = "head", "tail", "cold"
ITEM_SEGMENTS = (HEAD, TAIL, COLD)
HEAD_RULES = ("mass", "items")
SEGMENT = "item_segment"  # item_stats column: head | tail | cold
N_USERS = "n_users"

_COUNT, _ABOVE, _LIMIT = "_count", "_above", "_limit"


def head_flags(popularity: DataFrame, *, rule: str, head_share: float, head_fraction: float) -> DataFrame:
    """``(popularity, _is_head)`` for each distinct positive popularity value of ``popularity``
    (column ``popularity``, one row per item); items with popularity 0 are never head.

    Args:
        popularity: one row per catalogue item with its ``popularity`` (training interactions).
        rule: ``mass`` (head holds at most ``head_share`` of the interactions) or ``items`` (at most
            ``head_fraction`` of the interacted items).
    """
    if rule not in HEAD_RULES:
        raise ValueError(f"recommend.head_rule: {rule!r}; allowed: {list(HEAD_RULES)}")
    pop = F.col(S.POPULARITY)
    values = (
        popularity.where(pop > 0).groupBy(S.POPULARITY).agg(F.count(F.lit(1)).alias(_COUNT))
    )  # one row per distinct popularity value: few rows
    weight = F.col(_COUNT) * pop if rule == "mass" else F.col(_COUNT)
    # single partition, but only as many rows as there are distinct popularity values
    at_or_above = F.sum(weight).over(
        Window.orderBy(F.desc(S.POPULARITY)).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    total = F.sum(weight).over(Window.partitionBy(F.lit(1)))
    share = head_share if rule == "mass" else head_fraction
    return values.select(
        S.POPULARITY, (at_or_above.cast("double") <= F.lit(float(share)) * total).alias("_is_head")
    )


def item_segments(
    interactions: DataFrame,
    catalogue: DataFrame,
    *,
    rule: str = "mass",
    head_share: float = 0.8,
    head_fraction: float = 0.2,
) -> DataFrame:
    """``(item_id, popularity, n_users, is_long_tail, item_segment)`` for every catalogue item.

    ``popularity`` = the item's rows in ``interactions`` (0 for cold items), ``n_users`` its
    distinct users, ``item_segment`` head / tail / cold as the module docstring says and
    ``is_long_tail = item_segment != 'head'`` (cold items are long tail too). Items of
    ``interactions`` missing from ``catalogue`` are ignored, but they count in no total either.

    Example:
        >>> item_segments(train, items.select("item_id"), rule="mass", head_share=0.8)
    """
    counts = interactions.groupBy(S.ITEM_ID).agg(
        F.count(F.lit(1)).alias(S.POPULARITY), F.countDistinct(S.USER_ID).alias(N_USERS)
    )
    stats = (
        catalogue.select(S.ITEM_ID)
        .distinct()
        .join(counts, S.ITEM_ID, "left")
        .select(
            S.ITEM_ID,
            F.coalesce(S.POPULARITY, F.lit(0)).cast("long").alias(S.POPULARITY),
            F.coalesce(N_USERS, F.lit(0)).cast("long").alias(N_USERS),
        )
    )
    flags = head_flags(stats, rule=rule, head_share=head_share, head_fraction=head_fraction)
    head = F.coalesce(F.col("_is_head"), F.lit(False)) & (F.col(S.POPULARITY) > 0)
    return stats.join(F.broadcast(flags), S.POPULARITY, "left").select(
        S.ITEM_ID, S.POPULARITY, N_USERS, (~head).alias(S.IS_LONG_TAIL), segment_of(head).alias(SEGMENT)
    )


def segment_of(is_head: Column, popularity: Column | None = None) -> Column:
    """``head`` / ``tail`` / ``cold`` from a head flag and the popularity (``popularity`` column by
    default): popularity 0 (or null) is cold whatever the flag says."""
    pop = F.coalesce(popularity if popularity is not None else F.col(S.POPULARITY), F.lit(0))
    return F.when(pop <= 0, F.lit(COLD)).when(is_head, F.lit(HEAD)).otherwise(F.lit(TAIL))
