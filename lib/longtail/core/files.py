"""Small files written atomically to a local folder or any Hadoop FileSystem URI."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from pyspark.sql import SparkSession


# --- writing -------------------------------------------------------------------------------------
def _local_dir(out_dir: str) -> str | None:
    """The local path of ``out_dir``, or None when it is a URI for Hadoop."""
    parsed = urlparse(out_dir)
    if parsed.scheme == "file":
        return parsed.path
    if parsed.scheme and len(parsed.scheme) > 1:  # 'C:\\...' is a Windows drive, not a scheme
        return None
    return out_dir


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
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    base = out_dir.rstrip("/")
    directory = jvm.org.apache.hadoop.fs.Path(base)
    fs = directory.getFileSystem(conf)
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
