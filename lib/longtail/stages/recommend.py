"""`recommend`: the top-k lists of ``recommend.variant`` for every user, written to ``recommendations``.

The scoring itself (candidates, fusion, re-ranking, reservations) lives in :mod:`longtail.ml.scoring`;
``docs/scoring.md`` explains each step and the measurements behind it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import Config
from longtail.lake import Lake

# --- the stage -----------------------------------------------------------------------------------
from longtail.ml.model import current_embeddings, encoder_model_id, encoder_settings, listed_items, load_model
from longtail.ml.scoring import recommend

log = logging.getLogger(__name__)


def run(
    spark: SparkSession, cfg: Config, *, lake: Lake | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Write ``recommend.variant``'s top-k lists of every user with history to ``recommendations``."""
    t0 = time.perf_counter()
    lake = lake or Lake.from_config(spark, cfg)
    mid = encoder_model_id(encoder_settings(cfg, spark))
    model = load_model(lake, model_id=mid)
    interactions = lake.read(S.INTERACTIONS)
    embeddings = current_embeddings(lake, mid)  # every item's: user profiles read their history
    catalogue = listed_items(lake)  # the candidates: removed items are never recommended
    variant = cfg.recommend.variant
    lists, cands = recommend(
        spark,
        cfg.recommend,
        model=model,
        interactions=interactions,
        embeddings=embeddings,
        variants=[variant],
        catalogue=catalogue,
    )
    try:
        version = lake.overwrite(S.RECOMMENDATIONS, lists[variant])
        written = lake.read(S.RECOMMENDATIONS)
        row = written.agg(
            F.countDistinct(S.USER_ID).alias("users"),
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct(S.ITEM_ID).alias("items"),
            F.avg(F.col(S.IS_LONG_TAIL).cast("double")).alias("tail_share"),
        ).first()
    finally:
        cands.unpersist()
    assert row is not None
    summary = {
        "variant": variant,
        "k": cfg.recommend.k,
        "users": int(row["users"]),
        "rows": int(row["rows"]),
        "distinct_items": int(row["items"]),
        "long_tail_share": round(float(row["tail_share"] or 0.0), 4),
        "version": version,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("recommend: %s", summary)
    return summary
