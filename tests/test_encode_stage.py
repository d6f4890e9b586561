"""The `encode` stage on a tiny random BERT: incremental, deduplicated, model switch, failure safety."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from helpers import make_tiny_bert

from longtail.core import schema as S
from longtail.core.config import load_config
from longtail.core.errors import MissingInputError
from longtail.core.text import content_hash, encoder_text
from longtail.lake import Lake
from longtail.ml.encoder import TextEncoder, _onednn_usable
from longtail.ml.encoding import encode_tasks
from longtail.ml.model import current_embeddings
from longtail.stages import encode

pytestmark = pytest.mark.spark
T0 = dt.datetime(2024, 1, 1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("models")
    return str(make_tiny_bert(root / "tiny_a", seed=0)), str(make_tiny_bert(root / "tiny_b", seed=1))


def _cfg(lake_root: str, model: str, *more: str):
    return load_config(
        overrides=[
            *more,
            f"lake.root={lake_root}",
            f"encoder.model={model}",
            "encoder.max_length=16",
            "encoder.batch_tokens=64",
            "encoder.device=cpu",
            "encoder.arrow_batch_rows=2",
        ]
    )


def _write_items(spark, lake: Lake, rows: list[tuple[str, str | None, str]]) -> None:
    data = [(i, t, d, None, content_hash(encoder_text(t, d)), T0) for i, t, d in rows]
    lake.merge(S.ITEMS, spark.createDataFrame(data, S.ITEMS_SCHEMA), keys=[S.ITEM_ID])


ITEMS = [
    ("i1", "Heist", "a heist in the city"),
    ("i2", "Toy", "a cowboy and a space ranger"),
    ("i3", "Heist", "a heist in the city"),  # same text as i1: encoded once
    ("i4", None, "love story of a man and a woman"),
    ("i5", "War", "<p>old war film</p> 🎬 一个故事"),
]


def _table(lake: Lake) -> dict[tuple[str, str], tuple[str, np.ndarray]]:
    rows = lake.read(S.ITEM_EMBEDDINGS).collect()
    return {(r[S.ITEM_ID], r[S.MODEL_ID]): (r[S.CONTENT_HASH], np.array(r[S.EMBEDDING])) for r in rows}


def test_incremental_dedupe_change_and_model_switch(spark, lake_root: str, models: tuple[str, str]) -> None:
    model_a, model_b = models
    lake = Lake(spark, lake_root)
    _write_items(spark, lake, ITEMS)
    cfg = _cfg(lake_root, model_a, "encoder.cpu_linear=aten")
    enc_a = TextEncoder(model_a, device="cpu", max_length=16)

    # run 1: 5 items, 4 distinct texts (i1 == i3) -> 4 encoded, 5 rows, one commit
    first = encode.run(spark, cfg, lake=lake)
    assert (first["items"], first["encoded"], first["reused"]) == (5, 4, 0)
    assert first["linear_backends"] == ["aten"]  # what the workers' encoders ran, as configured
    assert first["model_id"] == enc_a.model_id and first["hash_mismatches"] == 0
    assert first["version"] == lake.version(S.ITEM_EMBEDDINGS) == 0
    table = _table(lake)
    assert sorted(table) == [(i, enc_a.model_id) for i in ("i1", "i2", "i3", "i4", "i5")]
    texts = {i: encoder_text(t, d) for i, t, d in ITEMS}
    for (item, _), (h, vec) in table.items():
        assert h == content_hash(texts[item])
        np.testing.assert_allclose(vec, enc_a.encode([texts[item]])[0], atol=1e-5)  # same vector as bare
        assert abs(np.linalg.norm(vec) - 1) < 1e-5 and vec.shape == (32,)

    # run 2: nothing changed -> nothing encoded, no new version
    second = encode.run(spark, cfg, lake=lake)
    assert (second["items"], second["encoded"], second["version"]) == (0, 0, None)
    assert second["linear_backends"] == []
    assert lake.version(S.ITEM_EMBEDDINGS) == 0

    # run 3: i2's description changes -> exactly i2 re-encoded; i6 is new with i4's text -> reused
    _write_items(
        spark, lake, [("i2", "Toy", "a cowboy and a space ranger at night"), ("i6", None, ITEMS[3][2])]
    )
    third = encode.run(spark, cfg, lake=lake)
    assert (third["items"], third["encoded"], third["reused"], third["version"]) == (2, 1, 1, 1)
    table = _table(lake)
    assert len(table) == 6
    np.testing.assert_allclose(
        table[("i2", enc_a.model_id)][1],
        enc_a.encode(["Toy. a cowboy and a space ranger at night"])[0],
        atol=1e-5,
    )
    np.testing.assert_allclose(table[("i6", enc_a.model_id)][1], table[("i4", enc_a.model_id)][1])

    # run 4: model switch -> every item re-encoded under the new model_id (4 distinct texts of 6 items)
    backend = "onednn" if _onednn_usable() else "aten"
    cfg_b = _cfg(lake_root, model_b, f"encoder.cpu_linear={backend}")
    fourth = encode.run(spark, cfg_b, lake=lake)
    assert (fourth["items"], fourth["encoded"], fourth["version"]) == (6, 4, 2)
    assert fourth["linear_backends"] == [backend]
    assert fourth["model_id"] != enc_a.model_id
    current = current_embeddings(lake, fourth["model_id"]).collect()
    assert sorted(r[S.ITEM_ID] for r in current) == ["i1", "i2", "i3", "i4", "i5", "i6"]
    assert {r[S.MODEL_ID] for r in current} == {fourth["model_id"]}
    assert len(lake.read(S.ITEM_EMBEDDINGS).collect()) == 12  # the old model's rows are kept
    # the old model's current vectors: one per item as well, i2's being the new text's
    old = {r[S.ITEM_ID]: r[S.CONTENT_HASH] for r in current_embeddings(lake, enc_a.model_id).collect()}
    assert old["i2"] == content_hash("Toy. a cowboy and a space ranger at night") and len(old) == 6


def test_encode_tasks_grow_with_the_texts_in_whole_waves() -> None:
    assert encode_tasks(10_000, 4, 20_000) == 4  # fewer texts than a task holds: one per slot
    assert encode_tasks(1_000_000, 4, 20_000) == 52  # 50, rounded up to a multiple of 4 slots
    assert encode_tasks(40_000, 2, 20_000) == 2
    assert encode_tasks(40_001, 2, 20_000) == 4  # 3 tasks -> 2 full waves of 2
    assert encode_tasks(0, 8, 20_000) == 8
    assert encode_tasks(7, 1, 1) == 7


def test_encode_cuts_the_texts_into_tasks_of_bounded_size(
    spark, lake_root: str, models: tuple[str, str]
) -> None:
    model_a, _ = models
    lake = Lake(spark, lake_root)
    _write_items(spark, lake, ITEMS)
    # 4 distinct texts at 1 per task: 4 tasks whatever the slots (1, 2 or 4 in the test sessions)
    summary = encode.run(spark, _cfg(lake_root, model_a, "encoder.texts_per_task=1"), lake=lake)
    slots = spark.sparkContext.defaultParallelism
    assert summary["tasks"] == encode_tasks(4, slots, 1) >= 4 and summary["tasks"] % slots == 0
    assert (summary["items"], summary["encoded"]) == (5, 4)
    enc = TextEncoder(model_a, device="cpu", max_length=16)
    texts = {i: encoder_text(t, d) for i, t, d in ITEMS}
    for (item, _), (_, vec) in _table(lake).items():
        np.testing.assert_allclose(vec, enc.encode([texts[item]])[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"encoder\.texts_per_task"):
        _cfg(lake_root, model_a, "encoder.texts_per_task=0")


def test_current_embeddings_skips_stale_and_vanished_items(spark) -> None:
    emb = spark.createDataFrame(
        [
            ("i1", "h1", "m1", [1.0, 0.0], T0),  # current
            ("i1", "h1", "m2", [0.0, 1.0], T0),  # other model
            ("i2", "h2_old", "m1", [1.0, 0.0], T0),  # text changed since: stale
            ("i9", "h9", "m1", [1.0, 0.0], T0),  # item no longer in items
        ],
        S.ITEM_EMBEDDINGS_SCHEMA,
    )
    items = spark.createDataFrame([("i1", "h1"), ("i2", "h2_new")], [S.ITEM_ID, S.CONTENT_HASH])
    got = current_embeddings(emb, "m1", items=items).collect()
    assert [(r[S.ITEM_ID], r[S.MODEL_ID], r[S.EMBEDDING]) for r in got] == [("i1", "m1", [1.0, 0.0])]
    with pytest.raises(ValueError, match="items="):
        current_embeddings(emb, "m1")


def failing_on(bad_hash: str, real: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``encode_partitions`` so that the UDF raises, in the Python worker, on a batch holding
    ``bad_hash``. The wrapper is a closure: cloudpickle ships it by value with the UDF, so the
    failure happens where a real one would, without a hook in production code."""

    def make(settings: Any, **kwargs: Any) -> Callable[..., Any]:
        encode_batches = real(settings, **kwargs)

        def fn(batches: Iterator[Any]) -> Iterator[Any]:
            def checked() -> Iterator[Any]:
                for pdf in batches:
                    if bad_hash in set(pdf[S.CONTENT_HASH]):
                        raise RuntimeError(f"injected failure on content_hash {bad_hash}")
                    yield pdf

            return encode_batches(checked())

        return fn

    return make


def test_failure_mid_run_leaves_table_then_next_run_completes(
    spark, lake_root: str, models: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(spark, lake_root)
    _write_items(spark, lake, ITEMS[:2])
    cfg = _cfg(lake_root, models[0])
    assert encode.run(spark, cfg, lake=lake)["version"] == 0
    _write_items(spark, lake, ITEMS[2:])  # i3 (known text), i4, i5 new
    bad = content_hash(encoder_text(None, ITEMS[3][2]))
    monkeypatch.setattr(encode, "encode_partitions", failing_on(bad, encode.encode_partitions))
    with pytest.raises(Exception, match="injected failure"):
        encode.run(spark, cfg, lake=lake)
    assert lake.version(S.ITEM_EMBEDDINGS) == 0
    assert sorted(r[S.ITEM_ID] for r in lake.read(S.ITEM_EMBEDDINGS).collect()) == ["i1", "i2"]
    monkeypatch.undo()
    done = encode.run(spark, cfg, lake=lake)
    assert (done["items"], done["encoded"], done["reused"], done["version"]) == (3, 2, 1, 1)
    assert sorted(r[S.ITEM_ID] for r in lake.read(S.ITEM_EMBEDDINGS).collect()) == [
        "i1",
        "i2",
        "i3",
        "i4",
        "i5",
    ]


def test_missing_items_table_is_a_clear_error(spark, lake_root: str, models: tuple[str, str]) -> None:
    with pytest.raises(MissingInputError, match="run ingest first"):
        encode.run(spark, _cfg(lake_root, models[0]), lake=Lake(spark, lake_root))
