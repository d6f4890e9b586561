"""The `runs` table: the stage runs, with the Delta versions each read and wrote.

Append-only, keyed by ``(run_id, stage, started_at, status)``: a stage run appends a ``running`` row when it
starts (its host and process id in ``message``) and a ``succeeded`` or ``failed`` row when it ends.
A run killed outright (SIGKILL, a lost driver) leaves only its ``running`` row, and its tables at
their last commit. The next stage run on the lake then appends an ``abandoned`` row for it when
its process is gone (same host) or it started more than ``lake.stale_run_hours`` ago: the
latest row of a ``(run_id, stage, started_at)`` (one attempt) is its status. Rows are written with
:meth:`~longtail.lake.Lake.append_new_rows` on that key, so two runs marking the same stale run add one
row. The final row carries the whole validated config as JSON; the config holds paths and knobs
only, never credentials (storage credentials belong in Spark/Hadoop settings, which are not
recorded).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from longtail.core import schema as S
from longtail.core.config import Config
from longtail.lake import Lake, tracking

log = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
FAILED = "failed"
RUNNING = "running"
ABANDONED = "abandoned"
FINAL = (SUCCEEDED, FAILED, ABANDONED)
KEYS = [S.RUN_ID, "stage", "started_at", "status"]  # started_at: one attempt of a reused run id


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
    """Record the stage run in `runs`: a ``running`` row now (after marking stale runs
    abandoned), the final row when the block ends, whether it succeeds or raises."""
    record = StageRecord(stage, run_id, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    t0 = time.perf_counter()
    try:  # bookkeeping never stops a stage
        mark_abandoned(spark, lake, stale_after_hours=cfg.lake.stale_run_hours)
        _append(cfg, lake, record, json.dumps(_process()), finished=False)
    except Exception:
        log.exception("could not record the start of %s in `runs`", stage)
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
            _append(cfg, lake, record, message)
        except Exception:  # never hide the stage's own error behind a bookkeeping one
            log.exception("could not record the run of %s in `runs`", stage)
        tracking.log_stage_run(cfg, lake, record, message)  # warns, never raises


def _process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    """True while process ``pid`` runs; a zombie (killed, not yet reaped by its parent: in a container
    whose init does not reap, that can last) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:  # Linux: the state is the field after the parenthesised command name
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):  # no /proc (macOS): the signal check stands
        return True


def mark_abandoned(spark: SparkSession, lake: Lake, *, stale_after_hours: float) -> list[tuple[str, str]]:
    """Append an ``abandoned`` row for every attempt ``(run_id, stage, started_at)`` whose only row is ``running``
    and whose process is gone (same host) or which started more than ``stale_after_hours`` ago.

    Returns the ``(run_id, stage)`` pairs marked. Reads `runs` without recording the read in
    ``lake.reads`` (bookkeeping is not an input of the stage).
    """
    if not lake.exists(S.RUNS):
        return []
    with _unrecorded(lake):
        rows = lake.rows(S.RUNS, [S.RUN_ID, "stage", "status", "started_at", "message"])
    final = {(r[S.RUN_ID], r["stage"], r["started_at"]) for r in rows if r["status"] in FINAL}
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    here = socket.gethostname()
    stale: list[tuple[Any, str]] = []
    for r in rows:
        if r["status"] != RUNNING or (r[S.RUN_ID], r["stage"], r["started_at"]) in final:
            continue
        try:
            proc = json.loads(r["message"] or "{}")
        except ValueError:
            proc = {}
        hours = (now - r["started_at"]).total_seconds() / 3600
        if proc.get("host") == here and isinstance(proc.get("pid"), int) and not _alive(proc["pid"]):
            why = f"abandoned: its process {proc['pid']} on {here} is gone"
        elif hours > stale_after_hours:
            why = f"abandoned: running for {hours:.1f} h (> lake.stale_run_hours {stale_after_hours:g}) without finishing"
        else:
            continue
        stale.append((r, why))
    if not stale:
        return []
    out = [
        {
            S.RUN_ID: r[S.RUN_ID],
            "stage": r["stage"],
            "status": ABANDONED,
            "started_at": r["started_at"],
            "finished_at": now,
            "config": "{}",
            "tables_read": None,
            "tables_written": None,
            "message": why,
        }
        for r, why in stale
    ]
    with _unrecorded(lake):
        lake.append_new_rows(S.RUNS, out, S.RUNS_SCHEMA, keys=KEYS)
    marked = [(r[S.RUN_ID], r["stage"]) for r, _ in stale]
    log.warning("runs: marked %d killed or lost run(s) abandoned: %s", len(marked), marked)
    return marked


def _append(
    cfg: Config,
    lake: Lake,
    record: StageRecord,
    message: str | None,
    *,
    finished: bool = True,
) -> None:
    row = {
        S.RUN_ID: record.run_id,
        "stage": record.stage,
        "status": record.status,
        "started_at": record.started_at,
        "finished_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) if finished else None,
        "config": cfg.to_json(),
        "tables_read": json.dumps(dict(lake.reads), sort_keys=True),
        "tables_written": json.dumps({t: v for t, v in lake.writes.items() if t != S.RUNS}, sort_keys=True),
        "message": message,
    }
    with _unrecorded(lake):  # driver-side rows: no Spark job on delta-rs (Lake.append_new_rows)
        lake.append_new_rows(S.RUNS, [row], S.RUNS_SCHEMA, keys=KEYS)


@contextmanager
def _unrecorded(lake: Lake) -> Iterator[None]:
    """Keep the bookkeeping's own reads and writes of `runs` out of ``lake.reads``/``writes``
    (the versions a stage run read and wrote are its inputs and outputs, not `runs`)."""
    reads, writes = dict(lake.reads), dict(lake.writes)
    try:
        yield
    finally:
        lake.reads.clear()
        lake.reads.update(reads)
        lake.writes.clear()
        lake.writes.update(writes)


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
