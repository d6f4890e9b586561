"""Table names, column names and Spark schemas of the lake: the contract other stages rely on.

Every stage refers to tables and columns through these constants, never through string literals,
so that a rename is one edit and a missing column is one typed error (:class:`MissingColumnsError`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

# --- table names (folders under lake.root) -------------------------------------------------------
ITEMS = "items"
INTERACTIONS = "interactions"
QUARANTINE = "quarantine"
ITEM_EMBEDDINGS = "item_embeddings"
ID_MAP_USERS = "user_ids"
ID_MAP_ITEMS = "item_ids"
USER_FACTORS = "user_factors"
ITEM_FACTORS = "item_factors"
PROJECTION_HEAD = "projection_head"
RECOMMENDATIONS = "recommendations"
METRICS = "metrics"
REMOVED_ITEMS = "removed_items"
SYNTHETIC_INTERACTIONS = "synthetic_interactions"
RUNS = "runs"
# The stage that writes each table: what a missing-input error tells the user to run first.
WRITTEN_BY = {
    ITEMS: "ingest",
    REMOVED_ITEMS: "ingest",
    INTERACTIONS: "ingest",
    QUARANTINE: "ingest",
    ITEM_EMBEDDINGS: "encode",
    ID_MAP_USERS: "train",
    ID_MAP_ITEMS: "train",
    USER_FACTORS: "train",
    ITEM_FACTORS: "train",
    SYNTHETIC_INTERACTIONS: "train",
    PROJECTION_HEAD: "train",
    RECOMMENDATIONS: "recommend",
    METRICS: "evaluate",
}

# --- column names --------------------------------------------------------------------------------
ITEM_ID = "item_id"
USER_ID = "user_id"
TITLE = "title"
DESCRIPTION = "description"
CATEGORY = "category"
CONTENT_HASH = "content_hash"
UPDATED_AT = "updated_at"
REMOVED = "removed"  # items input: true marks the item removed from the catalogue
REMOVED_AT = "removed_at"
TS = "ts"
WEIGHT = "weight"
SOURCE = "source"
RECORD = "record"
REASON = "reason"
RUN_ID = "run_id"
MODEL_ID = "model_id"
EMBEDDING = "embedding"
ENCODED_AT = "encoded_at"
RANK = "rank"
SCORE = "score"
CF_SCORE = "cf_score"
CONTENT_SCORE = "content_score"
POPULARITY = "popularity"
IS_LONG_TAIL = "is_long_tail"
VARIANT = "variant"
METRIC = "metric"
K = "k"
SEGMENT = "segment"
VALUE = "value"
# dense integer ids for ALS (the stable id maps)
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
FEATURES = "features"

# --- schemas -------------------------------------------------------------------------------------
ITEMS_SCHEMA = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(TITLE, T.StringType(), True),
        T.StructField(DESCRIPTION, T.StringType(), False),
        T.StructField(CATEGORY, T.StringType(), True),
        T.StructField(CONTENT_HASH, T.StringType(), False),
        T.StructField(UPDATED_AT, T.TimestampType(), False),
    ]
)

INTERACTIONS_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(TS, T.TimestampType(), False),
        T.StructField(WEIGHT, T.DoubleType(), False),
    ]
)

# The items currently removed from the catalogue (never recommended; their rows in `items` and
# their interactions stay, as history). An item listed again without the flag leaves the table.
REMOVED_ITEMS_SCHEMA = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(REMOVED_AT, T.TimestampType(), False),
        T.StructField(RUN_ID, T.StringType(), False),
    ]
)

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField(SOURCE, T.StringType(), False),
        T.StructField(RECORD, T.StringType(), True),
        T.StructField(REASON, T.StringType(), False),
        T.StructField(RUN_ID, T.StringType(), False),
    ]
)

ITEM_EMBEDDINGS_SCHEMA = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(CONTENT_HASH, T.StringType(), False),
        T.StructField(MODEL_ID, T.StringType(), False),
        T.StructField(EMBEDDING, T.ArrayType(T.FloatType(), False), False),
        T.StructField(ENCODED_AT, T.TimestampType(), False),
    ]
)

RECOMMENDATIONS_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(RANK, T.IntegerType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(SCORE, T.DoubleType(), True),  # null: a row filled from the popular list
        T.StructField(CF_SCORE, T.DoubleType(), True),
        T.StructField(CONTENT_SCORE, T.DoubleType(), True),
        T.StructField(POPULARITY, T.LongType(), False),
        T.StructField(IS_LONG_TAIL, T.BooleanType(), False),
    ]
)

METRICS_SCHEMA = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(VARIANT, T.StringType(), False),
        T.StructField(METRIC, T.StringType(), False),
        T.StructField(K, T.IntegerType(), True),
        T.StructField(SEGMENT, T.StringType(), False),
        T.StructField(VALUE, T.DoubleType(), True),
    ]
)

RUNS_SCHEMA = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField("stage", T.StringType(), False),
        T.StructField("status", T.StringType(), False),
        T.StructField("started_at", T.TimestampType(), False),
        T.StructField("finished_at", T.TimestampType(), True),
        T.StructField("config", T.StringType(), False),
        T.StructField("tables_read", T.StringType(), True),  # JSON {table: version}
        T.StructField("tables_written", T.StringType(), True),  # JSON {table: version}
        T.StructField("message", T.StringType(), True),
    ]
)

ID_MAP_USERS_SCHEMA = T.StructType(
    [T.StructField(USER_ID, T.StringType(), False), T.StructField(USER_IDX, T.IntegerType(), False)]
)
ID_MAP_ITEMS_SCHEMA = T.StructType(
    [T.StructField(ITEM_ID, T.StringType(), False), T.StructField(ITEM_IDX, T.IntegerType(), False)]
)
USER_FACTORS_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(FEATURES, T.ArrayType(T.FloatType(), False), False),
    ]
)
ITEM_FACTORS_SCHEMA = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(ITEM_IDX, T.IntegerType(), False),
        T.StructField(FEATURES, T.ArrayType(T.FloatType(), False), False),
    ]
)

PROJECTION_HEAD_SCHEMA = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(MODEL_ID, T.StringType(), False),
        T.StructField("spec", T.StringType(), False),  # JSON: longtail.ml.head.HeadSpec
        T.StructField("weights", T.BinaryType(), False),  # safetensors bytes
        T.StructField("trained_at", T.TimestampType(), False),
    ]
)

SYNTHETIC_INTERACTIONS_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(WEIGHT, T.DoubleType(), False),
        T.StructField("score", T.DoubleType(), True),  # the generator's score of the pair (VAE logit)
        T.StructField("generator", T.StringType(), False),
        T.StructField(RUN_ID, T.StringType(), False),
    ]
)
"""Generated (user, item) pairs ALS trained with (``train.vae.augment``); never in ``interactions``."""

SCHEMAS: dict[str, T.StructType] = {
    ITEMS: ITEMS_SCHEMA,
    INTERACTIONS: INTERACTIONS_SCHEMA,
    QUARANTINE: QUARANTINE_SCHEMA,
    ITEM_EMBEDDINGS: ITEM_EMBEDDINGS_SCHEMA,
    RECOMMENDATIONS: RECOMMENDATIONS_SCHEMA,
    METRICS: METRICS_SCHEMA,
    RUNS: RUNS_SCHEMA,
    ID_MAP_USERS: ID_MAP_USERS_SCHEMA,
    ID_MAP_ITEMS: ID_MAP_ITEMS_SCHEMA,
    USER_FACTORS: USER_FACTORS_SCHEMA,
    ITEM_FACTORS: ITEM_FACTORS_SCHEMA,
    PROJECTION_HEAD: PROJECTION_HEAD_SCHEMA,
    SYNTHETIC_INTERACTIONS: SYNTHETIC_INTERACTIONS_SCHEMA,
}


class MissingColumnsError(ValueError):
    """A DataFrame lacks columns that a stage needs."""

    def __init__(self, what: str, missing: Iterable[str], present: Iterable[str]):
        self.missing = sorted(missing)
        super().__init__(f"{what}: missing column(s) {self.missing}; present: {sorted(present)}")


def require_columns(df: DataFrame, columns: Iterable[str], what: str = "DataFrame") -> DataFrame:
    """Return ``df`` unchanged, or raise :class:`MissingColumnsError` naming what is missing.

    Example:
        >>> items.transform(lambda d: require_columns(d, [ITEM_ID, DESCRIPTION], "items"))
    """
    missing = set(columns) - set(df.columns)
    if missing:
        raise MissingColumnsError(what, missing, df.columns)
    return df


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Select and cast ``df`` to ``schema``'s columns, in its order (extra columns dropped)."""
    require_columns(df, schema.fieldNames(), "conform")
    return df.select([df[f.name].cast(f.dataType).alias(f.name) for f in schema.fields])


def _zero(dtype: T.DataType) -> Any:
    if isinstance(dtype, T.StringType):
        return ""
    if isinstance(dtype, T.BooleanType):
        return False
    if isinstance(dtype, T.NumericType):
        return 0
    raise TypeError(f"no NOT NULL guard for {dtype.simpleString()}")


def conform_strict(df: DataFrame, schema: T.StructType, *, what: str) -> DataFrame:
    """:func:`conform`, and the NOT NULL fields of ``schema`` come out non-nullable: a null in one
    of them fails the job with an error naming ``what`` and the column (never replaced).

    (``coalesce(value-or-raise, literal)`` is how Spark learns that a column cannot be null; the
    literal is never reached, since a null raises first.)
    """
    df = conform(df, schema)
    cols = []
    for f in schema.fields:
        col = F.col(f.name)
        if not f.nullable:
            guarded = F.when(col.isNull(), F.raise_error(F.lit(f"{what}: null in NOT NULL column {f.name}")))
            col = F.coalesce(guarded.otherwise(col), F.lit(_zero(f.dataType)).cast(f.dataType))
        else:
            # and the nullable ones nullable, whatever Spark proved about this plan (a score that
            # happens to be filled everywhere is still a nullable column of the table): a CASE
            # without ELSE is nullable in the schema writers read (an identity; `when(lit(True))`
            # is folded and keeps the proof)
            col = F.when(col.isNotNull(), col)
        cols.append(col.alias(f.name))
    return df.select(cols)
