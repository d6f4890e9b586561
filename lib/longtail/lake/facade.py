"""The one module that reads and writes the lake's Delta tables, with two engines behind one API.

* **delta-rs** (the ``deltalake`` package; the default wherever the delta-spark connector is not on
  the JVM classpath). Spark computes and writes the Parquet data files in parallel on the executors,
  each write into its own folder ``<table>/<write id>/part-*.parquet``; the driver then commits
  them through ``deltalake`` as **one** Delta transaction (add and remove actions, optionally an
  application transaction id). Merge and delete are copy-on-write at file granularity, computed by
  Spark. The driver only ever holds file lists and Parquet footers, never table rows, except
  the few bookkeeping rows of :meth:`Lake.rows` and :meth:`Lake.append_new_rows` (`runs`), which it
  reads and writes itself on a local or S3 lake (no Spark job).
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

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from longtail.core import failpoints
from longtail.core import schema as S
from longtail.core.config import Config
from longtail.core.errors import MissingInputError
from longtail.core.session import DELTA_SPARK_PACKAGE
from longtail.core.uris import is_local, join_uri, local_path, s3_storage_options
from longtail.lake.base import (
    DELTA_SPARK,
    ENGINES,
    CommitConflictError,
    LakeError,
    Txn,
    _Engine,
    is_conflict,
    is_delta_spark_available,
)
from longtail.lake.delta_rs import _DeltaRsEngine
from longtail.lake.delta_spark import _DeltaSparkEngine

log = logging.getLogger(__name__)


# --- the facade ----------------------------------------------------------------------------------


class Lake:
    """Delta tables under one root, read and written through delta-rs or delta-spark.

    Args:
        spark: the session whose executors read and write the data files.
        root: the lake root: a local path or a ``file:``, ``s3a://``, ``abfss://``, ``hdfs://`` URI.
        engine: ``auto`` (delta-spark when its connector is on the classpath, else delta-rs),
            ``delta-rs`` or ``delta-spark``.
        storage_options: passed to ``deltalake`` for remote roots; by default, for ``s3a://``, the
            session's S3A settings (``spark.hadoop.fs.s3a.endpoint``, ``.access.key``, ...; see
            :func:`~longtail.core.uris.s3_storage_options`), the rest from the environment
            (``AWS_*``). Never logged.

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
        self.root = local_path(root) if is_local(root) else root.rstrip("/")
        self.reads: dict[str, int] = {}
        self.writes: dict[str, int] = {}
        available = is_delta_spark_available(spark)
        if engine == DELTA_SPARK and not available:
            raise LakeError(
                "lake.engine=delta-spark but the delta-spark connector is not on the classpath: start "
                f"Spark with --packages {DELTA_SPARK_PACKAGE} and the Delta extension/catalog confs "
                "(./spark-submit.sh --delta-spark; build_session(delta_spark=True)), or use lake.engine=auto"
            )
        if storage_options is None:  # the session's S3A settings, so one configuration serves both engines
            storage_options = s3_storage_options(spark, self.root) or None
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
        return join_uri(self.root, table)

    def exists(self, table: str) -> bool:
        """True when ``table`` is a Delta table (it has a committed version)."""
        return self._engine.exists(self.path(table))

    def require(self, stage: str, *tables: str) -> None:
        """Raise :class:`MissingInputError` naming the stage to run first when a table is absent.

        Example:
            >>> lake.require("train", "interactions", "item_embeddings")
        """
        for table in tables:
            if not self.exists(table):
                step = S.WRITTEN_BY.get(table, "the stage that writes it")
                raise MissingInputError(
                    f"{stage}: table '{table}' does not exist under {self.root}; run {step} first"
                )

    def version(self, table: str) -> int | None:
        """The latest committed version of ``table``, None when there is no table."""
        return self._engine.version(self.path(table))

    def read(self, table: str, version: int | None = None) -> DataFrame:
        """The table (at ``version``, default the latest) as a lazy Spark DataFrame.

        Raises:
            LakeError: the table does not exist (or has no such version).
        """
        failpoints.hit(f"read:{table}")
        df, read_version = self._engine.read(self.path(table), version)
        self.reads[table] = read_version
        return df

    def rows(self, table: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """The rows of a SMALL table (bookkeeping such as `runs`) on the driver, as dicts. delta-rs
        reads a local or S3 lake with deltalake, without a Spark job (timestamps: naive UTC);
        otherwise a Spark read is collected (naive, in the driver's time zone, as pyspark gives
        them). Not for data tables: they stay on the executors.

        Raises:
            LakeError: the table does not exist.
        """
        failpoints.hit(f"read:{table}")
        got, read_version = self._engine.rows(self.path(table), columns)
        self.reads[table] = read_version
        return got

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

    def compact(self, table: str, *, target_bytes: int = 128 << 20) -> dict[str, int]:
        """Rewrite the table's small files into files of about ``target_bytes`` (one commit).

        The rows do not change (the commit's removes say ``dataChange=false``); readers that hold
        an older version keep reading its files, which :meth:`vacuum` deletes only after the
        retention. Returns ``files_added`` and ``files_removed``.
        """
        out = self._engine.compact(self.path(table), target_bytes=target_bytes)
        self.writes[table] = self._engine.version(self.path(table)) or 0
        if out.get("files_removed"):
            failpoints.hit(f"compacted:{table}")
        return out

    def checkpoint(self, table: str) -> None:
        """Write a checkpoint of the table's log at its current version (readers replay less JSON)."""
        self._engine.checkpoint(self.path(table))

    def vacuum(self, table: str, *, retention_hours: float = 168.0, dry_run: bool = False) -> list[str]:
        """Delete data files that no current version references and that are older than the retention.

        That is the files removed by commits (merge, overwrite, compaction) and the files of writes
        that never committed (killed or failed runs), once they are ``retention_hours`` old. Readers
        and writers that started within the retention are safe: keep it above the longest run. The
        delta-rs engine returns the deleted paths; delta-spark returns them only for ``dry_run``.
        """
        if retention_hours < 0:
            raise ValueError(f"vacuum retention_hours must be >= 0, got {retention_hours}")
        return self._engine.vacuum(self.path(table), retention_hours=retention_hours, dry_run=dry_run)

    def append_new(self, table: str, rows: DataFrame, *, keys: list[str], retries: int = 5) -> int:
        """Append the rows of ``rows`` whose ``keys`` the table does not hold yet, safely under concurrency.

        An insert-only merge on the event key with a conflict-checked commit (see :meth:`serialized`):
        each attempt reads the table at one version and keeps the rows whose keys it lacks
        (null-safe equality; duplicates within ``rows`` dropped). Running it twice on the same rows
        adds nothing the second time; two runs at once add each row once.

        Returns:
            The number of rows added (0: nothing new, no commit; the table is created if absent).

        Example:
            >>> lake.append_new("interactions", events, keys=["user_id", "item_id", "ts"])
            70193
        """

        def attempt(txn: Txn, exists: bool) -> tuple[int, int | None]:
            new = rows
            if exists:
                current = self.read(table, version=self.version(table)).select(
                    *[F.col(k).alias(f"_cur_{k}") for k in keys]
                )
                cond = None
                for k in keys:
                    c = rows[k].eqNullSafe(current[f"_cur_{k}"])
                    cond = c if cond is None else cond & c
                new = rows.join(current.distinct(), cond, "left_anti")
            new = new.dropDuplicates(keys).persist()
            try:
                n = new.count()
                if n == 0 and exists:
                    return 0, -1
                write = self.append if exists else self.overwrite
                return n, write(table, new, txn=txn)
            finally:
                new.unpersist()

        return self.serialized(table, attempt, retries=retries)

    def append_new_rows(
        self,
        table: str,
        rows: list[dict[str, Any]],
        schema: StructType,
        *,
        keys: list[str],
        retries: int = 5,
    ) -> int:
        """:meth:`append_new` for a few driver-side rows (dicts with ``schema``'s fields), e.g. the
        `runs` table's. On delta-rs with a local or S3 lake the table's keys are read with
        deltalake, compared on the driver and the new rows written by pyarrow: no Spark job
        (timestamps: naive datetimes are UTC). Elsewhere the rows become a DataFrame for
        :meth:`append_new`. Same guarantees: each key once, safe under concurrency
        (:meth:`serialized`).

        Returns:
            The number of rows added.
        """

        def through_spark() -> int:
            df = self.spark.createDataFrame(
                [tuple(r.get(f.name) for f in schema.fields) for r in rows], schema
            )
            return self.append_new(table, df, keys=keys, retries=retries)

        if not self._engine.driver_io(self.path(table)):
            return through_spark()

        def key(r: dict[str, Any]) -> tuple[Any, ...]:
            return tuple(r.get(k) for k in keys)

        def attempt(txn: Txn, exists: bool) -> tuple[int, int | None]:
            held = {key(r) for r in self._engine.rows(self.path(table), keys)[0]} if exists else set()
            new: dict[tuple[Any, ...], dict[str, Any]] = {}
            for r in rows:
                if key(r) not in held:
                    new.setdefault(key(r), r)  # duplicates within ``rows``: the first
            if not new and exists:
                return 0, -1
            version = self._engine.append_rows(self.path(table), list(new.values()), schema, txn=txn)
            return len(new), self._written(table, version)

        try:
            return self.serialized(table, attempt, retries=retries)
        except OSError as exc:  # pyarrow could not write to this object store (an attempt's files
            if is_local(self.root):  # are deleted with it, nothing was committed): Spark can
                raise
            log.warning("%s: driver-side write failed (%s); appending through Spark", table, exc)
            return through_spark()

    def serialized(
        self, table: str, attempt: Callable[[Txn, bool], tuple[int, int | None]], *, retries: int = 5
    ) -> int:
        """Run ``attempt`` until its commit is the only one of its kind since it read the table.

        ``attempt(txn, exists)`` reads the table (when ``exists``), computes its write and commits it
        with ``txn``; it returns ``(rows, version)``, version -1 for "nothing to write" and None
        when the write was skipped because ``txn`` was already taken. ``txn`` is the application
        transaction ``longtail.serial:<table>`` at the next sequence number: two writers that read
        the same version claim the same number, and both engines reject the second commit of one
        application id (delta-rs: ``CommitFailedError``; delta-spark: ``ConcurrentTransactionException``).
        The loser runs ``attempt`` again on the new version, up to ``retries`` times, then raises
        :class:`CommitConflictError` ("conflicting run"). A failed attempt leaves no commit.
        """
        app_id = f"longtail.serial:{table}"
        for n_try in range(retries + 1):
            exists = self.exists(table)
            seq = (self.txn_version(table, app_id) or 0) if exists else 0
            try:
                rows, version = attempt((app_id, seq + 1), exists)
            except Exception as exc:
                if not (is_conflict(exc) or (not exists and self.exists(table))):
                    raise
                rows, version = 0, None
            if version is not None:
                return rows
            log.info("%s: a concurrent writer committed first (attempt %d); retrying", table, n_try + 1)
            time.sleep(min(2.0, 0.1 * 2**n_try) * (1 + random.random()))
        raise CommitConflictError(
            f"conflicting run: {retries + 1} attempts to write '{table}' under {self.root} each lost to a "
            "concurrent writer; retry the stage later"
        )

    def _written(self, table: str, version: int | None) -> int | None:
        if version is not None:
            self.writes[table] = version
            failpoints.hit(f"committed:{table}")
        return version
