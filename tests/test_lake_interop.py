"""One lake, two engines, three readers: tables written by delta-rs and by delta-spark stay one format.

A table written by one engine is read, appended to and merged into by the other, then read by the
first again, by ``deltalake`` on its own and by DuckDB over the Parquet files the Delta log lists
(DuckDB's delta extension downloads itself at run time, which a machine without network cannot
do). Needs the delta-spark connector on the test session (the default; not with --no-delta-spark).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet
import pytest
from deltalake import DeltaTable
from test_lake import MAR1, ROWS, _df, _rows  # the lake suite's table and helpers

from longtail.lake import Lake, LakeError, is_delta_spark_available

pytestmark = pytest.mark.spark

PAIRS = [("delta-rs", "delta-spark"), ("delta-spark", "delta-rs")]


@pytest.fixture(autouse=True)
def _needs_delta_spark(spark):
    if not is_delta_spark_available(spark):
        pytest.skip("delta-spark connector not on the classpath (--no-delta-spark)")


def _duckdb_rows(path: str) -> list[tuple]:
    duckdb = pytest.importorskip("duckdb")
    files = DeltaTable(path).file_uris()
    return duckdb.sql(
        f"SELECT id, CAST(ts AS VARCHAR), w, vec FROM read_parquet({files!r}) ORDER BY id"
    ).fetchall()


def _assert_plain_protocol(path: str) -> None:
    """Reader 1 / writer 2, no table features, no deletion vectors or column mapping."""
    table = DeltaTable(path)
    proto = table.protocol()
    assert (proto.min_reader_version, proto.min_writer_version) == (1, 2)
    assert not (proto.reader_features or []) and not (proto.writer_features or [])
    assert not any("deletionVectors" in k or "columnMapping" in k for k in table.metadata().configuration)


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_a_table_written_by_one_engine_is_read_appended_and_merged_by_the_other(
    spark, lake_root, first, second
):
    one, two = Lake(spark, lake_root, first), Lake(spark, lake_root, second)
    assert one.overwrite("t", _df(spark, ROWS[:2], 2), txn=("app", 1)) == 0
    assert _rows(two.read("t")) == sorted(ROWS[:2])
    # the other engine sees the first one's application transaction, so a retry is a no-op there too
    assert two.txn_version("t", "app") == 1
    assert two.append("t", _df(spark, ROWS[:2]), txn=("app", 1)) is None
    assert two.append("t", _df(spark, ROWS[2:]), txn=("app", 2)) == 1
    assert two.merge("t", _df(spark, [("a", MAR1, 10.0, [3.0]), ("d", None, 4.0, [])]), ["id"]) == 2
    expected = [("a", MAR1, 10.0, [3.0]), ROWS[1], ROWS[2], ("d", None, 4.0, [])]
    assert _rows(one.read("t")) == expected
    assert _rows(one.read("t", version=1)) == sorted(ROWS)
    assert one.delete("t", "id = 'b'") == 3
    assert [h["longtail.operation"] for h in two.history("t")] == ["delete", "merge", "append", "overwrite"]
    # outside Spark: deltalake alone, and DuckDB over the files the log lists
    path = one.path("t")
    assert DeltaTable(path).version() == 3
    assert DeltaTable(path).to_pyarrow_table().num_rows == 3
    assert _duckdb_rows(path) == [
        ("a", "2024-03-01 00:00:00+00", 10.0, [3.0]),
        ("c", "2024-02-01 00:00:00+00", 3.0, [1.0]),
        ("d", None, 4.0, []),
    ]
    _assert_plain_protocol(path)


def test_delta_spark_writes_plain_micro_second_timestamps(spark, lake_root):
    lake = Lake(spark, lake_root, "delta-spark")
    lake.overwrite("t", _df(spark, ROWS))
    lake.merge("t", _df(spark, [("b", MAR1, 5.0, None)]), ["id"])
    lake.delete("t", "id = 'c'")
    path = lake.path("t")
    for f in DeltaTable(path).file_uris():
        assert pa.parquet.read_schema(f).field("ts").type == pa.timestamp("us", tz="UTC")
    table = DeltaTable(path).to_pyarrow_table()
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    # merge and delete on delta-spark 4.x would write deletion vectors if the table allowed them
    _assert_plain_protocol(path)
    log_lines = [
        json.loads(line)
        for f in sorted((Path(path) / "_delta_log").glob("*.json"))
        for line in f.read_text().splitlines()
    ]
    assert not any("deletionVector" in (a.get("add") or {}) for a in log_lines)
    assert not any((a.get("remove") or {}).get("deletionVector") for a in log_lines)


@pytest.mark.parametrize("engine", ["delta-rs", "delta-spark"])
def test_timestamp_ntz_is_refused_by_both_engines(spark, lake_root, engine):
    ntz = spark.sql("SELECT 'a' AS id, TIMESTAMP_NTZ'2024-01-01 00:00:00' AS ts")
    with pytest.raises(LakeError, match="timestamp_ntz"):
        Lake(spark, lake_root, engine).overwrite("t", ntz)
    assert not Lake(spark, lake_root, engine).exists("t")


def test_delta_rs_reads_and_extends_past_a_delta_spark_checkpoint(spark, lake_root):
    ds = Lake(spark, lake_root, "delta-spark")
    ds.overwrite("t", _df(spark, ROWS[:1]))
    for i in range(1, 11):  # versions 1..10; delta-spark checkpoints every 10 commits by default
        ds.append("t", _df(spark, [(f"x{i:02d}", None, float(i), None)]))
    log_dir = Path(ds.path("t")) / "_delta_log"
    assert (log_dir / "00000000000000000010.checkpoint.parquet").exists()
    rs = Lake(spark, lake_root, "delta-rs")
    assert rs.version("t") == 10
    assert rs.read("t").count() == 11
    assert rs.append("t", _df(spark, ROWS[1:2])) == 11
    assert rs.merge("t", _df(spark, [("x05", None, 50.0, None)]), ["id"]) == 12
    assert ds.read("t").where("id = 'x05'").first()["w"] == 50.0
    assert ds.read("t").count() == 12
    assert DeltaTable(ds.path("t")).to_pyarrow_table().num_rows == 12
