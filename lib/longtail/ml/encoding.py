"""The Spark adapter of the encoder: a ``mapInPandas`` function that loads one encoder per worker.

Why ``mapInPandas`` and not ``pyspark.ml.functions.predict_batch_udf``: predict_batch_udf keys its
per-worker model cache by a fresh uuid per UDF object, so every stage run in a long-lived worker
(notebooks, the pipeline) reloads the model, and its cache holds three models at most; it also
slices each Arrow batch into fixed-row batches, while the encoder batches by token budget after
sorting by length. The iterator UDF here keeps one :class:`~longtail.ml.encoder.TextEncoder` per worker
keyed by its settings (:func:`~longtail.ml.encoder.cached_encoder`), picks the task's GPU from
``TaskContext.resources()`` and returns per-worker diagnostics (pid, peak RSS, the linear layers'
backend) for the summary.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Iterator
from typing import Any

import pandas as pd
from pyspark.sql import types as T

from longtail.core import schema as S
from longtail.core.config import EncoderConfig

log = logging.getLogger(__name__)

ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
_WORKER = "_worker_pid"
_RSS = "_worker_peak_rss_mb"
_HASH_OK = "_hash_ok"
_LINEAR = "_worker_linear"  # TextEncoder.linear_backend: aten or onednn (the vectors differ at fp32 rounding)
ENCODED_SCHEMA = T.StructType(
    [
        T.StructField(S.CONTENT_HASH, T.StringType(), False),
        T.StructField(S.EMBEDDING, T.ArrayType(T.FloatType(), False), False),
        T.StructField(_HASH_OK, T.BooleanType(), False),
        T.StructField(_WORKER, T.LongType(), False),
        T.StructField(_RSS, T.DoubleType(), False),
        T.StructField(_LINEAR, T.StringType(), False),
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


def encode_tasks(n_texts: int, parallelism: int, texts_per_task: int) -> int:
    """Tasks for encoding ``n_texts`` texts: ``max(parallelism, ceil(n_texts / texts_per_task))``,
    rounded up to a multiple of ``parallelism`` so the last wave keeps every slot busy.

    Example: 10,000 texts on 4 slots at 20,000 per task: 4 tasks; 1,000,000 texts: 52 (50 rounded
    up to a multiple of 4).
    """
    parallelism = max(1, parallelism)
    needed = max(parallelism, -(-n_texts // max(1, texts_per_task)))
    return -(-needed // parallelism) * parallelism


def encode_partitions(settings: EncoderConfig, *, num_threads: int | None, done: Any = None) -> Any:
    """Build the ``mapInPandas`` function: (content_hash, title, description) -> vectors.

    The text is :func:`longtail.core.text.encoder_text` of title and description; its sha256 is checked
    against ``content_hash`` (``_hash_ok``), since the hash is what decides re-encoding.

    Args:
        settings: the encoder settings (the model is loaded once per Python worker).
        num_threads: torch threads per task.
        done: a Spark accumulator that each batch adds its row count to (the driver's progress
            line, :class:`longtail.core.progress.CountProgress`); None: no counting.
    """

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from longtail.core.text import content_hash, encoder_text
        from longtail.ml.encoder import cached_encoder

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
            texts = [encoder_text(t, d) for t, d in zip(pdf[S.TITLE], pdf[S.DESCRIPTION], strict=True)]
            vectors = enc.encode(texts)
            if done is not None:
                done.add(len(hashes))
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
            yield pd.DataFrame(
                {
                    S.CONTENT_HASH: hashes,
                    S.EMBEDDING: list(vectors),
                    _HASH_OK: [content_hash(t) == h for t, h in zip(texts, hashes, strict=True)],
                    _WORKER: pid,
                    _RSS: rss_mb,
                    _LINEAR: enc.linear_backend,
                }
            )

    return encode


def encode_items(
    spark: Any, settings: EncoderConfig, items: Any, *, model_id: str, num_threads: int | None = None
) -> Any:
    """Vectors of ``items`` (item_id, title, description, content_hash) under ``settings``, computed
    now and not stored: ``item_embeddings``-shaped rows, one per item, each distinct text encoded
    once. For vectors that must not enter the lake (``evaluate``'s fine-tuned encoder, which saw
    only the training part). The texts are cut into tasks as ``encode`` cuts them
    (:func:`encode_tasks`; one count of the distinct texts for it); the rest is lazy: the caller
    persists."""
    from pyspark.sql import functions as F

    distinct = items.select(S.CONTENT_HASH, S.TITLE, S.DESCRIPTION).dropDuplicates([S.CONTENT_HASH])
    tasks = encode_tasks(distinct.count(), spark.sparkContext.defaultParallelism, settings.texts_per_task)
    texts = distinct.repartition(tasks, S.CONTENT_HASH)
    encoded = texts.mapInPandas(encode_partitions(settings, num_threads=num_threads), ENCODED_SCHEMA)
    return (
        items.select(S.ITEM_ID, S.CONTENT_HASH)
        .join(encoded.select(S.CONTENT_HASH, S.EMBEDDING), S.CONTENT_HASH)
        .select(
            S.ITEM_ID,
            S.CONTENT_HASH,
            F.lit(model_id).alias(S.MODEL_ID),
            S.EMBEDDING,
            F.current_timestamp().cast("timestamp").alias(S.ENCODED_AT),
        )
    )
