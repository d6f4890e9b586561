"""`ingest`: raw items and interactions -> the `items`, `interactions` and `quarantine` tables.

Every row that breaks the contract goes to `quarantine` with one reason (the first that applies, in
the order of :data:`ITEM_REASONS` / :data:`INTERACTION_REASONS`); nothing is dropped silently. The
stage fails, before it writes `items` or `interactions`, when a source's quarantined share passes
``ingest.max_bad_fraction``; the quarantine rows of that run are still written so that the failure
can be inspected with a query.

Idempotence: `items` is upserted with only the rows whose content differs from the table, the
interaction log is appended with only the events it does not hold yet (key: user, item, time), and
`quarantine` with only records it does not hold yet. Re-ingesting the same files therefore commits
nothing; a newer item file updates exactly the changed items. Items absent from a newer file are
kept (ingest is an upsert, deletions are not inferred from absence).

Removal is explicit: an optional ``removed`` column in the items input (true/false, 1/0, yes/no;
empty = false). A row with ``removed`` true (its description may be empty) puts the item in
`removed_items`, which ``recommend`` leaves out of its candidates (``evaluate`` replays history on
the whole catalogue: a removed item was listed when its test events happened); the item's row in
`items` and its interactions stay (history). A later row of the item without the flag lists it
again. Other values of ``removed`` are quarantined.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core import schema as S
from longtail.core.config import Config, IngestConfig
from longtail.core.errors import BadInputError
from longtail.core.text import content_hash, encoder_text
from longtail.lake import Lake

log = logging.getLogger(__name__)

CORRUPT = "_corrupt_record"
ORDER = "_ord"
REASON = "_reason"
REMOVED_FLAG = "_removed"

# Reasons, in the order they are checked: a row gets the first that applies.
UNPARSEABLE = "unparseable row"
MISSING_ITEM_ID = "missing item_id"
MISSING_USER_ID = "missing user_id"
EMPTY_DESCRIPTION = "empty description"
DUPLICATE_ITEM = "duplicate item_id (a later row wins)"
BAD_REMOVED = "removed is not true or false"
BAD_TS = "unparseable timestamp"
TS_OUT_OF_RANGE = "timestamp out of range (1900-01-01 to 2200-01-01 UTC)"
NON_NUMERIC_WEIGHT = "non-numeric weight"
NON_POSITIVE_WEIGHT = "non-positive weight"
UNKNOWN_ITEM = "unknown item_id"
DUPLICATE_INTERACTION = "duplicate interaction"
ITEM_REASONS = (UNPARSEABLE, MISSING_ITEM_ID, BAD_REMOVED, EMPTY_DESCRIPTION, DUPLICATE_ITEM)
TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0", "")
INTERACTION_REASONS = (
    UNPARSEABLE,
    MISSING_USER_ID,
    MISSING_ITEM_ID,
    BAD_TS,
    TS_OUT_OF_RANGE,
    NON_NUMERIC_WEIGHT,
    NON_POSITIVE_WEIGHT,
    UNKNOWN_ITEM,
    DUPLICATE_INTERACTION,
)

# Accepted event times, as Unix seconds: [1900-01-01, 2200-01-01) UTC. Beyond it a value is a unit
# mix-up or garbage (a 20-digit number), and timestamps past year 9999 cannot even be read back
# into Python: such rows go to quarantine instead of failing the stage.
TS_MIN_SECONDS = -2_208_988_800.0
TS_MAX_SECONDS = 7_258_118_400.0

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
}


# --- reading -------------------------------------------------------------------------------------
def detect_format(path: str, fmt: str = "auto") -> str:
    """The input format: ``fmt`` unless it is ``auto``, else from the path's extension.

    A folder with a ``_delta_log`` is a Delta table; a folder without an extension is read as Parquet.
    """
    if fmt != "auto":
        return fmt
    name = path.rstrip("/")
    ext = posixpath.splitext(name)[1].lower()
    if ext in FORMATS:
        return FORMATS[ext]
    if _is_delta_dir(name):
        return "delta"
    if ext == "":
        return "parquet"
    raise ValueError(f"cannot tell the format of {path!r} from its extension {ext!r}; set input.format")


def _is_delta_dir(path: str) -> bool:
    if "://" in path:
        return path.rstrip("/").endswith("_delta") or False
    return posixpath.isdir(posixpath.join(path, "_delta_log"))


def read_raw(spark: SparkSession, path: str, fmt: str = "auto") -> DataFrame:
    """Read an input file or folder with every column as a string, plus the row order and, for
    CSV and JSON lines, the raw text of rows that did not parse (``_corrupt_record``)."""
    fmt = detect_format(path, fmt)
    if fmt == "csv":
        opts = {"header": "true", "escape": '"', "multiLine": "true", "mode": "PERMISSIVE"}
        if path.rstrip("/").lower().endswith(".tsv"):
            opts["sep"] = "\t"
        columns = spark.read.options(**opts).csv(path).columns
        if not columns:
            raise ValueError(f"{path}: no header row")
        fields = [T.StructField(c, T.StringType()) for c in columns] + [
            T.StructField(CORRUPT, T.StringType())
        ]
        df = (
            spark.read.options(**opts, columnNameOfCorruptRecord=CORRUPT)
            .schema(T.StructType(fields))
            .csv(path)
        )
    elif fmt == "json":
        opts = {"primitivesAsString": "true", "mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
        inferred = spark.read.options(**opts).json(path).schema
        fields = [T.StructField(f.name, T.StringType()) for f in inferred if f.name != CORRUPT]
        fields.append(T.StructField(CORRUPT, T.StringType()))
        df = spark.read.options(**opts).schema(T.StructType(fields)).json(path)
    elif fmt == "parquet":
        df = spark.read.parquet(path).withColumn(CORRUPT, F.lit(None).cast("string"))
    elif fmt == "delta":
        root, table = posixpath.split(path.rstrip("/"))
        df = Lake(spark, root).read(table).withColumn(CORRUPT, F.lit(None).cast("string"))
    else:
        raise ValueError(f"unknown input format {fmt!r}; allowed: csv, json, parquet, delta")
    df = df.select([F.col(c).cast("string").alias(c) if c != CORRUPT else F.col(c) for c in df.columns])
    # File order decides which of two duplicate rows is the later one; taken before any shuffle.
    return df.withColumn(ORDER, F.monotonically_increasing_id())


def _record(raw_columns: list[str]) -> Column:
    """The raw row as JSON (or the raw line when it did not parse), for the quarantine."""
    return F.coalesce(F.col(CORRUPT), F.to_json(F.struct(*[F.col(c) for c in raw_columns])))


def _blank(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


def _first_reason(checks: list[tuple[Column, str]]) -> Column:
    expr = F.lit(None).cast("string")
    for cond, reason in reversed(checks):
        expr = F.when(cond, F.lit(reason)).otherwise(expr)
    return expr


def _pick(df: DataFrame, wanted: str, candidates: tuple[str, ...], what: str) -> str | None:
    if wanted != "auto":
        if wanted not in df.columns:
            raise S.MissingColumnsError(what, [wanted], [c for c in df.columns if not c.startswith("_")])
        return wanted
    return next((c for c in candidates if c in df.columns), None)


# --- items ---------------------------------------------------------------------------------------
_TEXT_CHECK = T.StructType(
    [T.StructField("empty", T.BooleanType()), T.StructField("content_hash", T.StringType())]
)


@F.pandas_udf(_TEXT_CHECK)  # type: ignore[call-overload]
def _text_check(title: pd.Series, description: pd.Series) -> pd.DataFrame:
    texts = [encoder_text(t, d) for t, d in zip(title, description, strict=True)]
    empty = [not encoder_text(None, d) for d in description]
    return pd.DataFrame({"empty": empty, "content_hash": [content_hash(t) for t in texts]})


def check_items(raw: DataFrame) -> DataFrame:
    """Parse and check raw item rows: the contract's columns plus ``_reason`` (null for a good row)
    and ``record`` (the raw row as JSON).

    A duplicate ``item_id`` keeps the latest row: by a raw ``updated_at`` column when there is one,
    else by position in the input.
    """
    raw_cols = [c for c in raw.columns if c not in (CORRUPT, ORDER)]
    S.require_columns(raw.drop(CORRUPT, ORDER), [S.ITEM_ID, S.DESCRIPTION], "items input")
    title = F.col(S.TITLE) if S.TITLE in raw.columns else F.lit(None).cast("string")
    category = F.col(S.CATEGORY) if S.CATEGORY in raw.columns else F.lit(None).cast("string")
    updated = F.try_to_timestamp(F.col(S.UPDATED_AT)) if S.UPDATED_AT in raw.columns else F.lit(None)
    flag = F.lower(F.trim(F.col(S.REMOVED).cast("string"))) if S.REMOVED in raw.columns else F.lit("")
    removed = F.when(flag.isin(*TRUE_WORDS), True).when(flag.isNull() | flag.isin(*FALSE_WORDS), False)
    df = raw.select(
        F.trim(F.col(S.ITEM_ID)).alias(S.ITEM_ID),
        title.alias(S.TITLE),
        F.col(S.DESCRIPTION),
        category.alias(S.CATEGORY),
        updated.cast("timestamp").alias("_updated"),
        removed.alias(REMOVED_FLAG),
        F.col(CORRUPT),
        F.col(ORDER),
        _record(raw_cols).alias(S.RECORD),
    ).withColumn("_text", _text_check(F.col(S.TITLE), F.col(S.DESCRIPTION)))
    df = df.withColumn(
        REASON,
        _first_reason(
            [
                (F.col(CORRUPT).isNotNull(), UNPARSEABLE),
                (_blank(F.col(S.ITEM_ID)), MISSING_ITEM_ID),
                (F.col(REMOVED_FLAG).isNull(), BAD_REMOVED),
                (F.col("_text.empty") & ~F.col(REMOVED_FLAG), EMPTY_DESCRIPTION),
            ]
        ),
    )
    # Among rows that passed so far, the latest per item_id wins; the others are duplicates.
    latest = Window.partitionBy(S.ITEM_ID).orderBy(F.col("_updated").desc_nulls_last(), F.col(ORDER).desc())
    df = df.withColumn("_n", F.when(F.col(REASON).isNull(), F.row_number().over(latest))).withColumn(
        REASON, F.when(F.col("_n") > 1, F.lit(DUPLICATE_ITEM)).otherwise(F.col(REASON))
    )
    return df.select(
        S.ITEM_ID,
        S.TITLE,
        S.DESCRIPTION,
        S.CATEGORY,
        F.col("_text.content_hash").alias(S.CONTENT_HASH),
        F.col("_updated"),
        F.coalesce(F.col(REMOVED_FLAG), F.lit(False)).alias(REMOVED_FLAG),
        REASON,
        S.RECORD,
    )


# --- interactions --------------------------------------------------------------------------------
def check_interactions(raw: DataFrame, known_items: DataFrame, *, options: IngestConfig) -> DataFrame:
    """Parse and check raw interaction rows: the contract's columns plus ``_reason`` and ``record``.

    Timestamps: numbers are Unix seconds (or milliseconds: ``ingest.ts_unit``, or ``auto`` which
    takes values of 1e11 and more as milliseconds); strings are parsed as ISO-8601. Weights: the
    ``weight`` column, else ``rating``, else 1.0; a weight must be a finite number > 0.
    ``known_items`` (one column, ``item_id``) are the ids an interaction may refer to.
    """
    raw_cols = [c for c in raw.columns if c not in (CORRUPT, ORDER)]
    S.require_columns(raw.drop(CORRUPT, ORDER), [S.USER_ID, S.ITEM_ID], "interactions input")
    ts_col = _pick(raw, options.ts_column, (S.TS, "timestamp"), "interactions input")
    if ts_col is None:
        raise S.MissingColumnsError("interactions input", [S.TS + " (or timestamp)"], raw_cols)
    weight_col = _pick(raw, options.weight_column, (S.WEIGHT, "rating"), "interactions input")

    ts_raw = F.trim(F.col(ts_col))
    number = ts_raw.try_cast("double")
    if options.ts_unit == "ms":
        seconds = number / 1000.0
    elif options.ts_unit == "s":
        seconds = number
    else:
        seconds = F.when(F.abs(number) >= 1e11, number / 1000.0).otherwise(number)
    is_number = number.isNotNull() & ~F.isnan(number)
    in_range = (seconds >= TS_MIN_SECONDS) & (seconds < TS_MAX_SECONDS)  # false for +-inf too
    parsed = F.try_to_timestamp(ts_raw)
    parsed_secs = F.unix_micros(parsed) / 1e6
    # timestamp_seconds only on in-range numbers: past the range it overflows (an error under ANSI).
    ts = F.when(is_number, F.when(in_range, F.timestamp_seconds(seconds))).otherwise(
        F.when((parsed_secs >= TS_MIN_SECONDS) & (parsed_secs < TS_MAX_SECONDS), parsed)
    )
    ts_out_of_range = F.when(is_number, ~in_range).otherwise(parsed.isNotNull() & ts.isNull())
    weight_raw = F.trim(F.col(weight_col)) if weight_col else F.lit("1")
    weight = weight_raw.try_cast("double")
    finite = weight.isNotNull() & ~F.isnan(weight) & (F.abs(weight) != float("inf"))

    df = raw.select(
        F.trim(F.col(S.USER_ID)).alias(S.USER_ID),
        F.trim(F.col(S.ITEM_ID)).alias(S.ITEM_ID),
        ts.alias(S.TS),
        ts_out_of_range.alias("_ts_range"),
        F.when(finite, weight).alias(S.WEIGHT),
        finite.alias("_finite"),
        F.col(CORRUPT),
        F.col(ORDER),
        _record(raw_cols).alias(S.RECORD),
    )
    known = known_items.select(F.col(S.ITEM_ID).alias("_known")).distinct()
    df = df.join(known, df[S.ITEM_ID] == known["_known"], "left")
    df = df.withColumn(
        REASON,
        _first_reason(
            [
                (F.col(CORRUPT).isNotNull(), UNPARSEABLE),
                (_blank(F.col(S.USER_ID)), MISSING_USER_ID),
                (_blank(F.col(S.ITEM_ID)), MISSING_ITEM_ID),
                (F.col("_ts_range"), TS_OUT_OF_RANGE),
                (F.col(S.TS).isNull(), BAD_TS),
                (~F.col("_finite"), NON_NUMERIC_WEIGHT),
                (F.col(S.WEIGHT) <= 0, NON_POSITIVE_WEIGHT),
                (F.col("_known").isNull(), UNKNOWN_ITEM),
            ]
        ),
    )
    first = Window.partitionBy(S.USER_ID, S.ITEM_ID, S.TS).orderBy(F.col(ORDER))
    df = df.withColumn("_n", F.when(F.col(REASON).isNull(), F.row_number().over(first))).withColumn(
        REASON, F.when(F.col("_n") > 1, F.lit(DUPLICATE_INTERACTION)).otherwise(F.col(REASON))
    )
    return df.select(S.USER_ID, S.ITEM_ID, S.TS, S.WEIGHT, REASON, S.RECORD)


# --- the stage -----------------------------------------------------------------------------------
def quarantine_rows(checked: DataFrame, *, source: str, run_id: str) -> DataFrame:
    """The rows of ``checked`` that have a reason, in the `quarantine` table's shape."""
    return checked.where(F.col(REASON).isNotNull()).select(
        F.lit(source).alias(S.SOURCE),
        F.col(S.RECORD),
        F.col(REASON).alias(S.REASON),
        F.lit(run_id).alias(S.RUN_ID),
    )


def _counts(checked: DataFrame) -> tuple[int, dict[str, int]]:
    rows = checked.groupBy(REASON).count().collect()  # one row per reason: bounded
    total = sum(r["count"] for r in rows)
    return total, {r[REASON]: r["count"] for r in rows if r[REASON] is not None}


def _check_share(source: str, total: int, bad: dict[str, int], limit: float) -> None:
    n_bad = sum(bad.values())
    if total and n_bad / total > limit:
        detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(bad.items(), key=lambda kv: -kv[1]))
        raise BadInputError(
            f"{source}: {n_bad} of {total} rows ({n_bad / total:.1%}) broke the contract, more than "
            f"ingest.max_bad_fraction = {limit:.1%} ({detail}). Nothing was written to `items` or "
            f"`interactions`; the rows are in `quarantine`. Fix the input or raise ingest.max_bad_fraction."
        )


def run(
    spark: SparkSession, cfg: Config, *, lake: Lake | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Ingest ``cfg.input.items`` and ``cfg.input.interactions`` (or the generated sample)."""
    lake = lake or Lake.from_config(spark, cfg)
    run_id = run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    items_path, inter_path = (cfg.input.items, cfg.input.interactions)
    if items_path is None or inter_path is None:
        items_path, inter_path = cfg.sample_inputs
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

    items = check_items(read_raw(spark, items_path, cfg.input.format)).persist()
    good_items = items.where(F.col(REASON).isNull())
    known = good_items.select(S.ITEM_ID)
    if lake.exists(S.ITEMS):
        known = known.unionByName(lake.read(S.ITEMS).select(S.ITEM_ID))
    inter = check_interactions(
        read_raw(spark, inter_path, cfg.input.format), known, options=cfg.ingest
    ).persist()
    try:
        n_items, bad_items = _counts(items)
        n_inter, bad_inter = _counts(inter)
        quarantine = quarantine_rows(items, source=S.ITEMS, run_id=run_id).unionByName(
            quarantine_rows(inter, source=S.INTERACTIONS, run_id=run_id)
        )
        q_written = lake.append_new(S.QUARANTINE, quarantine, keys=[S.SOURCE, S.RECORD, S.REASON])
        _check_share("items", n_items, bad_items, cfg.ingest.max_bad_fraction)
        _check_share("interactions", n_inter, bad_inter, cfg.ingest.max_bad_fraction)

        listed = good_items.where(~F.col(REMOVED_FLAG))
        new_items = listed.select(
            S.ITEM_ID,
            S.TITLE,
            S.DESCRIPTION,
            S.CATEGORY,
            S.CONTENT_HASH,
            F.coalesce(F.col("_updated"), F.lit(now).cast("timestamp")).alias(S.UPDATED_AT),
        )
        n_changed = lake.serialized(S.ITEMS, _merge_changed_items(lake, new_items))
        removals = good_items.where(F.col(REMOVED_FLAG)).select(S.ITEM_ID)
        removed = {"removed": 0, "listed_again": 0}
        if lake.exists(S.REMOVED_ITEMS) or not removals.isEmpty():
            lake.serialized(
                S.REMOVED_ITEMS,
                _update_removed(lake, removals, listed.select(S.ITEM_ID), run_id, now, removed),
            )

        good_inter = S.conform(inter.where(F.col(REASON).isNull()), S.INTERACTIONS_SCHEMA)
        i_written = lake.append_new(S.INTERACTIONS, good_inter, keys=[S.USER_ID, S.ITEM_ID, S.TS])
    finally:
        items.unpersist()
        inter.unpersist()
    summary = {
        "items": {"rows": n_items, "quarantined": bad_items, "changed": n_changed, **removed},
        "interactions": {"rows": n_inter, "quarantined": bad_inter, "new": i_written},
        "quarantine": {"new": q_written},
        "inputs": {"items": items_path, "interactions": inter_path},
    }
    log.info("ingest: %s", summary)
    return summary


def _merge_changed_items(lake: Lake, new_items: DataFrame) -> Any:
    """An attempt for :meth:`Lake.serialized`: merge the new or changed items into `items`.

    Serialised with other ingest runs so that two runs adding the same new item at once cannot
    both insert it (a merge that touches no existing file commits like a blind append).
    """

    def attempt(txn: tuple[str, int], exists: bool) -> tuple[int, int | None]:
        changed = _changed_items(lake, new_items).persist()
        try:
            n = changed.count()
            if n == 0 and exists:
                return 0, -1
            rows = S.conform(changed, S.ITEMS_SCHEMA)
            if exists:
                return n, lake.merge(S.ITEMS, rows, keys=[S.ITEM_ID], txn=txn)
            return n, lake.overwrite(S.ITEMS, rows, txn=txn)
        finally:
            changed.unpersist()

    return attempt


def _update_removed(
    lake: Lake, removals: DataFrame, listed: DataFrame, run_id: str, now: dt.datetime, out: dict[str, int]
) -> Any:
    """An attempt for :meth:`Lake.serialized`: `removed_items` becomes (current - listed) + removals.

    Items flagged in this input are added (an item already there keeps its first ``removed_at``);
    items listed without the flag leave the table. The table is small (ids), so a change rewrites
    it in one commit; no change, no commit. ``out`` gets the counts.
    """

    def attempt(txn: tuple[str, int], exists: bool) -> tuple[int, int | None]:
        current = (
            lake.read(S.REMOVED_ITEMS)
            if exists
            else removals.sparkSession.createDataFrame([], S.REMOVED_ITEMS_SCHEMA)
        )
        # listed and flagged ids are disjoint (one row per item wins), so an item flagged again
        # stays in `keep` with its first removed_at
        keep = current.join(listed, S.ITEM_ID, "left_anti")
        added = (
            removals.distinct()
            .join(current, S.ITEM_ID, "left_anti")
            .select(
                S.ITEM_ID, F.lit(now).cast("timestamp").alias(S.REMOVED_AT), F.lit(run_id).alias(S.RUN_ID)
            )
        )
        rows = S.conform(keep.unionByName(added), S.REMOVED_ITEMS_SCHEMA).persist()
        try:
            n_added = added.count()
            n_listed = current.join(listed, S.ITEM_ID, "left_semi").count()
            out.update(removed=n_added, listed_again=n_listed)
            if n_added == 0 and n_listed == 0 and exists:
                return 0, -1
            return n_added + n_listed, lake.overwrite(S.REMOVED_ITEMS, rows, txn=txn)
        finally:
            rows.unpersist()

    return attempt


def _changed_items(lake: Lake, new_items: DataFrame) -> DataFrame:
    """Rows of ``new_items`` that are new or differ from the table in title, description,
    category or content hash (null-safe)."""
    if not lake.exists(S.ITEMS):
        return new_items
    current = lake.read(S.ITEMS).select(
        *[
            F.col(c).alias(f"_cur_{c}")
            for c in (S.ITEM_ID, S.TITLE, S.DESCRIPTION, S.CATEGORY, S.CONTENT_HASH)
        ]
    )
    same = None
    for c in (S.ITEM_ID, S.TITLE, S.DESCRIPTION, S.CATEGORY, S.CONTENT_HASH):
        cond = new_items[c].eqNullSafe(current[f"_cur_{c}"])
        same = cond if same is None else same & cond
    assert same is not None
    return new_items.join(current, same, "left_anti")
