"""`train`: ALS factors, stable id maps, the text-to-CF projection head and the learned fusion ranker.

Reads `interactions`, `items` and the current `item_embeddings`; fits with
:func:`longtail.ml.cf.fit` (id maps, implicit ALS, projection head: the module doc there explains
each step) and, with ``recommend.fusion: learned``, :func:`longtail.ml.fusion.fit_ranker`; writes
`user_ids`, `item_ids`, `user_factors`, `item_factors`, the Mult-VAE (``<lake.root>/models/vae/<run_id>``),
the ranker (MLlib persistence under ``<lake.root>/models/ranker/<run_id>``) and `projection_head` last, so that a run that failed half-way
is recognised by :func:`longtail.ml.model.load_model`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from pyspark.sql import SparkSession

from longtail.core import schema as S
from longtail.core.config import Config, join_uri
from longtail.lake import Lake
from longtail.lake.runs import new_run_id
from longtail.ml import augment as A
from longtail.ml import ranker as L
from longtail.ml import vae as V
from longtail.ml.cf import fit
from longtail.ml.fusion import fit_ranker
from longtail.ml.head import ProjectionHead
from longtail.ml.model import current_embeddings, encoder_model_id, encoder_settings, head_row

log = logging.getLogger(__name__)


def run(
    spark: SparkSession, cfg: Config, *, lake: Lake | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Train ALS and the projection head on the lake's tables and write them.

    Returns:
        A summary: users, items (catalogue), interactions, rated items, warm items, the head's
        validation figures, table versions written, seconds.
    """
    t0 = time.perf_counter()
    lake = lake or Lake.from_config(spark, cfg)
    lake.require("train", S.INTERACTIONS, S.ITEMS, S.ITEM_EMBEDDINGS)
    mid = encoder_model_id(encoder_settings(cfg, spark))
    interactions = lake.read(S.INTERACTIONS)
    items = lake.read(S.ITEMS)
    embeddings = current_embeddings(lake, mid, items=items)
    users_existing = lake.read(S.ID_MAP_USERS) if lake.exists(S.ID_MAP_USERS) else None
    items_existing = lake.read(S.ID_MAP_ITEMS) if lake.exists(S.ID_MAP_ITEMS) else None
    model, new_u, new_i = fit(
        spark,
        cfg,
        interactions,
        items,
        embeddings,
        model_id=mid,
        users_existing=users_existing,
        items_existing=items_existing,
    )
    ranker_summary: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    run_id = run_id or new_run_id()
    if model.vae is not None:
        model.vae = V.save(spark, model.vae, join_uri(lake.root, "models", "vae", run_id))
        extra["vae"] = {"path": model.vae.path, "spec": model.vae.spec}
    if cfg.recommend.fusion == "learned":
        ranker = fit_ranker(spark, cfg, interactions, items, embeddings, model_id=mid)
        path = join_uri(lake.root, "models", "ranker", run_id)
        ranker = L.save(ranker, path)
        ranker_summary = {"path": ranker.path, "features": list(ranker.features), **ranker.info}
        extra["ranker"] = {
            "path": ranker.path,
            "signal": ranker.signal,
            "pop_penalty": ranker.pop_penalty,
            "tail_boost": ranker.tail_boost,
            "features": list(ranker.features),
            "info": {k: v for k, v in ranker.info.items() if k != "importances"},
        }
    try:
        for table, rows in ((S.ID_MAP_USERS, new_u), (S.ID_MAP_ITEMS, new_i)):
            rows = rows.persist()
            if not lake.exists(table):
                lake.overwrite(table, rows)
            elif not rows.isEmpty():
                lake.append(table, rows)
            rows.unpersist()
        spec = model.head.spec
        versions = {
            S.USER_FACTORS: lake.overwrite(S.USER_FACTORS, model.user_factors),
            S.ITEM_FACTORS: lake.overwrite(S.ITEM_FACTORS, model.item_factors),
        }
        if model.synthetic is not None:
            rows = A.synthetic_rows(model.synthetic, model.user_map, model.item_map, run_id)
            versions[S.SYNTHETIC_INTERACTIONS] = lake.overwrite(
                S.SYNTHETIC_INTERACTIONS, S.conform(rows, S.SYNTHETIC_INTERACTIONS_SCHEMA)
            )
            extra["vae"]["synthetic_rows"] = model.synthetic.count()
        spec = dataclasses.replace(spec, extra={**spec.extra, "run_id": run_id, "tables": versions, **extra})
        head = ProjectionHead(spec, model.head.params)
        lake.overwrite(S.PROJECTION_HEAD, head_row(spark, head, run_id or ""))
        counts = {
            "users": model.user_factors.count(),
            "items_with_factors": model.item_factors.count(),
        }
    finally:
        model.unpersist()
    summary = {
        "model_id": mid,
        **counts,
        "als": {"rank": cfg.train.als.rank, "reg": cfg.train.als.reg, "alpha": cfg.train.als.alpha},
        "head": {"trained_items": spec.trained_items, "validation": spec.validation, "hidden": spec.hidden},
        "versions": versions,
        "ranker": ranker_summary,
        "vae": extra.get("vae"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("train: %s", summary)
    return summary
