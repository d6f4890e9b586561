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
4. **Classifier** (:func:`longtail.ml.ranker.fit_pipeline`) on the executors. With
   ``recommend.ranker.model: auto`` (the default) the labelled users are split by a seeded hash:
   GBT and logistic regression are fitted on ``1 - validation_fraction`` of them, and the held-out
   users' candidates are ranked by each fitted model and by CF alone and content alone. The one
   with the highest NDCG@``recommend.k`` ships (ties: the order gbt, logistic, cf, content). A
   small log (the synthetic tests' 30 users) or one where a signal is all there is to learn then
   gets that signal's order, not a tree ensemble extrapolating from a few dozen labels; a large
   one gets the model that beats both signals on users it never saw.

The production ALS (on all of ``interactions``) is fitted separately by the caller; the ranker only
reads signals on a per-user scale (z-scores, ranks, indicators) plus raw scores, so it carries over.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import Config
from longtail.ml import cf, holdout
from longtail.ml import ranker as L
from longtail.ml import scoring as R

log = logging.getLogger(__name__)


def inner_split(interactions: DataFrame, rk: Any) -> tuple[DataFrame, DataFrame]:
    """Step 1 of the module doc: per user, the latest ``label_fraction`` of ``interactions`` are
    the labels, the rest the feature model's training part."""
    return holdout.time_split(interactions, test_fraction=rk.label_fraction, cutoff=None)


def labelled_candidates(
    spark: SparkSession,
    cfg: Config,
    interactions: DataFrame,
    items: DataFrame,
    embeddings: DataFrame,
    *,
    model_id: str,
    split: tuple[DataFrame, DataFrame] | None = None,
) -> tuple[DataFrame, dict[str, Any]]:
    """Steps 1-3 of the module doc: ``(rows, info)``, rows being the sampled candidate pairs with
    the :data:`~longtail.ml.ranker.FEATURES` and ``label`` (persisted; the caller unpersists).

    ``info`` also carries ``inner_train`` (the DataFrame the feature model saw), for tests.
    ``split``: the inner ``(train, test)`` split of ``interactions`` when the caller made it already.
    """
    rk = cfg.recommend.ranker
    inner_train, inner_test = split or inner_split(interactions, rk)
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
    split = inner_split(interactions, rk)
    if split[0].isEmpty():
        # e.g. a log of 1-3 interactions per user, split again by evaluate's validation hold-out:
        # every interaction is somebody's latest, nothing is left to fit the feature model on
        log.warning(
            "ranker: the inner split leaves no interaction to fit the feature model on "
            "(every user's history is within recommend.ranker.label_fraction); fused ranks by cf"
        )
        ranker = L.Ranker(None, L.FEATURES, signal=L.CF)
        ranker.info = {
            "model": L.CF,
            "fallback": "no inner training interactions",
            "seconds": round(time.perf_counter() - t0, 2),
        }
        return ranker
    rows, info = labelled_candidates(
        spark, cfg, interactions, items, embeddings, model_id=model_id, split=split
    )
    inner_train, inner_test = info.pop("inner_train"), info.pop("inner_test")
    choice: dict[str, Any] = {}
    try:
        if rk.model == "auto":
            ranker, choice = _choose(rows, rk, k=cfg.recommend.k)
        else:
            ranker = L.Ranker(L.fit_pipeline(rows, rk), L.FEATURES)
        if ranker.pipeline is not None:
            train_auc = L.auc(L.probability(ranker.pipeline, rows))
        else:
            train_auc = L.auc(rows.withColumn(L.PROBABILITY, L.signal_score(ranker.signal or "")))
    finally:
        rows.unpersist()
        inner_train.unpersist()
        inner_test.unpersist()
    ranker.info = {
        "model": ranker.signal or choice.get("chosen") or rk.model,
        **info,
        **choice,
        "train_auc": round(train_auc, 4),
        "importances": L.importances(ranker),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("ranker: %s", ranker.info)
    return ranker


CONTENDERS = ("gbt", "logistic", *L.SIGNALS)  # the order breaks ties: the first wins


def _choose(rows: DataFrame, rk: Any, *, k: int) -> tuple[L.Ranker, dict[str, Any]]:
    """``model: auto``: fit gbt and logistic on most labelled users, rank the others' candidates by
    each of :data:`CONTENDERS`, keep the best by NDCG@k (module doc, step 4).

    Falls back to fitting on every user (no choice made, ``gbt``) when the split leaves either side
    without both classes: too few labelled users to hold any out.
    """
    bucket = F.abs(F.xxhash64(F.col(S.USER_IDX), F.lit(rk.seed))) % 1000
    held = bucket < round(rk.validation_fraction * 1000)
    fit_rows, val_rows = rows.where(~held).persist(), rows.where(held).persist()
    try:
        sides = [{r[0] for r in part.select(L.LABEL).distinct().collect()} for part in (fit_rows, val_rows)]
        if any(len(classes) < 2 for classes in sides):
            log.warning("ranker: too few labelled users to hold out a validation part; fitting gbt on all")
            return L.Ranker(L.fit_pipeline(rows, rk, kind="gbt"), L.FEATURES), {
                "chosen": "gbt",
                "validation": None,
            }
        fitted = {kind: L.fit_pipeline(fit_rows, rk, kind=kind) for kind in ("gbt", "logistic")}
        featured = val_rows.select(S.USER_IDX, S.ITEM_IDX, L.LABEL, *L.FEATURES)
        scores: dict[str, float] = {}
        for name in CONTENDERS:
            if name in fitted:
                scored = L.probability(fitted[name], featured)
            else:
                scored = featured.withColumn(L.PROBABILITY, L.signal_score(name))
            scores[name] = round(L.ndcg(scored, k=k), 5)
        chosen = max(CONTENDERS, key=lambda name: (scores[name], -CONTENDERS.index(name)))
        n_val = val_rows.select(S.USER_IDX).distinct().count()
    finally:
        fit_rows.unpersist()
        val_rows.unpersist()
    if chosen in fitted:
        ranker = L.Ranker(fitted[chosen], L.FEATURES)
    else:
        ranker = L.Ranker(None, L.FEATURES, signal=chosen)
    return ranker, {"chosen": chosen, "validation": {"users": n_val, f"ndcg@{k}": scores}}
