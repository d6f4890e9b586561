"""Generated interactions for the long tail: plausible users for tail items, from the Mult-VAE.

With ``train.vae.augment`` on, :func:`longtail.ml.cf.fit` fits the Mult-VAE first, then, for every
long-tail item the VAE knows (training interactions, not head by ``recommend.head_rule``), takes
the ``augment_users`` users with the highest VAE logit for it among those who have not interacted
with it (one blocked top-K pass with the roles swapped: items are the queries, users the
candidates; nothing reaches the driver), and adds each such pair to ALS's input with the rating
``augment_weight`` (real interactions carry their summed weights, 1 or more). ALS then sees the
tail items with more (down-weighted) evidence.

Synthetic rows never enter ``interactions``: the `train` stage writes the rows it trained with to
their own table, ``synthetic_interactions`` (``user_id, item_id, weight, score, generator,
run_id``), replaced by each `train` run, so that they can be audited (Delta's history keeps the
earlier runs' rows) and dropped. ``evaluate`` generates its own from its training part's VAE and
writes none.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import Config
from longtail.ml import vae as V
from longtail.ml.segments import head_flags
from longtail.ml.topk import Signal, blocked_top_k

GENERATOR = "mult-vae"
SCORE = "score"


def tail_items(ratings: DataFrame, cfg: Config) -> DataFrame:
    """``(item_idx)`` of the long-tail items among those with a rating, by the recommend section's
    head rule over the ratings' interaction counts."""
    rc = cfg.recommend
    counts = ratings.groupBy(S.ITEM_IDX).agg(F.sum("n").cast("long").alias(S.POPULARITY))
    flags = head_flags(counts, rule=rc.head_rule, head_share=rc.head_share, head_fraction=rc.head_fraction)
    return (
        counts.join(F.broadcast(flags), S.POPULARITY, "left")
        .where(~F.coalesce(F.col("_is_head"), F.lit(False)))
        .select(S.ITEM_IDX)
    )


def synthetic_ratings(vae: V.VaeModel, ratings: DataFrame, cfg: Config) -> DataFrame:
    """``(user_idx, item_idx, rating, n, score)``: per tail item, its ``augment_users`` most
    plausible users by the VAE's logit (users who already have the item excluded), ``rating`` =
    ``augment_weight``, ``n`` = 0 (no real event), ``score`` the logit. Persisted and computed
    before it is returned (the caller unpersists it)."""
    vc = cfg.train.vae
    seen = ratings.select(S.USER_IDX, S.ITEM_IDX)
    # blocked_top_k reads its inputs twice (sizing, then the plan): cached, the VAE's user encoder
    # and the tail rule run once; the cache is dropped once the result is computed
    queries = V.item_vectors(vae).join(tail_items(ratings, cfg), S.ITEM_IDX).persist()
    users = V.user_vectors(vae, seen).persist()
    pairs = blocked_top_k(
        queries,
        users,
        [Signal(V.VAE, V.VAE_VEC, V.VAE_VEC, vc.augment_users)],
        query_key=S.ITEM_IDX,
        item_key=S.USER_IDX,
        exclude=seen.select(S.ITEM_IDX, S.USER_IDX),
        block_queries=cfg.recommend.block_users,
        block_items=cfg.recommend.block_items,
    )
    out = pairs.select(
        S.USER_IDX,
        S.ITEM_IDX,
        F.lit(float(vc.augment_weight)).alias("rating"),
        F.lit(0).cast("long").alias("n"),
        F.col(V.VAE).cast("double").alias(SCORE),
    ).persist()
    out.count()
    queries.unpersist()
    users.unpersist()
    return out


def synthetic_rows(synthetic: DataFrame, user_map: DataFrame, item_map: DataFrame, run_id: str) -> DataFrame:
    """The ``synthetic_interactions`` table's rows (ids, not indices) of :func:`synthetic_ratings`."""
    out = synthetic.join(user_map, S.USER_IDX).join(item_map, S.ITEM_IDX)
    return out.select(
        S.USER_ID,
        S.ITEM_ID,
        F.col("rating").cast("double").alias(S.WEIGHT),
        F.col(SCORE),
        F.lit(GENERATOR).alias("generator"),
        F.lit(run_id).alias(S.RUN_ID),
    )
