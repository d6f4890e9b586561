"""The `runs` table: one row per stage run, with the Delta versions it read and wrote.

A row is appended when the stage ends, succeeded or failed (a run killed outright leaves no row:
its tables are at their last commit, and the next run starts over). The row carries the whole
validated config as JSON; the config holds paths and knobs only, never credentials (storage
credentials belong in Spark/Hadoop settings, which are not recorded).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import Row, SparkSession

from longtail.core import schema as S
from longtail.core.config import Config
from longtail.lake import Lake

log = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
FAILED = "failed"


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus 6 random hex digits, e.g. ``20261122T140501Z-3fa9c1``."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@dataclass
class StageRecord:
    stage: str
    run_id: str
    started_at: dt.datetime
    seconds: float = 0.0
    status: str = "running"
    summary: dict[str, Any] = field(default_factory=dict)


@contextmanager
def recorded(spark: SparkSession, cfg: Config, lake: Lake, stage: str, run_id: str) -> Iterator[StageRecord]:
    """Record the stage run in `runs` when the block ends, whether it succeeds or raises."""
    record = StageRecord(stage, run_id, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    t0 = time.perf_counter()
    message: str | None = None
    try:
        yield record
        record.status = SUCCEEDED
    except BaseException as exc:
        record.status = FAILED
        message = f"{type(exc).__name__}: {exc}"[:4000]
        raise
    finally:
        record.seconds = time.perf_counter() - t0
        try:
            _append(spark, cfg, lake, record, message)
        except Exception:  # never hide the stage's own error behind a bookkeeping one
            log.exception("could not record the run of %s in `runs`", stage)


def _append(spark: SparkSession, cfg: Config, lake: Lake, record: StageRecord, message: str | None) -> None:
    row = Row(
        run_id=record.run_id,
        stage=record.stage,
        status=record.status,
        started_at=record.started_at,
        finished_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
        config=cfg.to_json(),
        tables_read=json.dumps(dict(lake.reads), sort_keys=True),
        tables_written=json.dumps({t: v for t, v in lake.writes.items() if t != S.RUNS}, sort_keys=True),
        message=message,
    )
    lake.append(S.RUNS, spark.createDataFrame([row], S.RUNS_SCHEMA))


def run_stage(
    spark: SparkSession,
    cfg: Config,
    stage: str,
    fn: Callable[..., dict[str, Any]],
    *,
    run_id: str,
    lake: Lake | None = None,
) -> StageRecord:
    """Run ``fn(spark, cfg, lake=..., run_id=...)`` on a fresh :class:`Lake`, recorded in `runs`."""
    lake = lake or Lake.from_config(spark, cfg)
    with recorded(spark, cfg, lake, stage, run_id) as record:
        record.summary = fn(spark, cfg, lake=lake, run_id=run_id) or {}
    return record
