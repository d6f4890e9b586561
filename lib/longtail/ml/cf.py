"""`train`: implicit-feedback ALS on `interactions`, stable id maps, and the text-to-CF head.

1. **Id maps.** ALS needs dense integer ids. ``user_ids`` and ``item_ids`` map each string id to an
   int once and forever: a run only appends ids it has not seen, numbered after the largest one
   in the table (sorted by id, numbered with ``zipWithIndex``: no single-partition window). The
   item map covers the whole catalogue (``items``), so cold items have an index too.
2. **ALS** (Spark MLlib, ``implicitPrefs=True``) on the interactions summed per (user, item):
   the summed weight is the implicit rating, which ALS turns into confidence ``1 + alpha * r``.
   ALS gets a checkpoint directory (``train.checkpoint_dir``): without one its lineage has
   overflowed the JVM stack in local mode. Factors go to ``user_factors`` and ``item_factors``.
3. **Projection head** (:mod:`longtail.ml.head`): fitted on the warm items (at least
   ``train.head.min_count`` interactions) from their current text vectors to their ALS factors;
   the training set is collected to the driver up to ``train.head.max_items`` rows (a seeded
   sample beyond). Stored in ``projection_head`` (one row: safetensors bytes, JSON spec) last,
   with the versions of the factor tables it belongs to, so ``recommend`` can tell a complete
   ``train`` run from one that failed half-way (:func:`load_model` checks it).
4. **Mult-VAE** (:mod:`longtail.ml.vae`, ``train.vae.enabled``): on the same (user, item) pairs,
   fitted before ALS; the `train` stage saves it under ``<lake.root>/models/vae/<run_id>`` and
   records the path with the head. With ``train.vae.augment`` its generated pairs for long-tail
   items (:mod:`longtail.ml.augment`) join ALS's input, down-weighted.

:func:`fit` does steps 1-4 on DataFrames without writing anything (``evaluate`` trains on the
training part of a hold-out this way); the `train` stage (:mod:`longtail.stages.train`) reads the lake, fits, writes.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core import schema as S
from longtail.core.config import Config, HeadConfig, join_uri
from longtail.core.errors import MissingInputError
from longtail.ml import augment as A
from longtail.ml import vae as V
from longtail.ml.head import HeadError, ProjectionHead
from longtail.ml.model import Model

log = logging.getLogger(__name__)

MAX_IDX = 2**31 - 1  # ALS ids are Java ints
# <lake.root>/_staging/<job>: short-lived files of a running fit (the distributed VAE's shards),
# deleted when it ends; `maintain` removes what a killed one left once older than retention_hours
STAGING = "_staging"
RATING = "rating"
COUNT = "n"


# --- id maps -------------------------------------------------------------------------------------
def new_ids(ids: DataFrame, existing: DataFrame | None, *, id_col: str, idx_col: str) -> DataFrame:
    """Rows ``(id_col, idx_col)`` for the ids of ``ids`` that ``existing`` lacks, numbered after
    its largest index in id order. Null and duplicate ids are ignored.

    Example:
        >>> new_ids(users, lake.read("user_ids"), id_col="user_id", idx_col="user_idx")
    """
    spark = ids.sparkSession
    fresh = ids.select(id_col).where(F.col(id_col).isNotNull()).distinct()
    start = 0
    if existing is not None:
        fresh = fresh.join(existing.select(id_col), id_col, "left_anti")
        top = existing.agg(F.max(idx_col)).first()
        start = 0 if top is None or top[0] is None else int(top[0]) + 1
    numbered = fresh.orderBy(id_col).rdd.zipWithIndex().map(lambda p: (p[0][0], start + p[1]))
    schema = T.StructType([T.StructField(id_col, T.StringType()), T.StructField(idx_col, T.LongType())])
    guard = F.when(F.col(idx_col) <= MAX_IDX, F.col(idx_col).cast("int")).otherwise(
        F.raise_error(F.lit(f"{idx_col} passed {MAX_IDX}: ALS cannot index that many ids"))
    )
    return spark.createDataFrame(numbered, schema).select(id_col, guard.alias(idx_col))


def id_maps(
    interactions: DataFrame,
    items: DataFrame,
    *,
    users_existing: DataFrame | None = None,
    items_existing: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame, DataFrame, DataFrame]:
    """``(user_map, item_map, new_user_rows, new_item_rows)``: the full maps and what is new."""
    new_u = new_ids(interactions, users_existing, id_col=S.USER_ID, idx_col=S.USER_IDX)
    catalogue = items.select(S.ITEM_ID).unionByName(interactions.select(S.ITEM_ID))
    new_i = new_ids(catalogue, items_existing, id_col=S.ITEM_ID, idx_col=S.ITEM_IDX)
    user_map = new_u if users_existing is None else users_existing.unionByName(new_u)
    item_map = new_i if items_existing is None else items_existing.unionByName(new_i)
    return user_map, item_map, new_u, new_i


# --- ALS -----------------------------------------------------------------------------------------
def implicit_ratings(interactions: DataFrame, user_map: DataFrame, item_map: DataFrame) -> DataFrame:
    """``(user_idx, item_idx, rating, n)``: weights summed per (user, item) and the event count."""
    return (
        interactions.join(user_map, S.USER_ID)
        .join(item_map, S.ITEM_ID)
        .groupBy(S.USER_IDX, S.ITEM_IDX)
        .agg(F.sum(S.WEIGHT).alias(RATING), F.count(F.lit(1)).alias(COUNT))
    )


def fit_als(spark: SparkSession, ratings: DataFrame, cfg: Config) -> tuple[DataFrame, DataFrame]:
    """Fit implicit ALS; returns persisted ``(user_idx, features)`` and ``(item_idx, features)``."""
    from pyspark.ml.recommendation import ALS

    spark.sparkContext.setCheckpointDir(cfg.checkpoint_dir)
    a = cfg.train.als
    als = ALS(
        rank=a.rank,
        maxIter=a.max_iter,
        regParam=a.reg,
        alpha=a.alpha,
        implicitPrefs=True,
        userCol=S.USER_IDX,
        itemCol=S.ITEM_IDX,
        ratingCol=RATING,
        seed=a.seed,
        checkpointInterval=5,
        coldStartStrategy="drop",
    )
    model = als.fit(ratings)
    users = model.userFactors.select(F.col("id").alias(S.USER_IDX), S.FEATURES).persist()
    items = model.itemFactors.select(F.col("id").alias(S.ITEM_IDX), S.FEATURES).persist()
    return users, items


# --- the head ------------------------------------------------------------------------------------
def item_counts(interactions: DataFrame) -> DataFrame:
    """``(item_id, n)``: interactions per item (the evidence count ``n_i`` of the design)."""
    return interactions.groupBy(S.ITEM_ID).agg(F.count(F.lit(1)).alias(COUNT))


def head_training_set(
    item_factors: DataFrame, embeddings: DataFrame, counts: DataFrame, options: HeadConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Collect ``(x, y, weights, n_warm)`` of the warm items, at most ``options.max_items`` rows.

    Warm: at least ``options.min_count`` interactions and ALS factors. Weight ``n / (n + min_count)``.
    Beyond the cap, a seeded sample of about ``max_items`` rows is taken in Spark before collecting.
    """
    warm = (
        counts.where(F.col(COUNT) >= options.min_count)
        .join(item_factors.select(S.ITEM_ID, S.FEATURES), S.ITEM_ID)
        .join(embeddings.select(S.ITEM_ID, S.EMBEDDING), S.ITEM_ID)
        .persist()
    )
    try:
        n_warm = warm.count()
        rows = warm
        if n_warm > options.max_items:
            rows = warm.sample(fraction=min(1.0, options.max_items / n_warm * 1.02), seed=options.seed)
            rows = rows.limit(options.max_items)
            log.info("head: %d warm items, training on a sample of about %d", n_warm, options.max_items)
        pdf: Any = rows.orderBy(S.ITEM_ID).toPandas()  # bounded by train.head.max_items rows
    finally:
        warm.unpersist()
    if pdf.empty:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.float32), n_warm
    x = np.stack(pdf[S.EMBEDDING].to_numpy()).astype(np.float32)
    y = np.stack(pdf[S.FEATURES].to_numpy()).astype(np.float32)
    n = pdf[COUNT].to_numpy().astype(np.float32)
    return x, y, n / (n + options.min_count), n_warm


def fit_head(
    item_factors: DataFrame,
    embeddings: DataFrame,
    counts: DataFrame,
    options: HeadConfig,
    *,
    model_id: str,
    extra: dict[str, Any] | None = None,
) -> ProjectionHead:
    """Collect the warm items and fit the projection head (see :func:`head_training_set`)."""
    x, y, w, n_warm = head_training_set(item_factors, embeddings, counts, options)
    if len(x) < 2:
        raise HeadError(
            f"only {n_warm} warm item(s) (>= {options.min_count} interactions, with ALS factors and a "
            "text vector): too few to train the projection head; lower train.head.min_count or run encode"
        )
    return ProjectionHead.fit(
        x,
        y,
        w,
        model_id=model_id,
        hidden=options.hidden,
        l2=options.l2,
        epochs=options.epochs,
        lr=options.lr,
        weight_decay=options.weight_decay,
        seed=options.seed,
        extra={"warm_items": n_warm, **(extra or {})},
    )


# --- the whole fit -------------------------------------------------------------------------------
def fit(
    spark: SparkSession,
    cfg: Config,
    interactions: DataFrame,
    items: DataFrame,
    embeddings: DataFrame,
    *,
    model_id: str,
    users_existing: DataFrame | None = None,
    items_existing: DataFrame | None = None,
) -> tuple[Model, DataFrame, DataFrame]:
    """Fit ALS and the head on DataFrames; nothing is written.

    Args:
        interactions: ``(user_id, item_id, ts, weight)`` to learn from.
        items: the catalogue (``item_id``); every item gets an index.
        embeddings: one current vector per item (:func:`longtail.ml.model.current_embeddings`).
        model_id: the encoder model of ``embeddings``.
        users_existing, items_existing: the stored id maps to extend (None: start from 0).

    Returns:
        ``(model, new_user_rows, new_item_rows)``; the model's DataFrames are persisted.
    """
    user_map, item_map, new_u, new_i = id_maps(
        interactions, items, users_existing=users_existing, items_existing=items_existing
    )
    user_map, item_map = user_map.persist(), item_map.persist()
    ratings = implicit_ratings(interactions, user_map, item_map).persist()
    try:
        if ratings.isEmpty():
            raise MissingInputError(
                "train: no interactions to learn from; run ingest with an interaction log first"
            )
        vae = None
        if cfg.train.vae.enabled:
            text = embeddings.join(item_map, S.ITEM_ID).select(S.ITEM_IDX, S.EMBEDDING)
            staging = join_uri(cfg.lake.root, STAGING, f"vae-{uuid.uuid4().hex}")
            vae = V.fit(spark, ratings, cfg.train.vae, text=text, staging=staging)
        synthetic = None
        if vae is not None and cfg.train.vae.augment:
            synthetic = A.synthetic_ratings(vae, ratings, cfg)  # persisted
            users_f, items_f = fit_als(spark, ratings.unionByName(synthetic.drop(A.SCORE)), cfg)
        else:
            users_f, items_f = fit_als(spark, ratings, cfg)
    finally:
        ratings.unpersist()
    user_factors = users_f.join(user_map, S.USER_IDX).select(S.USER_ID, S.USER_IDX, S.FEATURES).persist()
    item_factors = items_f.join(item_map, S.ITEM_IDX).select(S.ITEM_ID, S.ITEM_IDX, S.FEATURES).persist()
    head = fit_head(item_factors, embeddings, item_counts(interactions), cfg.train.head, model_id=model_id)
    model = Model(
        model_id,
        user_map,
        item_map,
        user_factors,
        item_factors,
        head,
        cfg.train.als.rank,
        vae=vae,
        synthetic=synthetic,
    )
    return model, new_u, new_i
