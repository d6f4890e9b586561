"""No single value kills ingest: property-based tests over the parsers and checks (hypothesis).

Every generated record ends either as a valid contract row or with a quarantine reason, and the
counts add up to the input's records. Values are drawn at and past every type's range: huge and
tiny numbers, NaN/inf, dates out of range, random unicode and control characters, empty and long
fields, quoted newlines and quotes, wrong field counts.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longtail.core.config import load_config
from longtail.lake import Lake
from longtail.stages.ingest import (
    INTERACTION_REASONS,
    ORDER,
    REASON,
    TS_MAX_SECONDS,
    TS_MIN_SECONDS,
    check_interactions,
    read_raw,
)
from longtail.stages.ingest import run as ingest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

NUMBERS = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        ["nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e-320", "0", "-0", "9" * 20, "1704067200"]
    ),
)
DATES = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["0000-01-01", "9999-12-31T23:59:59Z", "2024-02-30", "2024-01-01T25:00:00", "yesterday"]),
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
FIELD = st.one_of(
    NUMBERS, DATES, TEXT, st.just(""), st.sampled_from(["a", "b", " a ", "\n", '"', "x" * 5000])
)
ROW = st.lists(FIELD, min_size=2, max_size=6)  # the header has 4 fields: wrong counts included
SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


@SETTINGS
@given(rows=st.lists(ROW, min_size=1, max_size=40))
def test_every_interaction_record_is_valid_or_quarantined_with_a_reason(spark, tmp_path: Path, rows):
    path = tmp_path / f"i{abs(hash(str(rows)))}.csv"
    path.write_text(_csv(["user_id", "item_id", "timestamp", "rating"], rows), encoding="utf-8")
    known = spark.createDataFrame([("a",), ("b",)], "item_id string")
    checked = check_interactions(read_raw(spark, str(path)), known, options=load_config().ingest)
    out = checked.drop(ORDER).collect() if ORDER in checked.columns else checked.collect()
    assert len(out) == len(rows)  # one checked row per input record, none lost or doubled
    for r in out:
        if r[REASON] is None:
            assert r["user_id"] and r["item_id"] in ("a", "b")
            secs = (
                r["ts"].timestamp()
                if r["ts"].tzinfo
                else (r["ts"] - r["ts"].__class__(1970, 1, 1)).total_seconds()
            )
            assert TS_MIN_SECONDS <= secs < TS_MAX_SECONDS
            assert math.isfinite(r["weight"]) and r["weight"] > 0
        else:
            assert r[REASON] in INTERACTION_REASONS and r["record"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=25))
def test_ingest_puts_every_record_in_its_table_or_quarantine(spark, tmp_path: Path, rows):
    root = tmp_path / f"lake{abs(hash(str(rows)))}"
    root.mkdir()
    items = root / "items.csv"
    items.write_text("item_id,title,description\na,A,first\nb,B,second\n", encoding="utf-8")
    inter = root / "interactions.csv"
    inter.write_text(_csv(["user_id", "item_id", "timestamp", "rating"], rows), encoding="utf-8")
    cfg = load_config(
        overrides=[
            f"lake.root={root / 'lake'}",
            f"input.items={items}",
            f"input.interactions={inter}",
            "ingest.max_bad_fraction=1.0",
        ]
    )
    summary = ingest(spark, cfg)["interactions"]
    lake = Lake(spark, cfg.lake.root)
    stored = lake.read("interactions").count()
    quarantined = lake.read("quarantine").where("source = 'interactions'").count()
    assert summary["rows"] == len(rows)
    # distinct records: the table and the quarantine dedupe identical rows on their keys
    assert stored + sum(summary["quarantined"].values()) == len(rows)
    assert stored == summary["new"] and quarantined <= sum(summary["quarantined"].values())
