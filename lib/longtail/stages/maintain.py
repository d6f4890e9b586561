"""`maintain`: lake upkeep for scheduled use — compaction, log checkpoints, VACUUM, on every table.

Daily appends leave many small files; merges, overwrites and compaction leave files that no
current version references; a killed or failed write leaves its staged files (never committed).
For each table (``maintain.tables``, default every longtail table that exists under the lake):

1. **compact** (``maintain.compact``): bin-pack small files into ~``maintain.target_file_mb`` files,
   one commit that changes no row (``dataChange=false``);
2. **checkpoint** (``maintain.checkpoint``): a Parquet checkpoint of the log at the current version;
3. **vacuum**: delete the unreferenced files older than ``maintain.retention_hours`` (default 168,
   Delta's own default). Readers of older versions and writers that started within the retention
   are unaffected, so the stage is safe while other stages run: keep the retention above your
   longest run and your longest time-travel need.

Then the **model folders** (``maintain.models``): every `train` writes ``models/ranker/<run_id>``
and ``models/vae/<run_id>``, every `finetune` ``models/encoder/<name>``, and nothing removed them.
A folder is deleted when the lake's current state does not reference it (the current
``projection_head`` row for the ranker and the VAE, ``models/encoder/current.json`` for the
encoder) and its newest file is older than ``retention_hours``: the same rule as VACUUM, so a
`train` still writing its folder, or a `recommend` that read the previous head before a new one
was committed, keeps its files. A kind whose reference cannot be read (no head yet, no pointer)
is left alone. Hidden folders that killed runs left (``.<name>.<uuid>.tmp``) are unreferenced, so
they go once old enough. So do the folders under ``_staging`` (a distributed VAE fit's shards,
deleted by the fit itself unless it was killed) once older than ``retention_hours``.

Run it on a schedule after the nightly pipeline (see README "Scheduling"); it is idempotent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.sql import SparkSession

from longtail.core import schema as S
from longtail.core.config import Config
from longtail.core.files import delete_folder, list_folders
from longtail.core.uris import join_uri
from longtail.lake import Lake
from longtail.ml.cf import STAGING
from longtail.ml.model import MODEL_FOLDERS, model_folders_in_use

log = logging.getLogger(__name__)

TABLES = (*S.WRITTEN_BY, S.RUNS)


def run(
    spark: SparkSession, cfg: Config, *, lake: Lake | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Compact, checkpoint and vacuum every table; returns per-table figures.

    Returns:
        ``tables``: per table ``version_before``, ``version_after``, ``files_added``,
        ``files_removed`` (compaction) and ``vacuumed`` (files deleted; delta-spark reports None);
        ``models``: per kind of model folder, the folders ``deleted`` and ``kept`` (with
        ``maintain.models``); ``seconds``.
    """
    t0 = time.perf_counter()
    lake = lake or Lake.from_config(spark, cfg)
    m = cfg.maintain
    unknown = sorted(set(m.tables or ()) - set(TABLES))
    if unknown:
        raise ValueError(f"maintain.tables: unknown table(s) {unknown}; allowed: {sorted(TABLES)}")
    out: dict[str, Any] = {}
    for table in m.tables or TABLES:
        if not lake.exists(table):
            continue
        before = lake.version(table)
        row: dict[str, Any] = {"version_before": before, "files_added": 0, "files_removed": 0}
        if m.compact:
            row.update(lake.compact(table, target_bytes=m.target_file_mb << 20))
        if m.checkpoint:
            lake.checkpoint(table)
        deleted = lake.vacuum(table, retention_hours=m.retention_hours)
        row["vacuumed"] = len(deleted) if lake.engine_name == "delta-rs" else None
        row["version_after"] = lake.version(table)
        out[table] = row
        log.info("maintain %s: %s", table, row)
    models = prune_models(spark, cfg, lake) if m.models else {}
    return {
        "tables": out,
        "models": models,
        "retention_hours": m.retention_hours,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def prune_models(spark: SparkSession, cfg: Config, lake: Lake) -> dict[str, dict[str, list[str]]]:
    """Delete the model folders nothing references any more, and what a killed fit left in
    ``_staging`` (module docstring); returns per kind the folder names ``deleted`` and ``kept``."""
    in_use = model_folders_in_use(lake, cfg)
    bases = {kind: join_uri(lake.root, "models", kind) for kind in MODEL_FOLDERS}
    in_use[STAGING] = set()  # a running fit's folder is young; none outlives its fit
    bases[STAGING] = join_uri(lake.root, STAGING)
    now = time.time()
    out: dict[str, dict[str, list[str]]] = {}
    for kind, base in bases.items():
        folders = list_folders(base, spark=spark)
        live = in_use[kind]
        if not folders:
            continue
        deleted, kept = [], []
        for name, newest in sorted(folders.items()):
            old = (now - newest) / 3600.0 >= cfg.maintain.retention_hours
            if live is None or name in live or not old:
                kept.append(name)
                continue
            delete_folder(join_uri(base, name), spark=spark)
            deleted.append(name)
        out[kind] = {"deleted": deleted, "kept": kept}
        log.info("maintain %s: deleted %s, kept %s", base, deleted, kept)
    return out
