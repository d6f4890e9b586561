"""`recommend`: fusion on hand-computable cases, re-ranking, and the stage's contract."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import numpy as np
import pytest
import synthetic
from deltalake import DeltaTable
from helpers import make_tiny_bert
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core import schema as S
from longtail.core.config import RecommendConfig
from longtail.ml import ranker as L
from longtail.ml import scoring as R
from longtail.ml.model import load_model
from longtail.stages import recommend, train

pytestmark = pytest.mark.spark

PAIR_COLUMNS = (
    "user_idx int, item_idx int, cf double, cf_rank int, content double, content_rank int, "
    "pop double, pop_rank int, cf_mean double, cf_std double, content_mean double, "
    "content_std double, popularity long, is_long_tail boolean"
)


def _candidates(spark, rows) -> R.Candidates:
    """Candidates from hand-made pair rows (users and items as (id, idx) maps)."""
    pairs = spark.createDataFrame(rows, PAIR_COLUMNS)
    users = spark.createDataFrame(
        [(f"u{u}", u) for u in {r[0] for r in rows}], "user_id string, user_idx int"
    )
    items = spark.createDataFrame(
        [(f"i{i}", i) for i in {r[1] for r in rows}], "item_id string, item_idx int"
    )
    return R.Candidates(pairs=pairs, users=users, items=items, stats=items)


def _lists(ranked) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for r in ranked.orderBy(S.USER_IDX, S.RANK).collect():
        out.setdefault(r[S.USER_IDX], []).append(r[S.ITEM_IDX])
    return out


def _toy(tail_content_u0: float, tail_content_u1: float):
    """Three items, two users; z-scores equal the raw scores (mean 0, std 1).

    Item 0 is the head item (1000 interactions), item 1 a tail item (1 interaction), item 2 a
    middling item (10) that no signal likes. With fusion_k = 10:
      w_0 = 1000 / 1010 = 0.990099,  w_1 = 1 / 11 = 0.090909,  w_2 = 10 / 20 = 0.5
      fused_0 = 0.990099 * 1.0 + 0.009901 * 0.0 = 0.990099        (cf 1.0, content 0.0)
      fused_1 = 0.090909 * 0.0 + 0.909091 * c                      (cf 0.0, content c)
      fused_2 = 0.5 * (-1) + 0.5 * (-1) = -1
    so the tail item wins exactly when 0.909091 * c > 0.990099, i.e. c > 1.089109.
    """
    rows = []
    for u, c in ((0, tail_content_u0), (1, tail_content_u1)):
        rows += [
            (u, 0, 1.0, 1, 0.0, 2, 1000.0, 1, 0.0, 1.0, 0.0, 1.0, 1000, False),
            (u, 1, 0.0, 2, c, 1, 1.0, 3, 0.0, 1.0, 0.0, 1.0, 1, True),
            (u, 2, -1.0, 3, -1.0, 3, 10.0, 2, 0.0, 1.0, 0.0, 1.0, 10, True),
        ]
    return rows


def toy_config(**overrides) -> RecommendConfig:
    """The hand-computed cases' config: the blend at fusion_k 10, no exposure rounds, no reserved
    places and no cap on them (each test adds what it checks)."""
    base = {"k": 1, "candidates": 3, "fusion_k": 10.0, "rerank_rounds": 0, "fusion": "blend"}
    none_reserved = {"min_tail_share": 0.0, "min_cold_share": 0.0, "reserve_cap": 0.0}
    return RecommendConfig(**{**base, **none_reserved, **overrides})


def test_fusion_lets_the_tail_item_win_exactly_when_its_content_evidence_outweighs(spark):
    cfg = toy_config()
    # user 0: c = 1.10 -> 0.909091 * 1.10 = 1.000 > 0.990099: the tail item wins
    # user 1: c = 1.08 -> 0.909091 * 1.08 = 0.982 < 0.990099: the head item wins
    cands = _candidates(spark, _toy(1.10, 1.08))
    fused = R.rank_variant(cands, "fused", cfg)
    assert _lists(fused) == {0: [1], 1: [0]}
    scores = {r[S.USER_IDX]: r[S.SCORE] for r in fused.collect()}
    assert scores[0] == pytest.approx(1.10 / 1.1, rel=1e-9)  # (10/11) * 1.10
    assert scores[1] == pytest.approx(1000 / 1010, rel=1e-9)
    # CF alone always picks the head item, content alone the tail item; popular the head item
    assert _lists(R.rank_variant(cands, "cf", cfg)) == {0: [0], 1: [0]}
    assert _lists(R.rank_variant(cands, "content", cfg)) == {0: [1], 1: [1]}
    assert _lists(R.rank_variant(cands, "popular", cfg)) == {0: [0], 1: [0]}
    # a larger fusion_k trusts CF less: at k = 100, w_0 = 1000/1100 = 0.909, fused_1(u1) = 0.9901 * 1.08 = 1.069
    assert _lists(R.rank_variant(cands, "fused", cfg, fusion_k=100.0)) == {0: [1], 1: [1]}


def test_zscores_put_signals_of_different_scales_on_one_footing(spark):
    # user 0's CF scores are 100x larger than its content scores; after z-scoring the two signals
    # weigh the same: item 1 (z_cf = -1, z_content = +2) beats item 0 (z_cf = +1, z_content = -1)
    # at w = 0.5 for both items: 0.5 * (-1 + 2) = 0.5 > 0.5 * (1 - 1) = 0
    rows = [
        (0, 0, 300.0, 1, 0.0, 2, 5.0, 1, 200.0, 100.0, 1.0, 1.0, 10, False),
        (0, 1, 100.0, 2, 3.0, 1, 5.0, 2, 200.0, 100.0, 1.0, 1.0, 10, True),
    ]
    cfg = toy_config(candidates=2)  # (fused only: no re-ranking)
    assert _lists(R.rank_variant(_candidates(spark, rows), "fused", cfg)) == {0: [1]}


def test_popularity_penalty_and_tail_reservation(spark):
    cands = _candidates(spark, _toy(1.0, 1.0))  # the head item wins both users without help
    base = toy_config()
    assert _lists(R.rank_variant(cands, "fused", base)) == {0: [0], 1: [0]}
    # penalty 0.1: fused_0 = 0.990099 - 0.1 * log(1001) = 0.299; fused_1 = 0.909091 - 0.1 * log(2) = 0.840
    penalised = dataclasses.replace(base, popularity_penalty=0.1)
    assert _lists(R.rank_variant(cands, "fused", penalised)) == {0: [1], 1: [1]}
    # min_tail_share 0.5 of k = 2 reserves one place for the best tail item (item 1, then item 2)
    reserve = dataclasses.replace(base, k=2, min_tail_share=0.5)
    assert _lists(R.rank_variant(cands, "fused_rerank", reserve)) == {0: [0, 1], 1: [0, 1]}
    reserve_all = dataclasses.replace(base, k=2, min_tail_share=1.0)
    assert _lists(R.rank_variant(cands, "fused_rerank", reserve_all)) == {0: [1, 2], 1: [1, 2]}


def test_cold_slots_reserve_places_for_items_without_interactions(spark):
    # the toy's items plus item 3, cold (popularity 0: w_3 = 0, so fused_3 = its content, 0.2)
    # fused: item 0 0.990099, item 1 0.909091 * 1.0, item 3 0.2, item 2 -1
    cold = [(u, 3, 0.0, 4, 0.2, 3, 0.0, 4, 0.0, 1.0, 0.0, 1.0, 0, True) for u in (0, 1)]
    cands = _candidates(spark, _toy(1.0, 1.0) + cold)
    base = toy_config(k=2, candidates=4)
    assert _lists(R.rank_variant(cands, "fused_rerank", base)) == {0: [0, 1], 1: [0, 1]}
    # one cold place (ceil(0.5 * 2) = 1): item 3 takes the place of the lowest unreserved item (1)
    one_cold = dataclasses.replace(base, min_cold_share=0.5)
    assert _lists(R.rank_variant(cands, "fused_rerank", one_cold)) == {0: [0, 3], 1: [0, 3]}
    # a tail place and a cold place: the best tail item (1) and the best cold item (3), by score
    both = dataclasses.replace(base, min_cold_share=0.5, min_tail_share=0.5)
    assert _lists(R.rank_variant(cands, "fused_rerank", both)) == {0: [1, 3], 1: [1, 3]}
    with pytest.raises(ValueError, match=r"recommend\.min_cold_share"):
        RecommendConfig(min_tail_share=0.6, min_cold_share=0.6)


def test_reserve_cap_spreads_reserved_places_over_the_tail_and_never_leaves_one_empty(spark):
    # Users 0-3 all rank tail item 1 first; item 0 (head) tops every list. One reserved tail place
    # of k = 2. Tail scores (user: item -> score); the item's place among the user's tail items:
    #   u0: 1 5.0, 2 4.0, 3 3.0, 4 2.0   places 1, 2, 3, 4
    #   u1: 1 4.9, 2 4.5, 3 1.0, 4 0.5   places 1, 2, 3, 4
    #   u2: 1 4.8, 2 1.0, 3 4.6, 4 0.2   places 1, 3, 2, 4
    #   u3: 1 4.7, 2 0.1, 3 0.2, 4 0.3   places 1, 4, 3, 2
    #   u4: 1 4.0 (its only tail candidate)
    # 5 users x 1 place / 4 items: fair share 1.25; cap 0.5 -> ceil(0.625) = 1 user per item: item 1
    # goes to u0 (place 1 for all, highest score), item 2 to u1 (place 2 for u0 and u1, u1's score
    # higher), item 3 to u2 (its place 2), item 4 to u3 (its place 2). u4 has no offer and keeps its
    # best tail item (1): the cap is soft, no reserved place is left empty.
    tail = {
        0: (5.0, 4.0, 3.0, 2.0),
        1: (4.9, 4.5, 1.0, 0.5),
        2: (4.8, 1.0, 4.6, 0.2),
        3: (4.7, 0.1, 0.2, 0.3),
    }
    rows = [(u, 0, 10.0, False, 1) for u in range(5)]
    rows += [(u, i + 1, s, True, i + 2) for u, scores in tail.items() for i, s in enumerate(scores)]
    rows += [(4, 1, 4.0, True, 2)]
    pool = spark.createDataFrame(
        rows, f"{S.USER_IDX} int, {S.ITEM_IDX} int, _score double, {S.IS_LONG_TAIL} boolean, {R.POP}_rank int"
    )
    quotas = [(F.col(S.IS_LONG_TAIL), 0.5)]
    uncapped = {u: [0, 1] for u in range(5)}
    assert _lists(R.reserve(pool, "_score", k=2, quotas=quotas)) == uncapped
    spread = {0: [0, 1], 1: [0, 2], 2: [0, 3], 3: [0, 4], 4: [0, 1]}
    assert _lists(R.reserve(pool, "_score", k=2, quotas=quotas, cap=0.5)) == spread
    # cap 1 -> ceil(1.25) = 2 users per item: item 1 to u0 and u1, item 3 to u2 and u0, item 4 to
    # u3 and u0, item 2 to u1 and u0; each takes its best offered item: u0 1, u1 1, u2 3, u3 4
    assert _lists(R.reserve(pool, "_score", k=2, quotas=quotas, cap=1.0)) == {
        0: [0, 1],
        1: [0, 1],
        2: [0, 3],
        3: [0, 4],
        4: [0, 1],
    }
    # a cap above every item's users is no cap
    assert _lists(R.reserve(pool, "_score", k=2, quotas=quotas, cap=100.0)) == uncapped
    # recommend.reserve_cap reaches fused_rerank (blend). The toy, but u1 likes tail item 2 a bit
    # more (content -0.5: fused 0.5 * -1 + 0.5 * -0.5 = -0.75 against u0's -1). Item 1 is both
    # users' first tail item at the same score (0.909091): offered to u0 (lower index); item 2
    # to u1. 2 users x 1 place / 2 items: cap 0.5 -> one user per item.
    rows = [r for r in _toy(1.0, 1.0) if (r[0], r[1]) != (1, 2)]
    rows.append((1, 2, -1.0, 3, -0.5, 3, 10.0, 2, 0.0, 1.0, 0.0, 1.0, 10, True))
    cands = _candidates(spark, rows)
    one_tail_place = toy_config(k=2, candidates=3, min_tail_share=0.5)
    assert _lists(R.rank_variant(cands, "fused_rerank", one_tail_place)) == {0: [0, 1], 1: [0, 1]}
    capped = dataclasses.replace(one_tail_place, reserve_cap=0.5)
    assert _lists(R.rank_variant(cands, "fused_rerank", capped)) == {0: [0, 1], 1: [0, 2]}
    with pytest.raises(ValueError, match=r"recommend\.reserve_cap"):
        RecommendConfig(reserve_cap=-1.0)


def test_rerank_spreads_exposure_and_is_fused_at_strength_zero(spark):
    # three users share the same taste: items 0 and 1 score 1.0 and 0.9 for everyone, item 2 0.8
    rows = []
    for u in range(3):
        for i, s in enumerate((1.0, 0.9, 0.8)):
            rows.append((u, i, s, i + 1, s, i + 1, 1.0, i + 1, 0.0, 1.0, 0.0, 1.0, 5, i > 0))
    cands = _candidates(spark, rows)
    cfg = toy_config(rerank_rounds=1, rerank_strength=0.0)
    assert _lists(R.rank_variant(cands, "fused_rerank", cfg)) == _lists(R.rank_variant(cands, "fused", cfg))
    # one round at strength 0.2: item 0 was shown 3 times: 1.0 - 0.2 * log(4) = 0.723 < 0.9 and 0.8
    strong = dataclasses.replace(cfg, rerank_strength=0.2)
    assert _lists(R.rank_variant(cands, "fused_rerank", strong)) == {0: [1], 1: [1], 2: [1]}


def test_users_short_of_candidates_are_filled_from_the_popular_list(spark):
    # user 0 has a CF score for item 0 only; the cf list of k = 3 is filled by popularity rank
    rows = [
        (0, 0, 0.5, 1, None, None, 1.0, 3, 0.0, 1.0, None, None, 1, True),
        (0, 1, None, None, None, None, 9.0, 1, 0.0, 1.0, None, None, 9, False),
        (0, 2, None, None, None, None, 5.0, 2, 0.0, 1.0, None, None, 5, True),
    ]
    cfg = RecommendConfig(k=3, candidates=3)
    assert _lists(R.rank_variant(_candidates(spark, rows), "cf", cfg)) == {0: [0, 1, 2]}
    assert _lists(R.rank_variant(_candidates(spark, rows), "content", cfg)) == {0: [1, 2, 0]}


# --- the stage on the synthetic lake -------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory, model_dir):
    root = str(tmp_path_factory.mktemp("rec") / "lake")
    lake, mid = synthetic.build_lake(spark, root, model_dir)
    cfg = synthetic.config(root, model_dir)
    train.run(spark, cfg, lake=lake, run_id="t1")
    return lake, mid, cfg


def test_centred_vectors_are_unit_rows_minus_the_mean_and_nulls_stay_null(spark):
    # (3, 4) - (1, 0) = (2, 4) -> (0.4472, 0.8944); (1, 0) - (1, 0) = 0 stays the zero vector
    df = spark.createDataFrame(
        [("a", [3.0, 4.0]), ("b", [1.0, 0.0]), ("c", None)], "item_id string, embedding array<float>"
    )
    got = {r["item_id"]: r[R.CONTENT_VEC] for r in R.centred(df, np.array([1.0, 0.0])).collect()}
    assert got["a"] == pytest.approx([2 / np.sqrt(20), 4 / np.sqrt(20)], abs=1e-6)
    assert got["b"] == [0.0, 0.0]
    assert got["c"] is None
    plain = {r["item_id"]: r[R.CONTENT_VEC] for r in R.centred(df, None).collect()}
    assert plain["a"] == pytest.approx([0.6, 0.8], abs=1e-6)


def test_content_profiles_weighted_or_uniform(spark):
    # weights 1 and 3 on (1, 0) and (0, 1): weighted mean (0.25, 0.75) -> (0.3162, 0.9487);
    # uniform (0.5, 0.5) -> (0.7071, 0.7071); no decay
    inter = spark.createDataFrame(
        [("u", "a", dt.datetime(2024, 1, 1), 1.0), ("u", "b", dt.datetime(2024, 6, 1), 3.0)],
        "user_id string, item_id string, ts timestamp, weight double",
    )
    vecs = spark.createDataFrame(
        [("a", [1.0, 0.0]), ("b", [0.0, 1.0])], f"item_id string, {R.CONTENT_VEC} array<float>"
    )
    weighted = R.content_profiles(inter, vecs, half_life_days=None).first()[R.CONTENT_VEC]
    assert weighted == pytest.approx([1 / np.sqrt(10), 3 / np.sqrt(10)], abs=1e-6)
    uniform = R.content_profiles(inter, vecs, half_life_days=None, weighted=False).first()
    assert uniform[R.CONTENT_VEC] == pytest.approx([np.sqrt(0.5), np.sqrt(0.5)], abs=1e-6)
    # the strength is the mean's norm before normalising: |(0.25, 0.75)| and |(0.5, 0.5)|
    strength = R.content_profiles(inter, vecs, half_life_days=None).first()[L.PROFILE_STRENGTH]
    assert strength == pytest.approx(np.sqrt(0.625), abs=1e-6)
    assert uniform[L.PROFILE_STRENGTH] == pytest.approx(np.sqrt(0.5), abs=1e-6)


def test_user_and_item_context_and_category_overlap_by_hand(spark):
    # u1 interacted with a (X|Y, day 0), b (X, day 2) and c (no category, day 3); u3 with b on day
    # 5, the end of the history; u2 has no history. a is a head item, b and c tail items.
    day = lambda d: dt.datetime(2024, 1, 1) + dt.timedelta(days=d)  # noqa: E731
    inter = spark.createDataFrame(
        [
            ("u1", "a", day(0), 1.0),
            ("u1", "b", day(2), 1.0),
            ("u1", "c", day(3), 1.0),
            ("u3", "b", day(5), 1.0),
        ],
        "user_id string, item_id string, ts timestamp, weight double",
    )
    history = inter.where(F.col(S.USER_ID).isin("u1", "u2"))
    users = spark.createDataFrame([("u1", 0), ("u2", 1)], "user_id string, user_idx int")
    catalogue = spark.createDataFrame(
        [("a", "X|Y"), ("b", "X"), ("c", None), ("d", " Y | Z"), ("e", "X"), ("f", "")],
        "item_id string, category string",
    )
    items = spark.createDataFrame([(i, n) for n, i in enumerate("abcdef")], "item_id string, item_idx int")
    stats = spark.createDataFrame(
        [("a", False), ("b", True), ("c", True)], f"item_id string, {S.IS_LONG_TAIL} boolean"
    )
    profiles = spark.createDataFrame([("u1", 0.8)], f"user_id string, {L.PROFILE_STRENGTH} double")

    ctx = {
        r[S.USER_IDX]: r.asDict() for r in R.user_context(history, inter, users, stats, profiles).collect()
    }
    assert set(ctx) == {0}  # u2 has no history: absent, its features read 0
    assert ctx[0][L.USER_HISTORY] == 3 and ctx[0][L.USER_RECENCY_DAYS] == pytest.approx(2.0)
    assert ctx[0][L.USER_TAIL_SHARE] == pytest.approx(2 / 3) and ctx[0][L.PROFILE_STRENGTH] == 0.8

    ages = {
        r[S.ITEM_IDX]: (r[L.ITEM_AGE_DAYS], r[L.ITEM_FIRST_DAYS]) for r in R.item_age(inter, items).collect()
    }
    assert ages == {0: (5.0, 5.0), 1: (0.0, 3.0), 2: (2.0, 2.0)}  # d, e, f: never interacted, absent

    labels = R.category_labels(catalogue)
    assert sorted(map(tuple, labels.collect())) == [
        ("a", "X"),
        ("a", "Y"),
        ("b", "X"),
        ("d", "Y"),
        ("d", "Z"),
        ("e", "X"),
    ]
    # u1's shares: X 2/3 (a, b), Y 1/3 (a); c has no label but counts in the history (user_history
    # 3, as user_context gives it; u2 has none)
    pairs = spark.createDataFrame(
        [(0, 3, 3), (0, 4, 3), (0, 5, 3), (1, 4, None)], "user_idx int, item_idx int, user_history long"
    )
    got = {
        (r[S.USER_IDX], r[S.ITEM_IDX]): r[L.CATEGORY_OVERLAP]
        for r in R.with_category_overlap(pairs, history, labels, users, items).collect()
    }
    assert got == pytest.approx({(0, 3): (1 / 3 + 0) / 2, (0, 4): 2 / 3, (0, 5): None, (1, 4): None})
    without = R.with_category_overlap(pairs, history, None, users, items)
    assert without.where(F.col(L.CATEGORY_OVERLAP).isNotNull()).count() == 0


def test_recommend_stage_writes_exactly_k_unseen_distinct_items_per_user(spark, trained):
    lake, _, cfg = trained
    summary = recommend.run(spark, cfg, lake=lake, run_id="r1")
    recs = lake.read(S.RECOMMENDATIONS)
    # Spark reads Parquet as nullable; the Delta log keeps the contract's NOT NULL columns
    assert [(f.name, f.dataType) for f in recs.schema] == [
        (f.name, f.dataType) for f in S.RECOMMENDATIONS_SCHEMA
    ]
    delta_fields = DeltaTable(lake.path(S.RECOMMENDATIONS)).schema().fields
    assert [(f.name, f.nullable) for f in delta_fields] == [
        (f.name, f.nullable) for f in S.RECOMMENDATIONS_SCHEMA
    ]
    rows = recs.collect()
    k = cfg.recommend.k
    assert summary["users"] == 30 and summary["rows"] == 30 * k == len(rows)
    by_user: dict[str, list] = {}
    for r in rows:
        by_user.setdefault(r[S.USER_ID], []).append(r)
    seen = {(u, i) for u, i, _, _ in synthetic.interactions()}
    for user, recs_u in by_user.items():
        assert sorted(r[S.RANK] for r in recs_u) == list(range(1, k + 1))
        assert len({r[S.ITEM_ID] for r in recs_u}) == k
        assert not any((user, r[S.ITEM_ID]) in seen for r in recs_u), user
        ordered = sorted(recs_u, key=lambda r: r[S.RANK])
        scores = [r[S.SCORE] for r in ordered]
        scored = [x for x in scores if x is not None]
        assert scores[: len(scored)] == scored == sorted(scored, reverse=True)  # nulls (fill) last
    # taste is served: most recommended items are of the user's own topic
    own = [r[S.ITEM_ID][0] == "ab"[int(r[S.USER_ID][1:]) % 2] for r in rows]
    assert np.mean(own) > 0.8
    # popularity and the tail flag follow the training interactions
    counts: dict[str, int] = {}
    for _, i, _, _ in synthetic.interactions():
        counts[i] = counts.get(i, 0) + 1
    assert all(r[S.POPULARITY] == counts.get(r[S.ITEM_ID], 0) for r in rows)
    # a re-run writes the same lists (a new version, identical content)
    recommend.run(spark, cfg, lake=lake, run_id="r2")
    again = {(r[S.USER_ID], r[S.RANK], r[S.ITEM_ID]) for r in lake.read(S.RECOMMENDATIONS).collect()}
    assert again == {(r[S.USER_ID], r[S.RANK], r[S.ITEM_ID]) for r in rows}

    # items in `removed_items` (ingest's removal flag) are never recommended; users still get k
    gone = [i for i, _ in Counter(i for _, _, i in again).most_common(2)]
    removed = spark.createDataFrame([(i, synthetic.T0, "rm") for i in gone], S.REMOVED_ITEMS_SCHEMA)
    lake.overwrite(S.REMOVED_ITEMS, removed)
    try:
        recommend.run(spark, cfg, lake=lake, run_id="r3")
        after = lake.read(S.RECOMMENDATIONS).collect()
        assert len(after) == 30 * k and not {r[S.ITEM_ID] for r in after} & set(gone)
    finally:
        lake.delete(S.REMOVED_ITEMS, "true")


def test_cold_items_are_recommendable_and_new_users_get_the_popular_list(spark, trained):
    lake, mid, cfg = trained
    model = load_model(lake, model_id=mid)
    users = spark.createDataFrame([("u00",), ("u01",), ("newcomer",)], "user_id string")
    lists, cands = R.recommend(
        spark,
        dataclasses.replace(cfg.recommend, k=12, candidates=20),
        model=model,
        interactions=lake.read(S.INTERACTIONS),
        embeddings=lake.read(S.ITEM_EMBEDDINGS),
        variants=["content", "cf", "popular", "fused"],
        users=users,
    )
    try:
        got = {v: df.collect() for v, df in lists.items()}
        # a cold item (no interaction) has a CF score from the projection head and is recommended
        cold_rows = cands.pairs.join(cands.items, S.ITEM_IDX).where(F.col(S.ITEM_ID).isin(*synthetic.COLD))
        assert cold_rows.where(F.col(R.CF).isNotNull()).count() > 0
        cold_recommended = {
            r[S.ITEM_ID] for v in ("content", "fused") for r in got[v] if r[S.ITEM_ID] in synthetic.COLD
        }
        assert cold_recommended, "no cold item in any content or fused list"
        # the newcomer has no history: every variant gives the 12 most popular items
        counts: dict[str, int] = {}
        for _, i, _, _ in synthetic.interactions():
            counts[i] = counts.get(i, 0) + 1
        popular = [i for i, _ in sorted(counts.items(), key=lambda p: (-p[1], p[0]))][:12]
        for variant, rows in got.items():
            mine = [r[S.ITEM_ID] for r in sorted(rows, key=lambda r: r[S.RANK]) if r[S.USER_ID] == "newcomer"]
            assert len(mine) == 12, variant
            assert set(mine) == set(popular), variant
    finally:
        cands.unpersist()
        model.unpersist()


def test_items_ingested_after_train_are_recommended_at_once(spark, trained):
    # a20 and b20 arrive after `train`: not in its id map, each with the text vector of its topic's
    # most popular item (a00, b00), which nearly every user of that topic has seen already
    lake, mid, cfg = trained
    model = load_model(lake, model_id=mid)
    vecs = synthetic.vectors()
    fresh = [(f"{t}20", f"{t}00") for t in "ab"]
    embeddings = lake.read(S.ITEM_EMBEDDINGS).unionByName(
        spark.createDataFrame(
            [(new, "h", mid, vecs[twin].tolist(), synthetic.T0) for new, twin in fresh],
            S.ITEM_EMBEDDINGS_SCHEMA,
        )
    )
    catalogue = embeddings.select(S.ITEM_ID)
    assert model.item_map.where(F.col(S.ITEM_ID).isin("a20", "b20")).count() == 0
    top = model.item_map.agg(F.max(S.ITEM_IDX)).first()[0]
    lists, cands = R.recommend(
        spark,
        cfg.recommend,
        model=model,
        interactions=lake.read(S.INTERACTIONS),
        embeddings=embeddings,
        variants=["cf", "content", "fused"],
        catalogue=catalogue,
    )
    try:
        idx = {r[S.ITEM_ID]: r[S.ITEM_IDX] for r in cands.items.collect()}
        assert sorted(idx[new] for new, _ in fresh) == [top + 1, top + 2]  # after the map, id order
        assert len(set(idx.values())) == len(idx) == 42
        # a CF score from the projection head and a content score, like any cold item
        new_pairs = cands.pairs.where(F.col(S.ITEM_IDX).isin(top + 1, top + 2))
        assert new_pairs.where(F.col(R.CF).isNotNull() & F.col(R.CONTENT).isNotNull()).count() > 0
        # and they reach the lists, of their own topic's users only
        got = {v: df.collect() for v, df in lists.items()}
        reached = {(r[S.ITEM_ID], int(r[S.USER_ID][1:]) % 2) for v in ("content", "fused") for r in got[v]}
        assert ("a20", 0) in reached and ("b20", 1) in reached
        assert ("a20", 1) not in reached and ("b20", 0) not in reached
    finally:
        cands.unpersist()
        model.unpersist()


def test_conform_strict_gives_the_contract_nullability_both_ways(spark):
    # `b` is proven non-null by Spark (a literal) but nullable in the contract; `a` the reverse
    schema = T.StructType([T.StructField("a", T.LongType(), False), T.StructField("b", T.DoubleType(), True)])
    df = spark.createDataFrame([(1, None)], "a long, b double").select("a", F.lit(2.0).alias("b"))
    assert [f.nullable for f in df.schema] == [True, False]
    out = S.conform_strict(df, schema, what="t")
    assert [(f.name, f.nullable) for f in out.schema] == [("a", False), ("b", True)]
    assert out.collect() == [(1, 2.0)]
    with pytest.raises(Exception, match="t: null in NOT NULL column a"):
        S.conform_strict(spark.createDataFrame([(None, 1.0)], "a long, b double"), schema, what="t").collect()
