"""The Mult-VAE signal: the loss by hand, a planted structure, Spark scoring against the driver's
reference, persistence, the driver cap, its place in train/recommend/evaluate and the no-leak rule."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import synthetic
from helpers import make_tiny_bert

from longtail.core import schema as S
from longtail.core.config import ConfigError, VaeConfig
from longtail.core.errors import MissingInputError
from longtail.ml import augment as A
from longtail.ml import cf
from longtail.ml import ranker as L
from longtail.ml import scoring as R
from longtail.ml import vae as V
from longtail.ml.model import current_embeddings, load_model
from longtail.stages import evaluate, recommend, train

pytestmark = pytest.mark.spark

SMALL = VaeConfig(
    hidden=16, latent=4, dropout=0.2, epochs=300, max_steps=300, batch_size=16, seed=3, text=False
)


def test_the_loss_is_the_multinomial_likelihood_plus_beta_times_the_kl_by_hand():
    torch = pytest.importorskip("torch")
    # user 1: logits (0, ln 2) -> softmax (1/3, 2/3); x = (1, 1): nll = ln 3 + ln 1.5 = ln 4.5
    #         mu (1, 0), logvar (0, ln 2): KL = -1/2 [(1 + 0 - 1 - 1) + (1 + ln 2 - 0 - 2)] = 1 - ln(2)/2
    # user 2: logits (0, 0), x = (0, 1): nll = ln 2; mu = logvar = 0: KL = 0
    logits = torch.tensor([[0.0, math.log(2)], [0.0, 0.0]])
    x = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2)], [0.0, 0.0]])
    nll = (math.log(4.5) + math.log(2)) / 2
    kl = (1 - math.log(2) / 2) / 2
    assert float(V.loss(logits, x, mu, logvar, 0.0)) == pytest.approx(nll, rel=1e-6)
    assert float(V.loss(logits, x, mu, logvar, 0.5)) == pytest.approx(nll + 0.5 * kl, rel=1e-6)
    assert V.beta_at(0, 100, 0.2) == 0.0
    assert V.beta_at(40, 100, 0.2) == pytest.approx(0.1)
    assert V.beta_at(80, 100, 0.2) == V.beta_at(100, 100, 0.2) == pytest.approx(0.2)


def _planted(spark, n_users: int = 60, seed: int = 0):
    """Two clusters of 10 items (0-9, 10-19); each user takes 5 items of one cluster."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        base = 10 * (u % 2)
        for i in rng.choice(10, size=5, replace=False):
            rows.append((u, int(base + i)))
    return spark.createDataFrame(rows, "user_idx int, item_idx int"), rows


def _planted_with_text(spark):
    """:func:`_planted` plus items 20 and 21, seen only by users 60 and 61 (who take both), and text
    vectors in which 20 reads like cluster 0-9 and 21 like cluster 10-19."""
    pairs, rows = _planted(spark)
    extra = [(u, i) for u in (60, 61) for i in (20, 21)]
    pairs = pairs.unionByName(spark.createDataFrame(extra, "user_idx int, item_idx int"))
    e = np.eye(8, dtype=np.float32)
    vectors = [(i, (e[0] if i < 10 or i == 20 else e[1]).tolist()) for i in range(22)]
    text = spark.createDataFrame(vectors, "item_idx int, embedding array<float>")
    return pairs, rows, text


def _own_cluster_first(reference, history) -> int:
    """How many of the 60 planted users score every unseen item of their own cluster above every
    item of the other cluster (``reference``: users x items, items 0-19 at least)."""
    right = 0
    for u in range(60):
        own = [i for i in range(10 * (u % 2), 10 * (u % 2) + 10) if i not in history[u]]
        other = [i for i in range(20) if i // 10 != u % 2]
        right += reference[u, own].min() > reference[u, other].max()
    return right


def test_the_vae_learns_a_planted_structure_and_spark_scores_equal_the_reference(spark):
    pairs, rows = _planted(spark)
    model = V.fit(spark, pairs, SMALL)
    assert model.spec["users"] == 60 and model.spec["items"] == 20 and model.spec["interactions"] == 300
    assert model.spec["steps"] == 300 and model.spec["loss"][1] < model.spec["loss"][0]
    users = {r[S.USER_IDX]: np.asarray(r[V.VAE_VEC]) for r in V.user_vectors(model, pairs).collect()}
    items = {r[S.ITEM_IDX]: np.asarray(r[V.VAE_VEC]) for r in V.item_vectors(model).collect()}
    assert set(users) == set(range(60)) and set(items) == set(range(20))
    item_ids = np.arange(20)
    history = {u: sorted(i for uu, i in rows if uu == u) for u in range(60)}
    reference = V.score_users(model, [history[u] for u in range(60)], item_ids)
    spark_scores = np.stack([[users[u] @ items[i] for i in item_ids] for u in range(60)])
    np.testing.assert_allclose(spark_scores, reference, rtol=1e-4, atol=1e-4)
    # every user's unseen items of their own cluster outscore the other cluster's
    right = _own_cluster_first(reference, history)
    assert right >= 57, right


def test_the_text_side_ranks_rarely_seen_items_by_their_description(spark):
    # items 20 and 21 are seen only by users 60 and 61, who take both: their interactions cannot
    # tell the clusters apart. Their text can: 20 reads like cluster 0-9, 21 like cluster 10-19.
    pairs, rows, text = _planted_with_text(spark)
    model = V.fit(spark, pairs, dataclasses.replace(SMALL, text=True), text=text)
    assert model.spec["text"] is True and model.spec["text_items"] == 22 and model.spec["items"] == 22
    history = {u: sorted(i for uu, i in rows if uu == u) for u in range(60)}
    logits = V.score_users(model, [history[u] for u in range(60)], np.array([20, 21]))
    margin = np.where(np.arange(60) % 2 == 0, 1.0, -1.0) * (logits[:, 0] - logits[:, 1])
    assert (margin > 0).sum() >= 57, margin
    # the Spark path scores the text-conditioned rows like the reference
    users = {r[S.USER_IDX]: np.asarray(r[V.VAE_VEC]) for r in V.user_vectors(model, pairs).collect()}
    items = {r[S.ITEM_IDX]: np.asarray(r[V.VAE_VEC]) for r in V.item_vectors(model).collect()}
    np.testing.assert_allclose(users[0] @ items[20], logits[0, 0], rtol=1e-4, atol=1e-4)
    with pytest.raises(V.VaeError, match="no text vectors"):
        V.fit(spark, pairs, dataclasses.replace(SMALL, text=True))


def test_save_and_load_round_trip_the_weights_items_and_scores(spark, tmp_path):
    pairs, _ = _planted(spark, n_users=20, seed=1)
    model = V.fit(spark, pairs, dataclasses.replace(SMALL, max_steps=20))
    saved = V.save(spark, model, str(tmp_path / "vae" / "run-1"))
    assert saved.path.endswith("vae/run-1")
    assert {p.name for p in (tmp_path / "vae" / "run-1").iterdir()} >= {
        V.DENSE_FILE,
        V.CARD_FILE,
        V.ITEMS_DIR,
    }
    back = V.load(spark, saved.path)
    assert back.spec == model.spec
    assert set(back.dense) == set(V.DENSE)
    for name in V.DENSE:
        np.testing.assert_array_equal(back.dense[name], model.dense[name])
    hist = [[0, 1, 2], [12, 15]]
    np.testing.assert_array_equal(
        V.score_users(back, hist, np.arange(5)), V.score_users(model, hist, np.arange(5))
    )
    with pytest.raises(V.VaeError, match="no Mult-VAE"):
        V.load(spark, str(tmp_path / "nowhere"))


def test_the_pairs_reaching_the_driver_are_capped_and_whole_users_sampled(spark):
    pairs, rows = _planted(spark, n_users=60)
    users, items, info = V.training_pairs(pairs, dataclasses.replace(SMALL, max_interactions=100))
    assert info["interactions_total"] == 300 and info["user_fraction"] == pytest.approx(1 / 3, abs=1e-6)
    assert 0 < len(users) <= 100
    got = set(zip(users.tolist(), items.tolist(), strict=True))
    assert got <= set(rows)
    # hash-sampled users come whole; only the cut at the cap can shorten the last one
    counts = np.bincount(users)
    assert sorted(counts[counts > 0])[1:] == [5] * (len(set(users.tolist())) - 1)
    with pytest.raises(V.VaeError, match="at least 2"):
        V.fit(spark, spark.createDataFrame([(0, 1), (0, 2)], "user_idx int, item_idx int"), SMALL)


def test_beyond_max_items_the_items_with_the_most_users_are_modelled_and_the_rest_get_no_score(spark):
    pairs, rows = _planted(spark, n_users=60)
    users_of: dict[int, set[int]] = {}
    for u, i in rows:
        users_of.setdefault(i, set()).add(u)
    # the 12 items with the most users, ties to the lower index (plain Python, from the rows)
    kept = sorted(sorted(users_of), key=lambda i: (-len(users_of[i]), i))[:12]
    dropped = sorted(set(users_of) - set(kept))
    # user 99 has only dropped items: no modelled item, so no vae vector
    pairs = pairs.unionByName(
        spark.createDataFrame([(99, dropped[0]), (99, dropped[1])], "user_idx int, item_idx int")
    )
    cfg = dataclasses.replace(SMALL, max_items=12, max_steps=20)

    users, items, info = V.training_pairs(pairs, cfg)
    assert set(items.tolist()) == set(kept)
    assert set(zip(users.tolist(), items.tolist(), strict=True)) == {
        (u, i) for u, i in rows if i in set(kept)
    }
    assert info["items_total"] == 20 and info["items_dropped"] == 8

    model = V.fit(spark, pairs, cfg)
    assert model.spec["items"] == 12 and model.spec["items_dropped"] == 8
    assert sorted(r[0] for r in V.item_vectors(model).select(S.ITEM_IDX).collect()) == sorted(kept)
    scored = {r[0] for r in V.user_vectors(model, pairs).select(S.USER_IDX).collect()}
    assert 99 not in scored and set(range(60)) <= scored

    # under the cap nothing is dropped
    _, items_all, info_all = V.training_pairs(pairs, dataclasses.replace(cfg, max_items=20))
    assert set(items_all.tolist()) == set(users_of) and info_all["items_dropped"] == 0
    with pytest.raises(ConfigError, match="max_items"):
        VaeConfig(max_items=1)


def test_beyond_max_interactions_torch_distributor_trains_on_every_pair_in_shards(spark, tmp_path):
    # the text-side case above, trained by 2 processes (Spark barrier tasks, DDP over gloo) on
    # their own shards of users instead of a driver-side sample of max_interactions pairs
    pairs, rows, text = _planted_with_text(spark)
    cfg = dataclasses.replace(SMALL, text=True, processes=2, max_interactions=100, gpu="never")
    staging = tmp_path / "_staging" / "vae-1"
    model = V.fit(spark, pairs, cfg, text=text, staging=str(staging))
    spec = model.spec
    assert spec["processes"] == 2 and spec["user_fraction"] == 1.0
    assert (spec["users"], spec["items"], spec["interactions"], spec["text_items"]) == (62, 22, 304, 22)
    assert spec["steps"] == 300 and spec["loss"][1] < spec["loss"][0]
    assert not staging.exists()  # the shards are deleted once trained
    history = {u: sorted(i for uu, i in rows if uu == u) for u in range(60)}
    reference = V.score_users(model, [history[u] for u in range(60)], np.arange(22))
    right = _own_cluster_first(reference, history)
    assert right >= 57, right
    margin = np.where(np.arange(60) % 2 == 0, 1.0, -1.0) * (reference[:, 20] - reference[:, 21])
    assert (margin > 0).sum() >= 57, margin
    # as on the driver path: refused before any process starts when no item has a text vector
    elsewhere = spark.createDataFrame([(99, [1.0] * 8)], "item_idx int, embedding array<float>")
    with pytest.raises(V.VaeError, match="none of the items trained on has a text vector"):
        V.fit(spark, pairs, cfg, text=elsewhere, staging=str(staging))
    with pytest.raises(V.VaeError, match="fewer users than processes"):  # 2 users, 3 shards
        V.fit(
            spark,
            pairs.where("user_idx < 2"),
            dataclasses.replace(cfg, text=False, processes=3, max_interactions=2),
            staging=str(staging),
        )
    assert not staging.exists()


@pytest.fixture(scope="module")
def lake_cfg(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("vae_lake")
    model_dir = make_tiny_bert(root / "tiny")
    lake, mid = synthetic.build_lake(spark, str(root / "lake"), str(model_dir))
    cfg = synthetic.config(str(root / "lake"), model_dir, "recommend.fusion=blend")
    return lake, mid, cfg


def test_train_saves_the_vae_and_recommend_ranks_its_variant_from_the_lake(spark, lake_cfg):
    lake, mid, cfg = lake_cfg
    summary = train.run(spark, cfg, lake=lake, run_id="t-vae")
    assert summary["vae"]["path"].endswith("models/vae/t-vae") and summary["vae"]["spec"]["users"] == 30
    model = load_model(lake, model_id=mid)
    assert model.vae is not None and model.vae.path == summary["vae"]["path"]
    vae_cfg = dataclasses.replace(cfg, recommend=dataclasses.replace(cfg.recommend, variant="vae"))
    out = recommend.run(spark, vae_cfg, lake=lake, run_id="r-vae")
    assert out["users"] == 30 and out["rows"] == 30 * cfg.recommend.k
    # the candidates carry the vae signal, and its features reach the ranker's columns
    lists, cands = R.recommend(
        spark,
        cfg.recommend,
        model=model,
        interactions=lake.read(S.INTERACTIONS),
        embeddings=current_embeddings(lake, mid),
        variants=["vae"],
    )
    try:
        assert cands.has_vae
        featured = L.with_features(cands.pairs)
        rows = featured.where(featured["vae_rank"].isNotNull()).collect()
        assert rows and all(r["f_has_vae"] == 1.0 and r["f_vae"] == r["vae"] for r in rows)
        ranked = lists["vae"].collect()
        assert len(ranked) == 30 * cfg.recommend.k
    finally:
        cands.unpersist()
        model.unpersist()


def test_without_the_vae_its_variant_is_refused_and_evaluate_leaves_it_out(spark, lake_cfg):
    lake, mid, cfg = lake_cfg
    off = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, vae=VaeConfig(enabled=False)))
    train.run(spark, off, lake=lake, run_id="t-novae")
    model = load_model(lake, model_id=mid)
    assert model.vae is None
    vae_cfg = dataclasses.replace(off, recommend=dataclasses.replace(off.recommend, variant="vae"))
    with pytest.raises(MissingInputError, match=r"train\.vae\.enabled=true"):
        recommend.run(spark, vae_cfg, lake=lake, run_id="r-novae")
    ev = dataclasses.replace(off.evaluate, variants=("cf", "vae"), k=(5,), bootstrap=0)
    got = evaluate.evaluate(
        spark,
        dataclasses.replace(off, evaluate=ev),
        interactions=lake.read(S.INTERACTIONS),
        items=lake.read(S.ITEMS),
        embeddings=current_embeddings(lake, mid),
        model_id=mid,
        run_id="e-novae",
    )
    assert got["vae"] is None
    assert {r[S.VARIANT] for r in got["metrics"].select(S.VARIANT).distinct().collect()} == {"cf"}
    got["metrics"].unpersist()


def test_evaluate_fits_the_vae_on_the_training_part_only(spark, lake_cfg, monkeypatch):
    lake, mid, cfg = lake_cfg
    fitted_on = []
    real = V.fit

    def spy(spark_, ratings, vcfg, **kwargs):
        fitted_on.append(ratings)
        return real(spark_, ratings, vcfg, **kwargs)

    monkeypatch.setattr(V, "fit", spy)
    ev = dataclasses.replace(cfg.evaluate, variants=("cf", "vae"), k=(5,), bootstrap=0)
    ecfg = dataclasses.replace(cfg, evaluate=ev)
    inter = lake.read(S.INTERACTIONS)
    got = evaluate.evaluate(
        spark,
        ecfg,
        interactions=inter,
        items=lake.read(S.ITEMS),
        embeddings=current_embeddings(lake, mid),
        model_id=mid,
        run_id="e-vae",
    )
    try:
        train_part, test_part = evaluate.split(inter, ecfg)
        assert len(fitted_on) == 1  # blend fusion: no ranker, so one VAE, on evaluate's training part
        seen = {(r[0], r[1]) for r in fitted_on[0].select(S.USER_IDX, S.ITEM_IDX).collect()}
        assert len(seen) == got["vae"]["interactions"]
        # by construction: the pairs the VAE saw are exactly the training part's (no test pair)
        n_train_pairs = train_part.select(S.USER_ID, S.ITEM_ID).distinct().count()
        assert (
            got["vae"]["interactions"]
            == n_train_pairs
            < inter.select(S.USER_ID, S.ITEM_ID).distinct().count()
        )
        assert test_part.count() > 0
        assert "vae" in {r[S.VARIANT] for r in got["metrics"].select(S.VARIANT).distinct().collect()}
    finally:
        got["metrics"].unpersist()


def test_evaluate_ablate_ranks_the_learned_fusion_again_without_the_vae(spark, lake_cfg, monkeypatch):
    lake, mid, cfg = lake_cfg
    fitted_with_vae = []
    real = evaluate.fit_ranker

    def spy(spark_, cfg_, *args, **kwargs):
        fitted_with_vae.append((cfg_.train.vae.enabled, cfg_.recommend.ranker.use_vae))
        return real(spark_, cfg_, *args, **kwargs)

    monkeypatch.setattr(evaluate, "fit_ranker", spy)
    ev = dataclasses.replace(cfg.evaluate, variants=("cf", "fused"), k=(5,), bootstrap=50, ablate=("vae",))
    ecfg = dataclasses.replace(
        cfg, evaluate=ev, recommend=dataclasses.replace(cfg.recommend, fusion="learned")
    )
    got = evaluate.evaluate(
        spark,
        ecfg,
        interactions=lake.read(S.INTERACTIONS),
        items=lake.read(S.ITEMS),
        embeddings=current_embeddings(lake, mid),
        model_id=mid,
        run_id="e-ablate",
    )
    try:
        # the production ranker, then one without the VAE: no VAE fitted, no VAE feature or contender
        assert fitted_with_vae == [(True, True), (False, False)]
        assert got["ablation"]["pairs"] == [("fused", "fused_no_vae")]
        points = got["all_metrics"]
        ndcg = points[(points.metric == "ndcg") & (points.segment == "all")].set_index("variant")["value"]
        assert {"cf", "fused", "fused_no_vae"} <= set(ndcg.index)
        # the paired interval's point estimate is the difference of the two lists' means
        rows = got["ablation"]["intervals"]
        row = rows[(rows.metric == "ndcg") & (rows.variant == "fused")].iloc[0]
        assert row["diff"] == pytest.approx(ndcg["fused"] - ndcg["fused_no_vae"], abs=1e-9)
        assert row["lo"] <= row["diff"] <= row["hi"]
        # and the ablated list is measured against cf like every variant
        assert "fused_no_vae" in set(got["intervals"]["variant"])
    finally:
        got["metrics"].unpersist()


def test_generated_interactions_go_to_their_own_table_and_into_als_only(spark, lake_cfg, monkeypatch):
    lake, _, cfg = lake_cfg
    on = dataclasses.replace(
        cfg,
        train=dataclasses.replace(
            cfg.train,
            vae=dataclasses.replace(cfg.train.vae, augment=True, augment_users=3, augment_weight=0.25),
        ),
    )
    als_inputs = []
    real_als = cf.fit_als

    def spy(spark_, ratings, cfg_):
        als_inputs.append(ratings)
        return real_als(spark_, ratings, cfg_)

    monkeypatch.setattr(cf, "fit_als", spy)
    before = lake.read(S.INTERACTIONS).count()
    summary = train.run(spark, on, lake=lake, run_id="t-aug")
    real = {(r[0], r[1]) for r in lake.read(S.INTERACTIONS).select(S.USER_ID, S.ITEM_ID).collect()}
    assert lake.read(S.INTERACTIONS).count() == before  # nothing synthetic in the log
    rows = lake.read(S.SYNTHETIC_INTERACTIONS).collect()
    assert rows and summary["vae"]["synthetic_rows"] == len(rows)
    assert {r[S.RUN_ID] for r in rows} == {"t-aug"} and {r["generator"] for r in rows} == {A.GENERATOR}
    assert {r[S.WEIGHT] for r in rows} == {0.25}
    assert not {(r[S.USER_ID], r[S.ITEM_ID]) for r in rows} & real  # only pairs that never happened
    per_item: dict[str, int] = {}
    for r in rows:
        per_item[r[S.ITEM_ID]] = per_item.get(r[S.ITEM_ID], 0) + 1
    assert max(per_item.values()) <= 3
    # only long-tail items get users: none of the head by the recommend section's rule
    stats = R.item_stats(lake.read(S.INTERACTIONS), lake.read(S.ITEMS), head_rule=cfg.recommend.head_rule)
    head = {r[S.ITEM_ID] for r in stats.where(~stats[S.IS_LONG_TAIL]).collect()}
    assert head and not set(per_item) & head
    # ALS learned from the real pairs plus exactly these rows
    assert len(als_inputs) == 1
    n_real_pairs = len(real)
    assert als_inputs[0].count() == n_real_pairs + len(rows)
    assert als_inputs[0].where("n = 0").count() == len(rows)
