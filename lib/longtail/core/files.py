"""Small files written atomically to a local folder or any Hadoop FileSystem URI."""

from __future__ import annotations

import os
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
