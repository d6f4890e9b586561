"""What both Delta engines share: errors, the engine interface, schema checks."""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core.session import is_delta_spark_available as is_delta_spark_available  # re-export
from longtail.core.uris import rs_uri

log = logging.getLogger(__name__)

ENGINES = ("auto", "delta-rs", "delta-spark")
DELTA_RS = "delta-rs"
DELTA_SPARK = "delta-spark"
_STRING_STATS_MAX = 32  # longer strings get no min/max (as delta-spark truncates; we simply skip)
_META_WRITE_ID = "longtail.writeId"
_META_OPERATION = "longtail.operation"
_TS_TYPE_CONF = "spark.sql.parquet.outputTimestampType"

Txn = tuple[str, int]


class LakeError(RuntimeError):
    """A lake operation cannot be done as asked (bad schema, duplicate keys, failed commit)."""


class SchemaMismatchError(LakeError):
    """An append or merge brings columns or types that differ from the table's."""


class DuplicateKeysError(LakeError):
    """A merge source holds more than one row for the same key."""


class CommitConflictError(LakeError):
    """Another writer committed a conflicting change first; the write was not committed."""


def is_conflict(exc: BaseException) -> bool:
    """True when ``exc`` says another writer committed first: ours was not committed and may be retried.

    Both engines raise :class:`CommitConflictError` for that (the delta-spark engine maps delta-spark's
    ``Concurrent*Exception`` classes to it).
    """
    return isinstance(exc, CommitConflictError)


# --- engines -------------------------------------------------------------------------------------
class _Engine:
    name = "?"

    def __init__(self, spark: SparkSession, storage_options: dict[str, str] | None) -> None:
        self.spark = spark
        self.storage_options = storage_options

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def version(self, path: str) -> int | None:
        raise NotImplementedError

    def read(self, path: str, version: int | None) -> tuple[DataFrame, int]:
        raise NotImplementedError

    def overwrite(self, path: str, df: DataFrame, *, txn: Txn | None) -> int | None:
        raise NotImplementedError

    def append(self, path: str, df: DataFrame, *, txn: Txn | None) -> int | None:
        raise NotImplementedError

    def merge(self, path: str, df: DataFrame, keys: list[str], *, txn: Txn | None) -> int | None:
        raise NotImplementedError

    def delete(self, path: str, condition: str, *, txn: Txn | None) -> int | None:
        raise NotImplementedError

    def history(self, path: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def txn_version(self, path: str, app_id: str) -> int | None:
        raise NotImplementedError

    def compact(self, path: str, *, target_bytes: int) -> dict[str, int]:
        raise NotImplementedError

    def checkpoint(self, path: str) -> None:
        raise NotImplementedError

    def vacuum(self, path: str, *, retention_hours: float, dry_run: bool) -> list[str]:
        raise NotImplementedError

    def rows(self, path: str, columns: list[str] | None) -> tuple[list[dict[str, Any]], int]:
        """A small table's rows on the driver and the version read; this default collects a Spark
        read (timestamps as pyspark's ``collect`` gives them: naive, in the driver's time zone)."""
        df, version = self.read(path, None)
        return [r.asDict() for r in (df.select(*columns) if columns else df).collect()], version

    def driver_io(self, path: str) -> bool:
        """True where :meth:`append_rows` writes driver-side rows without Spark (this default: no)."""
        return False

    def append_rows(
        self, path: str, rows: list[dict[str, Any]], schema: T.StructType, *, txn: Txn | None
    ) -> int | None:
        """Append driver-side ``rows`` (dicts with ``schema``'s fields) without Spark; only where
        :meth:`driver_io` is true."""
        raise NotImplementedError

    # shared helpers
    def _rs_table(self, path: str, version: int | None = None) -> Any:
        from deltalake import DeltaTable

        return DeltaTable(rs_uri(path), version=version, storage_options=self.storage_options)

    def _skip(self, path: str, txn: Txn | None) -> bool:
        """True (and logged) when ``txn`` is already committed to the table at ``path``."""
        if txn is None:
            return False
        app_id, version = txn
        done = self.txn_version(path, app_id) if self.exists(path) else None
        if done is not None and done >= version:
            log.info("skip write to %s: txn %s already at version %s >= %s", path, app_id, done, version)
            return True
        return False


def _check_schema(table_schema: T.StructType, df: DataFrame, what: str) -> DataFrame:
    """``df`` with the table's column order; raise if names or types (nullability aside) differ."""
    _check_fields(table_schema, df.schema, what)
    return df.select(*[F.col(f"`{f.name}`") for f in table_schema.fields])


def _check_fields(table_schema: T.StructType, schema: T.StructType, what: str) -> None:
    """Raise :class:`SchemaMismatchError` if ``schema``'s names or types (nullability aside)
    differ from the table's."""
    have = {f.name: _strip_nullability(f.dataType) for f in schema.fields}
    want = {f.name: _strip_nullability(f.dataType) for f in table_schema.fields}
    if have != want:
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        differ = sorted(
            f"{n}: table {want[n].simpleString()} vs {have[n].simpleString()}"
            for n in set(want) & set(have)
            if want[n] != have[n]
        )
        raise SchemaMismatchError(
            f"{what}: the schema written does not match the table's (missing {missing}, "
            f"extra {extra}, different types {differ}); overwrite the table to change its schema"
        )


def _strip_nullability(dt: T.DataType) -> T.DataType:
    if isinstance(dt, T.StructType):
        return T.StructType([T.StructField(f.name, _strip_nullability(f.dataType), True) for f in dt.fields])
    if isinstance(dt, T.ArrayType):
        return T.ArrayType(_strip_nullability(dt.elementType), True)
    if isinstance(dt, T.MapType):
        return T.MapType(_strip_nullability(dt.keyType), _strip_nullability(dt.valueType), True)
    return dt


def _check_writable_types(schema: T.StructType) -> None:
    text = schema.json()
    if '"timestamp_ntz"' in text:
        raise LakeError(
            "timestamp_ntz columns need a Delta table feature that some readers lack; cast them to "
            "timestamp (UTC) first"
        )
