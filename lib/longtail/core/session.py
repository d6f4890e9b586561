"""The one place that builds a SparkSession.

On a cluster, spark-submit has already given the session its settings and this factory only adds
what correctness needs (UTC session time zone, micro-second Parquet timestamps that Delta readers
expect). In local mode it also sets small-machine defaults, each only when the caller did not set
it already (``conf/spark/local.conf``, ``--conf spark.x=y`` and ``extra`` win).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from longtail.core.errors import ConnectorMissingError

log = logging.getLogger(__name__)

# Needed for correct tables whatever the master: Delta stores timestamps as UTC micro-seconds.
REQUIRED_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # The blocked top-K's CartesianProduct buffers each task's item partition: rows of one packed
    # block each (16,384 items x ~480 floats = ~31 MB). Spark's default keeps up to 4,096 such rows
    # in a plain heap array that no memory manager sees; with 1, every row past the first goes to
    # memory-managed pages that spill to disk under pressure. Measured: 100,000 items x 200,000
    # users ran out of a 4 GiB heap in `train` with the default (docs/scaling.md).
    "spark.sql.cartesianProductExec.buffer.in.memory.threshold": "1",
}

LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.python.worker.reuse": "true",
    # delta-spark rebuilds a table's state from its log with this many shuffle partitions (default
    # 50): on one machine that is 50 tiny tasks per snapshot, most of a small commit's time
    "spark.databricks.delta.snapshotPartitions": "4",
}

# The Delta connector (delta-spark engine), in one place: build_session(delta_spark=True), the
# launcher's --delta-spark, .ci/run's pre-fetch and the README all take it from here. The pip
# package delta-spark 4.4.1 names io.delta:delta-spark_4.2_2.13:4.4.1, which Maven Central does not
# serve; 4.4.0 is the newest build for Spark 4.2 there, and 4.4.1's Python API works with it.
DELTA_SPARK_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"
DELTA_SPARK_CLASS = "io.delta.tables.DeltaTable"
# Static SQL confs: they must be set before the session starts.
DELTA_SPARK_CONF: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# S3 through Hadoop's S3A connector (lake.root: s3a://...): hadoop-aws at the version of the Hadoop
# client that pyspark ships (pyspark 4.2.0: hadoop-client-api-3.5.0.jar), with the AWS SDK v2
# bundle it depends on (~690 MB, resolved once into the Ivy cache). Clusters (EMR, Dataproc,
# Databricks) already have S3A on their classpath and need none of this.
HADOOP_AWS_PACKAGE = "org.apache.hadoop:hadoop-aws:3.5.0"
S3A_CLASS = "org.apache.hadoop.fs.s3a.S3AFileSystem"
# Where Ivy keeps the resolved jars, so that tests, CI and the launcher download them once.
IVY_DIR_ENV = "LONGTAIL_IVY_DIR"


def ivy_dir() -> str:
    """The Ivy cache for ``spark.jars.packages``: ``$LONGTAIL_IVY_DIR``, else ``~/.ivy2``."""
    return os.path.abspath(os.path.expanduser(os.environ.get(IVY_DIR_ENV) or "~/.ivy2"))


def connector_conf(*, delta_spark: bool = False, s3a: bool = False) -> dict[str, str]:
    """The Spark settings that put the asked-for connectors on a new JVM's classpath.

    ``delta_spark``: the Delta connector, its SQL extension and catalog. ``s3a``: Hadoop's S3A
    file system (``hadoop-aws`` and the AWS SDK). Both resolve through Ivy into :func:`ivy_dir`.
    Empty when neither is asked for.

    Example:
        >>> connector_conf(delta_spark=True, s3a=True)["spark.jars.packages"]
        'io.delta:delta-spark_4.2_2.13:4.4.0,org.apache.hadoop:hadoop-aws:3.5.0'
    """
    packages = [p for p, wanted in ((DELTA_SPARK_PACKAGE, delta_spark), (HADOOP_AWS_PACKAGE, s3a)) if wanted]
    if not packages:
        return {}
    conf = {"spark.jars.packages": ",".join(packages), "spark.jars.ivy": ivy_dir()}
    return {**conf, **DELTA_SPARK_CONF} if delta_spark else conf


def delta_spark_conf() -> dict[str, str]:
    """Every Spark setting the delta-spark engine needs: the package, the Ivy cache, extension, catalog.

    Example:
        >>> delta_spark_conf()["spark.jars.packages"]
        'io.delta:delta-spark_4.2_2.13:4.4.0'
    """
    return connector_conf(delta_spark=True)


# Python workers load the text model: no weight-loading progress bars or advisory warnings on the
# executors' stderr (the console, in local mode). The caller's own environment value wins.
WORKER_ENV: dict[str, str] = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}

TEST_DEFAULTS: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.sql.adaptive.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
}


def build_session(
    app_name: str = "longtail",
    *,
    master: str | None = None,
    extra: Mapping[str, str] | None = None,
    for_tests: bool = False,
    delta_spark: bool = False,
    s3a: bool = False,
) -> SparkSession:
    """Build (or return the running) SparkSession with longtail's required settings.

    Args:
        app_name: the application name shown in the Spark UI and logs.
        master: only for programmatic use (tests, notebooks); spark-submit sets it otherwise.
        extra: settings that win over the local defaults.
        for_tests: UI off, two shuffle partitions.
        delta_spark: start the JVM with the Delta connector (:data:`DELTA_SPARK_PACKAGE`, resolved
            through Ivy into :func:`ivy_dir`) and the Delta extension and catalog. Only a JVM that
            this call starts can take new jars: under spark-submit pass ``--packages`` (the
            launcher's ``--delta-spark``); a running JVM without them raises
            :class:`~longtail.core.errors.ConnectorMissingError`.
        s3a: start the JVM with Hadoop's S3A connector (:data:`HADOOP_AWS_PACKAGE`), for a lake
            on ``s3a://``; under spark-submit, the launcher's ``--s3a``.

    Example:
        >>> spark = build_session("longtail-ingest")
    """
    # Start (or join, under spark-submit) the JVM first so that SparkConf() sees what spark-submit,
    # --properties-file and --conf already set; our defaults then fill only the gaps.
    delta = connector_conf(delta_spark=delta_spark, s3a=s3a)
    running = SparkContext._active_spark_context is not None
    if delta and SparkContext._gateway is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
        # spark-submit resolves spark.jars.packages while it launches the JVM, so it must see them now.
        SparkContext._ensure_initialized(conf=SparkConf(loadDefaults=False).setAll(list(delta.items())))
    SparkContext._ensure_initialized()
    given = SparkConf()
    master = master or given.get("spark.master") or "local[*]"
    conf: dict[str, str] = {}
    # getOrCreate() copies a builder's SQL settings onto a session that is already running (a job
    # run in-process by a notebook or a test): defaults must not overwrite what its owner set.
    if master.startswith("local") and not running:
        conf.update(LOCAL_DEFAULTS)
        if for_tests:
            conf.update(TEST_DEFAULTS)
        conf = {k: v for k, v in conf.items() if not given.contains(k)}
        # Local Python workers run the driver's interpreter (its venv) unless told otherwise.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for name, value in WORKER_ENV.items():
        if not given.contains(f"spark.executorEnv.{name}"):
            conf[f"spark.executorEnv.{name}"] = os.environ.get(name, value)
    conf.update(REQUIRED_CONF)
    conf.update(delta)
    conf.update(extra or {})
    builder = SparkSession.builder.appName(app_name).master(master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    for key, value in REQUIRED_CONF.items():  # a session that already existed keeps its own otherwise
        spark.conf.set(key, value)
    spark.sparkContext.setLogLevel(os.environ.get("LONGTAIL_SPARK_LOG_LEVEL", "WARN"))
    if delta_spark and not is_delta_spark_available(spark):
        raise ConnectorMissingError(
            f"delta-spark was asked for but {DELTA_SPARK_CLASS} is not on the classpath of the running "
            f"JVM: pass --packages {DELTA_SPARK_PACKAGE} to spark-submit (./spark-submit.sh --delta-spark)"
        )
    if s3a and not has_class(spark, S3A_CLASS):
        raise ConnectorMissingError(
            f"S3A was asked for but {S3A_CLASS} is not on the classpath of the running JVM: pass "
            f"--packages {HADOOP_AWS_PACKAGE} to spark-submit (./spark-submit.sh --s3a)"
        )
    log.info("Spark %s, master %s", spark.version, spark.sparkContext.master)
    return spark


def has_class(spark: SparkSession, name: str) -> bool:
    """True when the JVM class ``name`` loads in the session's JVM.

    Looks it up through the thread's context class loader (where ``--packages``/``--jars`` put
    it) and then the system one. False on Spark Connect (no JVM).
    """
    jvm = getattr(spark, "_jvm", None) or getattr(getattr(spark, "sparkContext", None), "_jvm", None)
    if jvm is None:
        return False
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(name, False, loader)
        return True
    except Exception:
        pass
    try:
        jvm.java.lang.Class.forName(name)
        return True
    except Exception:
        return False


def is_delta_spark_available(spark: SparkSession) -> bool:
    """True when the delta-spark connector's classes are on the session's JVM classpath.

    Example:
        >>> is_delta_spark_available(spark)
        False
    """
    return has_class(spark, DELTA_SPARK_CLASS)


def is_local(spark: SparkSession) -> bool:
    """True when the session runs in local mode (driver and executors in one JVM)."""
    return (spark.sparkContext.master or "").startswith("local")


@contextmanager
def session_conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Set runtime SQL confs for the duration of a block, then restore (or unset) each one.

    Example:
        >>> with session_conf(spark, {"spark.databricks.delta.write.txnAppId": "ingest"}):
        ...     df.write.format("delta").save(path)
    """
    old = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, previous in old.items():
            if previous is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, previous)
