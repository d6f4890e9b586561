"""The one place that reads and writes the lake's Delta tables, with two engines behind one API.

* :mod:`longtail.lake.facade` — :class:`Lake`, the API every stage uses.
* :mod:`longtail.lake.delta_rs` — Spark writes Parquet, ``deltalake`` commits (no JVM connector).
* :mod:`longtail.lake.delta_spark` — ``format("delta")`` and ``DeltaTable`` (the connector's jars).
* :mod:`longtail.lake.runs` — the `runs` table: one row per stage run.

``docs/lake.md`` describes the engines, the commit protocol, the guarantees and the limits.
"""

from longtail.lake.base import (
    DELTA_RS,
    DELTA_SPARK,
    ENGINES,
    CommitConflictError,
    DuplicateKeysError,
    LakeError,
    SchemaMismatchError,
    Txn,
    is_delta_spark_available,
)
from longtail.lake.facade import Lake

__all__ = [
    "DELTA_RS",
    "DELTA_SPARK",
    "ENGINES",
    "CommitConflictError",
    "DuplicateKeysError",
    "Lake",
    "LakeError",
    "SchemaMismatchError",
    "Txn",
    "is_delta_spark_available",
]
