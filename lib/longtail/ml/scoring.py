"""`recommend`: candidates from CF and content, popularity-aware fusion, exposure re-ranking.

For every user (see ``docs/scoring.md`` for the reasons and the measurements behind each step):

1. **Item vectors.** *Content*: the item's current text vector, centred (the catalogue's mean
   vector subtracted, re-normalised: raw sentence vectors share a common direction that makes
   every profile point at the same hub items). *CF*: the item's ALS factors; items ALS has no
   factors for (cold: no interaction) get factors from the projection head; with
   ``recommend.head_prior = c > 0`` every item's factors are the evidence-weighted blend
   ``(n_i * als_i + c * head_i) / (n_i + c)``, so rare items lean on their text too.
2. **User vectors.** CF: the ALS user factors. Content: the weighted, recency-decayed mean of the
   centred vectors of the user's items (weight x ``0.5 ** (age / half_life)``, age counted from
   the user's latest interaction), L2-normalised. Users without history have neither; they get
   the popular list.
3. **Candidates**: one blocked top-K pass (:func:`longtail.topk.blocked_top_k`) finds the CF top-N,
   the content top-N and the popularity top-k of every user (seen items excluded), with both
   scores of every candidate and, per user, the mean and standard deviation of each signal over
   all the items the user has not seen.
4. **Variants**, each a ranking of the same candidates:
   ``popular``, ``cf`` and ``content`` order by their own signal; ``fused`` orders by
   ``w_i * z_cf + (1 - w_i) * z_content`` with ``w_i = n_i / (n_i + fusion_k)``, the z-scores
   taken per user over the catalogue the user has not seen (``normalise: zscore``) or the
   percentile rank among the user's candidates (``rank``), minus an optional
   ``popularity_penalty * log(1 + n_i)``; ``fused_rerank`` then spreads exposure across the
   catalogue in ``rerank_rounds`` parallel rounds (count each item's exposure in the current
   top-k lists, subtract ``rerank_strength * log(1 + exposure)``, re-rank every user) and
   optionally reserves ``min_tail_share`` of each list for long-tail items and ``min_cold_share``
   for cold items (no interactions), spread over the catalogue with ``reserve_cap`` (a flagged item
   is offered to a fair share of users only, those it ranks highest for). A user short of
   candidates for a signal is filled up from the popular list, so every list has exactly k
   items unless the user has seen nearly the whole catalogue.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import WindowSpec

from longtail.core import schema as S
from longtail.core.config import VARIANTS, RecommendConfig
from longtail.core.errors import MissingInputError
from longtail.ml import ranker as L
from longtail.ml import vae as V
from longtail.ml.cf import new_ids
from longtail.ml.head import ProjectionHead
from longtail.ml.model import Model
from longtail.ml.segments import item_segments
from longtail.ml.topk import Signal, blocked_top_k

log = logging.getLogger(__name__)

# candidate columns
CF, CONTENT, POP, VAE = "cf", "content", "pop", V.VAE
CF_VEC, CONTENT_VEC, POP_VEC, VAE_VEC = "cf_vec", "content_vec", "pop_vec", V.VAE_VEC


@dataclass
class Candidates:
    """Everything the variants are ranked from (persisted DataFrames; call :meth:`unpersist`).

    Attributes:
        pairs: one row per (user, candidate item): ``user_idx, item_idx``, the raw scores ``cf``,
            ``content``, ``pop`` with their ``*_rank`` in that signal's top list, the per-user
            moments ``cf_mean, cf_std, content_mean, content_std``, and the item's
            ``popularity`` (training interactions) and ``is_long_tail``, and the learned fusion's
            inputs ``user_history`` (the user's interactions) and ``item_age_days`` (days from the
            item's last interaction to the history's end; null for cold items).
        users: ``(user_id, user_idx)`` of every user recommended for.
        items: ``(item_id, item_idx)`` of the catalogue.
        stats: :func:`item_stats` of the catalogue.
        ranker: the learned fusion (``model.ranker``); None: only ``recommend.fusion: blend`` works.
        has_vae: whether the model had a Mult-VAE (else the ``vae*`` columns are null).
    """

    pairs: DataFrame
    users: DataFrame
    items: DataFrame
    stats: DataFrame
    ranker: L.Ranker | None = None
    has_vae: bool = False
    _learned: DataFrame | None = field(default=None, repr=False)

    def learned(self) -> DataFrame:
        """``pairs`` with the ranker's ``ranker_p`` and ``ranker_logit`` (scored once, lineage cut)."""
        if self._learned is None:
            if self.ranker is None:
                raise MissingInputError(
                    "recommend.fusion is 'learned' but the model has no learned ranker: run train again "
                    "(it fits one), or set recommend.fusion=blend"
                )
            self._learned = L.score(self.pairs, self.ranker).localCheckpoint(eager=True)
        return self._learned

    def release_learned(self) -> None:
        """Drop the cached ranker scores only (all a :func:`candidates_at` view owns)."""
        if self._learned is not None:
            self._learned.unpersist()
            self._learned = None

    def unpersist(self) -> None:
        for df in (self.pairs, self.users, self.items, self.stats, self._learned):
            if df is not None:
                df.unpersist()


# --- item statistics -----------------------------------------------------------------------------
def item_stats(
    interactions: DataFrame,
    catalogue: DataFrame,
    *,
    head_rule: str = "mass",
    head_share: float = 0.8,
    head_fraction: float = 0.2,
) -> DataFrame:
    """``(item_id, popularity, n_users, is_long_tail, item_segment)`` for every item of ``catalogue``.

    ``popularity`` is the item's number of interactions in ``interactions`` (0 for cold items),
    ``n_users`` its distinct users; head / tail / cold as :func:`longtail.ml.segments.item_segments`
    decides (``recommend.head_rule``: the items holding ``head_share`` of the interactions, or the
    top ``head_fraction`` of the interacted items; ties never split, cold items never head).
    ``is_long_tail`` = not head.

    Example:
        >>> item_stats(interactions, items.select("item_id"), head_rule="mass", head_share=0.8)
    """
    return item_segments(
        interactions, catalogue, rule=head_rule, head_share=head_share, head_fraction=head_fraction
    )


# --- vectors -------------------------------------------------------------------------------------
def _unit_rows(col: Column, mean: np.ndarray | None = None) -> Column:
    """An array<float> column minus ``mean`` (when given), scaled to unit L2 norm; null stays
    null, a zero vector stays zero.

    numpy in a pandas UDF, not ``transform``/``aggregate`` lambdas: a lambda that refers to the
    row's norm re-evaluates it for every element (d^2 work per row), which took a minute for a
    few thousand 384-d rows.
    """
    shift = None if mean is None else np.asarray(mean, dtype=np.float32)

    @F.pandas_udf(T.ArrayType(T.FloatType()))  # type: ignore[call-overload]
    def unit(vectors: pd.Series) -> pd.Series:
        present = vectors.notna().to_numpy()
        out: list[np.ndarray | None] = [None] * len(vectors)
        if present.any():
            x = np.stack(vectors[present].to_numpy()).astype(np.float32)
            if shift is not None:
                x -= shift
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            for row, vec in zip(np.flatnonzero(present), x, strict=True):
                out[row] = vec
        return pd.Series(out, index=vectors.index, dtype=object)

    return unit(col)


def mean_vector(df: DataFrame, col: str) -> np.ndarray:
    """The mean of an array<float> column (one small aggregate, collected: ``dims`` numbers)."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.ml.stat import Summarizer

    row = (
        df.select(array_to_vector(F.col(col)).alias("_v"))
        .agg(Summarizer.mean(F.col("_v")).alias("m"))
        .first()
    )
    if row is None or row["m"] is None:
        raise ValueError(f"mean_vector: no rows in column {col!r}")
    return np.asarray(row["m"].toArray(), dtype=np.float64)


def centred(embeddings: DataFrame, mean: np.ndarray | None) -> DataFrame:
    """``(item_id, content_vec)``: each vector minus ``mean``, re-normalised (``mean`` None: as is)."""
    return embeddings.select(S.ITEM_ID, _unit_rows(F.col(S.EMBEDDING), mean).alias(CONTENT_VEC))


def projected_factors(embeddings: DataFrame, head: ProjectionHead) -> DataFrame:
    """``(item_id, head_vec)``: the projection head applied to every item's text vector (numpy
    on the executors; the head's weights travel with the function, a few hundred KB)."""
    out = T.StructType(
        [T.StructField(S.ITEM_ID, T.StringType()), T.StructField("head_vec", T.ArrayType(T.FloatType()))]
    )

    def project(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if pdf.empty:
                continue
            x = np.stack(pdf[S.EMBEDDING].to_numpy()).astype(np.float32)
            yield pd.DataFrame({S.ITEM_ID: pdf[S.ITEM_ID], "head_vec": list(head.predict(x))})

    return embeddings.select(S.ITEM_ID, S.EMBEDDING).mapInPandas(project, out)


def cf_item_vectors(model: Model, embeddings: DataFrame, stats: DataFrame, *, head_prior: float) -> DataFrame:
    """``(item_id, cf_vec)``: ALS factors, the head's for items without them, or the blend
    ``(n * als + c * head) / (n + c)`` with ``c = head_prior > 0``."""
    als = model.item_factors.select(S.ITEM_ID, F.col(S.FEATURES).alias("als_vec"))
    head = projected_factors(embeddings, model.head)
    both = als.join(head, S.ITEM_ID, "full").join(stats.select(S.ITEM_ID, S.POPULARITY), S.ITEM_ID, "left")
    if head_prior > 0:
        n = F.coalesce(F.col(S.POPULARITY), F.lit(0)).cast("double")
        blend = F.zip_with(
            "als_vec",
            "head_vec",
            lambda a, h: ((n * a + F.lit(head_prior) * h) / (n + F.lit(head_prior))).cast("float"),
        )
        vec = (
            F.when(F.col("als_vec").isNull(), F.col("head_vec"))
            .when(F.col("head_vec").isNull(), F.col("als_vec"))
            .otherwise(blend)
        )
    else:
        vec = F.coalesce("als_vec", "head_vec")
    return both.select(S.ITEM_ID, vec.alias(CF_VEC))


def content_profiles(
    interactions: DataFrame,
    vectors: DataFrame,
    *,
    half_life_days: float | None,
    weighted: bool = True,
) -> DataFrame:
    """``(user_id, content_vec, profile_strength)``: the weighted, recency-decayed mean of the
    user's item vectors, L2-normalised. Each interaction counts with its ``weight`` (``weighted``)
    or 1, times the decay. Age is counted from the user's latest interaction (equivalent, after
    normalisation, to any common reference time). ``profile_strength`` is the norm of the mean
    before normalising (the item vectors are unit vectors, so it lies in [0, 1]: 1 when every item
    of the history points the same way, near 0 when they scatter): how much the profile says."""
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.ml.stat import Summarizer

    weight = F.col(S.WEIGHT) if weighted else F.lit(1.0)
    if half_life_days is not None:
        latest = F.max(S.TS).over(Window.partitionBy(S.USER_ID))
        age_days = (F.col(S.TS).cast("double") - latest.cast("double")) / 86400.0
        weight = weight * F.pow(F.lit(0.5), -age_days / F.lit(half_life_days))
    rows = interactions.select(S.USER_ID, S.ITEM_ID, S.TS, S.WEIGHT).join(vectors, S.ITEM_ID)
    profile = (
        rows.select(S.USER_ID, array_to_vector(F.col(CONTENT_VEC)).alias("_v"), weight.alias("_w"))
        .groupBy(S.USER_ID)
        .agg(Summarizer.mean(F.col("_v"), F.col("_w")).alias("_m"))
        .select(S.USER_ID, vector_to_array(F.col("_m"), "float32").alias("_m"))
    )
    norm = F.sqrt(F.aggregate(F.col("_m"), F.lit(0.0), lambda acc, x: acc + x.cast("double") * x))
    return profile.select(
        S.USER_ID, _unit_rows(F.col("_m")).alias(CONTENT_VEC), norm.alias(L.PROFILE_STRENGTH)
    )


# --- candidates ----------------------------------------------------------------------------------
def candidates(
    spark: SparkSession,
    cfg: RecommendConfig,
    *,
    model: Model,
    interactions: DataFrame,
    embeddings: DataFrame,
    users: DataFrame | None = None,
    catalogue: DataFrame | None = None,
) -> Candidates:
    """Build the candidate set of every user (step 1-3 of the module docstring).

    Args:
        cfg: the ``recommend`` section.
        model: ALS factors, id maps and head (:func:`longtail.train.fit` / ``load_model``).
        interactions: the history to profile users with and to exclude (the training part in
            ``evaluate``).
        embeddings: one current text vector per item (``item_id, embedding``).
        users: ``(user_id)`` to recommend for; default: every user in ``interactions``. Users
            unknown to the id map get an index after the map's largest (they have no history:
            they get the popular list).
        catalogue: ``(item_id)`` of the items that may be recommended; default: the items of
            ``embeddings``. Items unknown to the id map (ingested after the last ``train``) get an
            index after the map's largest, and the head's CF vector.
    """
    users = (users if users is not None else interactions).select(S.USER_ID).distinct()
    extra = new_ids(users, model.user_map, id_col=S.USER_ID, idx_col=S.USER_IDX)
    user_idx = users.join(model.user_map.unionByName(extra), S.USER_ID).persist()
    catalogue = catalogue if catalogue is not None else embeddings
    labels = category_labels(catalogue) if S.CATEGORY in catalogue.columns else None
    catalogue = catalogue.select(S.ITEM_ID).distinct()
    # Items ingested after the last `train` are not in its id map: they get an index after the map's
    # largest here (not stored) and compete at once, with the head's CF vector (cf_item_vectors).
    new_items = new_ids(catalogue, model.item_map, id_col=S.ITEM_ID, idx_col=S.ITEM_IDX)
    item_map = model.item_map.unionByName(new_items)
    item_idx = item_map.join(catalogue, S.ITEM_ID, "left_semi").persist()
    stats = item_stats(
        interactions,
        item_idx,
        head_rule=cfg.head_rule,
        head_share=cfg.head_share,
        head_fraction=cfg.head_fraction,
    ).persist()

    mean = mean_vector(embeddings, S.EMBEDDING) if cfg.centre else None
    content_vecs = centred(embeddings, mean)
    cf_vecs = cf_item_vectors(model, embeddings, stats, head_prior=cfg.head_prior)
    vae = model.vae
    items = (
        item_idx.join(stats.select(S.ITEM_ID, S.POPULARITY), S.ITEM_ID)
        .join(cf_vecs, S.ITEM_ID, "left")
        .join(content_vecs, S.ITEM_ID, "left")
        .select(
            S.ITEM_IDX,
            CF_VEC,
            CONTENT_VEC,
            F.array(F.col(S.POPULARITY).cast("float")).alias(POP_VEC),
        )
    )
    if vae is not None:
        items = items.join(V.item_vectors(vae), S.ITEM_IDX, "left")
    history = interactions.join(user_idx.select(S.USER_ID), S.USER_ID, "left_semi")
    profiles = content_profiles(
        history,
        content_vecs,
        half_life_days=cfg.half_life_days,
        weighted=cfg.profile_weights == "weight",
    ).persist()
    queries = (
        user_idx.join(
            model.user_factors.select(S.USER_ID, F.col(S.FEATURES).alias(CF_VEC)), S.USER_ID, "left"
        )
        .join(profiles, S.USER_ID, "left")
        .select(S.USER_IDX, CF_VEC, CONTENT_VEC, F.array(F.lit(1.0).cast("float")).alias(POP_VEC))
    )
    seen = (
        history.select(S.USER_ID, S.ITEM_ID)
        .distinct()
        .join(user_idx, S.USER_ID)
        .join(item_idx, S.ITEM_ID)
        .select(S.USER_IDX, S.ITEM_IDX)
    )
    signals = [
        Signal(CF, CF_VEC, CF_VEC, cfg.candidates),
        Signal(CONTENT, CONTENT_VEC, CONTENT_VEC, cfg.candidates),
        Signal(POP, POP_VEC, POP_VEC, cfg.k),
    ]
    moments = [CF, CONTENT]
    if vae is not None:
        seen = seen.persist()
        queries = queries.join(V.user_vectors(vae, seen), S.USER_IDX, "left")
        signals.append(Signal(VAE, VAE_VEC, VAE_VEC, cfg.candidates))
        moments.append(VAE)
    # blocked_top_k reads its inputs twice (its sizing aggregate, then the plan; docs/scaling.md,
    # "Limits"): cached, the joins, the head's projection and the VAE's user encoder run once
    queries, items = queries.persist(), items.persist()
    pairs = blocked_top_k(
        queries,
        items,
        signals,
        query_key=S.USER_IDX,
        item_key=S.ITEM_IDX,
        exclude=seen,
        block_queries=cfg.block_users,
        block_items=cfg.block_items,
        moments=moments,
    )
    if vae is None:  # the columns every consumer reads, as a model without the signal has them
        pairs = L.with_vae_columns(pairs)
    pairs = (
        pairs.join(item_idx, S.ITEM_IDX)
        .join(stats.select(S.ITEM_ID, S.POPULARITY, S.IS_LONG_TAIL), S.ITEM_ID)
        .drop(S.ITEM_ID)
        .join(user_context(history, interactions, user_idx, stats, profiles), S.USER_IDX, "left")
        .join(item_age(interactions, item_idx), S.ITEM_IDX, "left")
    )
    pairs = with_category_overlap(pairs, history, labels, user_idx, item_idx).localCheckpoint(
        eager=True
    )  # see docs/decisions.md: the plans of every variant start here
    for df in (profiles, queries, items):
        df.unpersist()
    if vae is not None:
        seen.unpersist()
    return Candidates(
        pairs=pairs, users=user_idx, items=item_idx, stats=stats, ranker=model.ranker, has_vae=vae is not None
    )


def _days_before_end(ts: str) -> Column:
    """Days from the timestamp column ``ts`` to the ``_end`` column (see :func:`_with_end`)."""
    return (F.col("_end").cast("double") - F.col(ts).cast("double")) / 86400.0


def _with_end(df: DataFrame, interactions: DataFrame) -> DataFrame:
    """``df`` plus ``_end``: the last interaction of the whole history (the cut-off the lists are
    made at; one row, broadcast)."""
    return df.crossJoin(F.broadcast(interactions.agg(F.max(S.TS).alias("_end"))))


def user_context(
    history: DataFrame,
    interactions: DataFrame,
    user_idx: DataFrame,
    stats: DataFrame,
    profiles: DataFrame,
) -> DataFrame:
    """``(user_idx, user_history, user_recency_days, profile_strength, user_tail_share)`` of every
    user with a history: the number of interactions in ``history``, days from the user's last one to
    the end of ``interactions``, the strength of the content profile (:func:`content_profiles`) and
    the share of the interactions on long-tail items (``stats.is_long_tail``; items outside the
    catalogue do not count). Users without history are absent (every feature then reads 0)."""
    per_user = (
        history.join(stats.select(S.ITEM_ID, S.IS_LONG_TAIL), S.ITEM_ID, "left")
        .groupBy(S.USER_ID)
        .agg(
            F.count(F.lit(1)).alias(L.USER_HISTORY),
            F.max(S.TS).alias("_last"),
            F.avg(F.col(S.IS_LONG_TAIL).cast("double")).alias(L.USER_TAIL_SHARE),
        )
    )
    return (
        _with_end(per_user, interactions)
        .join(user_idx, S.USER_ID)
        .join(profiles.select(S.USER_ID, L.PROFILE_STRENGTH), S.USER_ID, "left")
        .select(
            S.USER_IDX,
            L.USER_HISTORY,
            _days_before_end("_last").alias(L.USER_RECENCY_DAYS),
            L.PROFILE_STRENGTH,
            L.USER_TAIL_SHARE,
        )
    )


def item_age(interactions: DataFrame, item_idx: DataFrame) -> DataFrame:
    """``(item_idx, item_age_days, item_first_days)``: days from each item's last and from its first
    interaction to the last interaction of the whole history (the cut-off the lists are made at);
    items without any interaction are absent."""
    spans = interactions.groupBy(S.ITEM_ID).agg(F.max(S.TS).alias("_last"), F.min(S.TS).alias("_first"))
    return (
        _with_end(spans, interactions)
        .join(item_idx, S.ITEM_ID)
        .select(
            S.ITEM_IDX,
            _days_before_end("_last").alias(L.ITEM_AGE_DAYS),
            _days_before_end("_first").alias(L.ITEM_FIRST_DAYS),
        )
    )


CATEGORY_SEPARATOR = "|"  # category "Comedy|Drama": two labels (MovieLens genres, the sample's topics)


def category_labels(catalogue: DataFrame) -> DataFrame:
    """``(item_id, label)``: the distinct labels of each item's ``category``, split on ``|`` and
    trimmed (empty labels and null categories give no row)."""
    # a lambda, not F.trim itself: transform would pass the element index as trim's second argument
    label = F.explode(F.transform(F.split(F.col(S.CATEGORY), "\\" + CATEGORY_SEPARATOR), lambda x: F.trim(x)))
    return (
        catalogue.where(F.col(S.CATEGORY).isNotNull())
        .select(S.ITEM_ID, label.alias("_label"))
        .where(F.length("_label") > 0)
        .distinct()
    )


def with_category_overlap(
    pairs: DataFrame,
    history: DataFrame,
    labels: DataFrame | None,
    user_idx: DataFrame,
    item_idx: DataFrame,
) -> DataFrame:
    """``pairs`` plus ``category_overlap``: the mean, over the candidate item's category labels, of
    the share of the user's interactions (in ``history``) on items that carry the label; 0 when the
    user has no interaction with that label, null when the item has no label, the user no history
    or the catalogue no ``category`` column (``labels`` None). ``pairs`` carry ``user_history``
    (:func:`user_context`), the denominator of the shares. Per-user label counts travel as a map
    and per-item labels as an array, joined by key: no join of the candidate pairs with
    themselves."""
    if labels is None:
        return pairs.withColumn(L.CATEGORY_OVERLAP, F.lit(None).cast("double"))
    counts = (
        history.select(S.USER_ID, S.ITEM_ID)
        .join(labels, S.ITEM_ID)
        .groupBy(S.USER_ID, "_label")
        .agg(F.count(F.lit(1)).alias("_c"))
        .groupBy(S.USER_ID)
        .agg(F.map_from_entries(F.collect_list(F.struct("_label", "_c"))).alias("_counts"))
        .join(user_idx, S.USER_ID)
        .select(S.USER_IDX, "_counts")
    )
    item_labels = (
        labels.join(item_idx, S.ITEM_ID).groupBy(S.ITEM_IDX).agg(F.collect_set("_label").alias("_labels"))
    )

    def add_count(acc: Column, label: Column) -> Column:
        return acc + F.coalesce(F.try_element_at(F.col("_counts"), label), F.lit(0))

    labelled = F.aggregate("_labels", F.lit(0).cast("long"), add_count)
    overlap = labelled / F.size("_labels") / F.col(L.USER_HISTORY)
    return (
        pairs.join(item_labels, S.ITEM_IDX, "left")
        .join(counts, S.USER_IDX, "left")
        .withColumn(L.CATEGORY_OVERLAP, F.when(F.col("_counts").isNotNull(), overlap))
        .drop("_labels", "_counts")
    )


def candidates_at(cands: Candidates, *, k: int, n_candidates: int) -> Candidates:
    """The candidate set that :func:`candidates` builds with ``recommend.k = k`` and
    ``recommend.candidates = n_candidates``, cut from one built with a larger k and at least as
    many candidates (``evaluate`` ranks every cut-off from one pass).

    Exact: each signal's top list is a prefix of the longer one (the order, ties included, is a
    total order: score, then item key), and the per-user moments cover the whole unseen catalogue,
    not the lists. Rows in no shorter list go; ranks beyond the shorter lists become null. The
    ranker's scores are not carried over (its features include the ranks): the view scores its
    own pairs when asked; free them with :meth:`Candidates.release_learned`.
    """
    ranks = {f"{CF}_rank": n_candidates, f"{CONTENT}_rank": n_candidates, f"{POP}_rank": k}
    if f"{VAE}_rank" in cands.pairs.columns:
        ranks[f"{VAE}_rank"] = n_candidates
    keep = functools.reduce(lambda a, b: a | b, [F.col(c) <= n for c, n in ranks.items()])
    pairs = cands.pairs.where(keep)
    for col, n in ranks.items():
        pairs = pairs.withColumn(col, F.when(F.col(col) <= n, F.col(col)))
    return dataclasses.replace(cands, pairs=pairs, _learned=None)


# --- variants ------------------------------------------------------------------------------------
def _by_user() -> WindowSpec:
    return Window.partitionBy(S.USER_IDX)


def _normalise(signal: str, how: str) -> Column:
    """The signal on a scale shared by all users: z-score over the user's unseen catalogue, or
    the percentile rank among the user's candidates (null where the signal is null)."""
    raw = F.col(signal)
    if how == "zscore":
        std = F.col(f"{signal}_std")
        return F.when(std > 0, (raw - F.col(f"{signal}_mean")) / std).otherwise(F.when(raw.isNotNull(), 0.0))
    ordered = _by_user().orderBy(F.col(signal).asc_nulls_first())
    return F.when(raw.isNotNull(), F.percent_rank().over(ordered))


def fused_score(cfg: RecommendConfig, *, fusion_k: float | None = None) -> Column:
    """``w * cf' + (1 - w) * content'`` with ``w = n / (n + fusion_k)`` (normalised signals; where
    one is null the other alone), minus ``popularity_penalty * log(1 + n)``."""
    k = cfg.fusion_k if fusion_k is None else fusion_k
    cf, content = _normalise(CF, cfg.normalise), _normalise(CONTENT, cfg.normalise)
    n = F.col(S.POPULARITY).cast("double")
    w = n / (n + F.lit(float(k)))
    fused = F.when(cf.isNull(), content).when(content.isNull(), cf).otherwise(w * cf + (1 - w) * content)
    if cfg.popularity_penalty:
        fused = fused - F.lit(cfg.popularity_penalty) * F.log1p(n)
    return fused


def top_k(pairs: DataFrame, score: Column | str, k: int) -> DataFrame:
    """The ``k`` best candidates per user by ``score`` (desc), users short of scored candidates
    filled up in popularity order; adds ``rank`` (1..k) and ``score``. Ties in ``score``: the more
    popular item first (its rank in the popular list), then item_idx ascending."""
    score = F.col(score) if isinstance(score, str) else score
    scored = pairs.withColumn(S.SCORE, score.cast("double"))
    order = _by_user().orderBy(
        F.col(S.SCORE).isNull(),
        F.col(S.SCORE).desc(),
        F.col(f"{POP}_rank").asc_nulls_last(),
        F.col(S.ITEM_IDX),
    )
    ranked = scored.withColumn(S.RANK, F.row_number().over(order))
    return ranked.where(F.col(S.RANK) <= k)


def rerank(
    pairs: DataFrame, base: Column, cfg: RecommendConfig, *, strength: float | None = None
) -> DataFrame:
    """Exposure-aware re-ranking in ``cfg.rerank_rounds`` parallel rounds (see the module doc);
    returns ``pairs`` with a ``_score`` column to rank by."""
    lam = cfg.rerank_strength if strength is None else strength
    scored = pairs.withColumn("_base", base)
    current = scored.withColumn("_score", F.col("_base"))
    for _ in range(cfg.rerank_rounds if lam > 0 else 0):
        exposure = (
            top_k(current, "_score", cfg.k).groupBy(S.ITEM_IDX).agg(F.count(F.lit(1)).alias("_exposure"))
        )
        current = (
            scored.join(exposure, S.ITEM_IDX, "left")
            .withColumn("_score", F.col("_base") - F.lit(lam) * F.log1p(F.coalesce("_exposure", F.lit(0))))
            .drop("_exposure")
        )
    return current


def reserve(
    ranked_pool: DataFrame,
    score: str,
    *,
    k: int,
    quotas: Sequence[tuple[Column, float]],
    cap: float = 0.0,
) -> DataFrame:
    """The top ``k`` by ``score`` with, for each ``(flag, share)`` of ``quotas``, at least
    ``ceil(share * k)`` items per user whose ``flag`` is true: the best flagged candidates take the
    places of the lowest unreserved items (fewer if the user has fewer flagged candidates). An item
    reserved by two quotas counts for both. The list is then ordered by ``score`` as usual.

    ``cap > 0`` spreads the reserved places (``recommend.reserve_cap``): a flagged item is offered
    only to the users it ranks highest for (:func:`_offers`), and each user's reserved places go to
    their best offered items first, then to their best flagged ones.
    """
    needs = [(flag, need) for flag, need in ((f, math.ceil(share * k)) for f, share in quotas) if need > 0]
    if not needs:
        return top_k(ranked_pool, score, k)
    for i, (flag, need) in enumerate(needs):
        flagged = f"_flag{i}"
        ranked_pool = ranked_pool.withColumn(flagged, F.coalesce(flag, F.lit(False)))
        by_user = Window.partitionBy(S.USER_IDX, flagged)
        best_first = [F.col(score).isNull(), F.col(score).desc(), F.col(S.ITEM_IDX)]
        within = F.row_number().over(by_user.orderBy(*best_first))
        if cap > 0:
            ranked_pool = _offers(
                ranked_pool.withColumn("_within", within), flagged, score, cap=cap, need=need
            )
            within = F.row_number().over(by_user.orderBy(F.col("_offered").desc(), *best_first))
        ranked_pool = ranked_pool.withColumn(
            f"_res{i}", F.col(flagged) & (within <= need) & F.col(score).isNotNull()
        ).drop("_within", "_offered")
    reserved = functools.reduce(lambda a, b: a | b, [F.col(f"_res{i}") for i in range(len(needs))])
    marked = ranked_pool.withColumn("_reserved", reserved).drop(
        *[f"_{c}{i}" for c in ("flag", "res") for i in range(len(needs))]
    )
    n_reserved = F.sum(F.col("_reserved").cast("int")).over(_by_user())
    rest_rank = F.row_number().over(
        Window.partitionBy(S.USER_IDX, "_reserved").orderBy(
            F.col(score).isNull(),
            F.col(score).desc(),
            F.col(f"{POP}_rank").asc_nulls_last(),
            F.col(S.ITEM_IDX),
        )
    )
    chosen = (
        marked.withColumn("_n_res", n_reserved)
        .withColumn("_rest", rest_rank)
        .where(F.col("_reserved") | (F.col("_rest") <= F.lit(k) - F.col("_n_res")))
        .drop("_reserved", "_n_res", "_rest")
    )
    return top_k(chosen, score, k)


def _offers(pool: DataFrame, flagged: str, score: str, *, cap: float, need: int) -> DataFrame:
    """``pool`` plus ``_offered``: true for a flagged pair whose item is among the
    ``ceil(cap * fair)`` users it ranks highest for (``_within``: the item's place among the
    user's flagged candidates; ties: the higher score, then the lower user index), with
    ``fair = users * need / items`` over the pool's scored flagged pairs. One item can then fill
    at most that many users' reserved places, except for users with no offer at all, who keep
    their best flagged item (a soft cap: nobody loses a reserved place to it). Both counts come
    from one aggregate joined as a single row: nothing reaches the driver."""
    eligible = F.col(flagged) & F.col(score).isNotNull()
    counts = pool.where(eligible).agg(
        F.countDistinct(S.USER_IDX).alias("_n_users"), F.countDistinct(S.ITEM_IDX).alias("_n_items")
    )
    limit = F.greatest(
        F.lit(1.0), F.ceil(F.lit(cap * need) * F.col("_n_users") / F.greatest(F.col("_n_items"), F.lit(1)))
    )
    place = F.row_number().over(
        Window.partitionBy(S.ITEM_IDX, flagged).orderBy(
            F.col("_within"), F.col(score).desc_nulls_last(), F.col(S.USER_IDX)
        )
    )
    return (
        pool.crossJoin(F.broadcast(counts))
        .withColumn("_offered", eligible & (place <= limit))
        .drop("_n_users", "_n_items")
    )


def reservations(cfg: RecommendConfig) -> list[tuple[Column, float]]:
    """The list quotas of ``fused_rerank``: long-tail items (``min_tail_share``) and cold items,
    those without any interaction (``min_cold_share``)."""
    return [
        (F.col(S.IS_LONG_TAIL), cfg.min_tail_share),
        (F.col(S.POPULARITY) == 0, cfg.min_cold_share),
    ]


def rank_variant(
    cands: Candidates,
    variant: str,
    cfg: RecommendConfig,
    *,
    fusion_k: float | None = None,
    rerank_strength: float | None = None,
    pop_penalty: float | None = None,
) -> DataFrame:
    """Rank ``variant`` from the candidates: ``(user_idx, item_idx, rank, score, ...)`` per user.

    With ``recommend.fusion: learned`` (the default), ``fused`` orders by the ranker's probability
    and ``fused_rerank`` re-ranks and reserves on its log-odds (``fusion_k`` is not used); with
    ``blend`` both work on :func:`fused_score`. ``pop_penalty`` (learned fusion only): the ranker's
    popularity penalty in place of the one it was fitted with (for evaluate's trade-off curve).
    """
    pairs = cands.pairs
    if variant == "popular":
        return top_k(pairs, F.col(POP), cfg.k)
    if variant == "cf":
        return top_k(pairs, F.when(F.col(f"{CF}_rank").isNotNull(), F.col(CF)), cfg.k)
    if variant == "content":
        return top_k(pairs, F.when(F.col(f"{CONTENT}_rank").isNotNull(), F.col(CONTENT)), cfg.k)
    if variant == "vae":
        if not cands.has_vae:
            raise MissingInputError(
                "the variant 'vae' needs the Mult-VAE, which the model does not have: set "
                "train.vae.enabled=true and run train again, or choose another variant"
            )
        return top_k(pairs, F.when(F.col(f"{VAE}_rank").isNotNull(), F.col(VAE)), cfg.k)
    if variant in ("fused", "fused_rerank") and cfg.fusion == "learned":
        learned = cands.learned()
        if pop_penalty is not None:
            assert cands.ranker is not None  # learned() raised otherwise
            learned = L.with_penalty(learned, cands.ranker, pop_penalty)
        if variant == "fused":
            return top_k(learned, F.col(L.PROBABILITY), cfg.k)
        pool = rerank(learned, F.col(L.LOGIT), cfg, strength=rerank_strength)
        return reserve(pool, "_score", k=cfg.k, quotas=reservations(cfg), cap=cfg.reserve_cap).drop(
            "_base", "_score"
        )
    if pop_penalty is not None:
        raise ValueError("pop_penalty applies to the learned fusion only (recommend.fusion: learned)")
    fused = fused_score(cfg, fusion_k=fusion_k)
    if variant == "fused":
        return top_k(pairs, fused, cfg.k)
    if variant == "fused_rerank":
        pool = rerank(pairs, fused, cfg, strength=rerank_strength)
        return reserve(pool, "_score", k=cfg.k, quotas=reservations(cfg), cap=cfg.reserve_cap).drop(
            "_base", "_score"
        )
    raise ValueError(f"unknown variant {variant!r}; allowed: {list(VARIANTS)}")


def to_contract(ranked: DataFrame, cands: Candidates) -> DataFrame:
    """The ``recommendations`` table's columns from a ranked variant."""
    out = ranked.join(cands.users, S.USER_IDX).join(cands.items, S.ITEM_IDX)
    out = out.select(
        S.USER_ID,
        F.col(S.RANK).cast("int").alias(S.RANK),
        S.ITEM_ID,
        F.col(S.SCORE).cast("double").alias(S.SCORE),
        F.col(CF).cast("double").alias(S.CF_SCORE),
        F.col(CONTENT).cast("double").alias(S.CONTENT_SCORE),
        F.col(S.POPULARITY).cast("long").alias(S.POPULARITY),
        F.col(S.IS_LONG_TAIL).alias(S.IS_LONG_TAIL),
    )
    return S.conform_strict(out, S.RECOMMENDATIONS_SCHEMA, what="recommendations")


def recommend(
    spark: SparkSession,
    cfg: RecommendConfig,
    *,
    model: Model,
    interactions: DataFrame,
    embeddings: DataFrame,
    variants: Sequence[str],
    users: DataFrame | None = None,
    catalogue: DataFrame | None = None,
) -> tuple[dict[str, DataFrame], Candidates]:
    """Top-k lists of each of ``variants`` (contract columns), ranked from one candidate set."""
    cands = candidates(
        spark,
        cfg,
        model=model,
        interactions=interactions,
        embeddings=embeddings,
        users=users,
        catalogue=catalogue,
    )
    return {v: to_contract(rank_variant(cands, v, cfg), cands) for v in variants}, cands
