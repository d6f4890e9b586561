"""`finetune`: the encoder fine-tuned on items users consume together, published in the lake.

Reads ``interactions`` and ``items``; trains as :mod:`longtail.ml.finetune` describes (pairs from
Spark, one training process on the driver); writes the model folder to
``<lake.root>/models/encoder/<base name>-ft-<run id>/`` (copied there complete, then renamed: no
reader sees half a model) and then, as the run's commit point, the pointer
``<lake.root>/models/encoder/current.json``. A run that fails before the pointer leaves the
previous model current.

From then on every stage's encoder is the fine-tuned one (``encoder.use_finetuned: auto``,
:func:`longtail.ml.model.encoder_settings`): its weights differ, so its ``model_id`` does, and the
next ``encode`` encodes every item once for it (rows of the base model stay; ``use_finetuned:
never`` switches back without encoding anything).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from longtail.core import schema as S
from longtail.core.config import Config
from longtail.core.files import publish_dir, write_files
from longtail.core.uris import join_uri
from longtail.lake import Lake
from longtail.lake.runs import new_run_id
from longtail.ml import finetune as FT
from longtail.ml.encoder import inspect_model
from longtail.ml.model import FINETUNED_POINTER, finetuned_root, listed_items

log = logging.getLogger(__name__)


def run(
    spark: SparkSession, cfg: Config, *, lake: Lake | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Fine-tune ``encoder.model`` on the lake's interactions and make the result the current encoder.

    Returns the model card (:func:`longtail.ml.finetune.finetune`) plus ``path`` and ``model_id``.
    """
    t0 = time.perf_counter()
    lake = lake or Lake.from_config(spark, cfg)
    lake.require("finetune", S.INTERACTIONS, S.ITEMS)
    run_id = run_id or new_run_id()
    base = inspect_model(cfg.encoder.model, pooling=cfg.encoder.pooling, max_length=cfg.encoder.max_length)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{base.name}-ft-{run_id}")
    interactions = lake.read(S.INTERACTIONS)
    items = listed_items(lake)
    versions = {S.INTERACTIONS: lake.version(S.INTERACTIONS), S.ITEMS: lake.version(S.ITEMS)}
    out_uri = join_uri(finetuned_root(cfg), name)
    with tempfile.TemporaryDirectory(prefix="longtail-finetune-") as tmp:
        folder = Path(tmp) / name
        card = FT.finetune(
            interactions,
            items,
            cfg.encoder,
            cfg.finetune,
            folder,
            data_version={"tables": versions, "run_id": run_id},
        )
        model_id = inspect_model(
            str(folder), pooling=cfg.encoder.pooling, max_length=cfg.encoder.max_length
        ).model_id
        publish_dir(str(folder), out_uri, spark=spark)
    pointer = {
        "path": out_uri,
        "model_id": model_id,
        "base_model_id": base.model_id,
        "run_id": run_id,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # the commit point: readers switch to the new model when this one small file is replaced
    write_files(finetuned_root(cfg), [(FINETUNED_POINTER, json.dumps(pointer).encode())], spark=spark)
    summary = {**card, "path": out_uri, "model_id": model_id, "seconds": round(time.perf_counter() - t0, 1)}
    log.info(
        "finetune: %s",
        {k: summary[k] for k in ("model_id", "pairs", "steps", "loss_first", "loss_last", "seconds")},
    )
    return summary
