"""The learned fusion: a second-stage ranker (Spark MLlib) over the candidates of every user.

Hand-set blends do not carry across datasets (``docs/scoring.md``, "Learned fusion"): on one log
ALS is the stronger signal, on another the text is. So the fusion is learned from the log itself:
:func:`longtail.ml.fusion.fit_ranker` holds out each user's latest interactions *inside* the
training data, builds the usual candidates from a model trained on the rest, labels each candidate
1 when the user interacted with it in the held-out part, and fits a classifier here.

This module holds what does not depend on how the candidates are built:

* :func:`with_features` — the feature columns of a candidate pair (every value filled, no null or
  NaN reaches MLlib: a missing signal is 0 plus an indicator);
* :func:`sample_negatives` — all positives, at most ``negatives`` seeded negatives per user;
* :func:`fit_pipeline` — ``VectorAssembler`` + ``GBTClassifier`` (or ``LogisticRegression``);
* :func:`ndcg` — how well a score orders held-out users' candidates (the ``auto`` model choice);
* :func:`score` — the probability of a candidate being chosen, and its log-odds (or, when a single
  signal won the choice, that signal's per-user z-score as the log-odds), both less the ranker's
  popularity penalty ``pop_penalty * log(1 + n_i)`` and plus its tail boost (:func:`penalised`);
* :func:`save` / :func:`load` — MLlib's own persistence.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import RankerConfig

# candidate columns the features read (longtail.ml.scoring.Candidates.pairs)
CF, CONTENT, POP, VAE = "cf", "content", "pop", "vae"
USER_HISTORY = "user_history"  # the user's number of training interactions (0: none)
ITEM_AGE_DAYS = "item_age_days"  # days from the item's last interaction to the history's end (null: cold)
ITEM_FIRST_DAYS = "item_first_days"  # days from the item's first interaction to the end (null: cold)
USER_RECENCY_DAYS = "user_recency_days"  # days from the user's last interaction to the history's end
PROFILE_STRENGTH = "profile_strength"  # norm of the user's mean unit text vector, in [0, 1]
USER_TAIL_SHARE = "user_tail_share"  # share of the user's interactions on long-tail items
CATEGORY_OVERLAP = "category_overlap"  # the user's history share in the item's category labels
# the per-user and per-pair context columns candidates carry beside the signals (null: no history)
CONTEXT_COLUMNS = (
    USER_HISTORY, ITEM_AGE_DAYS, ITEM_FIRST_DAYS, USER_RECENCY_DAYS, PROFILE_STRENGTH, USER_TAIL_SHARE,
    CATEGORY_OVERLAP,
)  # fmt: skip

VAE_COLUMNS = (VAE, f"{VAE}_rank", f"{VAE}_mean", f"{VAE}_std")  # null without a Mult-VAE
LABEL = "label"
FEATURES_VEC = "ranker_features"
WEIGHT = "ranker_weight"  # a training row's weight (recommend.ranker.propensity_power)
PROBABILITY = "ranker_p"  # P(chosen) from the ranker
LOGIT = "ranker_logit"  # log(p / (1 - p)): the learned score on an additive scale (re-rank penalties)
RANK_MISSING = 1000  # the rank given to an item that is not in a signal's top list
_P_EPS = 1e-6

FEATURES: tuple[str, ...] = (
    "f_cf",
    "f_has_cf",
    "f_content",
    "f_has_content",
    "f_cf_z",
    "f_content_z",
    "f_cf_rank",
    "f_content_rank",
    "f_pop_rank",
    "f_item_evidence",
    "f_item_age",
    "f_is_cold",
    "f_is_head",
    "f_user_history",
    "f_z_gap",
    "f_vae",
    "f_has_vae",
    "f_vae_z",
    "f_vae_rank",
    "f_item_first_age",
    "f_user_recency",
    "f_profile_strength",
    "f_user_tail_share",
    "f_tail_match",
    "f_category_overlap",
)


@dataclass
class Ranker:
    """A fitted learned fusion.

    Attributes:
        pipeline: the MLlib ``PipelineModel`` (assembler + classifier); None when a single signal
            won the model choice (``signal``).
        features: the feature columns it reads, in order.
        info: what it was trained on (rows, positives, users, model kind); goes to the run summary.
        path: where it is saved (None until :func:`save`, and for a single signal).
        signal: ``cf``, ``content`` or ``vae`` when that signal alone ranked the validation users best: the
            fusion is then that signal's order (its z-score is the log-odds).
        pop_penalty: subtracted from the log-odds, times ``log(1 + n_i)`` (``n_i`` the item's
            training interactions): the propensity correction that lets the fused list reach the
            tail (``recommend.ranker.pop_penalty``, chosen on validation users by default).
        tail_boost: added to the log-odds of a tail item, times the positive part of the user's
            content z-score for it (``recommend.ranker.tail_boost``; :func:`penalised`).
    """

    pipeline: PipelineModel | None
    features: tuple[str, ...] = FEATURES
    info: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    signal: str | None = None
    pop_penalty: float = 0.0
    tail_boost: float = 0.0

    def __post_init__(self) -> None:
        if (self.pipeline is None) == (self.signal is None):
            raise ValueError("a Ranker is either an MLlib pipeline or a single signal, exactly one")
        if self.signal is not None and self.signal not in SIGNALS:
            raise ValueError(f"ranker signal must be one of {SIGNALS}, got {self.signal!r}")
        if not self.pop_penalty >= 0:
            raise ValueError(f"ranker pop_penalty must be >= 0, got {self.pop_penalty!r}")
        if not self.tail_boost >= 0:
            raise ValueError(f"ranker tail_boost must be >= 0, got {self.tail_boost!r}")


SIGNALS = (CF, CONTENT, VAE)
VAE_FEATURES = ("f_vae", "f_has_vae", "f_vae_z", "f_vae_rank")


def features_for(cfg: RankerConfig) -> tuple[str, ...]:
    """The features a ranker fitted under ``cfg`` reads: :data:`FEATURES`, less the Mult-VAE's
    when ``use_vae`` is false."""
    return FEATURES if cfg.use_vae else tuple(f for f in FEATURES if f not in VAE_FEATURES)


def signals_for(cfg: RankerConfig) -> tuple[str, ...]:
    """The single signals that compete with the fitted models under ``cfg`` (``model: auto``)."""
    return SIGNALS if cfg.use_vae else tuple(s for s in SIGNALS if s != VAE)


MISSING_SIGNAL_SCORE = -1e3  # a single-signal ranker's score of an item the signal did not score


def signal_score(signal: str) -> Column:
    """The single-signal ranker's score: the signal's per-user z-score, far below every scored item
    where the signal has no score (so its order is that signal's list, then the rest)."""
    return F.when(F.col(f"f_has_{signal}") > 0, F.col(f"f_{signal}_z")).otherwise(F.lit(MISSING_SIGNAL_SCORE))


def log_odds(p: Column) -> Column:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[1e-6, 1 - 1e-6]``."""
    p = F.least(F.greatest(p, F.lit(_P_EPS)), F.lit(1 - _P_EPS))
    return F.log(p / (1 - p))


def penalised(logit: Column, pop_penalty: float | Column, tail_boost: float | Column = 0.0) -> Column:
    """``logit - pop_penalty * log(1 + n_i) + tail_boost * [tail] * max(content z, 0)`` for users
    with a history.

    The penalty discounts the item's popularity (on the log-odds scale, a propensity
    ``(1 + n_i) ** pop_penalty`` divided out); cold items (``n_i = 0``) are not discounted. The
    boost lifts a tail item (cold ones included) by how far the user's content profile prefers it
    over the user's average candidate (the per-user z-score, its positive part): personal evidence,
    so different users are lifted towards different tail items, where the penalty moves every user
    towards the same less popular ones. Neither applies to a user without history, whose scores
    carry no taste to correct (their order stays the ranker's popularity-led one). Reads the
    ``f_item_evidence``, ``f_is_head``, ``f_content_z`` and ``f_user_history`` features."""
    beta = pop_penalty if isinstance(pop_penalty, Column) else F.lit(float(pop_penalty))
    boost = tail_boost if isinstance(tail_boost, Column) else F.lit(float(tail_boost))
    known = (F.col("f_user_history") > 0).cast("double")
    lift = (1.0 - F.col("f_is_head")) * F.greatest(F.col("f_content_z"), F.lit(0.0))
    return logit + known * (boost * lift - beta * F.col("f_item_evidence"))


def _z(signal: str) -> Column:
    """The per-user z-score of ``signal`` over the user's unseen catalogue (0 where undefined)."""
    std = F.col(f"{signal}_std")
    z = F.when(std > 0, (F.col(signal) - F.col(f"{signal}_mean")) / std)
    return F.coalesce(z, F.lit(0.0))


def _rank(signal: str) -> Column:
    """log1p of the item's rank in ``signal``'s top list (log1p(RANK_MISSING) when not in it)."""
    return F.log1p(F.coalesce(F.col(f"{signal}_rank").cast("double"), F.lit(float(RANK_MISSING))))


def _zero_if_null(col: str) -> Column:
    return F.coalesce(F.col(col).cast("double"), F.lit(0.0))


def _log_days(col: str) -> Column:
    """log1p of a day count (0 where null or negative)."""
    return F.log1p(F.greatest(_zero_if_null(col), F.lit(0.0)))


def feature_columns() -> dict[str, Column]:
    """``{name: expression}`` of every feature of :data:`FEATURES` (all double, never null)."""
    n = F.coalesce(F.col(S.POPULARITY).cast("double"), F.lit(0.0))
    has = {s: F.col(s).isNotNull().cast("double") for s in SIGNALS}
    is_tail = F.coalesce(F.col(S.IS_LONG_TAIL), F.lit(True)).cast("double")
    cols = {
        "f_cf": F.coalesce(F.col(CF).cast("double"), F.lit(0.0)),
        "f_has_cf": has[CF],
        "f_content": F.coalesce(F.col(CONTENT).cast("double"), F.lit(0.0)),
        "f_has_content": has[CONTENT],
        "f_cf_z": _z(CF),
        "f_content_z": _z(CONTENT),
        "f_cf_rank": _rank(CF),
        "f_content_rank": _rank(CONTENT),
        "f_pop_rank": _rank(POP),
        "f_item_evidence": F.log1p(n),
        "f_item_age": _log_days(ITEM_AGE_DAYS),
        "f_is_cold": (n == 0).cast("double"),
        "f_is_head": 1.0 - is_tail,
        "f_user_history": F.log1p(_zero_if_null(USER_HISTORY)),
        "f_z_gap": _z(CONTENT) - _z(CF),
        "f_vae": F.coalesce(F.col(VAE).cast("double"), F.lit(0.0)),
        "f_has_vae": has[VAE],
        "f_vae_z": _z(VAE),
        "f_vae_rank": _rank(VAE),
        "f_item_first_age": _log_days(ITEM_FIRST_DAYS),
        "f_user_recency": _log_days(USER_RECENCY_DAYS),
        "f_profile_strength": _zero_if_null(PROFILE_STRENGTH),
        "f_user_tail_share": _zero_if_null(USER_TAIL_SHARE),
        # the user's taste for the tail where the item is in it (a product, for the logistic model)
        "f_tail_match": _zero_if_null(USER_TAIL_SHARE) * is_tail,
        "f_category_overlap": _zero_if_null(CATEGORY_OVERLAP),
    }
    assert tuple(cols) == FEATURES
    return cols


def with_features(pairs: DataFrame) -> DataFrame:
    """``pairs`` plus the :data:`FEATURES` columns.

    ``pairs`` needs the candidate columns (``cf, content, pop`` with ``*_rank``, ``cf_mean,
    cf_std, content_mean, content_std`` and, when there is a Mult-VAE, :data:`VAE_COLUMNS`),
    ``popularity, is_long_tail`` and the :data:`CONTEXT_COLUMNS` (``user_history``, ...); a missing
    one raises naming it.
    """
    needed = [
        CF, CONTENT, f"{CF}_rank", f"{CONTENT}_rank", f"{POP}_rank", f"{CF}_mean", f"{CF}_std",
        f"{CONTENT}_mean", f"{CONTENT}_std", S.POPULARITY, S.IS_LONG_TAIL, *CONTEXT_COLUMNS,
    ]  # fmt: skip
    S.require_columns(pairs, needed, "ranker candidates")
    pairs = with_vae_columns(pairs)
    return pairs.withColumns(feature_columns())


def with_vae_columns(pairs: DataFrame) -> DataFrame:
    """``pairs`` with the :data:`VAE_COLUMNS` it lacks, null (candidates of a model without the
    Mult-VAE: every ``vae`` feature is then 0 and its indicator 0)."""
    absent = [c for c in VAE_COLUMNS if c not in pairs.columns]
    return pairs.withColumns(
        {c: F.lit(None).cast("int" if c.endswith("_rank") else "double") for c in absent}
    )


def sample_negatives(labelled: DataFrame, *, negatives: int, seed: int) -> DataFrame:
    """Per user, every positive (``label = 1``) and at most ``negatives`` negatives, chosen by a
    seeded pseudo-random order; users without a positive are dropped (they say nothing about
    ordering). The order is a hash of (user, item, seed), not ``rand(seed)``, whose stream is per
    partition: the same pairs give the same sample however the input is partitioned (a lake
    rebuilt with another file layout trains the same ranker)."""
    by_user = Window.partitionBy(S.USER_IDX)
    key = F.xxhash64(F.col(S.USER_IDX), F.col(S.ITEM_IDX), F.lit(seed))
    order = Window.partitionBy(S.USER_IDX, LABEL).orderBy(key, S.ITEM_IDX)
    return (
        labelled.withColumn("_pos", F.max(LABEL).over(by_user))
        .where(F.col("_pos") > 0)
        .withColumn("_n", F.row_number().over(order))
        .where((F.col(LABEL) > 0) | (F.col("_n") <= negatives))
        .drop("_pos", "_n")
    )


def fit_pipeline(
    train: DataFrame, cfg: RankerConfig, *, features: tuple[str, ...] = FEATURES, kind: str | None = None
) -> PipelineModel:
    """Fit ``VectorAssembler(features) -> classifier`` on ``train`` (``label`` 0/1 + features).

    ``kind`` (default ``cfg.model``): ``gbt`` (``GBTClassifier``, ``trees`` x ``depth``) or
    ``logistic`` (``LogisticRegression``, L2 ``reg``, standardised features). With
    ``propensity_power`` > 0 the rows are weighted (:func:`with_propensity_weights`). Raises
    ``ValueError`` if ``train`` lacks either class.
    """

    from pyspark.ml.classification import GBTClassifier, LogisticRegression
    from pyspark.ml.feature import VectorAssembler

    classes = {r[0] for r in train.select(LABEL).distinct().collect()}  # at most two values
    if classes != {0.0, 1.0} and classes != {0, 1}:
        raise ValueError(
            f"ranker: the training labels hold classes {sorted(classes)}, need both 0 and 1 "
            "(too few held-out interactions among the candidates; raise recommend.ranker.label_fraction)"
        )
    kind = kind or cfg.model
    if kind not in ("gbt", "logistic"):
        raise ValueError(f"ranker: cannot fit model kind {kind!r} (gbt or logistic)")
    if cfg.propensity_power > 0:
        train = with_propensity_weights(train, cfg.propensity_power)
    weights: dict[str, Any] = {"weightCol": WEIGHT} if cfg.propensity_power > 0 else {}
    assembler = VectorAssembler(inputCols=list(features), outputCol=FEATURES_VEC, handleInvalid="error")
    if {S.USER_IDX, S.ITEM_IDX} <= set(train.columns):
        # MLlib's tree learner samples its input per partition (split candidates), so the same rows
        # laid out otherwise (a rebuilt lake) fit another model: lay them out by key, in key order
        parts = int(train.sparkSession.conf.get("spark.sql.shuffle.partitions") or 200)
        train = train.repartition(parts, S.USER_IDX).sortWithinPartitions(S.USER_IDX, S.ITEM_IDX)
    if kind == "gbt":
        clf: Any = GBTClassifier(
            featuresCol=FEATURES_VEC,
            labelCol=LABEL,
            maxIter=cfg.trees,
            maxDepth=cfg.depth,
            stepSize=cfg.step,
            seed=cfg.seed,
            **weights,
        )
    else:
        clf = LogisticRegression(
            featuresCol=FEATURES_VEC,
            labelCol=LABEL,
            regParam=cfg.reg,
            maxIter=100,
            standardization=True,
            **weights,
        )
    return Pipeline(stages=[assembler, clf]).fit(train.withColumn(LABEL, F.col(LABEL).cast("double")))


def with_propensity_weights(train: DataFrame, power: float) -> DataFrame:
    """``train`` plus :data:`WEIGHT`: ``(1 + n_i) ** -power`` for a positive (``n_i`` from
    ``f_item_evidence = log(1 + n_i)``), scaled so the positives' weights average 1 (the classes keep
    their balance), and 1 for a negative. One aggregate job for the scale."""
    raw = F.exp(-float(power) * F.col("f_item_evidence"))
    row = train.where(F.col(LABEL) > 0).agg(F.avg(raw)).first()  # one row: an aggregate
    mean = row[0] if row is not None else None
    if mean is None:
        raise ValueError("ranker: no positive row to weigh (the training labels hold no 1)")
    return train.withColumn(WEIGHT, F.when(F.col(LABEL) > 0, raw / float(mean)).otherwise(F.lit(1.0)))


def score(pairs: DataFrame, ranker: Ranker) -> DataFrame:
    """``pairs`` (with ``user_history``, ``item_age_days``) plus :data:`PROBABILITY` and
    :data:`LOGIT`, the ranker's popularity penalty applied (:func:`penalised`); the feature and
    MLlib columns are dropped again."""
    from pyspark.ml.functions import vector_to_array

    featured = with_features(pairs)
    if ranker.signal is not None:
        out = featured.withColumn(LOGIT, signal_score(ranker.signal))
    else:
        assert ranker.pipeline is not None
        out = ranker.pipeline.transform(featured)
        out = out.withColumn(LOGIT, log_odds(vector_to_array(F.col("probability"))[1]))
    out = out.withColumn(LOGIT, penalised(F.col(LOGIT), ranker.pop_penalty, ranker.tail_boost)).withColumn(
        PROBABILITY, 1 / (1 + F.exp(-F.col(LOGIT)))
    )
    return out.drop(*[c for c in out.columns if c not in pairs.columns and c not in (LOGIT, PROBABILITY)])


def with_penalty(
    scored: DataFrame, ranker: Ranker, pop_penalty: float, tail_boost: float | None = None
) -> DataFrame:
    """:func:`score`'s output with :data:`LOGIT` and :data:`PROBABILITY` as if the ranker had been
    given ``pop_penalty`` (and ``tail_boost``; None: its own) instead of its own (both terms are
    linear: the differences are applied)."""
    cols = feature_columns()
    used = {name: cols[name] for name in ("f_user_history", "f_item_evidence", "f_is_head", "f_content_z")}
    boost = ranker.tail_boost if tail_boost is None else tail_boost
    logit = penalised(F.col(LOGIT), pop_penalty - ranker.pop_penalty, boost - ranker.tail_boost)
    return (
        scored.withColumns(used)
        .withColumn(LOGIT, logit)
        .withColumn(PROBABILITY, 1 / (1 + F.exp(-F.col(LOGIT))))
        .drop(*used)
    )


def probability(pipeline: PipelineModel, rows: DataFrame) -> DataFrame:
    """``rows`` (features + label) plus the fitted pipeline's :data:`PROBABILITY` (for AUC, NDCG)."""
    from pyspark.ml.functions import vector_to_array

    out = pipeline.transform(rows).withColumn(PROBABILITY, vector_to_array(F.col("probability"))[1])
    return out.drop(*[c for c in out.columns if c not in rows.columns and c != PROBABILITY])


def ndcg(scored: DataFrame, *, k: int, score_col: str = PROBABILITY) -> float:
    """Mean NDCG@k over the users of ``scored`` (``user_idx, item_idx, label`` and ``score_col``).

    Each user's rows are ranked by ``score_col`` descending (ties by ``item_idx``); gain 1 per
    positive; the ideal list holds ``min(positives, k)`` positives. Users without a positive count
    0 (they cannot be ordered better or worse). Computed on the executors; one row comes back.
    """
    got = ndcg_by(scored.withColumn("_all", F.lit(0)), k=k, by=["_all"], score_col=score_col)
    return got[(0,)]["ndcg"] if got else 0.0


def ndcg_by(
    scored: DataFrame, *, k: int, by: list[str], score_col: str = PROBABILITY
) -> dict[tuple[Any, ...], dict[str, float]]:
    """:func:`ndcg` for each group of the ``by`` columns (e.g. model x popularity penalty), in one
    job: ``{group values: {"ndcg": ..., "tail_share": ..., "tail_items": ...}}``, ``tail_share``
    being the mean share of the top-k places held by non-head items (``f_is_head = 0``; only where
    ``scored`` has it) and ``tail_items`` the number of distinct non-head items in the group's
    top-k lists (its long-tail reach). One row per group comes back to the driver. Ties in the score are broken as ``recommend``
    breaks them (:func:`longtail.ml.scoring.top_k`): the more popular item first (``f_pop_rank``,
    where ``scored`` has it), then item_idx; so a single signal that does not score a user's items
    (a user without history) is measured on the popular list it ships, not on item ids."""
    ties = [F.col("f_pop_rank").asc()] if "f_pop_rank" in scored.columns else []
    order = Window.partitionBy(S.USER_IDX, *by).orderBy(F.col(score_col).desc(), *ties, F.col(S.ITEM_IDX))
    top = F.col("_r") <= k
    tail = (F.col("f_is_head") == 0) if "f_is_head" in scored.columns else F.lit(False)
    ranked = scored.withColumn("_r", F.row_number().over(order))
    per_user = (
        ranked.groupBy(S.USER_IDX, *by)
        .agg(
            F.sum(F.when(top & (F.col(LABEL) > 0), 1.0 / F.log2(F.col("_r") + 1.0))).alias("_dcg"),
            F.sum(F.when(F.col(LABEL) > 0, 1)).alias("_pos"),
            F.avg(F.when(top, tail.cast("double"))).alias("_tail"),
            F.collect_set(F.when(top & tail, F.col(S.ITEM_IDX))).alias("_tail_items"),
        )
        .withColumn(
            "_idcg",
            F.aggregate(
                F.sequence(
                    F.lit(1), F.greatest(F.least(F.coalesce(F.col("_pos"), F.lit(0)), F.lit(k)), F.lit(1))
                ),
                F.lit(0.0),
                lambda acc, i: acc + 1.0 / F.log2(i + 1.0),
            ),
        )
        .withColumn("_ndcg", F.coalesce(F.col("_dcg") / F.col("_idcg"), F.lit(0.0)))
    )
    rows = (
        per_user.groupBy(*by)
        .agg(
            F.avg("_ndcg").alias("ndcg"),
            F.avg("_tail").alias("tail_share"),
            F.size(F.array_distinct(F.flatten(F.collect_list("_tail_items")))).alias("tail_items"),
        )
        .collect()
    )
    return {
        tuple(r[c] for c in by): {
            "ndcg": float(r["ndcg"]),
            "tail_share": float(r["tail_share"] or 0.0),
            "tail_items": int(r["tail_items"]),
        }
        for r in rows
    }


def auc(scored: DataFrame, *, score_col: str = PROBABILITY) -> float:
    """Area under the ROC curve of ``score_col`` against ``label`` (MLlib's evaluator)."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    ev = BinaryClassificationEvaluator(rawPredictionCol=score_col, labelCol=LABEL, metricName="areaUnderROC")
    return float(ev.evaluate(scored.withColumn(LABEL, F.col(LABEL).cast("double"))))


def importances(ranker: Ranker) -> dict[str, float]:
    """Feature importances (gbt) or absolute coefficients (logistic), by feature name; a single
    signal: 1 for its z-score."""
    if ranker.pipeline is None:
        return {f"f_{ranker.signal}_z": 1.0}
    model = ranker.pipeline.stages[-1]
    if hasattr(model, "featureImportances"):
        values = model.featureImportances.toArray()
    else:
        values = [abs(v) for v in model.coefficients.toArray()]  # type: ignore[attr-defined]
    return {f: round(float(v), 4) for f, v in zip(ranker.features, values, strict=True) if not math.isnan(v)}


def save(ranker: Ranker, path: str) -> Ranker:
    """Write the pipeline with MLlib's persistence to ``path`` (overwriting); returns it with
    ``path``. A single-signal ranker has nothing to write (its ``signal`` is the whole model)."""
    if ranker.pipeline is None:
        return ranker
    ranker.pipeline.write().overwrite().save(path)
    return dataclasses.replace(ranker, path=path)


def load(
    path: str | None,
    features: tuple[str, ...] | list[str],
    info: dict[str, Any] | None = None,
    *,
    signal: str | None = None,
    pop_penalty: float = 0.0,
    tail_boost: float = 0.0,
) -> Ranker:
    """Read a pipeline :func:`save` wrote, or rebuild a single-signal ranker (``signal``)."""
    if signal is not None:
        return Ranker(None, tuple(features), dict(info or {}), None, signal, pop_penalty, tail_boost)
    if path is None:
        raise ValueError("a saved ranker needs its path (or its signal)")
    return Ranker(
        PipelineModel.load(path), tuple(features), dict(info or {}), path, None, pop_penalty, tail_boost
    )
