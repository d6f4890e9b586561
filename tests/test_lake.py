"""The lake module on real Spark and real Delta tables in temporary folders.

Every expected table below is written out by hand from the tiny inputs next to it. The tables are
then opened by other readers (deltalake, DuckDB on the files deltalake lists) to show they are
plain Delta, not something only this module understands.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core.config import load_config
from longtail.core.uris import path_key, rs_uri
from longtail.lake import (
    CommitConflictError,
    DuplicateKeysError,
    Lake,
    LakeError,
    SchemaMismatchError,
    delta_rs,
    is_delta_spark_available,
)
from longtail.lake.delta_rs import _json_stat

pytestmark = pytest.mark.spark

SCHEMA = T.StructType(
    [
        T.StructField("id", T.StringType(), False),
        T.StructField("ts", T.TimestampType(), True),
        T.StructField("w", T.DoubleType(), True),
        T.StructField("vec", T.ArrayType(T.FloatType(), False), True),
    ]
)
JAN1, FEB1, MAR1 = dt.datetime(2024, 1, 1), dt.datetime(2024, 2, 1), dt.datetime(2024, 3, 1)
ROWS = [("a", JAN1, 1.0, [0.5, 0.25]), ("b", None, 2.0, None), ("c", FEB1, 3.0, [1.0])]


def _df(spark, rows, partitions: int = 1):
    """``rows`` in ``partitions`` slices, in order (so 3 rows in 3 slices give 3 files of one row)."""
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, partitions), SCHEMA)


def _rows(df) -> list[tuple]:
    return sorted(tuple(r) for r in df.collect())


def _data_folders(table_path: str) -> set[str]:
    return {p.name for p in Path(table_path).iterdir() if p.name != "_delta_log"}


def _log_files(dt_: DeltaTable) -> set[str]:
    return {os.path.relpath(u, dt_.table_uri.replace("file://", "")) for u in dt_.file_uris()}


def test_overwrite_then_read_round_trip(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    assert lake.engine_name == engine
    assert not lake.exists("t") and lake.version("t") is None
    assert lake.overwrite("t", _df(spark, ROWS, 2)) == 0
    out = lake.read("t")
    assert _rows(out) == sorted(ROWS)
    # Spark's file reader makes every column nullable; the types are the table's
    assert out.schema.simpleString() == "struct<id:string,ts:timestamp,w:double,vec:array<float>>"
    assert lake.exists("t") and lake.version("t") == 0
    assert lake.reads == {"t": 0} and lake.writes == {"t": 0}
    assert lake.path("t") == os.path.join(lake_root, "t")


def test_append_adds_rows_and_rejects_another_schema(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS[:1]))
    # columns in another order are fine: they are matched by name
    extra = _df(spark, [("d", MAR1, 4.0, [2.0])]).select("w", "vec", "id", "ts")
    assert lake.append("t", extra) == 1
    assert _rows(lake.read("t")) == [ROWS[0], ("d", MAR1, 4.0, [2.0])]
    bad = spark.createDataFrame([("e", 5)], "id string, w int")
    with pytest.raises(SchemaMismatchError, match=r"missing \['ts', 'vec'\].*w: table double vs int"):
        lake.append("t", bad)
    assert lake.version("t") == 1


RUN_SCHEMA = T.StructType(
    [
        T.StructField("id", T.StringType(), False),
        T.StructField("ts", T.TimestampType(), False),
        T.StructField("note", T.StringType(), True),
    ]
)


def test_append_new_rows_adds_each_key_once_from_the_driver(spark, lake_root, engine):
    """The `runs` table's path: a few driver-side rows, written once per key; on delta-rs (local or
    S3 lake) without a Spark job, the rows read back by Spark, deltalake and Lake.rows alike."""
    lake = Lake(spark, lake_root, engine)
    t1 = dt.datetime(2026, 3, 1, 12, 30, 5, 123456)  # naive UTC, micro-seconds kept
    t2 = dt.datetime(2026, 3, 1, 12, 30, 6)
    tracker = spark.sparkContext.statusTracker()
    jobs = len(tracker.getJobIdsForGroup())
    first = [
        {"id": "a", "ts": t1, "note": "x"},
        {"id": "b", "ts": t1, "note": None},
        {"id": "a", "ts": t1, "note": "dup"},  # the same key again: the first is written
    ]
    assert lake.append_new_rows("runs", first, RUN_SCHEMA, keys=["id", "ts"]) == 2  # creates the table
    again = [{"id": "a", "ts": t1, "note": "y"}, {"id": "a", "ts": t2, "note": "z"}]
    assert lake.append_new_rows("runs", again, RUN_SCHEMA, keys=["id", "ts"]) == 1
    assert lake.append_new_rows("runs", again, RUN_SCHEMA, keys=["id", "ts"]) == 0  # no commit
    if engine == "delta-rs":
        assert len(tracker.getJobIdsForGroup()) == jobs
    expected = [("a", t1, "x"), ("a", t2, "z"), ("b", t1, None)]
    assert sorted(tuple(r.values()) for r in lake.rows("runs")) == expected
    assert sorted(tuple(r.values()) for r in lake.rows("runs", ["ts", "id"])) == sorted(
        (ts, i) for i, ts, _ in expected
    )
    assert sorted(tuple(r) for r in lake.read("runs").collect()) == expected
    assert lake.version("runs") == 1 and lake.writes["runs"] == 1
    assert lake.txn_version("runs", "longtail.serial:runs") == 2  # serialized: one app txn per commit
    stored = DeltaTable(rs_uri(lake.path("runs"))).to_pyarrow_table().sort_by("ts")
    assert stored.column("ts").type == pa.timestamp("us", tz="UTC")
    assert stored.column("ts")[0].as_py() == t1.replace(tzinfo=dt.timezone.utc)
    wrong = T.StructType([*RUN_SCHEMA.fields[:2], T.StructField("note", T.LongType(), True)])
    with pytest.raises(SchemaMismatchError, match="note: table string vs bigint"):
        lake.append_new_rows("runs", [{"id": "c", "ts": t2, "note": 1}], wrong, keys=["id", "ts"])
    assert lake.version("runs") == 1
    with pytest.raises(LakeError, match="no Delta table"):
        lake.rows("missing")


def test_overwrite_may_change_the_schema(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS))
    assert lake.overwrite("t", spark.createDataFrame([(7,)], "n long")) == 1
    assert [tuple(r) for r in lake.read("t").collect()] == [(7,)]
    assert _rows(lake.read("t", version=0)) == sorted(ROWS)  # time travel keeps the old schema


def test_merge_updates_matched_inserts_new_and_leaves_other_files_alone(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    # three files, one row each: a | b | c
    lake.overwrite("t", _df(spark, ROWS, 3))
    before = DeltaTable(lake.path("t"))
    assert len(before.file_uris()) == 3
    source = _df(spark, [("b", MAR1, 20.0, [2.0]), ("d", None, 4.0, [4.0])])
    assert lake.merge("t", source, keys=["id"]) == 1
    # b is replaced, d inserted, a and c unchanged
    assert _rows(lake.read("t")) == [
        ("a", JAN1, 1.0, [0.5, 0.25]),
        ("b", MAR1, 20.0, [2.0]),
        ("c", FEB1, 3.0, [1.0]),
        ("d", None, 4.0, [4.0]),
    ]
    after = DeltaTable(lake.path("t"))
    old, new = _log_files(before), _log_files(after)
    assert len(old - new) == 1  # only the file that held b was removed
    # ... and it held only b, so nothing had to be rewritten: the new files are the source's
    added = new - old
    assert sum(json.loads(a["stats"])["numRecords"] for a in _add_actions(after, added)) == 2
    assert lake.history("t")[0]["longtail.operation"] == "merge"


def _add_actions(dt_: DeltaTable, rel_paths: set[str]) -> list[dict]:
    log_dir = Path(dt_.table_uri.replace("file://", "")) / "_delta_log"
    out = []
    for f in sorted(log_dir.glob("*.json")):
        for line in f.read_text().splitlines():
            action = json.loads(line)
            if "add" in action and action["add"]["path"] in rel_paths:
                out.append(action["add"])
    return out


def test_merge_rewrites_a_shared_file_without_losing_its_other_rows(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS, 1))  # one file holding a, b, c
    lake.merge("t", _df(spark, [("c", JAN1, 30.0, [])]), keys=["id"])
    # a and b survive the rewrite of the file, c is updated
    assert _rows(lake.read("t")) == [ROWS[0], ROWS[1], ("c", JAN1, 30.0, [])]
    assert len(DeltaTable(lake.path("t")).file_uris()) == 2  # the source's file + the rewritten one


def test_merge_on_two_keys_creates_the_table_when_missing(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    schema = "u string, i string, n long"
    assert lake.merge("m", spark.createDataFrame([("u1", "x", 1), ("u1", "y", 2)], schema), ["u", "i"]) == 0
    lake.merge("m", spark.createDataFrame([("u1", "y", 20), ("u2", "x", 3)], schema), ["u", "i"])
    assert _rows(lake.read("m")) == [("u1", "x", 1), ("u1", "y", 20), ("u2", "x", 3)]


def test_merge_with_duplicate_source_keys_fails_and_leaves_no_trace(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS))
    folders = _data_folders(lake.path("t"))
    dup = _df(spark, [("a", None, 1.0, None), ("a", None, 2.0, None)])
    with pytest.raises(DuplicateKeysError, match=r"more than one row for key \{'id': 'a'\}"):
        lake.merge("t", dup, keys=["id"])
    assert lake.version("t") == 0 and _rows(lake.read("t")) == sorted(ROWS)
    assert _data_folders(lake.path("t")) == folders  # the staged source was deleted


def test_merge_of_an_empty_source_commits_nothing(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS))
    assert lake.merge("t", _df(spark, []), keys=["id"]) is None
    assert lake.version("t") == 0 and lake.writes == {"t": 0}


def test_delete_rewrites_only_matching_files(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS, 1))
    assert lake.delete("t", "w >= 2") == 1  # b (2.0) and c (3.0) go
    assert _rows(lake.read("t")) == [ROWS[0]]
    assert lake.delete("t", "id = 'zzz'") is None  # nothing matches: no commit
    # a null predicate (ts is null for no row now; w > null is null) deletes nothing either
    assert lake.delete("t", "w > CAST(NULL AS DOUBLE)") is None
    assert lake.version("t") == 1


def test_empty_table_reads_as_an_empty_frame_with_its_schema(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    assert lake.overwrite("e", _df(spark, [])) == 0
    out = lake.read("e")
    assert out.count() == 0 and out.schema.fieldNames() == ["id", "ts", "w", "vec"]
    assert DeltaTable(lake.path("e")).file_uris() == []
    assert lake.append("e", _df(spark, ROWS[:1])) == 1
    assert _rows(lake.read("e")) == [ROWS[0]]


def test_time_travel_and_history(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS[:1]))  # v0: a
    lake.append("t", _df(spark, ROWS[1:2]))  # v1: a, b
    lake.merge("t", _df(spark, [("a", None, 9.0, None)]), ["id"])  # v2: a updated, b
    assert _rows(lake.read("t", version=0)) == [ROWS[0]]
    assert lake.reads == {"t": 0}
    assert _rows(lake.read("t", version=1)) == [ROWS[0], ROWS[1]]
    assert _rows(lake.read("t")) == [("a", None, 9.0, None), ROWS[1]]
    assert lake.reads == {"t": 2}
    hist = lake.history("t")
    assert [h["version"] for h in hist] == [2, 1, 0]
    assert [h["longtail.operation"] for h in hist] == ["merge", "append", "overwrite"]


def test_a_read_is_the_version_it_was_taken_at_whatever_is_committed_after_it(spark, lake_root, engine):
    """A stage reads, then writes, then runs queries on what it read (train: the id map it read
    plus the ids it appended). Every query derived from a read sees the version the read recorded,
    on both engines: a live delta-spark path read would plan each new query on the latest snapshot
    and count the appended rows twice (the three nights on delta-spark wrote duplicate
    item_factors rows this way)."""
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS[:2]))  # v0: a, b
    before = lake.read("t")
    assert lake.reads == {"t": 0}
    new = _df(spark, ROWS[2:])
    lake.append("t", new)  # v1: a, b, c
    assert lake.read("t").count() == 3
    assert before.count() == 2  # a new query on the old read
    assert _rows(before.unionByName(new)) == sorted(ROWS)  # each row once, as train's item map
    assert before.join(new.select("id"), "id", "left_anti").count() == 2
    lake.merge("t", _df(spark, [("a", None, 9.0, None)]), ["id"])  # v2: a changed
    assert _rows(before.where(F.col("id") == "a")) == [ROWS[0]]


def test_failed_spark_write_leaves_the_table_and_no_staged_files(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS))
    folders = _data_folders(lake.path("t"))

    @F.udf("double")
    def explode_on_c(id_, w):  # no type hints: pyspark would read them as a pandas UDF's
        if id_ == "c":
            raise ValueError("boom on row c")
        return w

    bad = _df(spark, ROWS, 2).withColumn("w", explode_on_c("id", "w"))
    for write in (
        lambda: lake.overwrite("t", bad),
        lambda: lake.append("t", bad),
        lambda: lake.merge("t", bad, keys=["id"]),
    ):
        with pytest.raises(Exception, match="boom on row c"):
            write()
        assert lake.version("t") == 0
        assert _rows(lake.read("t")) == sorted(ROWS)
        if engine == "delta-rs":  # its staged folder is deleted when the write fails
            assert _data_folders(lake.path("t")) == folders
        else:  # delta-spark leaves the failed job's files in place, referenced by no version (VACUUM's)
            referenced = {os.path.basename(u) for u in DeltaTable(lake.path("t")).file_uris()}
            assert not (_data_folders(lake.path("t")) - folders) & referenced
    assert lake.writes == {"t": 0}


def test_txn_makes_a_retried_write_a_no_op(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    assert lake.overwrite("t", _df(spark, ROWS[:1]), txn=("stage-x", 1)) == 0
    assert lake.txn_version("t", "stage-x") == 1
    assert lake.append("t", _df(spark, ROWS[1:2]), txn=("stage-x", 2)) == 1
    # a retry of the same two writes: skipped, no new version, rows unchanged
    assert lake.overwrite("t", _df(spark, ROWS[:1]), txn=("stage-x", 1)) is None
    assert lake.append("t", _df(spark, ROWS[1:2]), txn=("stage-x", 2)) is None
    assert lake.merge("t", _df(spark, ROWS[2:]), ["id"], txn=("stage-x", 2)) is None
    assert lake.delete("t", "id = 'a'", txn=("stage-x", 2)) is None
    assert lake.version("t") == 1 and _rows(lake.read("t")) == sorted(ROWS[:2])
    assert lake.txn_version("t", "other-app") is None
    assert lake.merge("t", _df(spark, ROWS[2:]), ["id"], txn=("stage-x", 3)) == 2


def test_a_concurrent_conflicting_commit_fails_cleanly(spark, lake_root, monkeypatch):
    lake, other = Lake(spark, lake_root, "delta-rs"), Lake(spark, lake_root, "delta-rs")
    lake.overwrite("t", _df(spark, ROWS[:2]))  # v0: one file holding a, b
    real = delta_rs._DeltaRsEngine._files_matching

    def meanwhile(self, *args, **kwargs):  # another writer deletes b after our merge read the file
        found = real(self, *args, **kwargs)
        assert other.delete("t", "id = 'b'") == 1
        return found

    monkeypatch.setattr(delta_rs._DeltaRsEngine, "_files_matching", meanwhile)
    with pytest.raises(CommitConflictError, match="concurrent transaction deleted data"):
        lake.merge("t", _df(spark, [("a", None, 10.0, None)]), ["id"])
    monkeypatch.undo()
    # the other writer's commit stands, ours left nothing: its staged folders are gone
    assert lake.version("t") == 1 and _rows(lake.read("t")) == [ROWS[0]]
    assert len(_data_folders(lake.path("t"))) == 2  # v0's folder and the delete's rewrite


def test_concurrent_appends_both_commit(spark, lake_root, monkeypatch):
    lake, other = Lake(spark, lake_root, "delta-rs"), Lake(spark, lake_root, "delta-rs")
    lake.overwrite("t", _df(spark, ROWS[:1]))
    real = delta_rs._Stage.write
    calls: list[int | None] = []

    def meanwhile(self, df):
        files = real(self, df)
        if not calls:  # only the first write: the other writer's own write passes straight through
            calls.append(None)
            calls[0] = other.append("t", _df(spark, ROWS[1:2]))
        return files

    monkeypatch.setattr(delta_rs._Stage, "write", meanwhile)
    assert lake.append("t", _df(spark, ROWS[2:])) == 2  # committed after the other's version 1
    assert calls == [1] and _rows(lake.read("t")) == sorted(ROWS)


def test_row_counts_from_spark_match_the_footers(spark, lake_root):
    # the fallback for stores pyarrow cannot open (remote URIs without credentials in the env)
    stage = delta_rs._Stage(spark, os.path.join(lake_root, "s"))
    files = stage.write(_df(spark, ROWS, 2))  # slices: [a], [b, c]
    names = [f.rel_path.split("/")[1] for f in files]
    counts = stage._spark_counts(stage.folders[0], names)
    assert sorted(c for c, _ in counts.values()) == [1, 2]
    assert {n: c for n, (c, _) in counts.items()} == {f.rel_path.split("/")[1]: f.num_records for f in files}
    stage.discard()
    assert not os.path.exists(stage.folders[0])


def test_legacy_int96_timestamps_are_not_written(spark, lake_root, engine):
    spark.conf.set("spark.sql.parquet.outputTimestampType", "INT96")
    try:
        Lake(spark, lake_root, engine).overwrite("t", _df(spark, ROWS[:1]))
    finally:
        # delta-rs switches the session to micro-seconds (with a warning); delta-spark writes them for
        # its own commit only and gives the caller's setting back
        after = spark.conf.get("spark.sql.parquet.outputTimestampType")
        spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    assert after == ("TIMESTAMP_MICROS" if engine == "delta-rs" else "INT96")
    f = DeltaTable(os.path.join(lake_root, "t")).file_uris()[0]
    assert pa.parquet.read_schema(f).field("ts").type == pa.timestamp("us", tz="UTC")


def test_tables_read_the_same_through_deltalake(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS, 2))
    lake.merge("t", _df(spark, [("b", MAR1, 20.0, [2.0])]), ["id"])
    table = DeltaTable(lake.path("t")).to_pyarrow_table()
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("w").type == pa.float64()
    assert pa.types.is_list(table.schema.field("vec").type)
    assert table.schema.field("vec").type.value_type == pa.float32()
    utc = dt.timezone.utc
    assert sorted(table.to_pylist(), key=lambda r: r["id"]) == [
        {"id": "a", "ts": JAN1.replace(tzinfo=utc), "w": 1.0, "vec": [0.5, 0.25]},
        {"id": "b", "ts": MAR1.replace(tzinfo=utc), "w": 20.0, "vec": [2.0]},
        {"id": "c", "ts": FEB1.replace(tzinfo=utc), "w": 3.0, "vec": [1.0]},
    ]


def test_duckdb_reads_the_files_deltalake_lists(spark, lake_root, engine):
    # DuckDB's delta_scan needs its delta extension, downloaded at run time (no network here), so
    # DuckDB reads the current version's Parquet files as listed by deltalake.
    duckdb = pytest.importorskip("duckdb")
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS, 2))
    lake.delete("t", "id = 'b'")
    files = DeltaTable(lake.path("t")).file_uris()
    rows = duckdb.sql(f"SELECT id, w, len(vec) FROM read_parquet({files!r}) ORDER BY id").fetchall()
    assert rows == [("a", 1.0, 2), ("c", 3.0, 1)]


def test_protocol_and_stats_stay_plain(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    lake.overwrite("t", _df(spark, ROWS, 1))
    lake.merge("t", _df(spark, [("b", None, 5.0, None)]), ["id"])
    dt_ = DeltaTable(lake.path("t"))
    proto = dt_.protocol()
    assert (proto.min_reader_version, proto.min_writer_version) == (1, 2)
    assert not (proto.reader_features or []) and not (proto.writer_features or [])
    config = dt_.metadata().configuration
    assert not any("deletionVectors" in k or "columnMapping" in k for k in config)

    # delta-spark also counts the nulls of array columns (no min/max for them); delta-rs skips nested ones
    def vec_nulls(n: int) -> dict[str, int]:
        return {"vec": n} if engine == "delta-spark" else {}

    # stats from the Parquet footers: the rewritten file holds a (ts 2024-01-01) and c (2024-02-01)
    stats = sorted(
        (json.loads(a["stats"]) for a in _add_actions(dt_, {p for p in _log_files(dt_)})),
        key=lambda s: s["numRecords"],
    )
    assert stats[0] == {
        "numRecords": 1,
        "minValues": {"id": "b", "w": 5.0},
        "maxValues": {"id": "b", "w": 5.0},
        "nullCount": {"id": 0, "ts": 1, "w": 0, **vec_nulls(1)},
    }
    assert stats[1] == {
        "numRecords": 2,
        "minValues": {"id": "a", "ts": "2024-01-01T00:00:00.000Z", "w": 1.0},
        "maxValues": {"id": "c", "ts": "2024-02-01T00:00:00.000Z", "w": 3.0},
        "nullCount": {"id": 0, "ts": 0, "w": 0, **vec_nulls(0)},
    }


def test_missing_table_reads_fail_and_report_nothing(spark, lake_root, engine):
    lake = Lake(spark, lake_root, engine)
    with pytest.raises(LakeError, match="no Delta table"):
        lake.read("nope")
    assert lake.history("nope") == [] and lake.txn_version("nope", "x") is None
    assert lake.version("nope") is None and not lake.exists("nope")


@pytest.mark.delta_spark
def test_auto_picks_delta_spark_when_its_classes_load(spark, lake_root):
    lake = Lake.from_config(spark, load_config(overrides=[f"lake.root={lake_root}"]))
    if is_delta_spark_available(spark):
        assert lake.engine_name == "delta-spark"
    else:  # pytest --no-delta-spark
        assert lake.engine_name == "delta-rs"
        with pytest.raises(LakeError, match="delta-spark connector is not on the classpath"):
            Lake(spark, lake_root, engine="delta-spark")
    with pytest.raises(ValueError, match="allowed"):
        Lake(spark, lake_root, engine="parquet")


# --- helpers without Spark ------------------------------------------------------------------------
def test_uri_mapping():
    assert rs_uri("s3a://bucket/lake/t") == "s3://bucket/lake/t"
    assert rs_uri("abfss://c@acct.dfs.core.windows.net/lake") == "abfss://c@acct.dfs.core.windows.net/lake"
    assert rs_uri("file:///tmp/lake") == "/tmp/lake"
    # Spark's file paths and deltalake's match whatever the scheme spelling and encoding
    assert path_key("file:/tmp/a%20b/x.parquet") == path_key("/tmp/a b/x.parquet")
    assert path_key("s3a://b/t/x.parquet") == path_key("s3://b/t/x.parquet") == "b/t/x.parquet"


def test_stat_values():
    # Delta stats carry milliseconds: the min is truncated, the max rounded up
    t = dt.datetime(2024, 1, 1, 0, 0, 0, 1500, tzinfo=dt.timezone.utc)
    assert _json_stat(t, up=False) == "2024-01-01T00:00:00.001Z"
    assert _json_stat(t, up=True) == "2024-01-01T00:00:00.002Z"
    assert _json_stat(dt.date(2024, 5, 6), up=False) == "2024-05-06"
    assert _json_stat(float("nan"), up=False) is None
    assert _json_stat("x" * 33, up=True) is None and _json_stat("abc", up=True) == "abc"
