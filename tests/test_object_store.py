"""The lake on an object store: ``lake.root: s3a://...`` against moto's S3 server on loopback.

The server is moto's (``moto.server``, started and stopped by the module's fixture). Spark reaches
it through Hadoop's S3A connector (hadoop-aws, on the test session's classpath like the Delta
connector); deltalake through its own object_store client, with the endpoint and credentials that
:func:`longtail.core.uris.s3_storage_options` derives from the same S3A settings. Credentials are
never in longtail's config: the in-process tests set them in the session's Hadoop configuration,
the launcher test passes them in the environment (``AWS_ACCESS_KEY_ID``...).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import make_tiny_bert, small_pipeline_settings

from longtail.core import schema as S
from longtail.core.config import load_config
from longtail.core.session import S3A_CLASS, has_class
from longtail.core.uris import s3_storage_options
from longtail.lake import Lake
from longtail.lake.runs import SUCCEEDED
from longtail.stages import pipeline

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[1]
KEY, SECRET, REGION = "longtail-test-key", "longtail-test-secret", "us-east-1"
S3A_KEYS = ("endpoint", "access.key", "secret.key", "path.style.access", "endpoint.region")


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3(spark) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, one bucket, and the session's S3A settings for it."""
    if not has_class(spark, S3A_CLASS):
        pytest.skip("S3A (hadoop-aws) not on the classpath (--no-delta-spark)")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not start on {endpoint}") from None
                time.sleep(0.2)
        server = S3Server(endpoint, f"longtail-{uuid.uuid4().hex[:8]}")
        server.client().create_bucket(Bucket=server.bucket)
        hconf = spark.sparkContext._jsc.hadoopConfiguration()
        for key, value in zip(S3A_KEYS, (endpoint, KEY, SECRET, "true", REGION), strict=True):
            hconf.set(f"fs.s3a.{key}", value)
        try:
            yield server
        finally:
            for key in S3A_KEYS:
                hconf.unset(f"fs.s3a.{key}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_storage_options_come_from_the_s3a_settings_bucket_first(spark):
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    settings = {
        "fs.s3a.endpoint": "minio.internal:9000",
        "fs.s3a.connection.ssl.enabled": "false",
        "fs.s3a.access.key": "general-key",
        "fs.s3a.secret.key": "general-secret",
        "fs.s3a.bucket.special.access.key": "special-key",
        "fs.s3a.path.style.access": "true",
    }
    for k, v in settings.items():
        hconf.set(k, v)
    try:
        assert s3_storage_options(spark, "s3a://plain/lake") == {
            "AWS_ENDPOINT_URL": "http://minio.internal:9000",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "general-key",
            "AWS_SECRET_ACCESS_KEY": "general-secret",
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        }
        assert s3_storage_options(spark, "s3a://special/lake")["AWS_ACCESS_KEY_ID"] == "special-key"
        hconf.set("fs.s3a.connection.ssl.enabled", "true")
        assert s3_storage_options(spark, "s3://plain/x")["AWS_ENDPOINT_URL"] == "https://minio.internal:9000"
        assert "AWS_ALLOW_HTTP" not in s3_storage_options(spark, "s3://plain/x")
        assert s3_storage_options(spark, "abfss://c@acct.dfs.core.windows.net/lake") == {}
        assert s3_storage_options(spark, "/tmp/lake") == {}
    finally:
        for k in [*settings, "fs.s3a.connection.ssl.enabled"]:
            hconf.unset(k)
    # nothing set: nothing passed, deltalake falls back to the environment (AWS_*)
    assert s3_storage_options(spark, "s3a://plain/lake") == {}


def test_lake_operations_on_s3_with_each_engine(spark, s3, engine):
    root = f"s3a://{s3.bucket}/ops-{engine}"
    lake = Lake(spark, root, engine)
    rows = spark.createDataFrame([(i, f"v{i}", float(i)) for i in range(20)], "id long, v string, x double")
    assert lake.overwrite("t", rows) == 0
    assert lake.append("t", rows.where("id < 5"), txn=("app", 1)) == 1
    assert lake.append("t", rows.where("id < 5"), txn=("app", 1)) is None  # idempotent
    lake.merge(
        "t",
        spark.createDataFrame([(3, "new", 0.5), (99, "x", 9.0)], "id long, v string, x double"),
        keys=["id"],
    )
    lake.delete("t", "id >= 15 and id < 99")
    table = lake.read("t")
    rows_now = table.count()
    assert table.where("id = 99").count() == 1
    assert table.where("id >= 15 and id < 99").count() == 0
    # id 3 was in the overwrite and the append; delta-spark updates both, delta-rs keeps one row
    # per source key (docs/lake.md, "Merge")
    assert {r.v for r in table.where("id = 3").collect()} == {"new"}
    assert lake.read("t", version=0).count() == 20  # time travel
    assert lake.txn_version("t", "app") == 1
    assert [h["version"] for h in lake.history("t")][:1] == [3]
    # the log and the data are on the store, nothing under the working directory
    keys = s3.keys(f"ops-{engine}/t/")
    assert f"ops-{engine}/t/_delta_log/00000000000000000003.json" in keys
    assert any(k.endswith(".parquet") for k in keys)
    # upkeep on the store: compaction, a checkpoint, a vacuum that keeps the current files
    lake.compact("t")
    lake.checkpoint("t")
    lake.vacuum("t", retention_hours=0)
    assert lake.read("t").count() == rows_now


def test_bookkeeping_rows_on_s3_from_the_driver_and_through_spark_when_pyarrow_cannot_write(
    spark, s3, monkeypatch, caplog
):
    """delta-rs writes `runs`-like rows to S3 from the driver (pyarrow with the S3A settings); where
    pyarrow's write fails (a store it cannot reach), the rows go through Spark instead, once."""
    import datetime as dt

    from pyspark.sql import types as T

    from longtail.lake.delta_rs import _DeltaRsEngine

    schema = T.StructType(
        [T.StructField("id", T.StringType(), False), T.StructField("ts", T.TimestampType(), False)]
    )
    t = dt.datetime(2026, 5, 1, 8, 0, 0, 250000)
    lake = Lake(spark, f"s3a://{s3.bucket}/book", "delta-rs")
    tracker = spark.sparkContext.statusTracker()
    jobs = len(tracker.getJobIdsForGroup())
    assert lake.append_new_rows("runs", [{"id": "a", "ts": t}], schema, keys=["id", "ts"]) == 1
    assert len(tracker.getJobIdsForGroup()) == jobs  # no Spark job
    assert any(k.startswith("book/runs/w") and k.endswith(".parquet") for k in s3.keys("book/runs/"))

    def denied(*args, **kwargs):
        raise OSError("AWS Error ACCESS_DENIED during PutObject operation")

    monkeypatch.setattr(_DeltaRsEngine, "append_rows", denied)
    rows = [{"id": "a", "ts": t}, {"id": "b", "ts": t}]
    with caplog.at_level("WARNING", logger="longtail.lake.facade"):
        assert lake.append_new_rows("runs", rows, schema, keys=["id", "ts"]) == 1
    assert "appending through Spark" in caplog.text
    assert sorted((r["id"], r["ts"]) for r in lake.rows("runs")) == [("a", t), ("b", t)]


def test_an_s3_table_written_by_one_engine_is_read_appended_and_merged_by_the_other(spark, s3, engine):
    other = "delta-spark" if engine == "delta-rs" else "delta-rs"
    root = f"s3a://{s3.bucket}/interop-{engine}"
    first, second = Lake(spark, root, engine), Lake(spark, root, other)
    first.overwrite("t", spark.sql("select id, timestamp_seconds(1767225600 + id) ts, 'a' v from range(10)"))
    assert second.read("t").count() == 10
    second.append("t", spark.sql("select 10L id, timestamp'2026-02-01 00:00:00' ts, 'b' v"))
    second.merge("t", spark.sql("select 0L id, timestamp'2026-03-01' ts, 'c' v"), keys=["id"])
    back = first.read("t")
    assert back.count() == 11
    assert {r.v for r in back.where("id in (0, 10)").collect()} == {"b", "c"}
    assert back.schema["ts"].dataType.simpleString() == "timestamp"


def test_a_stale_delta_rs_writer_on_s3_commits_after_not_over_the_newer_commit(spark, s3):
    """S3 has no atomic rename: deltalake's commit is a conditional put of the next log entry. A
    writer holding an old snapshot must land after the commit it did not see, never replace it."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    root = f"s3a://{s3.bucket}/race"
    lake = Lake(spark, root, "delta-rs")
    lake.overwrite("t", spark.sql("select id from range(3)"))
    options = s3_storage_options(spark, root)
    stale = DeltaTable(f"s3://{s3.bucket}/race/t", storage_options=options)  # sees version 0
    lake.append("t", spark.sql("select 100L id"))  # version 1, unseen by `stale`
    write_deltalake(stale, pa.table({"id": pa.array([200], pa.int64())}), mode="append")
    assert sorted(r.id for r in lake.read("t").collect()) == [0, 1, 2, 100, 200]
    assert lake.version("t") == 2


def _launcher(*args: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "spark-submit.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_the_pipeline_on_s3_on_delta_rs_then_delta_spark_and_the_launcher_with_env_credentials(
    spark, s3, tmp_path
):
    """The quickstart's pipeline with its lake on S3: night 1 on delta-rs, night 2 (a new sample:
    edited texts, new events) on delta-spark on the same lake, as when the jobs move to a cluster;
    no row is doubled and delta-rs reads delta-spark's commits back. Then the launcher path:
    ``./spark-submit.sh ingest --s3a --delta-spark`` with the endpoint on the command line and the
    credentials only in the environment, reading the sample's files from S3 into a new lake."""
    model = make_tiny_bert(tmp_path / "tiny")
    root = f"s3a://{s3.bucket}/lt"
    base = [
        f"lake.root={root}",
        *small_pipeline_settings(model),
        # evaluate's I/O on S3 is the point, not its figures: one cut-off, two variants, no intervals
        "evaluate.k=[10]",
        "evaluate.variants=[cf, fused_rerank]",
        "evaluate.bootstrap=0",
    ]
    cfg = load_config(overrides=[*base, "lake.engine=delta-rs"])
    first = pipeline.run(spark, cfg, run_id="s3-rs")
    assert {s["status"] for s in first["stages"].values()} == {SUCCEEDED}
    rs = Lake(spark, root, "delta-rs")
    items = rs.read(S.ITEMS).count()
    events = rs.read(S.INTERACTIONS).count()
    assert items > 100 and events > 300
    assert rs.read(S.RECOMMENDATIONS).count() == 40 * cfg.recommend.k
    keys = s3.keys("lt/")
    assert any(k.startswith("lt/sample_input/") for k in keys)  # the generated sample too
    assert any(k.startswith("lt/reports/") for k in keys)
    assert any(k.startswith("lt/models/ranker/s3-rs/") for k in keys)  # MLlib's persistence

    # night 2 on delta-spark: every stage works (nothing is current), the cheaper blend, no report;
    # ten new items and four new users, so that train appends to the id maps on delta-spark
    night2 = [
        *base,
        "lake.engine=delta-spark",
        "sample.seed=43",
        "sample.n_items=130",
        "sample.n_users=44",
        "recommend.fusion=blend",
        "evaluate.variants=[cf]",
        "evaluate.report=false",
    ]
    second = pipeline.run(spark, load_config(overrides=night2), run_id="s3-spark")
    assert {s["status"] for s in second["stages"].values()} == {SUCCEEDED}
    assert 0 < second["stages"]["encode"]["summary"]["encoded"] <= 130  # the night's items at most
    ds = Lake(spark, root, "delta-spark")
    stored_items = ds.read(S.ITEMS)
    assert stored_items.count() == stored_items.select(S.ITEM_ID).distinct().count() >= items
    stored = ds.read(S.INTERACTIONS)
    assert stored.count() == stored.select(S.USER_ID, S.ITEM_ID, S.TS).distinct().count() > events
    assert {r[0] for r in ds.read(S.METRICS).select(S.RUN_ID).distinct().collect()} == {"s3-rs", "s3-spark"}
    ids = ds.read(S.ID_MAP_ITEMS)
    assert ids.count() == ids.select(S.ITEM_IDX).distinct().count() > items  # the new ids appended
    for table, key in ((S.ITEM_FACTORS, S.ITEM_ID), (S.USER_FACTORS, S.USER_ID)):
        fitted = ds.read(table)
        assert fitted.count() == fitted.select(key).distinct().count(), table
    assert ds.read(S.USER_FACTORS).count() == 44
    # and back: delta-rs reads what delta-spark committed
    assert Lake(spark, root, "delta-rs").read(S.RECOMMENDATIONS).count() == 44 * cfg.recommend.k

    # the launcher: --s3a adds hadoop-aws; S3 settings on the command line, credentials in the env
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": REGION,
        "LONGTAIL_LOG_DIR": str(tmp_path / "logs"),
        "PYTHONPATH": str(ROOT / "lib"),
    }
    done = _launcher(
        "ingest",
        "--s3a",
        "--delta-spark",
        "--conf",
        f"spark.hadoop.fs.s3a.endpoint={s3.endpoint}",
        "--conf",
        "spark.hadoop.fs.s3a.path.style.access=true",
        "--set",
        f"lake.root=s3a://{s3.bucket}/launched",
        "--set",
        f"input.items={root}/sample_input/items.csv",
        "--set",
        f"input.interactions={root}/sample_input/interactions.csv",
        "--run-id",
        "s3-launched",
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith('{"stage"')))
    assert status["status"] == SUCCEEDED and status["summary"]["items"]["changed"] > 100
    assert "longtail:" not in done.stdout + done.stderr  # no error or warning line of ours
    assert SECRET not in next((tmp_path / "logs").glob("s3-launched*.log")).read_text()
    launched = Lake(spark, f"s3a://{s3.bucket}/launched", "delta-rs")
    assert launched.read(S.ITEMS).count() == status["summary"]["items"]["changed"]


def test_an_s3a_lake_without_the_s3a_connector_is_refused_with_the_flag_to_add(s3, tmp_path):
    env = {**os.environ, "LONGTAIL_LOG_DIR": str(tmp_path / "logs"), "PYTHONPATH": str(ROOT / "lib")}
    done = _launcher("ingest", "--set", f"lake.root=s3a://{s3.bucket}/nowhere", env=env, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    said = done.stdout + done.stderr  # spark-submit passes the job's stderr on to its stdout
    assert "--s3a" in said and "org.apache.hadoop:hadoop-aws:3.5.0" in said
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert status["status"] == "failed" and status["exit_code"] == 2
    assert s3.keys("nowhere/") == []


def test_the_distributed_vae_stages_its_shards_on_s3_and_its_processes_read_them(spark, s3):
    # TorchDistributor's processes read the shards with pyarrow, with the session's S3A credentials
    import numpy as np

    from longtail.core.config import VaeConfig
    from longtail.ml import vae as V

    rng = np.random.default_rng(0)
    rows = [(u, int(10 * (u % 2) + i)) for u in range(40) for i in rng.choice(10, size=5, replace=False)]
    pairs = spark.createDataFrame(rows, "user_idx int, item_idx int")
    cfg = VaeConfig(
        hidden=8,
        latent=4,
        epochs=20,
        max_steps=20,
        batch_size=16,
        text=False,
        processes=2,
        max_interactions=10,
    )
    staging = f"s3a://{s3.bucket}/lake/_staging/vae-1"
    model = V.fit(spark, pairs, cfg, staging=staging)
    assert (model.spec["processes"], model.spec["users"], model.spec["interactions"]) == (2, 40, 200)
    assert model.spec["steps"] == 20
    assert s3.keys("lake/_staging/vae-1") == []  # deleted once trained
