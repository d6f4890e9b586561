"""Fitting the learned fusion (:mod:`longtail.ml.ranker`) on an inner split of the training data.

The labels must be interactions the features never saw, or the ranker learns to trust ALS's
memory of them. So, given the interactions ``train`` (or ``evaluate``, its training part) learns
from:

1. **Inner split** (:func:`longtail.ml.holdout.time_split`): per user, the latest
   ``recommend.ranker.label_fraction`` of the interactions are the labels (inner test), the rest
   the inner training part. ``evaluate``'s own test part never gets here: it passes only its
   training part.
2. **Feature model**: ALS and the projection head fitted on the inner training part only
   (:func:`longtail.ml.cf.fit`); item popularity, head/tail, profiles and seen-item exclusion come
   from it too, exactly as they would at recommendation time.
3. **Candidates** (:func:`longtail.ml.scoring.candidates`) of the users with a label (at most
   ``max_users``, a seeded sample), labelled 1 when the user interacted with the item in the inner
   test part; all positives and at most ``negatives`` seeded negatives per user are kept.
4. **Classifier** (:func:`longtail.ml.ranker.fit_pipeline`) on the executors.

The production ALS (on all of ``interactions``) is fitted separately by the caller; the ranker only
reads signals on a per-user scale (z-scores, ranks, indicators) plus raw scores, so it carries over.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import Config
from longtail.ml import cf, holdout
from longtail.ml import ranker as L
from longtail.ml import scoring as R

log = logging.getLogger(__name__)


def labelled_candidates(
    spark: SparkSession,
    cfg: Config,
    interactions: DataFrame,
    items: DataFrame,
    embeddings: DataFrame,
    *,
    model_id: str,
) -> tuple[DataFrame, dict[str, Any]]:
    """Steps 1-3 of the module doc: ``(rows, info)``, rows being the sampled candidate pairs with
    the :data:`~longtail.ml.ranker.FEATURES` and ``label`` (persisted; the caller unpersists).

    ``info`` also carries ``inner_train`` (the DataFrame the feature model saw), for tests.
    """
    rk = cfg.recommend.ranker
    inner_train, inner_test = holdout.time_split(interactions, test_fraction=rk.label_fraction, cutoff=None)
    inner_train, inner_test = inner_train.persist(), inner_test.persist()
    model, _, _ = cf.fit(spark, cfg, inner_train, items, embeddings, model_id=model_id)
    users = inner_test.select(
        S.USER_ID
    ).distinct()  # users without inner history too: they learn the cold case
    n_users = users.count()
    if n_users > rk.max_users:
        users = users.sample(fraction=min(1.0, rk.max_users / n_users * 1.02), seed=rk.seed).limit(
            rk.max_users
        )
    cands = R.candidates(
        spark,
        cfg.recommend,
        model=model,
        interactions=inner_train,
        embeddings=embeddings,
        users=users,
        catalogue=items,
    )
    try:
        positives = (
            inner_test.select(S.USER_ID, S.ITEM_ID)
            .distinct()
            .join(cands.users, S.USER_ID)
            .join(cands.items, S.ITEM_ID)
            .select(S.USER_IDX, S.ITEM_IDX, F.lit(1).alias(L.LABEL))
        )
        labelled = cands.pairs.join(positives, [S.USER_IDX, S.ITEM_IDX], "left").withColumn(
            L.LABEL, F.coalesce(F.col(L.LABEL), F.lit(0))
        )
        rows = L.sample_negatives(L.with_features(labelled), negatives=rk.negatives, seed=rk.seed)
        rows = rows.select(S.USER_IDX, S.ITEM_IDX, L.LABEL, *L.FEATURES).persist()
        counts = rows.agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(L.LABEL).alias("positives"),
            F.countDistinct(S.USER_IDX).alias("users"),
        ).first()
        held_out = inner_test.count()
    finally:
        cands.unpersist()
        model.unpersist()
    assert counts is not None
    info = {
        "rows": int(counts["rows"]),
        "positives": int(counts["positives"] or 0),
        "users": int(counts["users"]),
        "held_out_interactions": int(held_out),
        "inner_train": inner_train,
        "inner_test": inner_test,
    }
    return rows, info


def fit_ranker(
    spark: SparkSession,
    cfg: Config,
    interactions: DataFrame,
    items: DataFrame,
    embeddings: DataFrame,
    *,
    model_id: str,
) -> L.Ranker:
    """Fit the learned fusion on ``interactions`` (the module doc); nothing is written.

    Returns:
        A :class:`~longtail.ml.ranker.Ranker` whose ``info`` says what it learned from: rows,
        positives, users, held-out interactions, the model kind, its training AUC, the feature
        importances and seconds.
    """
    t0 = time.perf_counter()
    rk = cfg.recommend.ranker
    rows, info = labelled_candidates(spark, cfg, interactions, items, embeddings, model_id=model_id)
    inner_train, inner_test = info.pop("inner_train"), info.pop("inner_test")
    try:
        pipeline = L.fit_pipeline(rows, rk)
        ranker = L.Ranker(pipeline, L.FEATURES)
        scored = pipeline.transform(rows).withColumn(L.PROBABILITY, vector_to_array(F.col("probability"))[1])
        train_auc = L.auc(scored)
    finally:
        rows.unpersist()
        inner_train.unpersist()
        inner_test.unpersist()
    ranker.info = {
        "model": rk.model,
        **info,
        "train_auc": round(train_auc, 4),
        "importances": L.importances(ranker),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("ranker: %s", ranker.info)
    return ranker
