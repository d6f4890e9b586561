"""The delta-rs engine: Spark writes the Parquet files, ``deltalake`` commits them (one commit per write)."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core import failpoints
from longtail.core.uris import hadoop_fs, is_local, join_uri, local_path, path_key, rs_uri, scheme
from longtail.lake.base import (
    _META_OPERATION,
    _META_WRITE_ID,
    _STRING_STATS_MAX,
    _TS_TYPE_CONF,
    DELTA_RS,
    CommitConflictError,
    DuplicateKeysError,
    LakeError,
    Txn,
    _check_fields,
    _check_schema,
    _check_writable_types,
    _Engine,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _DataFile:
    """One Parquet file written by Spark, with what the Delta add action needs."""

    uri: str  # as Spark/Hadoop names it
    rel_path: str  # relative to the table root, not encoded
    size: int
    modification_time: int  # ms since the epoch
    num_records: int
    stats: str


class _DeltaRsEngine(_Engine):
    """Spark writes the Parquet files; deltalake commits them (see the module docstring)."""

    name = DELTA_RS

    # -- reading --
    def exists(self, path: str) -> bool:
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(rs_uri(path), storage_options=self.storage_options))

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

    def rows(self, path: str, columns: list[str] | None) -> tuple[list[dict[str, Any]], int]:
        # A small table (`runs`) read by deltalake on the driver: no Spark job. Local and S3 lakes
        # (the stores this engine's Parquet footer reads cover); others collect a Spark read.
        if not self.driver_io(path):
            return super().rows(path, columns)
        if not self.exists(path):
            raise LakeError(f"no Delta table at {path}")
        dt = self._rs_table(path)
        got = dt.to_pyarrow_table(columns=columns).to_pylist()
        return [{k: _naive_utc(v) for k, v in r.items()} for r in got], int(dt.version())

    def history(self, path: str) -> list[dict[str, Any]]:
        if not self.exists(path):
            return []
        out = []
        for entry in self._rs_table(path).history():
            entry = dict(entry)
            entry.setdefault("operation", None)
            entry.setdefault(_META_OPERATION, entry.get("userMetadata"))  # a delta-spark commit
            out.append(entry)
        return sorted(out, key=lambda e: -int(e["version"]))

    def txn_version(self, path: str, app_id: str) -> int | None:
        if not self.exists(path):
            return None
        v = self._rs_table(path).transaction_version(app_id)
        return None if v is None else int(v)

    # -- upkeep (see Lake.compact / checkpoint / vacuum) --
    def compact(self, path: str, *, target_bytes: int) -> dict[str, int]:
        # deltalake's bin-packing rewrites small files into ~target_bytes ones in ONE commit whose
        # removes are dataChange=false: readers of older versions keep their files until VACUUM.
        metrics = self._rs_table(path).optimize.compact(target_size=target_bytes)
        return {
            "files_added": int(metrics["numFilesAdded"]),
            "files_removed": int(metrics["numFilesRemoved"]),
        }

    def checkpoint(self, path: str) -> None:
        self._rs_table(path).create_checkpoint()

    def vacuum(self, path: str, *, retention_hours: float, dry_run: bool) -> list[str]:
        # full=True: also the files no commit ever referenced (the staged folders of killed or
        # failed writes), not only those removed by a commit; both only when older than the retention.
        return list(
            self._rs_table(path).vacuum(
                retention_hours=int(retention_hours),
                dry_run=dry_run,
                enforce_retention_duration=False,
                full=True,
            )
        )

    def _spark_uri(self, table_path: str, file_uri: str) -> str:
        """deltalake's file URI in Spark's scheme (s3:// -> s3a:// when the root is s3a)."""
        if is_local(table_path):
            return local_path(file_uri)
        spark_scheme, rs_scheme = scheme(table_path), scheme(file_uri)
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

    def driver_io(self, path: str) -> bool:
        # where the driver reads and writes a small table's files itself (pyarrow, deltalake)
        return is_local(path) or scheme(rs_uri(path)) == "s3"

    def append_rows(
        self, path: str, rows: list[dict[str, Any]], schema: T.StructType, *, txn: Txn | None
    ) -> int | None:
        # Driver-side rows (`runs`: one per stage start and end) written as one Parquet file by
        # pyarrow and committed like a Spark write: no Spark job for a one-row append.
        if not self.driver_io(path):
            raise LakeError(f"append_rows: {path} is not on a local or S3 store; append a DataFrame")
        if self._skip(path, txn):
            return None
        if self.exists(path):
            table_schema = _spark_schema(self._rs_table(path))
            _check_fields(table_schema, schema, f"append to {path}")
            schema = table_schema
        with self._staged(path) as stage:
            files = stage.write_rows(rows, schema)
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
        touched = sorted({path_key(r["_file"]) for r in hit} & set(current))
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
        base = rs_uri(path).rstrip("/")
        out: dict[str, tuple[str, Any]] = {}
        for row in rows:
            rel = row["path"]
            uri = self._spark_uri(path, join_uri(base, unquote(rel)))
            remove = RemoveAction(
                path=rel,
                data_change=True,
                deletion_timestamp=now,
                size=int(row["size_bytes"]) if row.get("size_bytes") is not None else None,
                partition_values={},
            )
            out[path_key(uri)] = (uri, remove)
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
        found = {path_key(r["_file"]) for r in hit}
        unknown = found - set(current)
        if unknown:  # would mean a path-matching bug: never rewrite blindly
            raise LakeError(
                f"internal: Spark read files that the Delta log does not list: {sorted(unknown)[:3]}"
            )
        return sorted(found)

    @contextmanager
    def _staged(self, path: str) -> Iterator[_Stage]:
        """A staging area for one write; its files are deleted if the block raises."""
        stage = _Stage(self.spark, path, self.storage_options)
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
            # userMetadata too: the one commitInfo field delta-spark's history shows
            custom_metadata={_META_WRITE_ID: write_id, _META_OPERATION: op, "userMetadata": op},
            app_transactions=[Transaction(txn[0], int(txn[1]))] if txn else None,
        )
        delta_schema = Schema.from_json(schema.json())
        uri = rs_uri(path)
        failpoints.before_commit(path)
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

        uri = rs_uri(path)
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            return None
        for entry in self._rs_table(path).history(limit=20):
            if entry.get(_META_WRITE_ID) == write_id:
                return int(entry["version"])
        return None


class _Stage:
    """Data files of one write, under ``<table>/<write id>-<n>/`` (one folder per Spark write)."""

    def __init__(
        self, spark: SparkSession, table_path: str, storage_options: dict[str, str] | None = None
    ) -> None:
        self.spark = spark
        self.table_path = table_path
        self.storage_options = storage_options
        self.write_id = f"w{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        self.folders: list[str] = []

    def _new_folder(self) -> tuple[str, str]:
        """``(name, uri)`` of this write's next folder (recorded, so :meth:`discard` deletes it)."""
        folder = f"{self.write_id}-{len(self.folders)}"
        uri = join_uri(self.table_path, folder)
        self.folders.append(uri)
        return folder, uri

    def write(self, df: DataFrame) -> list[_DataFile]:
        """Write ``df`` as Parquet (on the executors) into a new folder; describe the files."""
        folder, uri = self._new_folder()
        if self.spark.conf.get(_TS_TYPE_CONF, None) != "TIMESTAMP_MICROS":
            # Delta readers expect micro-second timestamps, not Spark's legacy INT96.
            log.warning("setting %s=TIMESTAMP_MICROS for Delta data files", _TS_TYPE_CONF)
            self.spark.conf.set(_TS_TYPE_CONF, "TIMESTAMP_MICROS")
        df.write.mode("errorifexists").parquet(uri)
        fs, jpath = hadoop_fs(self.spark, uri)
        found: list[tuple[str, int, int]] = []  # (name, size, modification time)
        for st in fs.listStatus(jpath):
            name = st.getPath().getName()
            if st.isFile() and not name.startswith(("_", ".")):
                found.append((name, int(st.getLen()), int(st.getModificationTime())))
            elif name == "_SUCCESS":
                fs.delete(st.getPath(), False)
        try:
            stats = {name: _parquet_stats(join_uri(uri, name), self.storage_options) for name, _, _ in found}
        except Exception:
            if is_local(uri):
                raise
            # pyarrow cannot open this store with the storage options or the environment's
            # credentials: row counts from Spark instead (one job over the new files; no min/max,
            # which the protocol allows).
            log.warning("Parquet footers under %s not readable with pyarrow; stats from Spark", uri)
            stats = self._spark_counts(uri, [name for name, _, _ in found])
        files = [
            _DataFile(
                uri=join_uri(uri, name),
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
                fs.delete(hadoop_fs(self.spark, f.uri)[1], False)
        nonempty = [f for f in files if f.num_records > 0]
        if not nonempty:
            fs.delete(jpath, True)
        return nonempty

    def write_rows(self, rows: list[dict[str, Any]], schema: T.StructType) -> list[_DataFile]:
        """Write driver-side ``rows`` as one Parquet file (pyarrow, timestamps as UTC micro-seconds,
        as Spark writes them for Delta) into a new folder; describe it like :meth:`write`."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import to_arrow_schema

        folder, uri = self._new_folder()
        name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
        file_uri = join_uri(uri, name)
        arrow_schema = to_arrow_schema(schema, timezone="UTC")
        table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], arrow_schema)
        if is_local(file_uri):
            Path(local_path(uri)).mkdir(parents=True)
            pq.write_table(table, local_path(file_uri), compression="snappy")
            st = Path(local_path(file_uri)).stat()
            size, mtime = st.st_size, int(st.st_mtime * 1000)
        else:
            fs, p = _arrow_fs(file_uri, self.storage_options)
            with fs.open_output_stream(p) as out:
                pq.write_table(table, out, compression="snappy")
            info = fs.get_file_info(p)
            size, mtime = int(info.size), int(info.mtime.timestamp() * 1000)
        n, stats = _parquet_stats(file_uri, self.storage_options)
        return [_DataFile(file_uri, f"{folder}/{name}", size, mtime, n, stats)] if n else []

    def _spark_counts(self, folder: str, names: list[str]) -> dict[str, tuple[int, str]]:
        counts = {name: 0 for name in names}
        if names:
            rows = (
                self.spark.read.parquet(*[join_uri(folder, n) for n in names])
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
                fs, jpath = hadoop_fs(self.spark, uri)
                fs.delete(jpath, True)
            except Exception:  # pragma: no cover - cleanup must not hide the real error
                log.warning("could not delete staged files under %s", uri, exc_info=True)


def _naive_utc(v: Any) -> Any:
    """A timestamp as Spark's ``collect`` gives it in the lake's sessions (UTC): naive, in UTC."""
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(timezone.utc).replace(tzinfo=None)
    return v


def _spark_schema(dt: Any) -> T.StructType:
    """The table's schema as a Spark StructType (Delta's schema JSON is Spark's)."""
    schema = T.StructType.fromJson(json.loads(dt.schema().to_json()))
    assert isinstance(schema, T.StructType)
    return schema


# --- Parquet footers -> Delta stats ---------------------------------------------------------------
def _arrow_fs(uri: str, storage_options: dict[str, str] | None) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path)`` for a remote file: S3 from deltalake's storage options (the
    same endpoint and credentials its commits use), any other store from the URI and environment."""
    import pyarrow.fs as pafs

    target = rs_uri(uri)
    opts = storage_options or {}
    if scheme(target) == "s3" and opts:
        endpoint = opts.get("AWS_ENDPOINT_URL", "")
        fs = pafs.S3FileSystem(
            access_key=opts.get("AWS_ACCESS_KEY_ID"),
            secret_key=opts.get("AWS_SECRET_ACCESS_KEY"),
            session_token=opts.get("AWS_SESSION_TOKEN"),
            region=opts.get("AWS_REGION"),
            endpoint_override=endpoint.split("://", 1)[-1] or None,
            scheme="http" if endpoint.startswith("http://") else "https",
            force_virtual_addressing=opts.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() == "true",
        )
        return fs, target.split("://", 1)[1]
    return pafs.FileSystem.from_uri(target)


def _parquet_stats(uri: str, storage_options: dict[str, str] | None = None) -> tuple[int, str]:
    """Row count and Delta stats JSON (numRecords, minValues, maxValues, nullCount) of one file.

    Read from the Parquet footer only (row-group statistics), so the cost is per file, not per row.
    Min/max are given for top-level numeric, date, timestamp and short string columns; other
    columns get none (allowed by the Delta protocol: readers then do not skip on them).
    """
    import pyarrow.parquet as pq

    if is_local(uri):
        md = pq.read_metadata(local_path(uri))
    else:
        fs, p = _arrow_fs(uri, storage_options)
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
