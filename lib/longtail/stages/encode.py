"""`encode`: BERT vectors of new or changed item texts, merged into ``item_embeddings``.

Incremental and deduplicated:

1. ``model_id`` is computed on the driver from the encoder settings (hash of the safetensors
   weights; the model is not loaded there).
2. Items whose ``(item_id, content_hash)`` already has a row under this ``model_id`` are done.
3. Of the rest, each distinct ``content_hash`` is encoded once, and only if no vector of this model
   exists for it yet (another item with the same text, or an item whose text changed back).
4. The rows ``(item_id, content_hash, model_id, embedding, encoded_at)`` are merged into
   ``item_embeddings`` on ``[item_id, model_id]`` in ONE commit. Nothing new: no commit.

Each item keeps at most one row per model; rows of other models and of items that left ``items``
stay in the table. Readers take one model's vectors of the current texts through
:func:`current_embeddings`.

How the encoder runs inside Spark: :mod:`longtail.ml.encoding`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import Config, EncoderConfig
from longtail.core.progress import CountProgress
from longtail.core.session import session_conf
from longtail.lake import Lake
from longtail.ml.encoding import (
    _HASH_OK,
    _LINEAR,
    _RSS,
    _WORKER,
    ARROW_BATCH_CONF,
    ENCODED_SCHEMA,
    encode_partitions,
    encode_tasks,
)
from longtail.ml.model import encoder_model_id, encoder_settings

log = logging.getLogger(__name__)


def _torch_threads(spark: SparkSession, settings: EncoderConfig) -> int:
    if settings.torch_threads:
        return settings.torch_threads
    return int(spark.conf.get("spark.task.cpus", "1") or 1)


def run(
    spark: SparkSession, cfg: Config, *, lake: Lake | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Encode the new or changed item texts and merge their vectors into ``item_embeddings``.

    Returns:
        A summary: ``model_id``, ``items`` (rows to write), ``encoded`` (distinct texts sent to the
        model), ``reused`` (rows whose vector came from an identical text already in the table),
        ``version`` (the new table version, None when nothing was written), ``tasks`` (Spark tasks the
        texts were cut into: :func:`~longtail.ml.encoding.encode_tasks`), ``workers`` (Python
        workers that encoded), ``worker_peak_rss_mb``, ``hash_mismatches``, ``seconds``.
    """
    t0 = time.perf_counter()
    lake = lake or Lake.from_config(spark, cfg)
    lake.require("encode", S.ITEMS)
    settings = encoder_settings(cfg, spark)  # the fine-tuned copy when finetune made one
    mid = encoder_model_id(settings)
    items = S.require_columns(
        lake.read(S.ITEMS), [S.ITEM_ID, S.TITLE, S.DESCRIPTION, S.CONTENT_HASH], "items"
    ).select(S.ITEM_ID, S.TITLE, S.DESCRIPTION, S.CONTENT_HASH)

    if lake.exists(S.ITEM_EMBEDDINGS):
        done = lake.read(S.ITEM_EMBEDDINGS).where(F.col(S.MODEL_ID) == F.lit(mid))
    else:
        done = spark.createDataFrame([], S.ITEM_EMBEDDINGS_SCHEMA)
    todo = items.join(done.select(S.ITEM_ID, S.CONTENT_HASH), [S.ITEM_ID, S.CONTENT_HASH], "left_anti")
    known = done.select(S.CONTENT_HASH, S.EMBEDDING).dropDuplicates([S.CONTENT_HASH])
    pending = (
        todo.dropDuplicates([S.CONTENT_HASH])
        .join(known.select(S.CONTENT_HASH), [S.CONTENT_HASH], "left_anti")
        .select(S.CONTENT_HASH, S.TITLE, S.DESCRIPTION)
    )
    # Counted first (a join of two small key columns, no model) so that progress can show an ETA.
    n_texts = pending.count()
    log.info("encode: %d distinct new or changed texts to encode with model %s", n_texts, mid)
    tasks = encode_tasks(n_texts, spark.sparkContext.defaultParallelism, settings.texts_per_task)
    texts = pending.repartition(tasks, S.CONTENT_HASH)
    with (
        CountProgress(spark, "encode", total=n_texts, unit="texts") as shown,
        # The Spark profile owns the Arrow batch size unless the config names one for this job.
        session_conf(
            spark, {ARROW_BATCH_CONF: str(settings.arrow_batch_rows)} if settings.arrow_batch_rows else {}
        ),
    ):
        fn = encode_partitions(settings, num_threads=_torch_threads(spark, settings), done=shown.accumulator)
        summary = _encode_and_merge(spark, lake, texts, todo, known, fn, mid, t0)
    summary["tasks"] = tasks
    log.info("encode: %s", summary)
    return summary


def _encode_and_merge(
    spark: SparkSession,
    lake: Lake,
    texts: DataFrame,
    todo: DataFrame,
    known: DataFrame,
    fn: Any,
    mid: str,
    t0: float,
) -> dict[str, Any]:
    encoded = texts.mapInPandas(fn, ENCODED_SCHEMA).persist()
    try:
        stats = encoded.agg(
            F.count(F.lit(1)).alias("n"),
            F.countDistinct(_WORKER).alias("workers"),
            F.max(_RSS).alias("rss"),
            F.array_sort(F.collect_set(_LINEAR)).alias("linear"),
            F.sum(F.when(~F.col(_HASH_OK), 1).otherwise(0)).alias("bad"),
        ).first()
        n_encoded = int(stats["n"]) if stats else 0
        if stats and stats["bad"]:
            log.warning(
                "encode: %d texts' sha256 differ from items.content_hash (ingest and encode disagree on "
                "the text); they are stored under the items' hash",
                stats["bad"],
            )
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        vectors = encoded.select(S.CONTENT_HASH, S.EMBEDDING, F.lit(True).alias("_new")).unionByName(
            known.select(S.CONTENT_HASH, S.EMBEDDING, F.lit(False).alias("_new"))
        )
        rows = todo.select(S.ITEM_ID, S.CONTENT_HASH).join(vectors, [S.CONTENT_HASH], "inner")
        result = rows.select(
            S.ITEM_ID,
            S.CONTENT_HASH,
            F.lit(mid).alias(S.MODEL_ID),
            S.EMBEDDING,
            F.lit(now).cast("timestamp").alias(S.ENCODED_AT),
            "_new",
        ).persist()
        counts = result.agg(F.count(F.lit(1)).alias("n"), F.sum(F.when(~F.col("_new"), 1)).alias("r")).first()
        n_rows = int(counts["n"]) if counts else 0
        n_reused = int(counts["r"] or 0) if counts else 0
        version = None
        if n_rows:
            # select, not S.conform: Spark refuses to cast array<float> (nullable elements, as read
            # back from Parquet) to array<float NOT NULL>; the column types already match.
            out = result.select(*S.ITEM_EMBEDDINGS_SCHEMA.fieldNames())
            version = lake.merge(S.ITEM_EMBEDDINGS, out, keys=[S.ITEM_ID, S.MODEL_ID])
        result.unpersist()
    finally:
        encoded.unpersist()
    summary = {
        "model_id": mid,
        "items": n_rows,
        "encoded": n_encoded,
        "reused": n_reused,
        "version": version,
        "workers": int(stats["workers"]) if stats and n_encoded else 0,
        "worker_peak_rss_mb": float(stats["rss"]) if stats and stats["rss"] is not None else None,
        # both where encoder.cpu_linear auto timed differently in two workers (docs/encode.md)
        "linear_backends": list(stats["linear"]) if stats and n_encoded else [],
        "hash_mismatches": int(stats["bad"] or 0) if stats else 0,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return summary
