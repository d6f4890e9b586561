"""Small files written atomically to a local folder or any Hadoop FileSystem URI."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from typing import Any

from pyspark.sql import SparkSession

from longtail.core.uris import hadoop_fs, is_local, local_path, scheme


def _write_local(directory: str, files: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    os.makedirs(directory, exist_ok=True)
    written = {}
    for name, data in files:
        final = os.path.join(directory, name)
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, final)  # atomic on POSIX: readers see the old or the new file
        written[name] = final
    return written


def _write_hadoop(spark: SparkSession, out_dir: str, files: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    jvm: Any = spark.sparkContext._jvm
    base = out_dir.rstrip("/")
    fs, directory = hadoop_fs(spark, base)
    fs.mkdirs(directory)
    written = {}
    for name, data in files:
        final = jvm.org.apache.hadoop.fs.Path(f"{base}/{name}")
        tmp = jvm.org.apache.hadoop.fs.Path(f"{base}/.{name}.{uuid.uuid4().hex}.tmp")
        stream = fs.create(tmp, True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()
        # Hadoop's rename does not replace: drop the old file first (object stores copy anyway).
        if fs.exists(final):
            fs.delete(final, False)
        if not fs.rename(tmp, final):
            fs.delete(tmp, False)
            raise OSError(f"could not rename {tmp} to {final}")
        written[name] = f"{base}/{name}"
    return written


def write_files(
    out_dir: str, files: Sequence[tuple[str, bytes]], *, spark: SparkSession | None = None
) -> dict[str, str]:
    """Write ``(name, bytes)`` into ``out_dir`` in order, each under a temporary name then renamed.

    Local paths and ``file:`` URIs are written directly; other URIs through Spark's Hadoop
    FileSystem (``spark`` required).

    Returns:
        name -> written path or URI.
    """
    if is_local(out_dir):
        # a plain path stays as given (relative paths too); a file: URI becomes its path
        return _write_local(local_path(out_dir) if scheme(out_dir) == "file" else out_dir, files)
    if spark is None:
        raise ValueError(f"writing to {out_dir!r} needs a SparkSession (its Hadoop FileSystem)")
    return _write_hadoop(spark, out_dir, files)


def read_bytes(uri: str, *, spark: SparkSession | None = None) -> bytes | None:
    """The bytes of the file at ``uri`` (a local path or any Hadoop FileSystem URI); None if absent."""
    if is_local(uri):
        path = local_path(uri)
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as fh:
            return fh.read()
    if spark is None:
        raise ValueError(f"reading {uri!r} needs a SparkSession (its Hadoop FileSystem)")
    fs, path = hadoop_fs(spark, uri)
    if not fs.exists(path):
        return None
    jvm: Any = spark.sparkContext._jvm
    stream = fs.open(path)
    try:
        data = jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
    finally:
        stream.close()
    return bytes(data)


def read_text(uri: str, *, spark: SparkSession | None = None) -> str | None:
    """The UTF-8 text of the file at ``uri`` (a local path or any Hadoop FileSystem URI); None if absent."""
    data = read_bytes(uri, spark=spark)
    return None if data is None else data.decode("utf-8")


def publish_dir(local_dir: str, out_dir: str, *, spark: SparkSession | None = None) -> str:
    """Copy the local folder ``local_dir`` to ``out_dir`` (which must not exist yet) so that readers
    never see it half-written: locally a copy under a hidden name, then one rename; on other file
    systems a copy under a hidden name, then a rename (object stores copy again: slower, same result).

    Returns ``out_dir``.
    """
    if is_local(out_dir):
        final = local_path(out_dir)
        if os.path.exists(final):
            raise FileExistsError(f"{out_dir} exists already")
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(final)}.{uuid.uuid4().hex}.tmp")
        shutil.copytree(local_dir, tmp)
        os.rename(tmp, final)
        return out_dir
    if spark is None:
        raise ValueError(f"writing to {out_dir!r} needs a SparkSession (its Hadoop FileSystem)")
    jvm: Any = spark.sparkContext._jvm
    fs, final_path = hadoop_fs(spark, out_dir)
    if fs.exists(final_path):
        raise FileExistsError(f"{out_dir} exists already")
    base = out_dir.rstrip("/")
    parent, name = base.rsplit("/", 1)
    tmp = jvm.org.apache.hadoop.fs.Path(f"{parent}/.{name}.{uuid.uuid4().hex}.tmp")
    fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(os.path.abspath(local_dir)), tmp)
    if not fs.rename(tmp, final_path):
        fs.delete(tmp, True)
        raise OSError(f"could not rename {tmp} to {out_dir}")
    return out_dir


def fetch_dir(uri: str, local_dir: str, *, spark: SparkSession | None = None) -> str:
    """A local copy of the folder at ``uri``: ``uri`` itself when it is local, else a copy in
    ``local_dir`` (made once: a folder already there is taken as the copy). Returns the local path."""
    if is_local(uri):
        return local_path(uri)
    if os.path.isdir(local_dir):
        return local_dir
    if spark is None:
        raise ValueError(f"reading {uri!r} needs a SparkSession (its Hadoop FileSystem)")
    jvm: Any = spark.sparkContext._jvm
    fs, path = hadoop_fs(spark, uri)
    parent = os.path.dirname(os.path.abspath(local_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(local_dir)}.{uuid.uuid4().hex}.tmp")
    fs.copyToLocalFile(False, path, jvm.org.apache.hadoop.fs.Path(tmp), True)
    try:
        os.rename(tmp, local_dir)
    except OSError:  # another process made the copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return local_dir


def list_folders(uri: str, *, spark: SparkSession | None = None) -> dict[str, float]:
    """The folders directly under ``uri`` -> the modification time (POSIX seconds) of the newest
    file anywhere inside each, or the folder's own time when it holds no file. A folder's age is
    its newest file's: object stores keep no folder times, and a local folder's time says when
    an entry was last added, not when its content was written. Empty when ``uri`` does not exist."""
    if is_local(uri):
        root = local_path(uri)
        if not os.path.isdir(root):
            return {}
        out: dict[str, float] = {}
        for entry in os.scandir(root):
            if not entry.is_dir(follow_symlinks=False):
                continue
            times = [
                os.stat(os.path.join(folder, name), follow_symlinks=False).st_mtime
                for folder, _, names in os.walk(entry.path)
                for name in names
            ]
            out[entry.name] = max(times) if times else entry.stat(follow_symlinks=False).st_mtime
        return out
    if spark is None:
        raise ValueError(f"listing {uri!r} needs a SparkSession (its Hadoop FileSystem)")
    fs, path = hadoop_fs(spark, uri)
    if not fs.exists(path):
        return {}
    out = {}
    for status in fs.listStatus(path):
        if not status.isDirectory():
            continue
        newest = None
        files = fs.listFiles(status.getPath(), True)
        while files.hasNext():
            mtime = files.next().getModificationTime()
            newest = mtime if newest is None else max(newest, mtime)
        out[status.getPath().getName()] = (
            status.getModificationTime() if newest is None else newest
        ) / 1000.0
    return out


def delete_folder(uri: str, *, spark: SparkSession | None = None) -> None:
    """Delete the folder at ``uri`` and everything in it (nothing if it does not exist)."""
    if is_local(uri):
        if os.path.isdir(local_path(uri)):
            shutil.rmtree(local_path(uri))
        return
    if spark is None:
        raise ValueError(f"deleting {uri!r} needs a SparkSession (its Hadoop FileSystem)")
    fs, path = hadoop_fs(spark, uri)
    if fs.exists(path) and not fs.delete(path, True):
        raise OSError(f"could not delete {uri}")
