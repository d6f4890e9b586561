"""The one module that reads and writes the lake's Delta tables, with two engines behind one API.

* **delta-rs** (the ``deltalake`` package; the default wherever the delta-spark connector is not on
  the JVM classpath). Spark computes and writes the Parquet data files in parallel on the executors,
  each write into its own folder ``<table>/<write id>/part-*.parquet``; the driver then commits
  them through ``deltalake`` as **one** Delta transaction (add and remove actions, optionally an
  application transaction id). Merge and delete are copy-on-write at file granularity, computed by
  Spark. The driver only ever holds file lists and Parquet footers, never table rows.
* **delta-spark** (``io.delta:delta-spark`` on the classpath): ``format("delta")``,
  ``DeltaTable.merge`` / ``delete``, ``txnAppId``/``txnVersion`` for idempotence.

Both write the same tables (protocol reader 1 / writer 2, no deletion vectors, no column mapping),
readable by delta-spark, delta-rs and DuckDB. See ``docs/lake.md`` for guarantees and limits.

Example:
    >>> lake = Lake(spark, "/data/lake")
    >>> lake.merge("items", items_df, keys=["item_id"], txn=("ingest-items", 7))
    3
    >>> lake.read("items", version=0).count()
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

if TYPE_CHECKING:
    from longtail.config import Config

log = logging.getLogger(__name__)

ENGINES = ("auto", "delta-rs", "delta-spark")
DELTA_RS = "delta-rs"
DELTA_SPARK = "delta-spark"
_DELTA_SPARK_CLASS = "io.delta.tables.DeltaTable"
# Spark's Hadoop schemes -> the object_store schemes that deltalake understands.
_RS_SCHEMES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}
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


def is_delta_spark_available(spark: SparkSession) -> bool:
    """True when the delta-spark connector's classes are on the session's JVM classpath.

    Looks ``io.delta.tables.DeltaTable`` up through the thread's context class loader (where
    ``--packages``/``--jars`` put it) and then the system one. False on Spark Connect (no JVM).

    Example:
        >>> is_delta_spark_available(spark)
        False
    """
    jvm = getattr(spark, "_jvm", None) or getattr(getattr(spark, "sparkContext", None), "_jvm", None)
    if jvm is None:
        return False
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(_DELTA_SPARK_CLASS, False, loader)
        return True
    except Exception:
        pass
    try:
        jvm.java.lang.Class.forName(_DELTA_SPARK_CLASS)
        return True
    except Exception:
        return False


# --- URIs ----------------------------------------------------------------------------------------
def _scheme(uri: str) -> str:
    """The URI scheme, '' for a plain local path (a Windows drive letter counts as local)."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", uri)
    return m.group(1).lower() if m and len(m.group(1)) > 1 else ""


def _is_local(uri: str) -> bool:
    return _scheme(uri) in ("", "file")


def _local_path(uri: str) -> str:
    """``file:///x`` or ``file:/x`` or ``x`` -> an absolute local path."""
    if _scheme(uri) == "file":
        uri = unquote(urlparse(uri).path)
    return os.path.abspath(uri)


def _rs_uri(uri: str) -> str:
    """The table URI for deltalake: local paths absolute, Hadoop schemes mapped (s3a -> s3)."""
    if _is_local(uri):
        return _local_path(uri)
    scheme = _scheme(uri)
    return _RS_SCHEMES.get(scheme, scheme) + uri[len(scheme) :]


def _path_key(uri: str) -> str:
    """A scheme-free, decoded form of a file URI, to match Spark's file paths to deltalake's."""
    if _is_local(uri):
        return _local_path(uri)
    return unquote(uri.split(":", 1)[1]).lstrip("/")


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


@dataclass(frozen=True)
class _DataFile:
    """One Parquet file written by Spark, with what the Delta add action needs."""

    uri: str  # as Spark/Hadoop names it
    rel_path: str  # relative to the table root, not encoded
    size: int
    modification_time: int  # ms since the epoch
    num_records: int
    stats: str


# --- the facade ----------------------------------------------------------------------------------
class Lake:
    """Delta tables under one root, read and written through delta-rs or delta-spark.

    Args:
        spark: the session whose executors read and write the data files.
        root: the lake root: a local path or a ``file:``, ``s3a://``, ``abfss://``, ``hdfs://`` URI.
        engine: ``auto`` (delta-spark when its connector is on the classpath, else delta-rs),
            ``delta-rs`` or ``delta-spark``.
        storage_options: passed to ``deltalake`` for remote roots (credentials usually come from
            the environment, e.g. ``AWS_ACCESS_KEY_ID``; never logged).

    Every write is one atomic commit; ``txn=(app_id, version)`` makes it idempotent: when the
    table already holds that application transaction at ``version`` or later, the write is
    skipped and returns None. ``reads``/``writes`` record the versions this Lake read and wrote.
    """

    def __init__(
        self,
        spark: SparkSession,
        root: str,
        engine: str = "auto",
        *,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"lake engine {engine!r} is not allowed; allowed: {list(ENGINES)}")
        self.spark = spark
        self.root = _local_path(root) if _is_local(root) else root.rstrip("/")
        self.reads: dict[str, int] = {}
        self.writes: dict[str, int] = {}
        available = is_delta_spark_available(spark)
        if engine == DELTA_SPARK and not available:
            raise LakeError(
                "lake.engine=delta-spark but the delta-spark connector is not on the classpath: start "
                "Spark with --packages io.delta:delta-spark_2.13:<version> and the Delta extension/catalog "
                "confs (docs/lake.md), or use lake.engine=auto"
            )
        use_spark = engine == DELTA_SPARK or (engine == "auto" and available)
        self._engine: _Engine = (
            _DeltaSparkEngine(spark, storage_options) if use_spark else _DeltaRsEngine(spark, storage_options)
        )
        self.engine_name: str = self._engine.name
        log.debug("lake %s on %s", self.root, self.engine_name)

    @classmethod
    def from_config(cls, spark: SparkSession, cfg: Config) -> Lake:
        """The lake that ``cfg.lake`` describes (root and engine)."""
        return cls(spark, cfg.lake.root, cfg.lake.engine)

    def path(self, table: str) -> str:
        """The table's folder or URI: ``<root>/<table>``."""
        return _join(self.root, table)

    def exists(self, table: str) -> bool:
        """True when ``table`` is a Delta table (it has a committed version)."""
        return self._engine.exists(self.path(table))

    def version(self, table: str) -> int | None:
        """The latest committed version of ``table``, None when there is no table."""
        return self._engine.version(self.path(table))

    def read(self, table: str, version: int | None = None) -> DataFrame:
        """The table (at ``version``, default the latest) as a lazy Spark DataFrame.

        Raises:
            LakeError: the table does not exist (or has no such version).
        """
        df, read_version = self._engine.read(self.path(table), version)
        self.reads[table] = read_version
        return df

    def overwrite(self, table: str, df: DataFrame, *, txn: Txn | None = None) -> int | None:
        """Replace the table's rows (and schema) with ``df``'s; create the table if needed."""
        return self._written(table, self._engine.overwrite(self.path(table), df, txn=txn))

    def append(self, table: str, df: DataFrame, *, txn: Txn | None = None) -> int | None:
        """Add ``df``'s rows; the columns and types must match the table's (created if needed)."""
        return self._written(table, self._engine.append(self.path(table), df, txn=txn))

    def merge(self, table: str, df: DataFrame, keys: list[str], *, txn: Txn | None = None) -> int | None:
        """Upsert ``df`` on ``keys``: matching rows are replaced by ``df``'s, the others inserted.

        ``df``'s keys must be unique (else :class:`DuplicateKeysError`; checked with a Spark
        aggregation). Null keys never match (SQL equality), so such rows are inserted. An empty
        ``df`` commits nothing and returns None.
        """
        if not keys:
            raise ValueError("merge needs at least one key column")
        return self._written(table, self._engine.merge(self.path(table), df, list(keys), txn=txn))

    def delete(self, table: str, condition: str, *, txn: Txn | None = None) -> int | None:
        """Delete the rows where the SQL predicate ``condition`` is true; None when none matched."""
        return self._written(table, self._engine.delete(self.path(table), condition, txn=txn))

    def history(self, table: str) -> list[dict[str, Any]]:
        """The table's commits, newest first (each with ``version``, ``timestamp``, ``operation``)."""
        return self._engine.history(self.path(table))

    def txn_version(self, table: str, app_id: str) -> int | None:
        """The latest version of application transaction ``app_id`` committed to ``table``."""
        return self._engine.txn_version(self.path(table), app_id)

    def _written(self, table: str, version: int | None) -> int | None:
        if version is not None:
            self.writes[table] = version
        return version


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

    # shared helpers
    def _rs_table(self, path: str, version: int | None = None) -> Any:
        from deltalake import DeltaTable

        return DeltaTable(_rs_uri(path), version=version, storage_options=self.storage_options)

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
    have = {f.name: _strip_nullability(f.dataType) for f in df.schema.fields}
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
            f"{what}: the DataFrame's schema does not match the table's (missing {missing}, "
            f"extra {extra}, different types {differ}); overwrite the table to change its schema"
        )
    return df.select(*[F.col(f"`{f.name}`") for f in table_schema.fields])


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


class _DeltaRsEngine(_Engine):
    """Spark writes the Parquet files; deltalake commits them (see the module docstring)."""

    name = DELTA_RS

    # -- reading --
    def exists(self, path: str) -> bool:
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(_rs_uri(path), storage_options=self.storage_options))

    def version(self, path: str) -> int | None:
        if not self.exists(path):
            return None
        return int(self._rs_table(path).version())

    def read(self, path: str, version: int | None) -> tuple[DataFrame, int]:
        if not self.exists(path):
            raise LakeError(f"no Delta table at {path}")
        dt = self._rs_table(path, version)
        schema = _spark_schema(dt)
        files = [self._spark_uri(path, u) for u in dt.file_uris()]
        if not files:
            return self.spark.createDataFrame([], schema), int(dt.version())
        return self.spark.read.schema(schema).parquet(*files), int(dt.version())

    def history(self, path: str) -> list[dict[str, Any]]:
        if not self.exists(path):
            return []
        out = []
        for entry in self._rs_table(path).history():
            entry = dict(entry)
            entry.setdefault("operation", None)
            out.append(entry)
        return sorted(out, key=lambda e: -int(e["version"]))

    def txn_version(self, path: str, app_id: str) -> int | None:
        if not self.exists(path):
            return None
        v = self._rs_table(path).transaction_version(app_id)
        return None if v is None else int(v)

    def _spark_uri(self, table_path: str, file_uri: str) -> str:
        """deltalake's file URI in Spark's scheme (s3:// -> s3a:// when the root is s3a)."""
        if _is_local(table_path):
            return _local_path(file_uri)
        spark_scheme, rs_scheme = _scheme(table_path), _scheme(file_uri)
        if rs_scheme and rs_scheme != spark_scheme:
            return spark_scheme + file_uri[len(rs_scheme) :]
        return file_uri

    # -- writing --
    def overwrite(self, path: str, df: DataFrame, *, txn: Txn | None) -> int | None:
        if self._skip(path, txn):
            return None
        _check_writable_types(df.schema)
        with self._staged(path) as stage:
            files = stage.write(df)
            return self._commit(path, files, [], mode="overwrite", schema=df.schema, txn=txn, op="overwrite")

    def append(self, path: str, df: DataFrame, *, txn: Txn | None) -> int | None:
        if self._skip(path, txn):
            return None
        _check_writable_types(df.schema)
        exists = self.exists(path)
        schema = df.schema
        if exists:
            schema = _spark_schema(self._rs_table(path))
            df = _check_schema(schema, df, f"append to {path}")
        with self._staged(path) as stage:
            files = stage.write(df)
            return self._commit(path, files, [], mode="append", schema=schema, txn=txn, op="append")

    def merge(self, path: str, df: DataFrame, keys: list[str], *, txn: Txn | None) -> int | None:
        if self._skip(path, txn):
            return None
        _check_writable_types(df.schema)
        missing = [k for k in keys if k not in df.columns]
        if missing:
            raise LakeError(f"merge into {path}: key column(s) {missing} not in the source {df.columns}")
        exists = self.exists(path)
        dt = self._rs_table(path) if exists else None
        schema = _spark_schema(dt) if dt is not None else df.schema
        if dt is not None:
            df = _check_schema(schema, df, f"merge into {path}")
        with self._staged(path) as stage:
            # Stage the source once: it may be expensive (e.g. encoded by a model); every later
            # step reads these files back instead of recomputing it. Its rows are also exactly
            # the rows to add (new and updated).
            source_files = stage.write(df)
            if sum(f.num_records for f in source_files) == 0:
                log.info("merge into %s: empty source, nothing to commit", path)
                return None
            source = self.spark.read.schema(schema).parquet(*[f.uri for f in source_files])
            dup = source.groupBy(*keys).count().where(F.col("count") > 1).limit(1).collect()
            if dup:
                example = {k: dup[0][k] for k in keys}
                raise DuplicateKeysError(
                    f"merge into {path}: the source has more than one row for key {example} "
                    f"(keys {keys}); deduplicate it first"
                )
            if dt is None:
                return self._commit(
                    path, source_files, [], mode="overwrite", schema=schema, txn=txn, op="merge"
                )
            current = self._current_files(path, dt)
            touched = self._files_matching(current, schema, source.select(*keys).distinct(), keys=keys)
            rewritten: list[_DataFile] = []
            if touched:
                kept = (
                    self.spark.read.schema(schema)
                    .parquet(*[current[k][0] for k in touched])
                    .join(source.select(*keys), on=keys, how="left_anti")
                )
                rewritten = stage.write(kept)
            removes = [current[k][1] for k in touched]
            log.info(
                "merge into %s: %d file(s) rewritten, %d source row(s)",
                path,
                len(removes),
                sum(f.num_records for f in source_files),
            )
            return self._commit(
                path,
                source_files + rewritten,
                removes,
                mode="append",
                schema=schema,
                txn=txn,
                op="merge",
                dt=dt,
            )

    def delete(self, path: str, condition: str, *, txn: Txn | None) -> int | None:
        if self._skip(path, txn):
            return None
        if not self.exists(path):
            raise LakeError(f"no Delta table at {path}")
        dt = self._rs_table(path)
        schema = _spark_schema(dt)
        current = self._current_files(path, dt)
        if not current:
            return None
        table = self.spark.read.schema(schema).parquet(*[u for u, _ in current.values()])
        hit = (
            table.where(F.coalesce(F.expr(condition), F.lit(False)))
            .select(F.col("_metadata.file_path").alias("_file"))
            .distinct()
            .collect()  # bounded by the number of files
        )
        touched = sorted({_path_key(r["_file"]) for r in hit} & set(current))
        if not touched:
            log.info("delete from %s: no row matches %s", path, condition)
            return None
        with self._staged(path) as stage:
            kept = (
                self.spark.read.schema(schema)
                .parquet(*[current[k][0] for k in touched])
                .where(~F.coalesce(F.expr(condition), F.lit(False)))
            )
            rewritten = stage.write(kept)
            removes = [current[k][1] for k in touched]
            return self._commit(
                path, rewritten, removes, mode="append", schema=schema, txn=txn, op="delete", dt=dt
            )

    # -- internals --
    def _current_files(self, path: str, dt: Any) -> dict[str, tuple[str, Any]]:
        """``{path key: (Spark URI, RemoveAction)}`` for every file of the table's current version."""
        from deltalake.transaction import RemoveAction

        now = int(time.time() * 1000)
        actions = dt.get_add_actions(flatten=True)
        if hasattr(actions, "to_pylist"):
            rows = actions.to_pylist()
        else:  # an arro3 / Arrow C stream object
            import pyarrow as pa

            rows = pa.table(actions).to_pylist()
        base = _rs_uri(path).rstrip("/")
        out: dict[str, tuple[str, Any]] = {}
        for row in rows:
            rel = row["path"]
            uri = self._spark_uri(path, _join(base, unquote(rel)))
            remove = RemoveAction(
                path=rel,
                data_change=True,
                deletion_timestamp=now,
                size=int(row["size_bytes"]) if row.get("size_bytes") is not None else None,
                partition_values={},
            )
            out[_path_key(uri)] = (uri, remove)
        return out

    def _files_matching(
        self,
        current: dict[str, tuple[str, Any]],
        schema: T.StructType,
        keys_df: DataFrame,
        *,
        keys: list[str],
    ) -> list[str]:
        """Path keys of the current files that hold a row whose key is in ``keys_df``."""
        if not current:
            return []
        table = self.spark.read.schema(schema).parquet(*[u for u, _ in current.values()])
        hit = (
            table.select(*keys, F.col("_metadata.file_path").alias("_file"))
            .join(keys_df, on=keys, how="left_semi")
            .select("_file")
            .distinct()
            .collect()  # bounded by the number of files
        )
        found = {_path_key(r["_file"]) for r in hit}
        unknown = found - set(current)
        if unknown:  # would mean a path-matching bug: never rewrite blindly
            raise LakeError(
                f"internal: Spark read files that the Delta log does not list: {sorted(unknown)[:3]}"
            )
        return sorted(found)

    @contextmanager
    def _staged(self, path: str) -> Iterator[_Stage]:
        """A staging area for one write; its files are deleted if the block raises."""
        stage = _Stage(self.spark, path)
        committed = False
        try:
            yield stage
            committed = True
        finally:
            if not committed:
                stage.discard()

    def _commit(
        self,
        path: str,
        files: list[_DataFile],
        removes: list[Any],
        *,
        mode: str,
        schema: T.StructType,
        txn: Txn | None,
        op: str,
        dt: Any = None,
    ) -> int:
        """Commit ``files`` (and ``removes``) as one Delta transaction; return its version."""
        from deltalake import DeltaTable
        from deltalake.exceptions import CommitFailedError
        from deltalake.schema import Schema
        from deltalake.transaction import (
            AddAction,
            CommitProperties,
            Transaction,
            create_table_with_add_actions,
        )

        adds = [
            AddAction(
                path=quote(f.rel_path, safe="/"),
                size=f.size,
                partition_values={},
                modification_time=f.modification_time,
                data_change=True,
                stats=f.stats,
            )
            for f in files
        ]
        write_id = uuid.uuid4().hex
        props = CommitProperties(
            custom_metadata={_META_WRITE_ID: write_id, _META_OPERATION: op},
            app_transactions=[Transaction(txn[0], int(txn[1]))] if txn else None,
        )
        delta_schema = Schema.from_json(schema.json())
        uri = _rs_uri(path)
        try:
            if dt is None and not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
                create_table_with_add_actions(
                    uri,
                    delta_schema,
                    adds,
                    mode="error",
                    storage_options=self.storage_options,
                    commit_properties=props,
                )
            else:
                dt = dt or self._rs_table(path)
                dt.create_write_transaction(
                    adds + removes, mode=mode, schema=delta_schema, commit_properties=props
                )
        except CommitFailedError as exc:
            if self._committed_version(path, write_id) is None:
                raise CommitConflictError(
                    f"{op} on {path} was not committed: another writer changed the table ({exc}); retry the stage"
                ) from exc
        except Exception:
            # An error after the log entry was written (e.g. in a post-commit hook) must not
            # discard files that the log now references.
            if self._committed_version(path, write_id) is None:
                raise
        version = self._committed_version(path, write_id)
        if version is None:  # pragma: no cover - deltalake returned without committing
            raise LakeError(f"{op} on {path}: deltalake returned but no commit carries write id {write_id}")
        log.info(
            "%s %s: version %d, %d file(s) added, %d removed", op, path, version, len(adds), len(removes)
        )
        return version

    def _committed_version(self, path: str, write_id: str) -> int | None:
        """The version of the commit tagged with ``write_id``, looked up in the recent history."""
        from deltalake import DeltaTable

        uri = _rs_uri(path)
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            return None
        for entry in self._rs_table(path).history(limit=20):
            if entry.get(_META_WRITE_ID) == write_id:
                return int(entry["version"])
        return None


class _Stage:
    """Data files of one write, under ``<table>/<write id>-<n>/`` (one folder per Spark write)."""

    def __init__(self, spark: SparkSession, table_path: str) -> None:
        self.spark = spark
        self.table_path = table_path
        self.write_id = f"w{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        self.folders: list[str] = []

    def write(self, df: DataFrame) -> list[_DataFile]:
        """Write ``df`` as Parquet (on the executors) into a new folder; describe the files."""
        folder = f"{self.write_id}-{len(self.folders)}"
        uri = _join(self.table_path, folder)
        self.folders.append(uri)
        if self.spark.conf.get(_TS_TYPE_CONF, None) != "TIMESTAMP_MICROS":
            # Delta readers expect micro-second timestamps, not Spark's legacy INT96.
            log.warning("setting %s=TIMESTAMP_MICROS for Delta data files", _TS_TYPE_CONF)
            self.spark.conf.set(_TS_TYPE_CONF, "TIMESTAMP_MICROS")
        df.write.mode("errorifexists").parquet(uri)
        fs, jpath = _hadoop_fs(self.spark, uri)
        found: list[tuple[str, int, int]] = []  # (name, size, modification time)
        for st in fs.listStatus(jpath):
            name = st.getPath().getName()
            if st.isFile() and not name.startswith(("_", ".")):
                found.append((name, int(st.getLen()), int(st.getModificationTime())))
            elif name == "_SUCCESS":
                fs.delete(st.getPath(), False)
        try:
            stats = {name: _parquet_stats(_join(uri, name)) for name, _, _ in found}
        except Exception:
            if _is_local(uri):
                raise
            # pyarrow cannot open this store with the environment's credentials: row counts from
            # Spark instead (one job over the new files; no min/max, which the protocol allows).
            log.warning("Parquet footers under %s not readable with pyarrow; stats from Spark", uri)
            stats = self._spark_counts(uri, [name for name, _, _ in found])
        files = [
            _DataFile(
                uri=_join(uri, name),
                rel_path=f"{folder}/{name}",
                size=size,
                modification_time=mtime,
                num_records=stats[name][0],
                stats=stats[name][1],
            )
            for name, size, mtime in found
        ]
        files.sort(key=lambda f: f.rel_path)
        # Files without rows carry nothing (the log holds the schema): drop them.
        for f in files:
            if f.num_records == 0:
                fs.delete(_hadoop_fs(self.spark, f.uri)[1], False)
        nonempty = [f for f in files if f.num_records > 0]
        if not nonempty:
            fs.delete(jpath, True)
        return nonempty

    def _spark_counts(self, folder: str, names: list[str]) -> dict[str, tuple[int, str]]:
        counts = {name: 0 for name in names}
        if names:
            rows = (
                self.spark.read.parquet(*[_join(folder, n) for n in names])
                .groupBy(F.col("_metadata.file_name").alias("f"))
                .count()
                .collect()  # one row per file
            )
            counts.update({r["f"]: int(r["count"]) for r in rows})
        return {n: (c, json.dumps({"numRecords": c})) for n, c in counts.items()}

    def discard(self) -> None:
        """Delete this write's folders (best effort: they are not referenced by the log)."""
        for uri in self.folders:
            try:
                fs, jpath = _hadoop_fs(self.spark, uri)
                fs.delete(jpath, True)
            except Exception:  # pragma: no cover - cleanup must not hide the real error
                log.warning("could not delete staged files under %s", uri, exc_info=True)


def _hadoop_fs(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    jpath = jvm.org.apache.hadoop.fs.Path(uri)
    return jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), jpath


def _spark_schema(dt: Any) -> T.StructType:
    """The table's schema as a Spark StructType (Delta's schema JSON is Spark's)."""
    schema = T.StructType.fromJson(json.loads(dt.schema().to_json()))
    assert isinstance(schema, T.StructType)
    return schema


# --- Parquet footers -> Delta stats ---------------------------------------------------------------
def _parquet_stats(uri: str) -> tuple[int, str]:
    """Row count and Delta stats JSON (numRecords, minValues, maxValues, nullCount) of one file.

    Read from the Parquet footer only (row-group statistics), so the cost is per file, not per row.
    Min/max are given for top-level numeric, date, timestamp and short string columns; other
    columns get none (allowed by the Delta protocol: readers then do not skip on them).
    """
    import pyarrow.parquet as pq

    if _is_local(uri):
        md = pq.read_metadata(_local_path(uri))
    else:
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(_rs_uri(uri))
        with fs.open_input_file(p) as fh:
            md = pq.read_metadata(fh)
    stats: dict[str, Any] = {"numRecords": md.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    if md.num_rows == 0:
        return 0, json.dumps(stats)
    arrow_schema = md.schema.to_arrow_schema()
    top = {f.name for f in arrow_schema if not _is_nested(f.type)}
    for j in range(md.num_columns):
        name = md.schema.column(j).path
        if name not in top:
            continue
        mins, maxs, nulls, complete = [], [], 0, True
        for i in range(md.num_row_groups):
            st = md.row_group(i).column(j).statistics
            if st is None:
                complete = False
                break
            if st.null_count is None:
                complete = False
            else:
                nulls += st.null_count
            if st.has_min_max:
                mins.append(st.min)
                maxs.append(st.max)
            elif st.null_count != md.row_group(i).num_rows:
                complete = False
        if not complete:
            continue
        stats["nullCount"][name] = nulls
        if mins:
            lo, hi = _json_stat(min(mins), up=False), _json_stat(max(maxs), up=True)
            if lo is not None and hi is not None:
                stats["minValues"][name] = lo
                stats["maxValues"][name] = hi
    return int(md.num_rows), json.dumps(stats)


def _is_nested(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_nested(t))


def _json_stat(v: Any, *, up: bool) -> Any:
    """A footer statistic as Delta stats JSON wants it; None where we give no min/max."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Decimal):
        return None
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        v = v.astimezone(timezone.utc)
        ms = v.replace(microsecond=(v.microsecond // 1000) * 1000)
        if up and ms != v:  # Delta stats have millisecond precision: round the max up, never down
            ms += timedelta(milliseconds=1)
        return ms.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms.microsecond // 1000:03d}Z"
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, str):
        return v if len(v) <= _STRING_STATS_MAX else None
    return None


# --- delta-spark ---------------------------------------------------------------------------------
class _DeltaSparkEngine(_Engine):
    """``format("delta")`` and ``delta.tables.DeltaTable`` (needs the connector's jars)."""

    name = DELTA_SPARK
    _TXN_APP = "spark.databricks.delta.write.txnAppId"
    _TXN_VERSION = "spark.databricks.delta.write.txnVersion"
    _NO_DV = "spark.databricks.delta.properties.defaults.enableDeletionVectors"

    def _table(self, path: str) -> Any:
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, path)

    def exists(self, path: str) -> bool:
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self.spark, path))

    def version(self, path: str) -> int | None:
        if not self.exists(path):
            return None
        return int(self._table(path).history(1).select("version").first()[0])

    def read(self, path: str, version: int | None) -> tuple[DataFrame, int]:
        if not self.exists(path):
            raise LakeError(f"no Delta table at {path}")
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        read_version = version if version is not None else self.version(path)
        assert read_version is not None
        return reader.load(path), int(read_version)

    def history(self, path: str) -> list[dict[str, Any]]:
        if not self.exists(path):
            return []
        rows = self._table(path).history().orderBy(F.col("version").desc()).collect()  # one row per commit
        return [r.asDict(recursive=True) for r in rows]

    def txn_version(self, path: str, app_id: str) -> int | None:
        # The transaction ids live in the log; deltalake reads them without a Spark job.
        try:
            return self._rs_table(path).transaction_version(app_id) if self.exists(path) else None
        except Exception:  # remote store deltalake cannot reach: let delta-spark's own check decide
            log.warning("could not read txn %s of %s with deltalake", app_id, path, exc_info=True)
            return None

    def _writer(self, df: DataFrame, mode: str, txn: Txn | None) -> Any:
        w = df.write.format("delta").mode(mode)
        if txn is not None:
            w = w.option("txnAppId", txn[0]).option("txnVersion", str(int(txn[1])))
        return w

    @contextmanager
    def _session_confs(self, confs: dict[str, str]) -> Iterator[None]:
        old = {k: self.spark.conf.get(k, None) for k in confs}
        for k, v in confs.items():
            self.spark.conf.set(k, v)
        try:
            yield
        finally:
            for k, previous in old.items():
                if previous is None:
                    self.spark.conf.unset(k)
                else:
                    self.spark.conf.set(k, previous)

    def _txn_confs(self, txn: Txn | None) -> dict[str, str]:
        confs = {self._NO_DV: "false"}
        if txn is not None:
            confs.update({self._TXN_APP: txn[0], self._TXN_VERSION: str(int(txn[1]))})
        return confs

    def overwrite(self, path: str, df: DataFrame, *, txn: Txn | None) -> int | None:
        if self._skip(path, txn):
            return None
        _check_writable_types(df.schema)
        with self._session_confs({self._NO_DV: "false"}):
            self._writer(df, "overwrite", txn).option("overwriteSchema", "true").save(path)
        return self.version(path)

    def append(self, path: str, df: DataFrame, *, txn: Txn | None) -> int | None:
        if self._skip(path, txn):
            return None
        _check_writable_types(df.schema)
        if self.exists(path):
            df = _check_schema(self.spark.read.format("delta").load(path).schema, df, f"append to {path}")
        with self._session_confs({self._NO_DV: "false"}):
            self._writer(df, "append", txn).save(path)
        return self.version(path)

    def merge(self, path: str, df: DataFrame, keys: list[str], *, txn: Txn | None) -> int | None:
        if self._skip(path, txn):
            return None
        _check_writable_types(df.schema)
        dup = df.groupBy(*keys).count().where(F.col("count") > 1).limit(1).collect()
        if dup:
            raise DuplicateKeysError(
                f"merge into {path}: the source has more than one row for key "
                f"{ {k: dup[0][k] for k in keys} } (keys {keys}); deduplicate it first"
            )
        if not df.limit(1).collect():
            log.info("merge into %s: empty source, nothing to commit", path)
            return None
        if not self.exists(path):
            return self.overwrite(path, df, txn=txn)
        df = _check_schema(self.spark.read.format("delta").load(path).schema, df, f"merge into {path}")
        cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        with self._session_confs(self._txn_confs(txn)):
            (
                self._table(path)
                .alias("t")
                .merge(df.alias("s"), cond)
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute()
            )
        return self.version(path)

    def delete(self, path: str, condition: str, *, txn: Txn | None) -> int | None:
        if self._skip(path, txn):
            return None
        if not self.exists(path):
            raise LakeError(f"no Delta table at {path}")
        before = self.version(path)
        with self._session_confs(self._txn_confs(txn)):
            self._table(path).delete(condition)
        after = self.version(path)
        return after if after != before else None
