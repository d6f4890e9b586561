"""The errors every layer shares."""

from __future__ import annotations


class MissingInputError(RuntimeError):
    """A stage's input is absent or stale: a table that does not exist, a model that a stage run left
    incomplete, or one trained for other inputs. The message names the stage to run first.

    Example:
        >>> raise MissingInputError("train: table 'interactions' does not exist under lake; run ingest first")
    """


class BadInputError(RuntimeError):
    """Too large a share of a source's rows broke the contract (``ingest.max_bad_fraction``); the
    rows are in `quarantine`. A retry fails the same way: the data must be fixed.

    Example:
        >>> raise BadInputError("items: 5 of 8 rows (62.5%) broke the contract, ...")
    """


class ConnectorMissingError(RuntimeError):
    """A JVM connector the config needs (delta-spark for ``lake.engine: delta-spark``, S3A for an
    ``s3a://`` lake) is not on the running JVM's classpath. The message names the launcher flag
    or ``--packages`` coordinates that add it; a retry without them fails the same way.

    Example:
        >>> raise ConnectorMissingError("S3A ... pass --packages org.apache.hadoop:hadoop-aws:3.5.0")
    """
