"""`train`: stable id maps, the projection head, ALS factors and the stage's tables."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import synthetic
from helpers import make_tiny_bert

from longtail.core import schema as S
from longtail.core.errors import MissingInputError
from longtail.lake import Lake
from longtail.ml.cf import new_ids
from longtail.ml.head import HeadError, HeadSpec, ProjectionHead
from longtail.ml.model import load_model
from longtail.stages import train


# --- the head (no Spark) -------------------------------------------------------------------------
def _linear_data(n: int = 400, d: int = 16, out: int = 4, noise: float = 0.01, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w_true = rng.normal(size=(d, out)).astype(np.float32)
    b_true = rng.normal(size=out).astype(np.float32)
    y = x @ w_true + b_true + noise * rng.normal(size=(n, out)).astype(np.float32)
    return x, y, w_true, b_true


def test_linear_head_recovers_a_known_linear_map():
    x, y, w_true, b_true = _linear_data()
    head = ProjectionHead.fit(x, y, model_id="m", hidden=0, l2=1e-3)
    np.testing.assert_allclose(head.params["w"], w_true, atol=0.01)
    np.testing.assert_allclose(head.params["b"], b_true, atol=0.01)
    assert head.spec.validation["r2"] > 0.999
    fresh = np.random.default_rng(9).normal(size=(5, 16)).astype(np.float32)
    np.testing.assert_allclose(head.predict(fresh), fresh @ w_true + b_true, atol=0.05)


def test_weights_pull_the_fit_towards_reliable_rows():
    # two contradicting halves; the half with weight 9 wins the fit
    x = np.ones((20, 1), np.float32)
    y = np.r_[np.zeros((10, 1)), np.ones((10, 1))].astype(np.float32)
    w = np.r_[np.full(10, 9.0), np.ones(10)].astype(np.float32)
    head = ProjectionHead.fit(x, y, w, model_id="m", l2=0.0, validation_fraction=0)
    # the bias and the weight share the constant input: prediction = weighted mean 1/10
    assert head.predict(np.ones((1, 1), np.float32))[0, 0] == pytest.approx(0.1, abs=1e-4)


def test_mlp_head_fits_a_linear_map_well():
    x, y, _, _ = _linear_data(n=300, d=8, out=3)
    head = ProjectionHead.fit(x, y, model_id="m", hidden=16, epochs=300, lr=0.02, weight_decay=0.0)
    assert head.spec.hidden == 16 and set(head.params) == {"w1", "b1", "w2", "b2"}
    assert head.spec.validation["r2"] > 0.95


def test_head_round_trips_through_safetensors_bytes():
    x, y, _, _ = _linear_data(n=100)
    head = ProjectionHead.fit(x, y, model_id="model-x", hidden=4, epochs=20, extra={"run_id": "r1"})
    blob = head.to_bytes()
    assert blob[:8] != b"\x80\x04\x95"  # not a pickle
    again = ProjectionHead.from_bytes(blob, head.spec.to_json())
    assert again.spec == head.spec and again.spec.extra == {"run_id": "r1"}
    np.testing.assert_array_equal(again.predict(x[:7]), head.predict(x[:7]))


def test_head_errors_are_clear():
    with pytest.raises(HeadError, match="at least 2"):
        ProjectionHead.fit(np.ones((1, 3)), np.ones((1, 2)), model_id="m")
    with pytest.raises(HeadError, match="do not match"):
        ProjectionHead.fit(np.ones((4, 3)), np.ones((5, 2)), model_id="m")
    with pytest.raises(HeadError, match="NaN"):
        ProjectionHead.fit(np.full((4, 3), np.nan), np.ones((4, 2)), model_id="m")
    head = ProjectionHead.fit(np.eye(3, dtype=np.float32), np.ones((3, 2)), model_id="m")
    with pytest.raises(HeadError, match=r"expects \[n, 3\]"):
        head.predict(np.ones((2, 4)))
    with pytest.raises(HeadError, match="spec version"):
        HeadSpec.from_json('{"version": 99}')


# --- Spark ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.mark.spark
def test_new_ids_number_after_the_existing_map_in_id_order(spark):
    first = spark.createDataFrame([("u3",), ("u1",), ("u1",), (None,)], "user_id string")
    rows = new_ids(first, None, id_col=S.USER_ID, idx_col=S.USER_IDX).collect()
    assert sorted((r[0], r[1]) for r in rows) == [("u1", 0), ("u3", 1)]
    existing = spark.createDataFrame([("u1", 0), ("u3", 1)], "user_id string, user_idx int")
    more = spark.createDataFrame([("u2",), ("u3",), ("u0",)], "user_id string")
    rows = new_ids(more, existing, id_col=S.USER_ID, idx_col=S.USER_IDX).collect()
    assert sorted((r[0], r[1]) for r in rows) == [("u0", 2), ("u2", 3)]  # u1, u3 keep 0 and 1
    assert new_ids(first, existing, id_col=S.USER_ID, idx_col=S.USER_IDX).isEmpty()


@pytest.mark.spark
def test_train_writes_factors_and_head_and_keeps_ids_stable(spark, lake_root, model_dir):
    lake, mid = synthetic.build_lake(spark, lake_root, model_dir)
    cfg = synthetic.config(lake_root, model_dir)
    summary = train.run(spark, cfg, lake=Lake(spark, lake_root), run_id="r1")
    assert summary["users"] == 30 and summary["items_with_factors"] == 36  # 40 items, 4 cold
    assert summary["head"]["trained_items"] > 20
    items_map = {r[S.ITEM_ID]: r[S.ITEM_IDX] for r in lake.read(S.ID_MAP_ITEMS).collect()}
    assert sorted(items_map) == synthetic.item_ids()  # cold items have an index too
    assert sorted(items_map.values()) == list(range(40))
    model = load_model(lake, model_id=mid)
    factors = np.stack([r[S.FEATURES] for r in model.item_factors.collect()])
    assert factors.shape == (36, 4)
    # ALS separates the two tastes: a user's factors score their own topic's items higher
    users = {r[S.USER_ID]: np.array(r[S.FEATURES]) for r in model.user_factors.collect()}
    items = {r[S.ITEM_ID]: np.array(r[S.FEATURES]) for r in model.item_factors.collect()}
    for u, vec in users.items():
        own, other = ("a", "b") if int(u[1:]) % 2 == 0 else ("b", "a")
        mine = np.mean([vec @ f for i, f in items.items() if i[0] == own])
        theirs = np.mean([vec @ f for i, f in items.items() if i[0] == other])
        assert mine > theirs, u
    # a second run: same ids, a new version of the factor tables, the head matches them (the blend
    # fits no ranker: the learned one is tested in test_ranker)
    lake2 = Lake(spark, lake_root)
    train.run(
        spark, synthetic.config(lake_root, model_dir, "recommend.fusion=blend"), lake=lake2, run_id="r2"
    )
    assert {r[S.ITEM_ID]: r[S.ITEM_IDX] for r in lake2.read(S.ID_MAP_ITEMS).collect()} == items_map
    assert lake2.version(S.ID_MAP_ITEMS) == 0 and lake2.version(S.ITEM_FACTORS) == 1
    assert load_model(lake2).head.spec.extra["run_id"] == "r2"


@pytest.mark.spark
def test_a_second_train_with_new_items_and_users_writes_each_id_once(spark, lake_root, model_dir, engine):
    """New items and a new user arrive between two trains: the id maps grow by exactly them and every
    factor row is there once. train appends the new ids before it writes the factors, which join
    the ids it read with the ids it appended; on delta-spark a live read saw the appended rows as
    well and wrote each new item's factors twice (issue found by the three nights on delta-spark)."""
    _, mid = synthetic.build_lake(spark, lake_root, model_dir)
    cfg = synthetic.config(lake_root, model_dir, "recommend.fusion=blend", "train.vae.enabled=false")
    train.run(spark, cfg, lake=Lake(spark, lake_root, engine), run_id="r1")
    lake = Lake(spark, lake_root, engine)
    new_items = ["c00", "c01", "c02"]
    vecs = synthetic.vectors()
    new_vecs = {i: vecs[f"a0{n}"] for n, i in enumerate(new_items)}  # topic a's texts
    lake.append(S.ITEMS, spark.createDataFrame(synthetic.item_rows(new_items), S.ITEMS_SCHEMA))
    emb = synthetic.embedding_rows(new_vecs, mid)
    lake.append(S.ITEM_EMBEDDINGS, spark.createDataFrame(emb, S.ITEM_EMBEDDINGS_SCHEMA))
    later = synthetic.T0 + dt.timedelta(days=90)
    events = [(u, i, later, 1.0) for u in ("u00", "u02", "u04", "u99") for i in new_items]
    lake.append(S.INTERACTIONS, spark.createDataFrame(events, S.INTERACTIONS_SCHEMA))
    summary = train.run(spark, cfg, lake=Lake(spark, lake_root, engine), run_id="r2")
    assert summary["users"] == 31 and summary["items_with_factors"] == 39  # 36 + the 3 new items
    lake = Lake(spark, lake_root, engine)
    ids = lake.read(S.ID_MAP_ITEMS).collect()
    assert sorted(r[S.ITEM_IDX] for r in ids) == list(range(43))  # new ids numbered after the old
    assert {r[S.ITEM_ID] for r in ids} == set(synthetic.item_ids()) | set(new_items)
    for table, key, n in ((S.ITEM_FACTORS, S.ITEM_ID, 39), (S.USER_FACTORS, S.USER_ID, 31)):
        rows = [r[key] for r in lake.read(table).select(key).collect()]
        assert len(rows) == len(set(rows)) == n, table


@pytest.mark.spark
def test_load_model_refuses_a_half_finished_train_or_another_encoder(spark, lake_root, model_dir):
    lake, mid = synthetic.build_lake(spark, lake_root, model_dir)
    train.run(spark, synthetic.config(lake_root, model_dir, "recommend.fusion=blend"), lake=lake, run_id="r1")
    with pytest.raises(MissingInputError, match="trained on vectors of"):
        load_model(lake, model_id="another-model@123/mean/256")
    # a later train run that died after rewriting item_factors but before the head
    lake.overwrite(S.ITEM_FACTORS, lake.read(S.ITEM_FACTORS))
    with pytest.raises(MissingInputError, match="did not finish"):
        load_model(lake, model_id=mid)


@pytest.mark.spark
def test_train_without_vectors_says_what_to_run(spark, lake_root, model_dir):
    lake, _ = synthetic.build_lake(spark, lake_root, model_dir)
    with pytest.raises(MissingInputError, match="run train first"):
        load_model(lake)
    cfg = synthetic.config(str(lake_root) + "/other", model_dir)
    with pytest.raises(MissingInputError, match="run ingest first"):
        train.run(spark, cfg, lake=Lake(spark, cfg.lake.root))
