"""The delta-spark engine: ``format("delta")`` and ``delta.tables.DeltaTable`` (needs the connector's jars).

What it does differently from delta-rs, and how the facade hides it:

* **Operation names.** Each write tags its commit with ``commitInfo.userMetadata`` = the facade's
  operation (``overwrite``, ``append``, ``merge``, ``delete``); :meth:`history` returns it as
  ``longtail.operation``, the key delta-rs commits carry.
* **Idempotence.** ``txnAppId``/``txnVersion`` (writer options for ``save``, session confs for
  MERGE and DELETE); the facade also checks the table's transaction first, so a retried write
  returns None without starting a Spark job, as on delta-rs.
* **Conflicts.** delta-spark's ``Concurrent*Exception`` become :class:`CommitConflictError`.
* **Protocol.** Deletion vectors are switched off for every write (delta-spark 4.x would enable
  them on new tables), so tables stay at reader 1 / writer 2 and readable by delta-rs and DuckDB.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from longtail.core import failpoints
from longtail.core.session import session_conf
from longtail.lake.base import (
    _META_OPERATION,
    _TS_TYPE_CONF,
    DELTA_SPARK,
    CommitConflictError,
    DuplicateKeysError,
    LakeError,
    Txn,
    _check_schema,
    _check_writable_types,
    _Engine,
)

log = logging.getLogger(__name__)


# --- delta-spark ---------------------------------------------------------------------------------


_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentDeleteReadException",
    "ConcurrentTransactionException",
    "ConcurrentWriteException",
    "DeltaConcurrentModificationException",
    "MetadataChangedException",
    "ProtocolChangedException",
)


class _DeltaSparkEngine(_Engine):
    """``format("delta")`` and ``delta.tables.DeltaTable`` (needs the connector's jars)."""

    name = DELTA_SPARK
    _TXN_APP = "spark.databricks.delta.write.txnAppId"
    _TXN_VERSION = "spark.databricks.delta.write.txnVersion"
    _NO_DV = "spark.databricks.delta.properties.defaults.enableDeletionVectors"
    _USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"

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
        # Pinned even for "the latest": a live path read plans every query derived from it on the
        # table's latest snapshot (Delta's file index updates the log each time), so a stage that
        # reads a table, appends to it and then queries what it read would see its own rows as well
        # (train's id map held each new id twice). Pinned, the DataFrame is the version recorded in
        # `Lake.reads`, as on delta-rs, whose reads list that version's files.
        read_version = version if version is not None else self.version(path)
        assert read_version is not None
        df = self.spark.read.format("delta").option("versionAsOf", read_version).load(path)
        return df, int(read_version)

    def history(self, path: str) -> list[dict[str, Any]]:
        if not self.exists(path):
            return []
        rows = self._table(path).history().orderBy(F.col("version").desc()).collect()  # one row per commit
        out = []
        for row in rows:
            entry = row.asDict(recursive=True)
            entry[_META_OPERATION] = entry.get("userMetadata")  # set by _committing
            out.append(entry)
        return out

    def txn_version(self, path: str, app_id: str) -> int | None:
        # The transaction ids live in the log; deltalake reads them without a Spark job.
        try:
            return self._rs_table(path).transaction_version(app_id) if self.exists(path) else None
        except Exception:  # remote store deltalake cannot reach: let delta-spark's own check decide
            log.warning("could not read txn %s of %s with deltalake", app_id, path, exc_info=True)
            return None

    # -- upkeep (see Lake.compact / checkpoint / vacuum) --
    def compact(self, path: str, *, target_bytes: int) -> dict[str, int]:
        with session_conf(
            self.spark,
            {"spark.databricks.delta.optimize.maxFileSize": str(target_bytes), self._NO_DV: "false"},
        ):
            rows = self._table(path).optimize().executeCompaction().select("metrics.*").collect()  # one row
        m = rows[0].asDict() if rows else {}
        return {
            "files_added": int(m.get("numFilesAdded", 0)),
            "files_removed": int(m.get("numFilesRemoved", 0)),
        }

    def checkpoint(self, path: str) -> None:
        jvm: Any = self.spark.sparkContext._jvm
        jvm.org.apache.spark.sql.delta.DeltaLog.forTable(self.spark._jsparkSession, path).checkpoint()

    def vacuum(self, path: str, *, retention_hours: float, dry_run: bool) -> list[str]:
        # Delta refuses retentions under 7 days unless its safety check is off for the call.
        with session_conf(self.spark, {"spark.databricks.delta.retentionDurationCheck.enabled": "false"}):
            if dry_run:
                rows = self.spark.sql(
                    f"VACUUM delta.`{path}` RETAIN {float(retention_hours)} HOURS DRY RUN"
                ).collect()
                return [str(r[0]) for r in rows]  # bounded: the files VACUUM would delete
            self._table(path).vacuum(float(retention_hours))
        return []

    def _writer(self, df: DataFrame, mode: str, txn: Txn | None) -> Any:
        w = df.write.format("delta").mode(mode)
        if txn is not None:
            w = w.option("txnAppId", txn[0]).option("txnVersion", str(int(txn[1])))
        return w

    @contextmanager
    def _committing(self, path: str, op: str, txn: Txn | None = None) -> Iterator[None]:
        """Session confs for one write (no deletion vectors, the operation, ``txn`` for MERGE and
        DELETE, which take no writer options), and delta-spark's conflicts as CommitConflictError."""
        from delta import exceptions as dx

        # delta-spark's conflict classes (in Python they do not share a base class)
        conflicts = tuple(getattr(dx, n) for n in _CONFLICTS)

        # micro-second timestamps as on delta-rs: INT96 is legacy, and DuckDB and pyarrow read it as ns
        confs = {self._NO_DV: "false", self._USER_METADATA: op, _TS_TYPE_CONF: "TIMESTAMP_MICROS"}
        if txn is not None:
            confs.update({self._TXN_APP: txn[0], self._TXN_VERSION: str(int(txn[1]))})
        failpoints.before_commit(path)
        try:
            with session_conf(self.spark, confs):
                yield
        except conflicts as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CommitConflictError(
                f"{op} on {path} was not committed: another writer changed the table ({first}); retry the stage"
            ) from exc

    def overwrite(self, path: str, df: DataFrame, *, txn: Txn | None) -> int | None:
        if self._skip(path, txn):
            return None
        _check_writable_types(df.schema)
        with self._committing(path, "overwrite"):
            self._writer(df, "overwrite", txn).option("overwriteSchema", "true").save(path)
        return self.version(path)

    def append(self, path: str, df: DataFrame, *, txn: Txn | None) -> int | None:
        if self._skip(path, txn):
            return None
        _check_writable_types(df.schema)
        if self.exists(path):
            df = _check_schema(self.spark.read.format("delta").load(path).schema, df, f"append to {path}")
        with self._committing(path, "append"):
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
            with self._committing(path, "merge"):
                self._writer(df, "overwrite", txn).save(path)
            return self.version(path)
        df = _check_schema(self.spark.read.format("delta").load(path).schema, df, f"merge into {path}")
        cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        with self._committing(path, "merge", txn):
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
        with self._committing(path, "delete", txn):
            self._table(path).delete(condition)
        after = self.version(path)
        return after if after != before else None
