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

Why ``mapInPandas`` and not ``pyspark.ml.functions.predict_batch_udf``: predict_batch_udf keys its
per-worker model cache by a fresh uuid per UDF object, so every stage run in a long-lived worker
(notebooks, the pipeline) reloads the model, and its cache holds three models at most; it also
slices each Arrow batch into fixed-row batches, while the encoder batches by token budget after
sorting by length. The iterator UDF here keeps one :class:`~longtail.encoder.TextEncoder` per worker
keyed by its settings (:func:`~longtail.encoder.cached_encoder`), picks the task's GPU from
``TaskContext.resources()`` and returns per-worker diagnostics (pid, peak RSS) for the summary.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import resource
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail import schema as S
from longtail.config import Config, EncoderConfig
from longtail.encoder import inspect_model
from longtail.lake import Lake

log = logging.getLogger(__name__)

# Test hook: a content_hash (or "*") whose encoding raises inside the UDF. Read on the driver when
# the stage starts and shipped to the workers with the UDF, so it also works on a running session.
FAIL_ON_ENV = "LONGTAIL_TEST_ENCODE_FAIL_ON"
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
_WORKER = "_worker_pid"
_RSS = "_worker_peak_rss_mb"
_HASH_OK = "_hash_ok"
ENCODED_SCHEMA = T.StructType(
    [
        T.StructField(S.CONTENT_HASH, T.StringType(), False),
        T.StructField(S.EMBEDDING, T.ArrayType(T.FloatType(), False), False),
        T.StructField(_HASH_OK, T.BooleanType(), False),
        T.StructField(_WORKER, T.LongType(), False),
        T.StructField(_RSS, T.DoubleType(), False),
    ]
)


def _task_device(device: str) -> str:
    """The device for this task: the GPU Spark assigned it, else what the config says."""
    if device == "cpu":
        return "cpu"
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}"
    return device  # auto: CUDA if this executor sees one, else CPU; cuda: the default GPU


def encode_partitions(settings: EncoderConfig, *, num_threads: int | None, fail_on: str | None = None) -> Any:
    """Build the ``mapInPandas`` function: (content_hash, title, description) -> vectors.

    The text is :func:`longtail.text.encoder_text` of title and description; its sha256 is checked
    against ``content_hash`` (``_hash_ok``), since the hash is what decides re-encoding.
    """

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from longtail.encoder import cached_encoder
        from longtail.text import content_hash, encoder_text

        enc = cached_encoder(
            settings.model,
            device=_task_device(settings.device),
            dtype=settings.dtype,
            max_length=settings.max_length,
            batch_tokens=settings.batch_tokens,
            pooling=settings.pooling,
            num_threads=num_threads,
            cpu_linear=settings.cpu_linear,
        )
        pid = os.getpid()
        for pdf in batches:
            hashes = pdf[S.CONTENT_HASH].tolist()
            if fail_on is not None and (fail_on == "*" or fail_on in hashes):
                raise RuntimeError(f"{FAIL_ON_ENV}: injected failure on content_hash {fail_on}")
            texts = [encoder_text(t, d) for t, d in zip(pdf[S.TITLE], pdf[S.DESCRIPTION], strict=True)]
            vectors = enc.encode(texts)
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
            yield pd.DataFrame(
                {
                    S.CONTENT_HASH: hashes,
                    S.EMBEDDING: list(vectors),
                    _HASH_OK: [content_hash(t) == h for t, h in zip(texts, hashes, strict=True)],
                    _WORKER: pid,
                    _RSS: rss_mb,
                }
            )

    return encode


def current_embeddings(
    source: Lake | DataFrame, model_id: str, *, items: DataFrame | None = None
) -> DataFrame:
    """One vector per item of ``items``: the row of ``model_id`` whose content_hash is current.

    Items without such a row (not yet encoded, or whose text changed since) are absent; rows of
    other models and of items no longer in ``items`` are ignored.

    Args:
        source: a :class:`Lake` (``items`` and ``item_embeddings`` are read from it) or an
            ``item_embeddings`` DataFrame (then pass ``items``).
        model_id: the model whose vectors to return (e.g. ``TextEncoder.model_id``,
            :func:`longtail.encoder.model_id`).
        items: the items DataFrame (needs item_id and content_hash); default: the lake's.

    Example:
        >>> vecs = current_embeddings(lake, encoder.model_id(cfg.encoder.model))
    """
    if isinstance(source, Lake):
        embeddings = source.read(S.ITEM_EMBEDDINGS)
        items = items if items is not None else source.read(S.ITEMS)
    else:
        embeddings = source
        if items is None:
            raise ValueError("current_embeddings(DataFrame, ...) needs items=")
    S.require_columns(items, [S.ITEM_ID, S.CONTENT_HASH], "items")
    keys = items.select(S.ITEM_ID, S.CONTENT_HASH).dropDuplicates([S.ITEM_ID, S.CONTENT_HASH])
    rows = embeddings.where(F.col(S.MODEL_ID) == F.lit(model_id))
    return rows.join(keys, [S.ITEM_ID, S.CONTENT_HASH], "inner").select(
        *S.ITEM_EMBEDDINGS_SCHEMA.fieldNames()
    )


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
        ``version`` (the new table version, None when nothing was written), ``workers`` (Python
        workers that encoded), ``worker_peak_rss_mb``, ``hash_mismatches``, ``seconds``.
    """
    t0 = time.perf_counter()
    lake = lake or Lake.from_config(spark, cfg)
    settings = cfg.encoder
    if not lake.exists(S.ITEMS):
        raise RuntimeError(
            f"encode: table '{S.ITEMS}' does not exist under {lake.path('')}; run ingest first"
        )
    mid = inspect_model(settings.model, pooling=settings.pooling, max_length=settings.max_length).model_id
    items = S.require_columns(
        lake.read(S.ITEMS), [S.ITEM_ID, S.TITLE, S.DESCRIPTION, S.CONTENT_HASH], "items"
    ).select(S.ITEM_ID, S.TITLE, S.DESCRIPTION, S.CONTENT_HASH)

    if lake.exists(S.ITEM_EMBEDDINGS):
        done = lake.read(S.ITEM_EMBEDDINGS).where(F.col(S.MODEL_ID) == F.lit(mid))
    else:
        done = spark.createDataFrame([], S.ITEM_EMBEDDINGS_SCHEMA)
    todo = items.join(done.select(S.ITEM_ID, S.CONTENT_HASH), [S.ITEM_ID, S.CONTENT_HASH], "left_anti")
    known = done.select(S.CONTENT_HASH, S.EMBEDDING).dropDuplicates([S.CONTENT_HASH])
    texts = (
        todo.dropDuplicates([S.CONTENT_HASH])
        .join(known.select(S.CONTENT_HASH), [S.CONTENT_HASH], "left_anti")
        .select(S.CONTENT_HASH, S.TITLE, S.DESCRIPTION)
        .repartition(spark.sparkContext.defaultParallelism, S.CONTENT_HASH)
    )
    fn = encode_partitions(
        settings, num_threads=_torch_threads(spark, settings), fail_on=os.environ.get(FAIL_ON_ENV) or None
    )
    previous = spark.conf.get(ARROW_BATCH_CONF, None)
    spark.conf.set(ARROW_BATCH_CONF, str(settings.arrow_batch_rows))
    encoded = texts.mapInPandas(fn, ENCODED_SCHEMA).persist()
    try:
        stats = encoded.agg(
            F.count(F.lit(1)).alias("n"),
            F.countDistinct(_WORKER).alias("workers"),
            F.max(_RSS).alias("rss"),
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
        if previous is None:
            spark.conf.unset(ARROW_BATCH_CONF)
        else:
            spark.conf.set(ARROW_BATCH_CONF, previous)
    summary = {
        "model_id": mid,
        "items": n_rows,
        "encoded": n_encoded,
        "reused": n_reused,
        "version": version,
        "workers": int(stats["workers"]) if stats and n_encoded else 0,
        "worker_peak_rss_mb": float(stats["rss"]) if stats and stats["rss"] is not None else None,
        "hash_mismatches": int(stats["bad"] or 0) if stats else 0,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("encode: %s", summary)
    return summary
