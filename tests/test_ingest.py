"""ingest on tiny inline files whose expected tables and quarantine reasons are stated by hand."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable

from longtail.core import schema as S
from longtail.core.config import load_config
from longtail.core.errors import BadInputError
from longtail.lake import Lake
from longtail.stages.ingest import TS_OUT_OF_RANGE, detect_format
from longtail.stages.ingest import run as ingest

pytestmark = pytest.mark.spark

ITEMS_CSV = '''item_id,title,description,category
a,Alpha,"First, item.",x
b,Beta,Second item,y
,NoId,desc,z
c,Gamma,"   ",z
d,Delta,<p></p>,z
b,Beta2,Second item v2,y
e,Eps,desc,cat,extra
f,Phi,"Multi
line ""quoted""",w
'''
# good: a, b (the later row, Beta2), f
# quarantined: '' (missing item_id), c and d (empty description: blank / HTML only),
#              e (unparseable: five fields), b/Beta (duplicate, the later row wins)

INTERACTIONS_CSV = """user_id,item_id,timestamp,rating
u1,a,1704067200,4
u1,b,2024-01-02T00:00:00Z,3.5
u2,a,1704067200000,5
,a,1704067200,4
u3,,1704067200,4
u3,a,yesterday,4
u3,a,1704067300,abc
u3,a,1704067400,0
u3,zzz,1704067200,4
u1,a,1704067200,4
u3,c,1704067200,4
u4,f,1704067200,1,extra
"""
# good: (u1,a,2024-01-01), (u1,b,2024-01-02), (u2,a,2024-01-01 from milliseconds)
# quarantined, in order: missing user_id, missing item_id, unparseable timestamp, non-numeric weight,
#   non-positive weight, unknown item_id (zzz), duplicate interaction (u1,a again),
#   unknown item_id (c was quarantined, so it is not a known item), unparseable row (five fields)


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _cfg(lake_root: str, items: str, interactions: str, *extra: str):
    return load_config(
        overrides=[
            f"lake.root={lake_root}",
            f"input.items={items}",
            f"input.interactions={interactions}",
            *extra,
        ]
    )


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[str, str]:
    return _write(tmp_path, "items.csv", ITEMS_CSV), _write(tmp_path, "interactions.csv", INTERACTIONS_CSV)


def test_ingest_tables_and_quarantine(spark, lake_root, inputs):
    cfg = _cfg(lake_root, *inputs, "ingest.max_bad_fraction=1.0")
    summary = ingest(spark, cfg, run_id="r1")
    lake = Lake(spark, lake_root)

    items = {r[S.ITEM_ID]: r for r in lake.read(S.ITEMS).collect()}
    assert sorted(items) == ["a", "b", "f"]
    assert items["b"][S.TITLE] == "Beta2"
    assert items["a"][S.CONTENT_HASH] == _sha("Alpha. First, item.")
    assert items["f"][S.DESCRIPTION] == 'Multi\nline "quoted"'
    assert items["f"][S.CONTENT_HASH] == _sha('Phi. Multi line "quoted"')

    rows = sorted(
        (r[S.USER_ID], r[S.ITEM_ID], r[S.TS], r[S.WEIGHT]) for r in lake.read(S.INTERACTIONS).collect()
    )
    jan1, jan2 = dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)
    assert rows == [("u1", "a", jan1, 4.0), ("u1", "b", jan2, 3.5), ("u2", "a", jan1, 5.0)]

    q = lake.read(S.QUARANTINE).collect()
    assert Counter((r[S.SOURCE], r[S.REASON]) for r in q) == Counter(
        {
            ("items", "missing item_id"): 1,
            ("items", "empty description"): 2,
            ("items", "unparseable row"): 1,
            ("items", "duplicate item_id (a later row wins)"): 1,
            ("interactions", "missing user_id"): 1,
            ("interactions", "missing item_id"): 1,
            ("interactions", "unparseable timestamp"): 1,
            ("interactions", "non-numeric weight"): 1,
            ("interactions", "non-positive weight"): 1,
            ("interactions", "unknown item_id"): 2,
            ("interactions", "duplicate interaction"): 1,
            ("interactions", "unparseable row"): 1,
        }
    )
    assert {r[S.RUN_ID] for r in q} == {"r1"}
    raw = {r[S.RECORD] for r in q}
    assert "e,Eps,desc,cat,extra" in raw  # an unparseable row is kept as its raw text
    assert summary["items"]["rows"] == 8 and summary["interactions"]["rows"] == 12

    # The tables are plain Delta: deltalake opens them with the contract's columns and row counts.
    dt_items = DeltaTable(lake.path(S.ITEMS))
    assert [f.name for f in dt_items.schema().fields] == S.ITEMS_SCHEMA.fieldNames()
    assert dt_items.to_pyarrow_table().num_rows == 3
    assert DeltaTable(lake.path(S.INTERACTIONS)).to_pyarrow_table().num_rows == 3


def test_reingest_is_a_no_op_and_newer_items_update_only_changes(spark, lake_root, inputs, tmp_path):
    cfg = _cfg(lake_root, *inputs, "ingest.max_bad_fraction=1.0")
    ingest(spark, cfg, run_id="r1")
    lake = Lake(spark, lake_root)
    versions = {t: lake.version(t) for t in (S.ITEMS, S.INTERACTIONS, S.QUARANTINE)}
    before = {r[S.ITEM_ID]: r[S.UPDATED_AT] for r in lake.read(S.ITEMS).collect()}

    summary = ingest(spark, cfg, run_id="r2")  # the same files again
    assert {t: lake.version(t) for t in versions} == versions
    assert summary["items"]["changed"] == 0 and summary["interactions"]["new"] == 0
    assert summary["quarantine"]["new"] == 0

    newer = _write(
        tmp_path,
        "items_v2.csv",
        'item_id,title,description,category\na,Alpha,"First, item.",x\nb,Beta2,Second item v3,y\nh,Eta,New one,z\n',
    )
    summary = ingest(spark, _cfg(lake_root, newer, inputs[1], "ingest.max_bad_fraction=1.0"), run_id="r3")
    assert summary["items"]["changed"] == 2  # b changed, h is new; a is identical
    assert lake.version(S.ITEMS) == versions[S.ITEMS] + 1
    after = {r[S.ITEM_ID]: r for r in lake.read(S.ITEMS).collect()}
    assert sorted(after) == ["a", "b", "f", "h"]  # f is kept although the newer file lacks it
    assert after["a"][S.UPDATED_AT] == before["a"] and after["f"][S.UPDATED_AT] == before["f"]
    assert after["b"][S.DESCRIPTION] == "Second item v3" and after["b"][S.UPDATED_AT] > before["b"]
    assert after["b"][S.CONTENT_HASH] == _sha("Beta2. Second item v3")


def test_too_much_bad_input_fails_and_leaves_tables(spark, lake_root, inputs):
    # 5 of 8 item rows are bad (62.5%): over the default 5%.
    with pytest.raises(BadInputError, match=r"items: 5 of 8 rows \(62.5%\) broke the contract"):
        ingest(spark, _cfg(lake_root, *inputs), run_id="r1")
    lake = Lake(spark, lake_root)
    assert not lake.exists(S.ITEMS) and not lake.exists(S.INTERACTIONS)
    assert lake.read(S.QUARANTINE).count() == 5 + 9  # the failure can be inspected


def test_json_lines_and_parquet_inputs(spark, lake_root, tmp_path):
    items = _write(
        tmp_path, "items.jsonl", '{"item_id": "x", "description": "Text", "title": null}\n{broken\n'
    )
    spark.createDataFrame(
        [("u", "x", 1_700_000_000, 2.0)], "user_id string, item_id string, ts long, weight double"
    ).write.parquet(str(tmp_path / "inter.parquet"))
    cfg = _cfg(lake_root, items, str(tmp_path / "inter.parquet"), "ingest.max_bad_fraction=0.5")
    summary = ingest(spark, cfg, run_id="r1")
    lake = Lake(spark, lake_root)
    assert [r[S.ITEM_ID] for r in lake.read(S.ITEMS).collect()] == ["x"]
    assert lake.read(S.INTERACTIONS).first()[S.TS] == dt.datetime(2023, 11, 14, 22, 13, 20)
    assert summary["items"]["quarantined"] == {"unparseable row": 1}


def test_missing_columns_are_named(spark, lake_root, tmp_path):
    items = _write(tmp_path, "items.csv", "id,text\n1,hello\n")
    inter = _write(tmp_path, "i.csv", "user_id,item_id,timestamp\nu,1,1\n")
    with pytest.raises(
        S.MissingColumnsError, match=r"items input: missing column\(s\) \['description', 'item_id'\]"
    ):
        ingest(spark, _cfg(lake_root, items, inter), run_id="r1")


def test_detect_format(tmp_path):
    assert detect_format("s3a://b/items.csv") == "csv"
    assert detect_format("x/inter.jsonl") == "json"
    assert detect_format("x/inter.parquet") == "parquet"
    assert detect_format("x/file.txt", "csv") == "csv"
    (tmp_path / "t" / "_delta_log").mkdir(parents=True)
    assert detect_format(str(tmp_path / "t")) == "delta"
    with pytest.raises(ValueError, match=r"set input\.format"):
        detect_format("x/file.txt")


def test_timestamps_out_of_range_go_to_quarantine_not_fail_the_stage(spark, lake_root, tmp_path):
    interactions = (
        "user_id,item_id,timestamp,rating\n"
        "u1,a,1704067200,4\n"
        "u1,b,12345678901234567890,4\n"  # 20 digits: read as ms it is still year ~391 million
        "u2,a,-99999999999,4\n"  # before 1900
        "u2,b,9999-12-31T00:00:00Z,4\n"  # parses, but past 2200
        "u3,a,inf,4\n"
    )
    items = _write(tmp_path, "items.csv", "item_id,title,description\na,A,first\nb,B,second\n")
    inter = _write(tmp_path, "interactions.csv", interactions)
    summary = ingest(spark, _cfg(lake_root, items, inter, "ingest.max_bad_fraction=0.9"))
    lake = Lake(spark, lake_root)
    assert [(r[S.USER_ID], r[S.ITEM_ID]) for r in lake.read(S.INTERACTIONS).collect()] == [("u1", "a")]
    reasons = Counter(r[S.REASON] for r in lake.read(S.QUARANTINE).collect())
    assert reasons == {TS_OUT_OF_RANGE: 4}
    assert summary["interactions"]["rows"] == 5 and sum(summary["interactions"]["quarantined"].values()) == 4


def test_a_concurrent_ingest_of_the_same_events_adds_each_once(spark, lake_root, inputs, monkeypatch):
    # A second ingest of the same files commits between this run's read of `interactions` and its
    # own commit: this run's commit is rejected (same sequence number), it re-reads and adds nothing.
    from longtail.lake import facade

    cfg = _cfg(lake_root, *inputs, "ingest.max_bad_fraction=1.0")  # the inputs are mostly bad on purpose
    ingest(spark, cfg)  # creates the tables
    lake = Lake(spark, lake_root)
    before = lake.read(S.INTERACTIONS).count()
    lake.delete(S.INTERACTIONS, "user_id = 'u2'")  # so that both runs have one event to add
    real = facade.Lake.append
    raced: list[int | None] = []

    def append(self, table, df, *, txn=None):
        if table == S.INTERACTIONS and not raced:
            raced.append(None)
            raced[0] = ingest(spark, cfg)["interactions"]["new"]  # the other run wins the race
        return real(self, table, df, txn=txn)

    monkeypatch.setattr(facade.Lake, "append", append)
    mine = ingest(spark, cfg)["interactions"]["new"]
    monkeypatch.undo()
    assert raced == [1] and mine == 0
    assert lake.read(S.INTERACTIONS).count() == before


def test_items_flagged_removed_leave_the_catalogue_until_listed_again(spark, lake_root, tmp_path):
    """Three nights: a removal (its description may be empty), a re-listing, a bad flag."""
    from longtail.ml.model import listed_items

    events = _write(tmp_path, "events.csv", "user_id,item_id,timestamp\nu1,a,1704067200\nu1,c,1704067300\n")
    nights = [
        "item_id,title,description,removed\na,A,first,\nb,B,second,no\nc,C,third,false\n",
        "item_id,title,description,removed\nc,,,TRUE\nb,B,second,0\n",  # c removed; b unchanged
        "item_id,title,description,removed\nc,C,third again,\na,A,first,maybe\n",  # c back; a: bad flag
    ]
    lake = Lake(spark, lake_root)
    summaries, removed, listed = [], [], []
    for n, text in enumerate(nights):
        items = _write(tmp_path, f"items{n}.csv", text)
        summaries.append(
            ingest(spark, _cfg(lake_root, items, events, "ingest.max_bad_fraction=1.0"))["items"]
        )
        table = lake.read(S.REMOVED_ITEMS).collect() if lake.exists(S.REMOVED_ITEMS) else []
        removed.append(sorted(r[S.ITEM_ID] for r in table))
        listed.append(sorted(r[S.ITEM_ID] for r in listed_items(lake).collect()))
    assert removed == [[], ["c"], []]
    assert listed == [["a", "b", "c"], ["a", "b"], ["a", "b", "c"]]
    assert [(s["removed"], s["listed_again"], s["changed"]) for s in summaries] == [
        (0, 0, 3),
        (1, 0, 0),
        (0, 1, 1),
    ]
    # the removal kept c's row and its events (history); the re-listing updated its text
    assert lake.read(S.ITEMS).where("item_id = 'c'").first()[S.DESCRIPTION] == "third again"
    assert lake.read(S.INTERACTIONS).count() == 2
    # night 1 wrote no removed_items table (nothing removed yet); a bad flag is quarantined
    assert [h["version"] for h in lake.history(S.REMOVED_ITEMS)] == [1, 0]
    reasons = [r[S.REASON] for r in lake.read(S.QUARANTINE).where("source = 'items'").collect()]
    assert reasons == ["removed is not true or false"]
