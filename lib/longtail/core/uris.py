"""Lake roots and file URIs: local paths, ``file:`` and Hadoop schemes (``s3a://``, ``abfss://``, ``hdfs://``).

The one place that parses, joins and maps URIs, and the one way to reach Spark's Hadoop FileSystem
(:func:`hadoop_fs`) for paths that are not local.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote, urlparse

from pyspark.sql import SparkSession

# Spark's Hadoop schemes -> the object_store schemes that deltalake understands.
RS_SCHEMES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}


def scheme(uri: str) -> str:
    """The URI scheme, '' for a plain local path (a Windows drive letter counts as local)."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", uri)
    return m.group(1).lower() if m and len(m.group(1)) > 1 else ""


def is_local(uri: str) -> bool:
    """True for a plain path or a ``file:`` URI."""
    return scheme(uri) in ("", "file")


def local_path(uri: str) -> str:
    """``file:///x`` or ``file:/x`` or ``x`` -> an absolute local path."""
    if scheme(uri) == "file":
        uri = unquote(urlparse(uri).path)
    return os.path.abspath(uri)


def rs_uri(uri: str) -> str:
    """The table URI for deltalake: local paths absolute, Hadoop schemes mapped (s3a -> s3)."""
    if is_local(uri):
        return local_path(uri)
    name = scheme(uri)
    return RS_SCHEMES.get(name, name) + uri[len(name) :]


def path_key(uri: str) -> str:
    """A scheme-free, decoded form of a file URI, to match Spark's file paths to deltalake's."""
    if is_local(uri):
        return local_path(uri)
    return unquote(uri.split(":", 1)[1]).lstrip("/")


def join_uri(root: str, *parts: str) -> str:
    """Join a local path or a URI (``s3a://b/x``) with sub-paths, keeping the scheme intact.

    Example:
        >>> join_uri("s3a://bucket/lake/", "items")
        's3a://bucket/lake/items'
    """
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def hadoop_fs(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    """``(FileSystem, Path)`` of ``uri`` through the session's Hadoop configuration (credentials included)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    jpath = jvm.org.apache.hadoop.fs.Path(uri)
    return jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), jpath
