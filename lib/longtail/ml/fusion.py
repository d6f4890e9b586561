"""Fitting the learned fusion (:mod:`longtail.ml.ranker`) on an inner split of the training data.

The labels must be interactions the features never saw, or the ranker learns to trust ALS's
memory of them. So, given the interactions ``train`` (or ``evaluate``, its training part) learns
from:

1. **Inner split** (:func:`inner_split`): per labelled user, the latest
   ``recommend.ranker.label_fraction`` of the interactions are the labels (inner test), the rest
   the inner training part. Every user is labelled up to ``recommend.ranker.max_users`` users;
   beyond, a seeded sample of that many is, and the others' interactions all stay in the inner
   training part. ``evaluate``'s own test part never gets here: it passes only its
   training part.
2. **Feature model**: ALS and the projection head fitted on the inner training part only
   (:func:`longtail.ml.cf.fit`); item popularity, head/tail, profiles and seen-item exclusion come
   from it too, exactly as they would at recommendation time.
3. **Candidates** (:func:`longtail.ml.scoring.candidates`) of the users with a label, labelled 1
   when the user interacted with the item in the inner test part; all positives and at most
   ``negatives`` seeded negatives per user are kept.
4. **Classifier** (:func:`longtail.ml.ranker.fit_pipeline`) on the executors. With
   ``recommend.ranker.model: auto`` (the default) the labelled users are split by a seeded hash:
   GBT and logistic regression are fitted on ``1 - validation_fraction`` of them, and the held-out
   users' candidates are ranked by each fitted model and by CF alone and content alone. The one
   with the highest NDCG@``recommend.k`` ships (ties: the order gbt, logistic, cf, content). A
   small log (the synthetic tests' 30 users) or one where a signal is all there is to learn then
   gets that signal's order, not a tree ensemble extrapolating from a few dozen labels; a large
   one gets the model that beats both signals on users it never saw. With
   ``recommend.ranker.folds: K >= 2`` the choice is a K-fold cross-validation over users instead:
   each fold's users are ranked by models fitted on the other folds, every labelled user counts,
   and the chosen kind is fitted again on all of them. The held-out users are
   ranked over their whole candidate lists (unsampled), as ``recommend`` ranks them, ties in the
   score included (popular first: a single signal that scores none of a user's candidates, e.g.
   for a user without inner history, is measured on the popular list it would ship).
5. **Popularity penalty** (``recommend.ranker.pop_penalty: auto``, the default): a classifier of
   "was it chosen" learns that popular items are chosen more often, so its top lists follow
   popularity. The fused score is the log-odds less ``beta * log(1 + n_i)`` (a propensity
   ``(1 + n_i) ** beta`` divided out; cold items keep their score, and so does every item for a
   user without history), plus ``lambda * max(content z, 0)`` for a tail item
   (``recommend.ranker.tail_boost``: the user's own content evidence lifts the tail items that
   user's history points to). Of the pairs ``(beta, lambda)`` of the grids, those whose NDCG@k on
   the held-out users stays at or above :func:`accuracy_floor` are allowed, and the one whose
   lists reach the most distinct tail items there is taken: the tail that costs little. The floor
   is ``(1 - accuracy_tolerance)`` (0.98 by default) x the ranker's NDCG without either. With
   ``lead_tolerance`` above it (off by default), where the ranker leads the better of CF and
   content by more, part of that lead may go to the tail, down to ``(1 + accuracy_tolerance)`` x
   that signal's NDCG but never more than ``lead_tolerance`` of the ranker's own. Spending the
   lead, whole or capped at 15%, was tried and refused as a default (``docs/scoring.md``): the
   inner validation overstates the lead, most on a sparse log.

The production ALS (on all of ``interactions``) is fitted separately by the caller; the ranker only
reads signals on a per-user scale (z-scores, ranks, indicators) plus raw scores, so it carries over.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import Config
from longtail.ml import cf, holdout
from longtail.ml import ranker as L
from longtail.ml import scoring as R

log = logging.getLogger(__name__)


def inner_split(interactions: DataFrame, rk: Any) -> tuple[DataFrame, DataFrame]:
    """Step 1 of the module doc: per labelled user, the latest ``label_fraction`` of the user's
    ``interactions`` are the labels, the rest the feature model's training part.

    Every user is labelled while there are at most ``max_users``; beyond, a seeded hash sample of
    about ``max_users`` users is (:func:`longtail.ml.holdout.in_user_sample`, ``share = max_users /
    users``, the ranker's seed), and every interaction of the other users stays in the training part. The
    feature model then learns from nearly as much of the log as the production one, which a label
    of every user's latest interactions would not allow on a log of 1-3 interactions per user (its
    inner ALS saw 28% of the training rows; docs/evaluation.md)."""
    n_users = interactions.select(S.USER_ID).distinct().count()
    if n_users <= rk.max_users:
        return holdout.time_split(interactions, test_fraction=rk.label_fraction, cutoff=None)
    labelled = holdout.in_user_sample(rk.max_users / n_users, rk.seed)
    train, test = holdout.time_split(
        interactions.where(labelled), test_fraction=rk.label_fraction, cutoff=None
    )
    log.info("ranker: labels from about %d of %d users (recommend.ranker.max_users)", rk.max_users, n_users)
    return interactions.where(~labelled).unionByName(train), test


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

    ``info`` also carries ``inner_train`` and ``inner_test`` (the DataFrames the feature model and
    the labels came from; the caller unpersists them) and ``validation``: the whole candidate lists
    (features + label, unsampled) of the users :func:`user_fold` validates on, persisted, when
    the model or the popularity penalty is to be chosen (else None).
    ``split``: the inner ``(train, test)`` split of ``interactions`` when the caller made it already.
    """
    rk = cfg.recommend.ranker
    inner_train, inner_test = split or inner_split(interactions, rk)
    inner_train, inner_test = inner_train.persist(), inner_test.persist()
    model, _, _ = cf.fit(spark, cfg, inner_train, items, embeddings, model_id=model_id)
    # the labelled users (inner_split's sample), those without inner history too: they learn the
    # cold case
    users = inner_test.select(S.USER_ID).distinct()
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
        featured = L.with_features(labelled).select(S.USER_IDX, S.ITEM_IDX, L.LABEL, *L.FEATURES)
        rows = L.sample_negatives(featured, negatives=rk.negatives, seed=rk.seed).persist()
        validation = None
        if needs_validation(rk):  # the held-out users' whole lists, as recommend will rank them
            with_positive = rows.where(F.col(L.LABEL) > 0).select(S.USER_IDX).distinct()
            validation = featured.where(user_fold(rk) >= 0).join(with_positive, S.USER_IDX).persist()
            validation.count()
        counts = rows.agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(L.LABEL).alias("positives"),
            F.sum(F.when(F.col("f_item_evidence") == 0, F.col(L.LABEL))).alias("cold_positives"),
            F.countDistinct(S.USER_IDX).alias("users"),
            F.countDistinct(F.when(F.col("f_user_history") > 0, F.col(S.USER_IDX))).alias("with_history"),
        ).first()
        # the held-out labels, and those on items the inner training part never saw: comparable with
        # evaluate's test_interactions / test_interactions_on_cold_items (holdout.split_summary)
        seen = inner_train.select(S.ITEM_ID).distinct().withColumn("_seen", F.lit(1))
        held = (
            inner_test.join(seen, S.ITEM_ID, "left")
            .agg(F.count(F.lit(1)).alias("n"), F.count(F.when(F.col("_seen").isNull(), 1)).alias("cold"))
            .first()
        )
    finally:
        cands.unpersist()
        model.unpersist()
    assert counts is not None and held is not None
    info = {
        "rows": int(counts["rows"]),
        "positives": int(counts["positives"] or 0),
        # how far the inner split is from what recommend faces (docs/evaluation.md: on the sparse
        # sample twice the test part's share of labels falls on items without inner-training
        # interactions, 0.82% against 0.40%): among the candidates' positives, and among all labels
        "positives_on_items_without_history": int(counts["cold_positives"] or 0),
        "users": int(counts["users"]),
        "users_with_history": int(counts["with_history"]),
        "held_out_interactions": int(held["n"]),
        "held_out_on_items_without_history": int(held["cold"]),
        "inner_train": inner_train,
        "inner_test": inner_test,
        "validation": validation,
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
        ranker = fixed_ranker(rk, None, L.features_for(rk), signal=L.CF)
        ranker.info = {
            "model": L.CF,
            "pop_penalty": ranker.pop_penalty,
            "tail_boost": ranker.tail_boost,
            "fallback": "no inner training interactions",
            "seconds": round(time.perf_counter() - t0, 2),
        }
        return ranker
    rows, info = labelled_candidates(
        spark, cfg, interactions, items, embeddings, model_id=model_id, split=split
    )
    inner_train, inner_test = info.pop("inner_train"), info.pop("inner_test")
    validation = info.pop("validation")
    choice: dict[str, Any] = {}
    try:
        if needs_validation(rk):
            ranker, choice = _choose(rows, rk, k=cfg.recommend.k, validation=validation)
        else:
            feats = L.features_for(rk)
            ranker = fixed_ranker(rk, L.fit_pipeline(rows, rk, features=feats), feats)
        if ranker.pipeline is not None:
            train_auc = L.auc(L.probability(ranker.pipeline, rows))
        else:
            train_auc = L.auc(rows.withColumn(L.PROBABILITY, L.signal_score(ranker.signal or "")))
    finally:
        for df in (rows, inner_train, inner_test, validation):
            if df is not None:
                df.unpersist()
    ranker.info = {
        "model": ranker.signal or choice.get("chosen") or rk.model,
        "pop_penalty": ranker.pop_penalty,
        "tail_boost": ranker.tail_boost,
        "propensity_power": rk.propensity_power,
        **info,
        **choice,
        "train_auc": round(train_auc, 4),
        "importances": L.importances(ranker),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("ranker: %s", ranker.info)
    return ranker


CONTENDERS = ("gbt", "logistic", *L.SIGNALS)  # the order breaks ties: the first wins


def user_fold(rk: Any) -> Column:
    """The validation fold of each labelled user (a seeded hash of ``user_idx``).

    ``recommend.ranker.folds: 1``: 0 for the ``validation_fraction`` of the users held out to choose
    the model and the popularity penalty, -1 for the others (never validated on). ``folds: K >= 2``:
    0 to K-1, every user validated once, by models fitted on the other folds.
    """
    bucket = F.abs(F.xxhash64(F.col(S.USER_IDX), F.lit(rk.seed))) % 1000
    if rk.folds == 1:
        return F.when(bucket < round(rk.validation_fraction * 1000), F.lit(0)).otherwise(F.lit(-1))
    return (bucket % rk.folds).cast("int")


def needs_validation(rk: Any) -> bool:
    """Whether fitting holds users out: to choose the model, the popularity penalty, the tail
    boost, or several."""
    return rk.model == "auto" or rk.pop_penalty == "auto" or rk.tail_boost == "auto"


def fixed_penalty(rk: Any) -> float:
    """The configured popularity penalty, 0 when it is ``auto`` and nothing can choose it."""
    return 0.0 if rk.pop_penalty == "auto" else float(rk.pop_penalty)


def fixed_boost(rk: Any) -> float:
    """The configured tail boost, 0 when it is ``auto`` and nothing can choose it."""
    return 0.0 if rk.tail_boost == "auto" else float(rk.tail_boost)


def fixed_ranker(rk: Any, pipeline: Any, features: tuple[str, ...], *, signal: str | None = None) -> L.Ranker:
    """A ranker with the configured ``pop_penalty`` and ``tail_boost`` (each 0 when it is ``auto``
    and nothing can choose it): where no validation chooses them."""
    return L.Ranker(
        pipeline, features, signal=signal, pop_penalty=fixed_penalty(rk), tail_boost=fixed_boost(rk)
    )


def _adjustments(rk: Any) -> list[tuple[float, float]]:
    """The ``(pop_penalty, tail_boost)`` pairs to try on the validation users: each ``auto`` one's
    grid (0 included) against the other's grid or fixed value."""
    betas = (
        sorted({0.0, *map(float, rk.pop_penalty_grid)}) if rk.pop_penalty == "auto" else [fixed_penalty(rk)]
    )
    boosts = sorted({0.0, *map(float, rk.tail_boost_grid)}) if rk.tail_boost == "auto" else [fixed_boost(rk)]
    return [(b, t) for b in betas for t in boosts]


BASELINES = (L.CF, L.CONTENT)  # what a recommender ships without fusion: the lead is measured over these


def accuracy_floor(scores: dict[str, float], chosen: str, rk: Any) -> float:
    """The validation NDCG@k the chosen (penalty, boost) pair must keep (module doc, step 5).

    ``(1 - accuracy_tolerance)`` x the chosen ranker's own NDCG ``s``; where the ranker leads the
    better of CF and content (:data:`BASELINES`, ``b``) by more, down to ``(1 + accuracy_tolerance)
    x b`` but never below ``(1 - lead_tolerance) x s``:
    ``min((1 - tol) s, max((1 + tol) b, (1 - lead_tol) s))``. A ranker no better than its baselines
    gives up ``tol``; one well ahead of them spends up to ``lead_tolerance`` of its accuracy on
    tail reach and stays ahead of them on the validation users. While ``lead_tolerance <=
    accuracy_tolerance`` (the default: 0) the floor is ``(1 - tol) s`` alone."""
    own = scores[chosen]
    floor = (1 - rk.accuracy_tolerance) * own
    base = [scores[b] for b in BASELINES if b in scores]
    if not base or rk.lead_tolerance <= rk.accuracy_tolerance:
        return floor
    return min(floor, max((1 + rk.accuracy_tolerance) * max(base), (1 - rk.lead_tolerance) * own))


def _choose(
    rows: DataFrame, rk: Any, *, k: int, validation: DataFrame | None = None
) -> tuple[L.Ranker, dict[str, Any]]:
    """Fit on some labelled users, choose on the others (module doc, steps 4-5).

    ``rows``: the sampled training rows of every labelled user; ``validation``: the validated users'
    whole candidate lists (features + label, unsampled, as recommend ranks them); None: their
    sampled rows. Which users are validated, by which fit, is :func:`user_fold`'s: with ``folds: 1``
    the models are fitted on the users outside fold 0 and validated on fold 0; with ``folds: K``
    each fold is validated by models fitted on the other K-1 folds, so every labelled user's lists
    count, and the chosen kind is then fitted again on every labelled user. With ``model: auto``
    the contenders are :data:`CONTENDERS` and the best NDCG@k over all validated users wins;
    otherwise the configured model. With ``pop_penalty`` or ``tail_boost`` ``auto``, every pair of
    (penalty, boost) of their grids (a fixed one: its value) is tried on the chosen ranker: of the
    pairs keeping its NDCG@k at or above :func:`accuracy_floor` (``1 - accuracy_tolerance`` times
    its own without either, lower by up to ``lead_tolerance`` where it leads CF and content), the
    one whose top-k lists reach the most distinct tail items wins (ties: the larger mean tail
    share, then the higher NDCG); the configured values when none does.

    Falls back to fitting gbt on every user (no choice, the configured penalty or 0) when a fit or
    a validated fold lacks either class: too few labelled users to hold any out.
    """
    feats = L.features_for(rk)
    fold = user_fold(rk)
    folds = range(rk.folds)  # folds: 1 validates fold 0 only (user_fold)
    featured: DataFrame | None = None
    rows_f = rows.withColumn("_fold", fold).persist()
    val_rows = (
        (validation if validation is not None else rows.where(fold >= 0)).withColumn("_fold", fold).persist()
    )
    try:
        fit_classes = _classes_by_fold(rows_f)
        val_classes = _classes_by_fold(val_rows)
        thin = [
            f
            for f in folds
            if len(set().union(*(c for g, c in fit_classes.items() if g != f))) < 2
            or len(val_classes.get(f, ())) < 2
        ]
        if thin:
            kind = "gbt" if rk.model == "auto" else rk.model
            log.warning(
                "ranker: too few labelled users to hold out a validation part (folds %s); fitting %s on all",
                thin,
                kind,
            )
            ranker = fixed_ranker(rk, L.fit_pipeline(rows, rk, features=feats, kind=kind), feats)
            info = {"chosen": kind, "pop_penalty": ranker.pop_penalty, "tail_boost": ranker.tail_boost}
            return ranker, {**info, "validation": None}
        kinds = ("gbt", "logistic") if rk.model == "auto" else (rk.model,)
        fitted = {
            f: {
                kind: L.fit_pipeline(rows_f.where(F.col("_fold") != f), rk, features=feats, kind=kind)
                for kind in kinds
            }
            for f in folds
        }
        contenders = [c for c in CONTENDERS if c in kinds or c in L.signals_for(rk)]
        featured = functools.reduce(
            DataFrame.unionByName,
            [
                _with_logits(
                    val_rows.where(F.col("_fold") == f).select(S.USER_IDX, S.ITEM_IDX, L.LABEL, *L.FEATURES),
                    fitted[f],
                )
                for f in folds
            ],
        ).persist()
        base = _sweep(featured, contenders, [(0.0, 0.0)], k=k)
        scores = {name: round(base[(name, 0.0, 0.0)]["ndcg"], 5) for name in contenders}
        if rk.model == "auto":
            chosen = max(contenders, key=lambda name: (scores[name], -contenders.index(name)))
        else:
            chosen = rk.model
        floor = accuracy_floor(scores, chosen, rk)
        pairs = _adjustments(rk)
        swept = _sweep(featured, [chosen], [(0.0, 0.0), *pairs], k=k)
        curve = {(b, t): got for (_, b, t), got in swept.items()}
        # the most distinct tail items among the pairs that keep the accuracy (then the larger
        # mean tail share, then the higher NDCG); the configured values when none does
        allowed = [p for p in pairs if curve[p]["ndcg"] >= floor] or [(fixed_penalty(rk), fixed_boost(rk))]
        beta, boost = max(
            allowed, key=lambda p: (curve[p]["tail_items"], curve[p]["tail_share"], curve[p]["ndcg"])
        )
        n_val = val_rows.select(S.USER_IDX).distinct().count()
    finally:
        for df in (rows_f, val_rows, featured):
            if df is not None:
                df.unpersist()
    if chosen not in kinds:
        ranker = L.Ranker(None, feats, signal=chosen, pop_penalty=beta, tail_boost=boost)
    elif rk.folds > 1:  # each fold's fit left a fold out: the one that ships learns from all
        pipeline = L.fit_pipeline(rows, rk, features=feats, kind=chosen)
        ranker = L.Ranker(pipeline, feats, pop_penalty=beta, tail_boost=boost)
    else:
        ranker = L.Ranker(fitted[0][chosen], feats, pop_penalty=beta, tail_boost=boost)

    def line(keep: int) -> dict[str, dict[str, float]]:
        """The curve along one adjustment, the other (``keep``: 0 the penalty, 1 the boost) held
        at its chosen value."""
        return {
            f"{adj[1 - keep]:g}": {name: round(v, 5) for name, v in got.items()}
            for adj, got in sorted(curve.items())
            if adj[keep] == (beta, boost)[keep]
        }

    return ranker, {
        "chosen": chosen,
        "pop_penalty": beta,
        "tail_boost": boost,
        "validation": {
            "users": n_val,
            "folds": rk.folds,
            f"ndcg@{k}": scores,
            "ndcg_floor": round(floor, 5),
            "pop_penalty": line(1),
            "tail_boost": line(0),
            "pairs_tried": len(pairs),
        },
    }


def _classes_by_fold(rows: DataFrame) -> dict[int, set[int]]:
    """The label classes present in each ``_fold`` of ``rows`` (at most folds x 2 rows collected)."""
    got: dict[int, set[int]] = {}
    for r in rows.select("_fold", L.LABEL).distinct().collect():
        got.setdefault(int(r[0]), set()).add(int(r[1]))
    return got


def _with_logits(featured: DataFrame, fitted: dict[str, Any]) -> DataFrame:
    """``featured`` plus ``_logit_<name>`` per fitted model (its log-odds) and per single signal
    (:func:`~longtail.ml.ranker.signal_score`)."""
    out = featured
    for name, pipeline in fitted.items():
        scored = L.probability(pipeline, out)
        out = scored.withColumn(f"_logit_{name}", L.log_odds(F.col(L.PROBABILITY))).drop(L.PROBABILITY)
    return out.withColumns({f"_logit_{s}": L.signal_score(s) for s in L.SIGNALS})


def _sweep(
    featured: DataFrame, names: list[str], adjustments: list[tuple[float, float]], *, k: int
) -> dict[tuple[str, float, float], dict[str, float]]:
    """NDCG@k, top-k tail share and distinct top-k tail items (:func:`~longtail.ml.ranker.ndcg_by`)
    of each ranker of ``names`` at each ``(pop_penalty, tail_boost)``, in one job over the
    validation candidates."""
    keep = [
        S.USER_IDX, S.ITEM_IDX, L.LABEL, "f_is_head", "f_item_evidence", "f_user_history", "f_pop_rank",
        "f_content_z",
    ]  # fmt: skip
    stacked = functools.reduce(
        DataFrame.unionByName,
        [
            featured.select(*keep, F.lit(name).alias("_model"), F.col(f"_logit_{name}").alias("_logit"))
            for name in names
        ],
    )
    grid = featured.sparkSession.createDataFrame(
        sorted({(float(b), float(t)) for b, t in adjustments}), "_beta double, _boost double"
    )
    scored = stacked.crossJoin(F.broadcast(grid)).withColumn(
        "_score", L.penalised(F.col("_logit"), F.col("_beta"), F.col("_boost"))
    )
    got = L.ndcg_by(scored, k=k, by=["_model", "_beta", "_boost"], score_col="_score")
    return {(name, float(b), float(t)): v for (name, b, t), v in got.items()}
