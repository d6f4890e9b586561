"""Shared fixtures: one local[2] SparkSession for the whole test session, temporary lakes."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# Python workers of the local session import longtail from lib/ like the driver does.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO / "lib"), os.environ.get("PYTHONPATH", "")) if p
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# encoder.cpu_linear auto keeps its timing per host (longtail.ml.encoder.host_onednn_speedup): the
# suite's go to a directory of its own, not the user's ~/.cache/longtail
os.environ.setdefault("LONGTAIL_CACHE_DIR", tempfile.mkdtemp(prefix="longtail-test-cache-"))
# The driver JVM's heap must be set before it starts: the default 1 GiB ran out while evaluate's
# test ranked eight lists (about 0.5 GiB of live heap after GC; docs/decisions.md), and 2 GiB once
# ran out in a broadcast late in a worker's share of the suite (what earlier modules left behind;
# see _release_module_state). Two xdist workers x 3 GiB fit the 24 GiB machine many times over.
os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--driver-memory 3g pyspark-shell")
# Every driver JVM of the suite (this session's, and the spark-submit processes the tests start,
# which inherit the variable; spark-submit.sh adds its own options in front) collects garbage with
# the throughput collector instead of Java 17's default G1. The suite runs two worker JVMs and
# their subprocesses on two cores, so JVM CPU is its bottleneck; the figures (4-8% of a test
# pipeline's wall time, measured against G1 runs of the same hour) are in the README's testing
# notes. The stages' own launcher leaves the collector to the user (Spark's choice).
# The same JVMs evaluate Spark SQL's expressions interpreted, without generating and compiling Java
# for each query (whole-stage codegen off, and the expression factories' NO_CODEGEN mode, which
# Spark's own test suites use): the suite's tables have tens to hundreds of rows, so compiling is
# most of a query's CPU. A 40-user test pipeline took 80-83 s against 97-102 s with codegen
# (docs/decisions.md). Production and the benchmarks keep Spark's codegen; the README's quickstart
# (./spark-submit.sh, outside pytest) runs the whole pipeline with it.
os.environ.setdefault(
    "SPARK_SUBMIT_OPTS",
    "-XX:+UseParallelGC -Dspark.sql.codegen.wholeStage=false -Dspark.sql.codegen.factoryMode=NO_CODEGEN",
)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-delta-spark",
        action="store_true",
        help="start the test session without the connectors' jars (offline machines): "
        "delta-spark and S3A tests skip and lake.engine=auto resolves to delta-rs",
    )


@pytest.fixture(scope="session")
def spark(request: pytest.FixtureRequest):
    """One local[2] session for the whole run, started WITH the delta-spark and S3A connectors.

    One JVM per process cannot take jars later, so the session carries the connector, its Delta
    extension and catalog for every test: lake.engine=auto then resolves to delta-spark, and
    tests that force lake.engine=delta-rs run delta-rs on the same session (it never uses them).
    S3A (hadoop-aws) is there for the object-store tests (``tests/test_object_store.py``); no other
    test reaches it. The jars come from the Ivy cache (``LONGTAIL_IVY_DIR``, else ``~/.ivy2``) that
    ``.ci/run`` fills first.
    """
    from longtail.core.session import build_session

    jars = not request.config.getoption("--no-delta-spark")
    session = build_session("longtail-tests", master="local[2]", for_tests=True, delta_spark=jars, s3a=jars)
    yield session
    session.stop()


@pytest.fixture(scope="module", autouse=True)
def _release_module_state() -> Iterator[None]:
    """After each module: drop the cached tables and collect what its lakes left in the JVM.

    The session lives for the whole run (one per xdist worker); a module's persisted DataFrames,
    broadcasts and checkpointed candidate pairs would otherwise stay until the JVM's own GC
    decides to run the ContextCleaner, and fill the next module's driver heap."""
    yield
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        return
    import gc

    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.catalog.clearCache()
    gc.collect()  # drop the Python side's py4j references first
    sc._jvm.System.gc()  # then the JVM's: the ContextCleaner frees unreferenced RDDs and broadcasts


@pytest.fixture(scope="session", autouse=True)
def _auto_engine_is_delta_rs() -> Iterator[None]:
    """``lake.engine: auto`` means delta-rs in tests not marked ``delta_spark``.

    The session carries the connector (for the tests that use delta-spark), which would turn every
    stage test's ``auto`` into delta-spark. The stage tests pin the quickstart's engine instead
    (delta-rs, what a machine without the connector runs); the delta-spark path is covered where it
    is asked for: tests marked ``delta_spark`` (the lake suite's second half, the pipeline on
    delta-spark; ``_auto_engine_for_delta_spark_tests`` below) and tests that pass
    ``engine="delta-spark"`` explicitly (the interop tests). Session-scoped so that module- and
    session-scoped fixtures (a trained lake shared by a module) see it too: a function-scoped
    patch is applied only after the wider fixtures of the first test have run.
    """
    from longtail.lake import facade

    real = facade.Lake.__init__

    def init(self, spark, root, engine="auto", **kwargs):  # type: ignore[no-untyped-def]
        real(self, spark, root, "delta-rs" if engine == "auto" else engine, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(facade.Lake, "__init__", init)
        patch.setattr(facade.Lake, "_real_init", real, raising=False)
        yield


@pytest.fixture(autouse=True)
def _auto_engine_for_delta_spark_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests marked ``delta_spark`` get the real ``auto`` (delta-spark when its classes load)."""
    if request.node.get_closest_marker("delta_spark") is None:
        return
    from longtail.lake import facade

    monkeypatch.setattr(facade.Lake, "__init__", facade.Lake._real_init)


@pytest.fixture(params=["delta-rs", pytest.param("delta-spark", marks=pytest.mark.delta_spark)])
def engine(request: pytest.FixtureRequest, spark) -> str:
    """Each lake engine in turn; delta-spark skips (with the reason) when run with --no-delta-spark."""
    from longtail.lake import is_delta_spark_available

    if request.param == "delta-spark" and not is_delta_spark_available(spark):
        pytest.skip("delta-spark connector not on the classpath (--no-delta-spark)")
    return request.param


@pytest.fixture
def lake_root(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "lake"
    root.mkdir()
    yield str(root)
