import pytest

pytestmark = pytest.mark.spark


def test_session_has_required_settings(spark):
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.parquet.outputTimestampType") == "TIMESTAMP_MICROS"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    assert spark.sparkContext.master == "local[2]"
    # the blocked top-K's buffered item blocks in memory-managed, spillable pages (tests/test_topk.py
    # runs its multi-block cases through them); Spark's 4,096-row heap array ran out of memory at
    # 100,000 items (docs/scaling.md)
    assert spark.conf.get("spark.sql.cartesianProductExec.buffer.in.memory.threshold") == "1"


def test_a_job_run_in_process_keeps_the_running_sessions_settings(spark):
    # A stage started in-process (a test, a notebook) builds its session without for_tests: the
    # local defaults (4 shuffle partitions) must not land on the session that is already running.
    from longtail.core.session import build_session

    assert build_session("longtail-in-process") is spark
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
