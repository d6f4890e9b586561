"""The learned fusion: features, sampling, a planted signal, leakage, persistence, and the lists."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import pytest
import synthetic
from helpers import make_tiny_bert
from pyspark.sql import functions as F
from test_recommend import PAIR_COLUMNS, _candidates, _lists, _toy, toy_config

from longtail.core import schema as S
from longtail.core.config import ConfigError, RankerConfig
from longtail.core.errors import MissingInputError
from longtail.ml import fusion, holdout
from longtail.ml import ranker as L
from longtail.ml import scoring as R
from longtail.ml.model import current_embeddings, load_model
from longtail.stages import recommend, train

pytestmark = pytest.mark.spark

# item_first_days, user_recency_days, profile_strength, user_tail_share, category_overlap: unknown
NO_CONTEXT = (None,) * 5
FEATURE_ROW_COLUMNS = (
    f"{PAIR_COLUMNS}, user_history long, item_age_days double, item_first_days double, "
    "user_recency_days double, profile_strength double, user_tail_share double, category_overlap double"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny"))


def test_features_fill_missing_signals_with_zero_and_an_indicator(spark):
    # user 0, item 1: no CF score (cold user for CF), content 2.0 with mean 0.5 / std 0.5 -> z 3,
    # content rank 4, not in the popular list, cold item (popularity 0), 3 interactions of history,
    # the last 2 days before the end, a profile of strength 0.5, a quarter of them on tail items, and
    # an item without a category label
    rows = [(0, 1, None, None, 2.0, 4, None, None, None, None, 0.5, 0.5, 0, True, 3, None,
             None, 2.0, 0.5, 0.25, None)]  # fmt: skip
    got = L.with_features(spark.createDataFrame(rows, FEATURE_ROW_COLUMNS)).first()
    expected = {
        "f_cf": 0.0,
        "f_has_cf": 0.0,
        "f_content": 2.0,
        "f_has_content": 1.0,
        "f_cf_z": 0.0,
        "f_content_z": 3.0,
        "f_cf_rank": math.log1p(L.RANK_MISSING),
        "f_content_rank": math.log1p(4),
        "f_pop_rank": math.log1p(L.RANK_MISSING),
        "f_item_evidence": 0.0,
        "f_item_age": 0.0,
        "f_is_cold": 1.0,
        "f_is_head": 0.0,
        "f_user_history": math.log1p(3),
        "f_z_gap": 3.0,
        # no Mult-VAE columns in the rows: as a model without it, 0 and the indicator 0
        "f_vae": 0.0,
        "f_has_vae": 0.0,
        "f_vae_z": 0.0,
        "f_vae_rank": math.log1p(L.RANK_MISSING),
        "f_item_first_age": 0.0,
        "f_user_recency": math.log1p(2.0),
        "f_profile_strength": 0.5,
        "f_user_tail_share": 0.25,
        "f_tail_match": 0.25,  # a tail item: the user's tail share
        "f_category_overlap": 0.0,
    }
    assert {f: got[f] for f in L.FEATURES} == pytest.approx(expected)
    head = spark.createDataFrame(rows, FEATURE_ROW_COLUMNS).withColumn(S.IS_LONG_TAIL, F.lit(False))
    assert L.with_features(head).first()["f_tail_match"] == 0.0
    with pytest.raises(ValueError, match="user_history"):
        L.with_features(spark.createDataFrame(rows, FEATURE_ROW_COLUMNS).drop("user_history"))


def test_negative_sampling_keeps_every_positive_and_bounds_negatives(spark):
    # user 0: 2 positives, 10 negatives; user 1: no positive (dropped); 3 negatives kept per user
    rows = [(0, i, int(i < 2)) for i in range(12)] + [(1, i, 0) for i in range(5)]
    df = spark.createDataFrame(rows, "user_idx int, item_idx int, label int")
    got = L.sample_negatives(df, negatives=3, seed=7).collect()
    assert {r["user_idx"] for r in got} == {0}
    assert sorted(r["item_idx"] for r in got if r["label"] == 1) == [0, 1]
    assert sum(r["label"] == 0 for r in got) == 3
    again = L.sample_negatives(df, negatives=3, seed=7).collect()
    assert sorted(r["item_idx"] for r in again) == sorted(r["item_idx"] for r in got)


def test_negative_sample_does_not_depend_on_the_partitioning(spark):
    # 40 users x 30 candidates, one positive each; the same rows in 1, 3 and 7 partitions, in
    # different orders, give the same sample (rand(seed) would not: its stream is per partition)
    rows = [(u, i, int(i == u % 30)) for u in range(40) for i in range(30)]
    df = spark.createDataFrame(rows, "user_idx int, item_idx int, label int")

    def sample(frame):
        got = L.sample_negatives(frame, negatives=5, seed=11).collect()
        return sorted((r["user_idx"], r["item_idx"], r["label"]) for r in got)

    one = sample(df.coalesce(1))
    assert len(one) == 40 * 6
    assert sample(df.repartition(3, "item_idx")) == one
    assert sample(df.orderBy(F.desc("item_idx")).repartition(7)) == one
    assert sample(df.coalesce(1)) != sorted(
        (r["user_idx"], r["item_idx"], r["label"])
        for r in L.sample_negatives(df.coalesce(1), negatives=5, seed=12).collect()
    )  # the seed still matters


def test_gbt_fits_the_same_model_whatever_the_input_layout(spark):
    # 30,000 rows: above the 10,000 beyond which MLlib's tree learner samples its input per
    # partition for split candidates; without the layout by key these two fits differed by up to
    # 0.38 in probability (measured before the fix)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30_000, 2))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=len(x)) > 0.5).astype(int)
    rows = [(i // 30, i % 30, int(y[i]), float(x[i, 0]), float(x[i, 1])) for i in range(len(x))]
    df = spark.createDataFrame(rows, "user_idx int, item_idx int, label int, f_cf double, f_content double")
    rk = RankerConfig(model="gbt", trees=5, depth=3)

    def predictions(frame):
        fitted = L.fit_pipeline(frame, rk, features=("f_cf", "f_content"))
        scored = L.probability(fitted, df.coalesce(1)).orderBy(S.USER_IDX, S.ITEM_IDX)
        return [r[0] for r in scored.select(L.PROBABILITY).collect()]

    assert predictions(df.coalesce(1)) == predictions(df.orderBy(F.desc(S.ITEM_IDX)).repartition(5))


@pytest.mark.parametrize("model", ["gbt", "logistic"])
def test_ranker_recovers_a_planted_signal(spark, model):
    # labels depend on f_content_z alone (1 where it exceeds 0.8, with 5% flipped); every other
    # feature is independent noise: the ranker must rank by it (AUC near 0.95) and weigh it most
    rng = np.random.default_rng(3)
    n = 600
    x = rng.normal(size=(n, len(L.FEATURES)))
    j = L.FEATURES.index("f_content_z")
    y = (x[:, j] > 0.8).astype(int)
    flip = rng.random(n) < 0.05
    y[flip] = 1 - y[flip]
    rows = [(i // 20, i, int(y[i]), *map(float, x[i])) for i in range(n)]
    schema = "user_idx int, item_idx int, label int, " + ", ".join(f"{f} double" for f in L.FEATURES)
    df = spark.createDataFrame(rows, schema)
    cfg = RankerConfig(model=model, trees=10, depth=3)
    ranker = L.Ranker(L.fit_pipeline(df, cfg))
    from pyspark.ml.functions import vector_to_array

    scored = ranker.pipeline.transform(df).withColumn(L.PROBABILITY, vector_to_array("probability")[1])
    assert L.auc(scored) > 0.9
    weights = L.importances(ranker)
    assert max(weights, key=weights.get) == "f_content_z"
    assert weights["f_content_z"] > 2 * sorted(weights.values())[-2]


def test_fit_pipeline_needs_both_classes(spark):
    schema = "user_idx int, item_idx int, label int, " + ", ".join(f"{f} double" for f in L.FEATURES)
    df = spark.createDataFrame([(0, i, 0, *([0.0] * len(L.FEATURES))) for i in range(4)], schema)
    with pytest.raises(ValueError, match="label_fraction"):
        L.fit_pipeline(df, RankerConfig())


def test_propensity_weights_by_hand(spark):
    # positives with n_i = 0 and 3 (evidence log 1, log 4) at power 1: raw 1 and 1/4, mean 0.625,
    # so 1.6 and 0.4; the negative (n_i = 3) weighs 1 whatever its popularity
    schema = "user_idx int, item_idx int, label int, f_item_evidence double"
    df = spark.createDataFrame([(0, 0, 1, 0.0), (0, 1, 1, math.log(4)), (0, 2, 0, math.log(4))], schema)
    got = {r.item_idx: r[L.WEIGHT] for r in L.with_propensity_weights(df, 1.0).collect()}
    assert got == pytest.approx({0: 1.6, 1: 0.4, 2: 1.0})
    with pytest.raises(ValueError, match="no positive"):
        L.with_propensity_weights(df.where("label = 0"), 1.0)


def test_propensity_weighting_takes_popularity_out_of_the_learned_odds(spark):
    # the odds of a positive grow as (1 + n_i) ** 1 (a popular item is chosen more by everyone) and
    # with f_content_z (what the user likes): unweighted, logistic regression learns both; with
    # positives weighted by (1 + n_i) ** -1 the popularity term cancels and the content one stays
    rng = np.random.default_rng(5)
    n = 4000
    x = np.zeros((n, len(L.FEATURES)))
    ev, cz = L.FEATURES.index("f_item_evidence"), L.FEATURES.index("f_content_z")
    x[:, ev] = rng.uniform(0, 5, n)
    x[:, cz] = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(-5 + x[:, ev] + 1.5 * x[:, cz])))).astype(int)
    rows = [(i // 40, i, int(y[i]), *map(float, x[i])) for i in range(n)]
    schema = "user_idx int, item_idx int, label int, " + ", ".join(f"{f} double" for f in L.FEATURES)
    df = spark.createDataFrame(rows, schema)

    def coefficients(power):
        model = L.fit_pipeline(df, RankerConfig(model="logistic", reg=0.0, propensity_power=power))
        return model.stages[-1].coefficients

    plain, weighted = coefficients(0.0), coefficients(1.0)
    assert plain[ev] == pytest.approx(1.0, abs=0.25) and plain[cz] == pytest.approx(1.5, abs=0.3)
    assert abs(weighted[ev]) < 0.25
    assert weighted[cz] == pytest.approx(1.5, abs=0.35)
    with pytest.raises(ConfigError, match="propensity_power"):
        RankerConfig(propensity_power=-0.5)


def _feature_rows(spark, rows):
    schema = "user_idx int, item_idx int, label int, " + ", ".join(f"{f} double" for f in L.FEATURES)
    return spark.createDataFrame(rows, schema)


def test_ndcg_by_hand(spark):
    # user 0: positives at ranks 1 and 3 of 3 -> (1 + 1/log2(4)) / (1 + 1/log2(3)) = 1.5 / 1.63093
    # user 1: its positive ranked 2nd, k=1 -> 0; user 2: no positive -> 0 (counted)
    rows = [(0, 0, 1, 0.9), (0, 1, 0, 0.5), (0, 2, 1, 0.1), (1, 0, 0, 0.7), (1, 1, 1, 0.2), (2, 0, 0, 0.3)]
    df = spark.createDataFrame(rows, f"user_idx int, item_idx int, label int, {L.PROBABILITY} double")
    want0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert L.ndcg(df.where("user_idx = 0"), k=3) == pytest.approx(want0, abs=1e-12)
    assert L.ndcg(df, k=3) == pytest.approx((want0 + 1 / math.log2(3)) / 3, abs=1e-12)
    assert L.ndcg(df, k=1) == pytest.approx(1 / 3, abs=1e-12)


def test_ndcg_breaks_ties_like_recommend_popular_first_then_item_idx(spark):
    # a user without history: a single signal scores none of the candidates (every score tied),
    # so recommend ships them in popularity order; the positive is the most popular item (pop
    # rank 1), whose item_idx is the largest
    rows = [(0, 0, 0, 0.5, math.log1p(3)), (0, 1, 0, 0.5, math.log1p(2)), (0, 2, 1, 0.5, math.log1p(1))]
    df = spark.createDataFrame(
        rows, f"user_idx int, item_idx int, label int, {L.PROBABILITY} double, f_pop_rank double"
    )
    assert L.ndcg(df, k=1) == pytest.approx(1.0, abs=1e-12)
    # without a popularity rank, item_idx decides: the positive comes third
    assert L.ndcg(df.drop("f_pop_rank"), k=3) == pytest.approx(1 / math.log2(4), abs=1e-12)
    # a real score difference still comes first
    better = df.withColumn(L.PROBABILITY, F.when(F.col(S.ITEM_IDX) == 0, 0.9).otherwise(0.5))
    assert L.ndcg(better, k=1) == 0.0


def test_auto_chooses_on_held_out_users_and_can_choose_a_single_signal(spark):
    # On every user, the label follows f_cf_z (the top-2 of 10 candidates by f_cf_z are positives),
    # except that on the users the fit part gets, a noise feature (f_item_age) says the same more
    # sharply: the models learn the noise, which does not carry to the held-out users, so CF
    # alone ranks them best and ships as a single-signal ranker.
    rng = np.random.default_rng(5)
    rk = RankerConfig(model="auto", trees=5, depth=2, validation_fraction=0.3, pop_penalty=0.0)
    held = {
        r[0]
        for r in spark.range(200)
        .select(F.col("id").cast("int").alias("u"))
        .where(F.abs(F.xxhash64(F.col("u"), F.lit(rk.seed))) % 1000 < 300)
        .collect()
    }
    i_cf, i_has, i_age = (L.FEATURES.index(f) for f in ("f_cf_z", "f_has_cf", "f_item_age"))
    rows = []
    for u in range(200):
        x = rng.normal(size=(10, len(L.FEATURES)))
        x[:, i_has] = 1.0
        order = np.argsort(-x[:, i_cf])
        label = np.zeros(10, dtype=int)
        if u in held:
            label[order[:2]] = 1
        else:  # the fit users' labels follow f_item_age; f_cf_z is noise there
            label[np.argsort(-x[:, i_age])[:2]] = 1
        rows += [(u, i, int(label[i]), *map(float, x[i])) for i in range(10)]
    ranker, choice = fusion._choose(_feature_rows(spark, rows), rk, k=2)
    scores = choice["validation"]["ndcg@2"]
    assert choice["chosen"] == "cf" and ranker.signal == "cf" and ranker.pipeline is None, scores
    assert scores["cf"] == pytest.approx(1.0) and max(scores["gbt"], scores["logistic"]) < 0.7
    assert choice["validation"]["users"] == len(held)
    # the single-signal ranker scores by the z-score; an item CF did not score goes last
    pairs = [(0, 1, 0.5, 2, 0.1, 5, None, None, 0.0, 1.0, 0.0, 0.5, 3, True, 4, 10.0, *NO_CONTEXT)]
    got = L.score(spark.createDataFrame(pairs, FEATURE_ROW_COLUMNS), ranker).first()
    assert got[L.LOGIT] == pytest.approx(0.5) and got[L.PROBABILITY] == pytest.approx(
        1 / (1 + math.exp(-0.5))
    )
    assert L.load(None, L.FEATURES, signal="cf").signal == "cf"
    with pytest.raises(ValueError, match="exactly one"):
        L.Ranker(None, L.FEATURES)


def _popularity_rows(rng, *, users: int = 120, items: int = 12):
    """Rows whose labels are the top-2 by ``f_cf_z``, with an item evidence in [0, 5] unrelated to
    them (head = evidence > 2.5)."""
    i_cf, i_ev, i_head = (L.FEATURES.index(f) for f in ("f_cf_z", "f_item_evidence", "f_is_head"))
    rows = []
    for u in range(users):
        x = rng.normal(size=(items, len(L.FEATURES)))
        x[:, L.FEATURES.index("f_has_cf")] = x[:, L.FEATURES.index("f_user_history")] = 1.0
        x[:, i_ev] = rng.uniform(0, 5, size=items)
        x[:, i_head] = (x[:, i_ev] > 2.5).astype(float)
        label = np.zeros(items, dtype=int)
        label[np.argsort(-x[:, i_cf])[:2]] = 1
        rows += [(u, i, int(label[i]), *map(float, x[i])) for i in range(items)]
    return rows


def test_pop_penalty_is_the_largest_that_keeps_the_rankers_accuracy(spark):
    # labels follow f_cf_z exactly: every penalty that reorders costs accuracy, and the rule keeps
    # the largest one that costs at most accuracy_tolerance of the unpenalised ranker's NDCG
    exact = _feature_rows(spark, _popularity_rows(np.random.default_rng(8)))
    rk = RankerConfig(
        model="logistic", accuracy_tolerance=0.3, pop_penalty_grid=(0.25, 0.5, 1.0, 10.0), tail_boost=0.0
    )
    ranker, choice = fusion._choose(exact, rk, k=2)
    val = choice["validation"]
    curve = {float(b): got for b, got in val["pop_penalty"].items()}
    assert set(curve) == {0.0, 0.25, 0.5, 1.0, 10.0} and choice["chosen"] == "logistic"
    assert val["ndcg_floor"] == pytest.approx(0.7 * val["ndcg@2"]["logistic"], abs=1e-5)
    assert curve[0.0]["ndcg"] == pytest.approx(val["ndcg@2"]["logistic"], abs=1e-5)
    allowed = [b for b, got in curve.items() if got["ndcg"] >= val["ndcg_floor"]]
    assert ranker.pop_penalty == choice["pop_penalty"] == max(allowed), curve
    assert ranker.pop_penalty > 0 and curve[ranker.pop_penalty]["tail_share"] > curve[0.0]["tail_share"], (
        curve
    )
    assert curve[10.0]["ndcg"] < val["ndcg_floor"]  # too strong a penalty is refused
    strict = dataclasses.replace(rk, accuracy_tolerance=0.0, pop_penalty_grid=(1.0, 2.0))
    assert fusion._choose(exact, strict, k=2)[1]["pop_penalty"] == 0.0
    fixed = dataclasses.replace(rk, pop_penalty=0.3)
    assert fusion._choose(exact, fixed, k=2)[0].pop_penalty == pytest.approx(0.3)


def test_the_accuracy_floor_spends_only_a_lead_over_cf_and_content():
    rk = RankerConfig(accuracy_tolerance=0.02, lead_tolerance=0.1)
    floor = fusion.accuracy_floor
    # no lead over the better baseline: the tolerance alone
    assert floor({"gbt": 0.30, "cf": 0.30, "content": 0.10}, "gbt", rk) == pytest.approx(0.98 * 0.30)
    assert floor({"gbt": 0.28, "cf": 0.30, "content": 0.10}, "cf", rk) == pytest.approx(0.98 * 0.30)
    # a small lead: down to 2% above the better baseline (content here), not further
    assert floor({"gbt": 0.40, "cf": 0.30, "content": 0.37}, "gbt", rk) == pytest.approx(1.02 * 0.37)
    # a large lead: at most lead_tolerance of the ranker's own
    assert floor({"gbt": 0.40, "cf": 0.20, "content": 0.10}, "gbt", rk) == pytest.approx(0.9 * 0.40)
    # the Mult-VAE is a fusion input, not a baseline: its score does not raise the floor
    assert floor({"gbt": 0.40, "cf": 0.20, "vae": 0.39}, "gbt", rk) == pytest.approx(0.9 * 0.40)
    # lead_tolerance at or below the tolerance: the lead is not spent
    same = dataclasses.replace(rk, lead_tolerance=0.02)
    assert floor({"gbt": 0.40, "cf": 0.20}, "gbt", same) == pytest.approx(0.98 * 0.40)
    # no baseline measured: the tolerance alone
    assert floor({"gbt": 0.40}, "gbt", rk) == pytest.approx(0.98 * 0.40)
    # the default leaves the lead unspent (docs/scoring.md: it did not hold on the test splits)
    assert floor({"gbt": 0.40, "cf": 0.20}, "gbt", RankerConfig()) == pytest.approx(0.98 * 0.40)
    with pytest.raises(ConfigError, match="lead_tolerance"):
        RankerConfig(lead_tolerance=1.0)


def test_the_penalty_is_subtracted_from_the_log_odds_and_saved(spark, tmp_path):
    pairs = spark.createDataFrame(
        [(0, 1, 0.5, 2, 0.1, 5, None, None, 0.0, 1.0, 0.0, 0.5, 3, True, 4, 10.0, *NO_CONTEXT),
         (0, 2, 0.2, 3, 0.1, 6, None, None, 0.0, 1.0, 0.0, 0.5, 0, True, 4, None, *NO_CONTEXT),
         (1, 1, 0.5, 2, 0.1, 5, None, None, 0.0, 1.0, 0.0, 0.5, 3, True, 0, 10.0, *NO_CONTEXT)],
        FEATURE_ROW_COLUMNS,
    )  # fmt: skip
    ranker = L.Ranker(None, L.FEATURES, signal="cf", pop_penalty=0.25)
    got = {(r[S.USER_IDX], r[S.ITEM_IDX]): r for r in L.score(pairs, ranker).collect()}
    assert got[0, 1][L.LOGIT] == pytest.approx(0.5 - 0.25 * math.log1p(3))  # popularity 3
    assert got[0, 2][L.LOGIT] == pytest.approx(0.2)  # a cold item keeps its score
    assert got[1, 1][L.LOGIT] == pytest.approx(0.5)  # so does a user without history
    assert got[0, 1][L.PROBABILITY] == pytest.approx(1 / (1 + math.exp(-got[0, 1][L.LOGIT])))
    assert L.load(None, L.FEATURES, signal="cf", pop_penalty=0.25).pop_penalty == 0.25
    with pytest.raises(ValueError, match="pop_penalty"):
        L.Ranker(None, L.FEATURES, signal="cf", pop_penalty=-1.0)


def test_the_tail_boost_lifts_tail_items_the_users_content_profile_prefers(spark, tmp_path):
    # cf z = cf (mean 0, std 1); content z = (content - 0.5) / 0.2. User 0 (4 interactions): item 1
    # is head (z 2: no boost), item 2 tail with z 2 (+0.25 x 2), item 3 cold with z -1 (no boost);
    # user 1 has no history: no boost
    pairs = spark.createDataFrame(
        [(0, 1, 0.5, 1, 0.9, 1, None, None, 0.0, 1.0, 0.5, 0.2, 100, False, 4, 10.0, *NO_CONTEXT),
         (0, 2, 0.2, 3, 0.9, 2, None, None, 0.0, 1.0, 0.5, 0.2, 1, True, 4, 10.0, *NO_CONTEXT),
         (0, 3, 0.3, 2, 0.3, 3, None, None, 0.0, 1.0, 0.5, 0.2, 0, True, 4, None, *NO_CONTEXT),
         (1, 2, 0.2, 1, 0.9, 1, None, None, 0.0, 1.0, 0.5, 0.2, 1, True, 0, 10.0, *NO_CONTEXT)],
        FEATURE_ROW_COLUMNS,
    )  # fmt: skip
    ranker = L.Ranker(None, L.FEATURES, signal="cf", tail_boost=0.25)
    scored = L.score(pairs, ranker)
    got = {(r[S.USER_IDX], r[S.ITEM_IDX]): r[L.LOGIT] for r in scored.collect()}
    assert got == pytest.approx({(0, 1): 0.5, (0, 2): 0.2 + 0.25 * 2.0, (0, 3): 0.3, (1, 2): 0.2})
    plain = {
        (r[S.USER_IDX], r[S.ITEM_IDX]): r[L.LOGIT] for r in L.with_penalty(scored, ranker, 0.0, 0.0).collect()
    }
    assert plain == pytest.approx({(0, 1): 0.5, (0, 2): 0.2, (0, 3): 0.3, (1, 2): 0.2})
    assert L.load(None, L.FEATURES, signal="cf", tail_boost=0.25).tail_boost == 0.25
    with pytest.raises(ValueError, match="tail_boost"):
        L.Ranker(None, L.FEATURES, signal="cf", tail_boost=-1.0)
    with pytest.raises(ConfigError, match="tail_boost"):
        RankerConfig(tail_boost="some")


def test_auto_tail_boost_reaches_the_most_tail_items_within_the_tolerance(spark):
    # labels follow f_cf_z; f_content_z is noise to them, so every boost costs accuracy: the rule
    # takes, of the pairs (penalty, boost) within the tolerance, the one reaching the most tail
    # items, and refuses a boost that costs more
    exact = _feature_rows(spark, _popularity_rows(np.random.default_rng(8)))
    rk = RankerConfig(
        model="logistic",
        accuracy_tolerance=0.3,
        pop_penalty=0.0,
        tail_boost="auto",
        tail_boost_grid=(0.25, 0.5, 10.0),
    )
    ranker, choice = fusion._choose(exact, rk, k=2)
    val = choice["validation"]
    assert val["pairs_tried"] == 4 and list(val["pop_penalty"]) == ["0"]
    boosts = {float(t): got for t, got in val["tail_boost"].items()}
    assert set(boosts) == {0.0, 0.25, 0.5, 10.0}
    assert boosts[10.0]["ndcg"] < val["ndcg_floor"]  # too strong a boost is refused
    allowed = {t: got for t, got in boosts.items() if got["ndcg"] >= val["ndcg_floor"]}
    best = max(
        allowed, key=lambda t: (allowed[t]["tail_items"], allowed[t]["tail_share"], allowed[t]["ndcg"])
    )
    assert ranker.tail_boost == choice["tail_boost"] == best > 0
    assert boosts[best]["tail_share"] > boosts[0.0]["tail_share"]
    both = dataclasses.replace(rk, pop_penalty="auto", pop_penalty_grid=(0.5,))
    ranker, choice = fusion._choose(exact, both, k=2)
    val = choice["validation"]
    assert val["pairs_tried"] == 2 * 4 and set(val["pop_penalty"]) == {"0", "0.5"}
    assert val["tail_boost"][f"{ranker.tail_boost:g}"] == val["pop_penalty"][f"{ranker.pop_penalty:g}"]
    assert val["tail_boost"][f"{ranker.tail_boost:g}"]["ndcg"] >= val["ndcg_floor"]
    fixed = dataclasses.replace(rk, tail_boost=0.3)
    assert fusion._choose(exact, fixed, k=2)[0].tail_boost == pytest.approx(0.3)


def test_a_swept_penalty_replaces_the_rankers_own_for_users_with_history(spark):
    # user 0 (4 interactions): item 1 scores 0.5 with 100 interactions, item 2 0.2 with 1; at the
    # ranker's penalty 0.25: 0.5 - 0.25 ln 101 = -0.654 < 0.2 - 0.25 ln 2 = 0.027, item 2 first; at 0:
    # item 1. User 1 has no history: no penalty, item 1 first at any value
    pairs = spark.createDataFrame(
        [(0, 1, 0.5, 1, 0.1, 2, None, None, 0.0, 1.0, 0.0, 0.5, 100, False, 4, 10.0, *NO_CONTEXT),
         (0, 2, 0.2, 2, 0.1, 1, None, None, 0.0, 1.0, 0.0, 0.5, 1, True, 4, 10.0, *NO_CONTEXT),
         (1, 1, 0.5, 1, 0.1, 2, None, None, 0.0, 1.0, 0.0, 0.5, 100, False, 0, 10.0, *NO_CONTEXT),
         (1, 2, 0.2, 2, 0.1, 1, None, None, 0.0, 1.0, 0.0, 0.5, 1, True, 0, 10.0, *NO_CONTEXT)],
        FEATURE_ROW_COLUMNS,
    )  # fmt: skip
    ids = spark.createDataFrame([("u0", 0), ("u1", 1)], "user_id string, user_idx int")
    items = spark.createDataFrame([("i1", 1), ("i2", 2)], "item_id string, item_idx int")
    ranker = L.Ranker(None, L.FEATURES, signal="cf", pop_penalty=0.25)
    cands = R.Candidates(pairs=pairs, users=ids, items=items, stats=items, ranker=ranker)
    learned = toy_config(fusion="learned", candidates=2)
    assert _lists(R.rank_variant(cands, "fused", learned)) == {0: [2], 1: [1]}
    assert _lists(R.rank_variant(cands, "fused", learned, pop_penalty=0.25)) == {0: [2], 1: [1]}
    assert _lists(R.rank_variant(cands, "fused", learned, pop_penalty=0.0)) == {0: [1], 1: [1]}
    assert _lists(R.rank_variant(cands, "fused_rerank", learned, pop_penalty=0.0)) == {0: [1], 1: [1]}
    with pytest.raises(ValueError, match="learned fusion only"):
        R.rank_variant(cands, "fused", toy_config(candidates=2), pop_penalty=0.0)


def _both_signal_rows(spark):
    """10 candidates per user, the 2 with the highest ``f_cf_z + f_content_z`` positive."""
    rng = np.random.default_rng(6)
    i_cf, i_ct = L.FEATURES.index("f_cf_z"), L.FEATURES.index("f_content_z")
    rows = []
    for u in range(200):
        x = rng.normal(size=(10, len(L.FEATURES)))
        x[:, L.FEATURES.index("f_has_cf")] = x[:, L.FEATURES.index("f_has_content")] = 1.0
        label = np.zeros(10, dtype=int)
        label[np.argsort(-(x[:, i_cf] + x[:, i_ct]))[:2]] = 1
        rows += [(u, i, int(label[i]), *map(float, x[i])) for i in range(10)]
    return _feature_rows(spark, rows)


def test_auto_keeps_a_fitted_model_when_it_beats_both_signals(spark):
    # labels need both signals (positive where f_cf_z + f_content_z is highest): a fitted model
    # ranks held-out users better than either signal alone
    ranker, choice = fusion._choose(_both_signal_rows(spark), RankerConfig(trees=10, depth=3), k=2)
    scores = choice["validation"]["ndcg@2"]
    assert choice["chosen"] in ("gbt", "logistic") and ranker.pipeline is not None, scores
    assert scores[choice["chosen"]] > max(scores["cf"], scores["content"]) + 0.1


def test_k_fold_choice_validates_every_user_on_fits_that_never_saw_them(spark, monkeypatch):
    # the rows of the test above; with folds: 3 each fold's users are ranked by models fitted on the
    # other two folds, the choice counts all 200 users, and the shipped model is fitted on all
    df = _both_signal_rows(spark)
    rk = RankerConfig(trees=10, depth=3, folds=3)
    fold_of = {
        r[0]: r[1] for r in df.select(S.USER_IDX, fusion.user_fold(rk).alias("f")).distinct().collect()
    }
    assert set(fold_of.values()) == {0, 1, 2}
    fits, fit_pipeline = [], L.fit_pipeline

    def spy(train, cfg, **kw):
        fits.append((kw["kind"], {r[0] for r in train.select(S.USER_IDX).distinct().collect()}))
        return fit_pipeline(train, cfg, **kw)

    monkeypatch.setattr(L, "fit_pipeline", spy)
    ranker, choice = fusion._choose(df, rk, k=2)
    val = choice["validation"]
    assert val["users"] == 200 and val["folds"] == 3
    *per_fold, last = fits
    assert [kind for kind, _ in per_fold] == ["gbt", "logistic"] * 3
    left_out = [
        [f for f in range(3) if users == {u for u, g in fold_of.items() if g != f}] for _, users in per_fold
    ]
    assert left_out == [[0], [0], [1], [1], [2], [2]], left_out
    assert last == (choice["chosen"], set(range(200))) and ranker.pipeline is not None
    scores = val["ndcg@2"]
    assert scores[choice["chosen"]] > max(scores["cf"], scores["content"]) + 0.1, scores
    with pytest.raises(ConfigError, match="folds"):
        RankerConfig(folds=0)


@pytest.fixture(scope="module")
def lake_cfg(spark, tmp_path_factory, model_dir):
    root = str(tmp_path_factory.mktemp("ranker") / "lake")
    lake, mid = synthetic.build_lake(spark, root, model_dir)
    cfg = synthetic.config(
        root, model_dir, "recommend.ranker.model=gbt", "recommend.ranker.trees=5", "recommend.ranker.depth=3"
    )
    return lake, mid, cfg


def test_beyond_max_users_only_a_seeded_sample_is_labelled_and_the_rest_trains_the_features(spark):
    """A log of more users than ``max_users``: about that many users give labels (their latest
    interactions, as without a cap), every interaction of the others stays in the inner training
    part, and nothing is lost or doubled; up to the cap the split is the plain per-user one."""
    t0 = dt.datetime(2024, 1, 1)
    rows = [
        (f"u{u}", f"i{(u + j) % 50}", t0 + dt.timedelta(hours=u + 24 * j), 1.0)
        for u in range(400)
        for j in range(5)
    ]
    inter = spark.createDataFrame(
        rows, f"{S.USER_ID} string, {S.ITEM_ID} string, {S.TS} timestamp, {S.WEIGHT} double"
    )
    key = [S.USER_ID, S.ITEM_ID, S.TS]

    def split(**kw):
        train, test = fusion.inner_split(inter, RankerConfig(**kw))
        return {tuple(r) for r in train.select(*key).collect()}, {
            tuple(r) for r in test.select(*key).collect()
        }

    everything = {tuple(r) for r in inter.select(*key).collect()}
    train, test = split(max_users=100)
    assert not train & test and train | test == everything
    labelled = {u for u, _, _ in test}
    assert 60 <= len(labelled) <= 140  # a hash sample of about 100 of 400
    latest = {u: max(ts for v, _, ts in everything if v == u) for u in labelled}
    assert test == {r for r in everything if r[0] in labelled and r[2] == latest[r[0]]}  # 5 x 0.2 = 1 each
    assert {u for u, _, _ in train} == {f"u{u}" for u in range(400)}  # the others keep all theirs
    assert split(max_users=100) == (train, test)  # seeded
    assert {u for u, _, _ in split(max_users=100, seed=7)[1]} != labelled
    plain = holdout.time_split(inter, test_fraction=0.2, cutoff=None)[1]
    assert split(max_users=400)[1] == {tuple(r) for r in plain.select(*key).collect()}


def test_no_inner_test_interaction_reaches_the_features(spark, lake_cfg, monkeypatch):
    lake, mid, cfg = lake_cfg
    seen_by_fit = []
    real_fit = fusion.cf.fit

    def spy(spark_, cfg_, interactions, *args, **kwargs):
        seen_by_fit.append(interactions)
        return real_fit(spark_, cfg_, interactions, *args, **kwargs)

    monkeypatch.setattr(fusion.cf, "fit", spy)
    # three users' latest interaction on an item nobody else has (a18, b18: never in the log), so
    # some labels fall on items the inner training part never saw
    base = lake.read(S.INTERACTIONS)
    late = synthetic.T0 + dt.timedelta(days=365)
    extra = [(u, i, late, 1.0) for u, i in (("u00", "a18"), ("u02", "a18"), ("u01", "b18"))]
    inter = base.unionByName(spark.createDataFrame(extra, S.INTERACTIONS_SCHEMA))
    items = lake.read(S.ITEMS)
    rows, info = fusion.labelled_candidates(
        spark, cfg, inter, items, current_embeddings(lake, mid, items=items), model_id=mid
    )
    try:
        key = [S.USER_ID, S.ITEM_ID, S.TS]
        inner_test = {tuple(r) for r in info["inner_test"].select(*key).collect()}
        assert len(seen_by_fit) == 1  # one ALS + head for the features, on the inner training part
        fitted_on = {tuple(r) for r in seen_by_fit[0].select(*key).collect()}
        assert inner_test and not inner_test & fitted_on
        assert inner_test | fitted_on == {tuple(r) for r in inter.select(*key).collect()}
        # 8 or 9 interactions per user, label_fraction 0.2: the latest 2 of each user are labels
        assert len(inner_test) == 30 * 2
        # the features' item evidence counts the inner training part only
        counts: dict[str, int] = {}
        for _, item, _ in fitted_on:
            counts[item] = counts.get(item, 0) + 1
        evidence = rows.select(S.ITEM_IDX, "f_item_evidence").distinct().collect()
        allowed = {round(math.log1p(c), 6) for c in counts.values()} | {0.0}
        assert {round(r["f_item_evidence"], 6) for r in evidence} <= allowed
        # and the user's history length and recency too (the end of history is the training part's)
        per_user: dict[str, list] = {}
        for user, _, ts in fitted_on:
            per_user.setdefault(user, []).append(ts)
        end = max(ts for _, _, ts in fitted_on)
        lengths = {round(math.log1p(len(t)), 6) for t in per_user.values()} | {0.0}
        recency = {round(math.log1p((end - max(t)).total_seconds() / 86400), 6) for t in per_user.values()}
        got = rows.select("f_user_history", "f_user_recency").distinct().collect()
        assert {round(r["f_user_history"], 6) for r in got} <= lengths
        assert {round(r["f_user_recency"], 6) for r in got} <= recency | {0.0}
        # every label is an inner-test pair; the sample keeps all positives among the candidates
        assert info["positives"] >= 1 and info["rows"] > info["positives"]
        assert rows.where(F.col(L.LABEL) == 1).count() == info["positives"]
        # the split's diagnostics: every user here has 6 or 7 inner-training interactions; the
        # labels on items the inner training part never saw are those whose item evidence is 0
        assert info["users_with_history"] == info["users"] == 30
        no_history = {i for _, i, _ in inner_test} - set(counts)
        assert {"a18", "b18"} <= no_history
        cold_rows = rows.where((F.col(L.LABEL) == 1) & (F.col("f_item_evidence") == 0)).count()
        assert info["positives_on_items_without_history"] == cold_rows <= 3
        assert info["held_out_interactions"] == len(inner_test)
        cold_labels = sum(1 for _, i, _ in inner_test if i in no_history)
        assert info["held_out_on_items_without_history"] == cold_labels >= 3
    finally:
        rows.unpersist()
        info["inner_train"].unpersist()
        info["inner_test"].unpersist()


def test_train_saves_the_ranker_in_the_lake_and_recommend_uses_it(spark, lake_cfg):
    lake, mid, cfg = lake_cfg
    summary = train.run(spark, cfg, lake=lake, run_id="t-rank")
    path = summary["ranker"]["path"]
    assert path.endswith("models/ranker/t-rank") and summary["ranker"]["features"] == list(L.FEATURES)
    model = load_model(lake, model_id=mid)
    assert model.ranker is not None and model.ranker.path == path
    assert model.ranker.features == L.FEATURES
    # the loaded pipeline scores exactly like a fresh load of the same files with the penalty and
    # boost train recorded (both chosen by the inner validation; each may be 0 or not)
    rows = [(0, 1, 0.5, 2, 0.1, 5, None, None, 0.0, 1.0, 0.0, 0.5, 3, True, 4, 10.0, *NO_CONTEXT)]
    pairs = spark.createDataFrame(rows, FEATURE_ROW_COLUMNS)
    recorded, boost = summary["ranker"]["pop_penalty"], summary["ranker"]["tail_boost"]
    assert model.ranker.pop_penalty == pytest.approx(recorded)
    assert model.ranker.tail_boost == pytest.approx(boost)
    p1 = L.score(pairs, model.ranker).first()[L.PROBABILITY]
    p2 = L.score(pairs, L.load(path, L.FEATURES, pop_penalty=recorded, tail_boost=boost)).first()[
        L.PROBABILITY
    ]
    assert 0 < p1 < 1 and p1 == pytest.approx(p2, abs=1e-12)
    out = recommend.run(spark, cfg, lake=lake, run_id="r-rank")
    assert out["users"] == 30 and out["rows"] == 30 * cfg.recommend.k
    model.unpersist()


def test_learned_lists_reach_cold_users_and_items_without_vectors(spark, lake_cfg):
    lake, mid, cfg = lake_cfg
    if not lake.exists(S.PROJECTION_HEAD):
        train.run(spark, cfg, lake=lake, run_id="t-rank")
    model = load_model(lake, model_id=mid)
    assert model.ranker is not None
    users = spark.createDataFrame([("u00",), ("u01",), ("newcomer",)], "user_id string")
    # a05 loses its text vector: it has ALS factors but no content score
    embeddings = lake.read(S.ITEM_EMBEDDINGS).where(F.col(S.ITEM_ID) != "a05")
    rec_cfg = dataclasses.replace(cfg.recommend, k=12, candidates=20, min_cold_share=0.1)
    lists, cands = R.recommend(
        spark,
        rec_cfg,
        model=model,
        interactions=lake.read(S.INTERACTIONS),
        embeddings=embeddings,
        variants=["fused", "fused_rerank"],
        users=users,
        catalogue=lake.read(S.ITEMS),
    )
    try:
        for variant, df in lists.items():
            rows = df.collect()
            per_user: dict[str, list] = {}
            for r in rows:
                per_user.setdefault(r[S.USER_ID], []).append(r)
            assert {u: len(v) for u, v in per_user.items()} == {"u00": 12, "u01": 12, "newcomer": 12}, variant
            assert all(r[S.SCORE] is not None for r in rows), variant
        learned = cands.learned().join(cands.items, S.ITEM_IDX)
        no_vector = learned.where(F.col(S.ITEM_ID) == "a05").collect()
        assert no_vector and all(r[R.CONTENT] is None and 0 < r[L.PROBABILITY] < 1 for r in no_vector)
        cold = learned.where(F.col(S.ITEM_ID).isin(*synthetic.COLD)).collect()
        assert cold and all(0 < r[L.PROBABILITY] < 1 for r in cold)
        # the cold-item reservation works on the learned score: each user's rerank list holds one
        rerank_rows = lists["fused_rerank"].where(F.col(S.POPULARITY) == 0).collect()
        assert {r[S.USER_ID] for r in rerank_rows} >= {"u00", "u01"}
    finally:
        cands.unpersist()
        model.unpersist()


def test_blend_keeps_the_hand_computed_lists_and_learned_needs_a_ranker(spark):
    # the hand-computed case of test_recommend: the tail item wins for the user whose content
    # evidence exceeds 1.089109 (user 1 with 1.2), not for user 0 (1.0)
    cands = _candidates(spark, _toy(1.0, 1.2))
    blend = toy_config()
    assert _lists(R.rank_variant(cands, "fused", blend)) == {0: [0], 1: [1]}
    assert _lists(R.rank_variant(cands, "fused_rerank", blend)) == {0: [0], 1: [1]}
    learned = dataclasses.replace(blend, fusion="learned")
    assert _lists(R.rank_variant(cands, "cf", learned)) == {0: [0], 1: [0]}  # single signals unaffected
    with pytest.raises(MissingInputError, match=r"recommend\.fusion"):
        R.rank_variant(cands, "fused", learned)
