"""The errors every layer shares."""

from __future__ import annotations


class MissingInputError(RuntimeError):
    """A stage's input is absent or stale: a table that does not exist, a model that a stage run left
    incomplete, or one trained for other inputs. The message names the stage to run first.

    Example:
        >>> raise MissingInputError("train: table 'interactions' does not exist under lake; run ingest first")
    """
