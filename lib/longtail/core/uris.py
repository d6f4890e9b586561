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


# S3A settings (Hadoop configuration, e.g. spark.hadoop.fs.s3a.endpoint) -> deltalake's storage
# options, so that one S3 configuration serves both engines. Secrets stay in memory, never logged.
_S3A_TO_RS = {
    "access.key": "AWS_ACCESS_KEY_ID",
    "secret.key": "AWS_SECRET_ACCESS_KEY",
    "session.token": "AWS_SESSION_TOKEN",
    "endpoint.region": "AWS_REGION",
}


def s3_storage_options(spark: SparkSession, uri: str) -> dict[str, str]:
    """deltalake storage options for an ``s3a://`` (or ``s3://``) URI, from the session's S3A settings.

    Reads ``fs.s3a.endpoint``, ``fs.s3a.access.key``, ``fs.s3a.secret.key``,
    ``fs.s3a.session.token``, ``fs.s3a.endpoint.region``, ``fs.s3a.path.style.access`` and
    ``fs.s3a.connection.ssl.enabled`` from the Hadoop configuration, a bucket's own
    ``fs.s3a.bucket.<bucket>.*`` first, as S3A does. Only what is set is passed on: deltalake takes
    the rest from the environment (``AWS_*``), like S3A's default credential chain. Empty for
    other schemes.

    Example:
        >>> spark.conf.get("spark.hadoop.fs.s3a.endpoint")
        'http://127.0.0.1:9000'
        >>> s3_storage_options(spark, "s3a://lake/longtail")["AWS_ENDPOINT_URL"]
        'http://127.0.0.1:9000'
    """
    if RS_SCHEMES.get(scheme(uri), scheme(uri)) != "s3":
        return {}
    hconf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    bucket = urlparse(uri).netloc

    def get(key: str) -> str | None:
        value = hconf.get(f"fs.s3a.bucket.{bucket}.{key}") or hconf.get(f"fs.s3a.{key}")
        return str(value).strip() if value is not None and str(value).strip() else None

    options = {rs: value for key, rs in _S3A_TO_RS.items() if (value := get(key)) is not None}
    endpoint = get("endpoint")
    if endpoint:
        if "://" not in endpoint:
            ssl = (get("connection.ssl.enabled") or "true").lower() != "false"
            endpoint = f"{'https' if ssl else 'http'}://{endpoint}"
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    path_style = get("path.style.access")
    if path_style is not None:
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false" if path_style.lower() == "true" else "true"
    return options


def arrow_filesystem(uri: str, storage_options: dict[str, str] | None = None) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path)`` for reading ``uri`` outside Spark (e.g. in a training process).

    Local paths and ``file:`` URIs, and S3 (``s3a://``, ``s3://``) with ``storage_options`` as
    :func:`s3_storage_options` gives them (unset keys: pyarrow's default AWS credential chain).
    Raises ValueError for other schemes.
    """
    import pyarrow.fs as pafs

    if is_local(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    if RS_SCHEMES.get(scheme(uri), scheme(uri)) != "s3":
        raise ValueError(f"{uri!r}: only local paths and S3 can be read outside Spark (not {scheme(uri)}://)")
    opts = storage_options or {}
    kwargs: dict[str, Any] = {
        "access_key": opts.get("AWS_ACCESS_KEY_ID"),
        "secret_key": opts.get("AWS_SECRET_ACCESS_KEY"),
        "session_token": opts.get("AWS_SESSION_TOKEN"),
        "region": opts.get("AWS_REGION"),
    }
    endpoint = opts.get("AWS_ENDPOINT_URL")
    if endpoint:
        kwargs["scheme"], _, kwargs["endpoint_override"] = endpoint.partition("://")
    if opts.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST") == "true":
        kwargs["force_virtual_addressing"] = True
    fs = pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})
    return fs, uri.split("://", 1)[1]
