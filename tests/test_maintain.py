"""`maintain`: compaction keeps the rows, checkpoints are readable, VACUUM removes exactly the old orphans."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import duckdb
import pytest
from deltalake import DeltaTable
from pyspark.sql import types as T

from longtail.core import schema as S
from longtail.core.config import load_config
from longtail.lake import Lake
from longtail.stages import maintain

pytestmark = pytest.mark.spark

SCHEMA = T.StructType(
    [T.StructField("id", T.StringType(), False), T.StructField("ts", T.TimestampType(), True)]
)
DAY = dt.datetime(2024, 1, 1)


def _orphan(table: Path, name: str, age_hours: float) -> Path:
    """A staged folder of a write that never committed (as a killed run leaves it), ``age_hours`` old."""
    folder = table / name
    folder.mkdir()
    f = folder / "part-00000.parquet"
    f.write_bytes(b"PAR1 not a real file, never referenced PAR1")
    then = time.time() - age_hours * 3600
    os.utime(f, (then, then))
    return f


def test_maintain_compacts_checkpoints_and_vacuums_only_old_orphans(spark, lake_root):
    lake = Lake(spark, lake_root)
    rows = [(f"i{i}", DAY + dt.timedelta(hours=i)) for i in range(12)]
    lake.overwrite("items", spark.createDataFrame(rows[:3], SCHEMA).coalesce(1))
    for i in range(3, 12, 3):  # three more small appends: four commits, four files
        lake.append("items", spark.createDataFrame(rows[i : i + 3], SCHEMA).coalesce(1))
    table = Path(lake.path("items"))
    assert len(DeltaTable(str(table)).file_uris()) == 4
    old = _orphan(table, "w-killed-old-0", age_hours=200)
    young = _orphan(table, "w-killed-young-0", age_hours=1)

    summary = maintain.run(spark, load_config(overrides=[f"lake.root={lake_root}"]), lake=lake)

    fig = summary["tables"]["items"]
    # one compaction commit; delta-rs logs the vacuum too (start and end), as delta-spark does
    assert fig["version_before"] == 3 and fig["version_after"] == 6
    assert [h["operation"] for h in lake.history("items")[:3]] == ["VACUUM END", "VACUUM START", "OPTIMIZE"]
    assert fig["files_removed"] == 4 and fig["files_added"] == 1
    dt_ = DeltaTable(str(table))
    assert len(dt_.file_uris()) == 1
    assert sorted(dt_.to_pyarrow_table().column("id").to_pylist()) == sorted(r[0] for r in rows)
    assert any(p.name.endswith(".checkpoint.parquet") for p in (table / "_delta_log").iterdir())
    # the old orphan is gone, the young one stays (a writer may still be about to commit it), and
    # the files the compaction replaced stay too: they are younger than the 168-hour retention
    assert not old.exists() and young.exists()
    assert fig["vacuumed"] == 1
    assert len([p for p in table.rglob("*.parquet") if "_delta_log" not in str(p)]) == 4 + 1 + 1
    # still readable by Spark and by DuckDB over the files the log lists
    assert lake.read("items").count() == 12
    files = [u.replace("file://", "") for u in dt_.file_uris()]
    assert duckdb.sql(f"select count(*) from read_parquet({files!r})").fetchall()[0][0] == 12


def test_a_zero_retention_vacuum_removes_the_replaced_files_and_time_travel_to_them(spark, lake_root):
    lake = Lake(spark, lake_root)
    lake.overwrite("t", spark.createDataFrame([("a", DAY)], SCHEMA))
    lake.overwrite("t", spark.createDataFrame([("b", DAY)], SCHEMA))
    replaced = {u.replace("file://", "") for u in DeltaTable(lake.path("t"), version=0).file_uris()}
    deleted = lake.vacuum("t", retention_hours=0)
    # the replaced data file (and Spark's .crc checksum beside it), nothing of the current version
    assert {os.path.join(lake.path("t"), p) for p in deleted if p.endswith(".parquet")} == replaced
    assert [r.id for r in lake.read("t").collect()] == ["b"]
    with pytest.raises(Exception):  # noqa: B017 - the engine's own error for a vacuumed version
        lake.read("t", version=0).collect()


def test_maintain_rejects_an_unknown_table_name(spark, lake_root):
    cfg = load_config(overrides=[f"lake.root={lake_root}", "maintain.tables=[items, nope]"])
    with pytest.raises(ValueError, match="unknown table"):
        maintain.run(spark, cfg, lake=Lake(spark, lake_root))


def _model_folder(root: Path, kind: str, name: str, age_hours: float) -> Path:
    """``<root>/models/<kind>/<name>`` with two files, the newest ``age_hours`` old."""
    folder = root / "models" / kind / name
    (folder / "metadata").mkdir(parents=True)
    for i, f in enumerate((folder / "card.json", folder / "metadata" / "part-0")):
        f.write_text("{}")
        then = time.time() - (age_hours + i) * 3600  # the card is the newest file
        os.utime(f, (then, then))
    return folder


def test_maintain_deletes_only_old_model_folders_that_nothing_references(spark, lake_root):
    root = Path(lake_root)
    lake = Lake(spark, lake_root)
    cfg = load_config(overrides=[f"lake.root={lake_root}", "maintain.compact=false"])
    f = {
        (kind, name): _model_folder(root, kind, name, age)
        for kind, name, age in [
            ("ranker", "t-1", 400),  # old, replaced by t-2: goes
            ("ranker", "t-2", 300),  # old but the current head's: stays
            ("ranker", "t-3", 2),  # not referenced but young (a train still writing): stays
            ("ranker", ".t-0.9f3a.tmp", 500),  # a killed run's hidden folder: goes
            ("vae", "t-1", 400),
            ("vae", "t-2", 300),
            ("encoder", "mini-ft-a", 400),  # fine-tuned encoders: the pointer's stays
            ("encoder", "mini-ft-b", 400),
        ]
    }
    (root / "models" / "encoder" / "current.json").write_text(
        json.dumps({"path": str(root / "models" / "encoder" / "mini-ft-b")})
    )
    # before any train committed a head, no ranker or VAE folder is known to be unused
    first = maintain.run(spark, cfg, lake=lake)["models"]
    assert first["ranker"]["deleted"] == [] and first["vae"]["deleted"] == []
    assert first["encoder"] == {"deleted": ["mini-ft-a"], "kept": ["mini-ft-b"]}
    assert not f["encoder", "mini-ft-a"].exists() and f["encoder", "mini-ft-b"].exists()

    extra = {
        "ranker": {"path": f"{lake_root}/models/ranker/t-2"},
        "vae": {"path": f"{lake_root}/models/vae/t-2"},
    }
    row = ("t-2", "m", json.dumps({"extra": extra}), bytearray(b"x"), DAY)
    lake.overwrite(S.PROJECTION_HEAD, spark.createDataFrame([row], S.PROJECTION_HEAD_SCHEMA))
    got = maintain.run(spark, cfg, lake=lake)["models"]
    assert got["ranker"] == {"deleted": [".t-0.9f3a.tmp", "t-1"], "kept": ["t-2", "t-3"]}
    assert got["vae"] == {"deleted": ["t-1"], "kept": ["t-2"]}
    assert got["encoder"] == {"deleted": [], "kept": ["mini-ft-b"]}
    assert {k for k, p in f.items() if p.exists()} == {
        ("ranker", "t-2"),
        ("ranker", "t-3"),
        ("vae", "t-2"),
        ("encoder", "mini-ft-b"),
    }
    # a killed distributed VAE fit's shards under _staging go once old, a running one's stay
    for name, age in (("vae-old", 400), ("vae-running", 1)):
        shard = root / "_staging" / name / "pairs" / "shard=0"
        shard.mkdir(parents=True)
        (shard / "part-0.parquet").write_text("x")
        then = time.time() - age * 3600
        os.utime(shard / "part-0.parquet", (then, then))
    got = maintain.run(spark, cfg, lake=lake)["models"]
    assert got["_staging"] == {"deleted": ["vae-old"], "kept": ["vae-running"]}
    assert not (root / "_staging" / "vae-old").exists() and (root / "_staging" / "vae-running").exists()
    # maintain.models=false leaves every folder
    _model_folder(root, "vae", "t-0", 400)
    off = load_config(overrides=[f"lake.root={lake_root}", "maintain.compact=false", "maintain.models=false"])
    assert maintain.run(spark, off, lake=lake)["models"] == {}
    assert (root / "models" / "vae" / "t-0").exists()
