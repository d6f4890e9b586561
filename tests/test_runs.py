"""The runs table and the pipeline's "outputs are current" check."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from longtail.core import schema as S
from longtail.core.config import load_config
from longtail.lake import Lake
from longtail.lake.runs import ABANDONED, FAILED, RUNNING, SUCCEEDED, mark_abandoned, run_stage
from longtail.stages.pipeline import headline_table, is_current

pytestmark = pytest.mark.spark


def _copy_stage(spark, cfg, *, lake, run_id):
    # A stand-in stage with real I/O: reads `interactions`, writes `items`.
    n = lake.read(S.INTERACTIONS).count()
    lake.overwrite(S.ITEMS, spark.createDataFrame([(str(n),)], "item_id string"))
    return {"n": n}


def _failing_stage(spark, cfg, *, lake, run_id):
    lake.read(S.INTERACTIONS).count()
    raise ValueError("boom")


def test_runs_rows_record_status_versions_and_config(spark, lake_root):
    cfg = load_config(overrides=[f"lake.root={lake_root}", "recommend.k=7"])
    lake = Lake(spark, lake_root)
    lake.overwrite(S.INTERACTIONS, spark.createDataFrame([("u", "i")], "user_id string, item_id string"))
    lake.append(S.INTERACTIONS, spark.createDataFrame([("u", "j")], "user_id string, item_id string"))

    record = run_stage(spark, cfg, "train", _copy_stage, run_id="run-1")
    assert record.status == SUCCEEDED and record.summary == {"n": 2}
    with pytest.raises(ValueError, match="boom"):
        run_stage(spark, cfg, "recommend", _failing_stage, run_id="run-1")

    all_rows = Lake(spark, lake_root).read(S.RUNS).collect()
    # each attempt: a `running` row at its start (host and pid), then its final row
    assert sorted((r["stage"], r["status"]) for r in all_rows) == [
        ("recommend", FAILED), ("recommend", RUNNING), ("train", RUNNING), ("train", SUCCEEDED),
    ]  # fmt: skip
    started = {r["stage"]: r for r in all_rows if r["status"] == RUNNING}
    assert json.loads(started["train"]["message"])["pid"] == os.getpid()
    assert started["train"]["finished_at"] is None
    rows = {r["stage"]: r for r in all_rows if r["status"] != RUNNING}
    ok, bad = rows["train"], rows["recommend"]
    assert ok["started_at"] == started["train"]["started_at"]
    assert (ok["run_id"], ok["status"], ok["message"]) == ("run-1", SUCCEEDED, None)
    assert json.loads(ok["tables_read"]) == {S.INTERACTIONS: 1}
    assert json.loads(ok["tables_written"]) == {S.ITEMS: 0}
    assert json.loads(ok["config"])["recommend"]["k"] == 7
    assert ok["finished_at"] >= ok["started_at"]
    assert (bad["status"], bad["message"]) == (FAILED, "ValueError: boom")
    assert json.loads(bad["tables_written"]) == {}


def _running_row(run_id: str, host: str, pid: int, hours_ago: float):
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(hours=hours_ago)
    msg = json.dumps({"host": host, "pid": pid})
    return (run_id, "encode", RUNNING, started, None, "{}", None, None, msg)


def test_killed_and_lost_runs_are_marked_abandoned_once(spark, lake_root):
    import socket

    lake = Lake(spark, lake_root)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a real process that has ended: its pid is free
    here = socket.gethostname()
    rows = [
        _running_row("killed", here, gone.pid, 0.1),  # same host, process gone: abandoned now
        _running_row("alive", here, os.getpid(), 0.1),  # same host, process alive: still running
        _running_row("elsewhere", "another-host", 1, 2.0),  # cannot check, younger than the limit
        _running_row("lost", "another-host", 1, 30.0),  # older than lake.stale_run_hours
        _running_row("done", "another-host", 1, 30.0),  # ... but it finished
    ]
    lake.append(S.RUNS, spark.createDataFrame(rows, S.RUNS_SCHEMA))
    done = (*rows[-1][:2], SUCCEEDED, rows[-1][3], rows[-1][3], "{}", None, None, None)
    lake.append(S.RUNS, spark.createDataFrame([done], S.RUNS_SCHEMA))
    reads_before = dict(lake.reads)
    marked = mark_abandoned(spark, lake, stale_after_hours=24.0)
    assert sorted(marked) == [("killed", "encode"), ("lost", "encode")]
    assert lake.reads == reads_before  # bookkeeping is not an input
    assert mark_abandoned(spark, lake, stale_after_hours=24.0) == []  # once
    got = {r["run_id"]: r for r in lake.read(S.RUNS).where(f"status = '{ABANDONED}'").collect()}
    assert set(got) == {"killed", "lost"}
    assert f"process {gone.pid}" in got["killed"]["message"] and "30.0 h" in got["lost"]["message"]
    assert got["killed"]["started_at"] == rows[0][3] and got["killed"]["finished_at"] is not None
    # the next stage run marks them too (here: the 2-hour-old one, with a 1-hour limit)
    cfg = load_config(overrides=[f"lake.root={lake_root}", "lake.stale_run_hours=1"])
    lake.overwrite(S.INTERACTIONS, spark.createDataFrame([("u", "i")], "user_id string, item_id string"))
    run_stage(spark, cfg, "train", _copy_stage, run_id="next", lake=Lake(spark, lake_root))
    abandoned = Lake(spark, lake_root).read(S.RUNS).where(f"status = '{ABANDONED}'").collect()
    assert sorted(r["run_id"] for r in abandoned) == ["elsewhere", "killed", "lost"]


def test_is_current_follows_table_versions_and_settings(spark, lake_root):
    cfg = load_config(overrides=[f"lake.root={lake_root}"])
    lake = Lake(spark, lake_root)
    lake.overwrite(S.INTERACTIONS, spark.createDataFrame([("u", "i")], "user_id string, item_id string"))
    assert not is_current(spark, lake, cfg, "train")  # never ran
    run_stage(spark, cfg, "train", _copy_stage, run_id="r1")
    assert is_current(spark, Lake(spark, lake_root), cfg, "train")
    # Another recommend setting does not make train stale; another train setting does.
    assert is_current(
        spark, lake, load_config(overrides=[f"lake.root={lake_root}", "recommend.k=3"]), "train"
    )
    assert not is_current(
        spark, lake, load_config(overrides=[f"lake.root={lake_root}", "train.als.rank=8"]), "train"
    )
    # A new version of an input table makes it stale.
    lake.append(S.INTERACTIONS, spark.createDataFrame([("u", "j")], "user_id string, item_id string"))
    assert not is_current(spark, lake, cfg, "train")
    assert not is_current(spark, lake, cfg, "ingest")  # incremental stages always run


def test_headline_table(spark, lake_root):
    lake = Lake(spark, lake_root)
    rows = [
        ("r", "cf", "ndcg", 10, "all", 0.125),
        ("r", "cf", "recall", 20, "cold", 0.0),
        ("r", "fused", "ndcg", 10, "all", 0.12),
        ("r", "fused", "long_tail_coverage", 10, "all", 0.25),
        ("other", "cf", "ndcg", 10, "all", 0.9),
        ("r", "cf", "ndcg", 20, "all", 0.5),
    ]
    lake.append(S.METRICS, spark.createDataFrame(rows, S.METRICS_SCHEMA))
    lines = headline_table(lake, "r").splitlines()
    assert lines[0].split()[:3] == ["variant", "ndcg@10", "recall@20"]
    assert lines[1].split() == ["cf", "0.1250", "-", "-", "-", "0.0000"]
    assert lines[2].split() == ["fused", "0.1200", "-", "0.2500", "-", "-"]
    assert headline_table(lake, "missing") == ""
