"""`pipeline` as a scheduled job: three nights on a growing sample, then a retried night.

Night 1 ingests a generated sample (its bad rows included) and runs every stage. Night 2 is a full
export: the same files plus new items, edited descriptions, two items flagged ``removed`` and the
next days of the log. Night 3 is a delta export: only new and changed rows, one of the removed
items listed again. Each night ``encode`` encodes exactly the new and changed texts, ``train``,
``recommend`` and ``evaluate`` refresh, ``metrics`` gains the night's run, no table holds a row
twice, and no removed item is recommended. Night 3 is then retried under its run id, as a
scheduler does after a lost worker: nothing is written again and the refreshing stages are
skipped (their outputs are current).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable
from helpers import make_tiny_bert, small_pipeline_settings

from longtail.core import schema as S
from longtail.core.config import load_config
from longtail.lake import Lake, is_delta_spark_available
from longtail.lake.runs import SUCCEEDED
from longtail.stages import pipeline
from longtail.stages.generate_sample import generate_frames

pytestmark = pytest.mark.spark

VARIANTS = {"popular", "cf", "content", "vae", "fused", "fused_rerank"}
REFRESHED = ("train", "recommend", "evaluate")
BAD_ITEMS = 2  # generate_frames appends two bad items and three bad events (ingest quarantines them)


def _nights(items: pd.DataFrame, events: pd.DataFrame) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """The three nights' files from one generated sample (its bad rows stay in night 1)."""
    ts = pd.to_numeric(events["timestamp"], errors="coerce")  # NaN: the bad timestamp
    good = events[events["item_id"].str.startswith("i0") & ts.notna()]
    held = sorted(good["item_id"].unique())[-10:]  # 10 items that arrive later, with their events
    new2, new3 = held[:5], held[5:]
    q80, q90 = ts[good.index].quantile(0.8), ts[good.index].quantile(0.9)
    later = events["item_id"].isin(held) | (ts > q80)
    items1 = items[~items["item_id"].isin(held)]
    events1 = events[~later]

    old = sorted(items1[items1["item_id"].str.startswith("i0")]["item_id"])
    edited2, removed2, edited3 = old[:3], old[3:5], old[5:7]
    items2 = pd.concat([items1, items[items["item_id"].isin(new2)]], ignore_index=True)
    items2["description"] = [
        d + " Restored edition." if i in edited2 else d
        for i, d in zip(items2["item_id"], items2["description"], strict=True)
    ]
    items2["removed"] = ["true" if i in removed2 else "" for i in items2["item_id"]]
    day2 = events[~events["item_id"].isin(new3) & ~events.index.isin(events1.index) & (ts <= q90)]
    events2 = pd.concat([events1, day2])

    edits3 = items2[items2["item_id"].isin(edited3)].assign(
        description=lambda f: f["description"] + " Sequel."
    )
    items3 = pd.concat(
        [
            items[items["item_id"].isin(new3)].assign(removed=""),
            edits3.assign(removed=""),
            items2[items2["item_id"] == removed2[0]].assign(removed="false"),  # listed again
        ],
        ignore_index=True,
    )
    events3 = events[~events.index.isin(events2.index)]
    return [(items1, events1), (items2, events2), (items3, events3)]


def _expected_events(files: list[pd.DataFrame]) -> int:
    """Distinct good (user, item, time) events in the files so far (the three bad ones excluded)."""
    rows = pd.concat(files)
    good = rows[rows["item_id"].str.startswith("i0") & rows["timestamp"].str.isdigit()]
    good = good[good["rating"].astype(float) > 0]
    return len(good.drop_duplicates(["user_id", "item_id", "timestamp"]))


# delta-rs is what a machine without the connector runs (the README's quickstart); the same nights on
# delta-spark are the cluster path. Both slow: four pipeline runs (every stage, ALS, report).
@pytest.mark.slow
@pytest.mark.parametrize(
    "engine",
    [
        "delta-rs",
        pytest.param(
            "delta-spark",
            marks=[
                pytest.mark.delta_spark,
                # Opt-in: the nights on both engines took 7.8 min together in one process on the
                # 2-core VM (2026-12-07, with the suite's interpreted SQL), about 3 more minutes of
                # the default run's wall time on two workers, which is kept well under 30. The
                # S3 pipeline test runs a delta-spark night (new ids included) by default.
                pytest.mark.skipif(
                    not os.environ.get("LONGTAIL_E2E_DELTA_SPARK"),
                    reason="the pipeline on delta-spark runs with LONGTAIL_E2E_DELTA_SPARK=1",
                ),
            ],
        ),
    ],
)
def test_three_nights_refresh_incrementally_and_a_retried_night_is_a_no_op(spark, tmp_path, capsys, engine):
    if engine == "delta-spark" and not is_delta_spark_available(spark):
        pytest.skip("delta-spark connector not on the classpath (--no-delta-spark)")
    model = make_tiny_bert(tmp_path / "tiny")
    root = tmp_path / "lake"
    base = [
        f"lake.root={root}",
        f"lake.engine={engine}",
        # the learned fusion end to end, with its cheapest ranker (the auto choice between GBT and
        # logistic and the penalty sweep have their own tests in test_ranker / test_evaluate)
        *small_pipeline_settings(model),
        "recommend.block_users=16",
        "recommend.block_items=64",
        "evaluate.bootstrap=200",
    ]
    items, events = generate_frames(load_config(overrides=base))
    nights = _nights(items, events)
    texts: dict[str, str] = {}  # item -> its text as last ingested
    removed: set[str] = set()
    event_files: list[pd.DataFrame] = []
    report = []
    recs_version = -1
    for night, (items_n, events_n) in enumerate(nights, 1):
        paths = tmp_path / f"night{night}"
        paths.mkdir()
        items_n.to_csv(paths / "items.csv", index=False)
        events_n.to_csv(paths / "interactions.csv", index=False)
        overrides = [
            *base,
            f"input.items={paths / 'items.csv'}",
            f"input.interactions={paths / 'interactions.csv'}",
            # night 1 runs the default learned fusion, every variant and the report; the later
            # nights test the increments, with the cheaper blend, two variants, no intervals, no report
            *(
                []
                if night == 1
                else [
                    "recommend.fusion=blend",
                    "evaluate.report=false",
                    "evaluate.variants=[popular, cf]",
                    "evaluate.bootstrap=0",
                ]
            ),
        ]
        cfg = load_config(overrides=overrides)
        out = pipeline.run(spark, cfg, run_id=f"night-{night}")
        stages = out["stages"]
        assert list(stages) == [s for s in pipeline.ORDER if s != "generate-sample"]
        assert {s["status"] for s in stages.values()} == {SUCCEEDED}, night  # nothing skipped

        # encode encodes exactly the new and the edited texts
        good = items_n[items_n["item_id"].str.startswith("i0")]
        flag = good.get("removed", pd.Series("", index=good.index))  # night 1: no such column
        listed = good[flag.isin(["", "false"])]
        now = {
            i: t + d
            for i, t, d in zip(listed["item_id"], listed["title"], listed["description"], strict=True)
        }
        changed = {i for i, t in now.items() if texts.get(i) != t}
        texts |= now
        assert stages["encode"]["summary"]["encoded"] == len(changed), night
        flagged = set(good[flag == "true"]["item_id"])
        removed = (removed - set(now)) | flagged

        # every table holds each row once: items, events (full and delta exports alike), metrics
        lake = Lake(spark, str(root), engine)
        event_files.append(events_n)
        assert (
            lake.read(S.ITEMS).count()
            == len(texts)
            == lake.read(S.ITEMS).select(S.ITEM_ID).distinct().count()
        )
        stored = lake.read(S.INTERACTIONS)
        assert stored.count() == _expected_events(event_files)
        assert stored.count() == stored.select(S.USER_ID, S.ITEM_ID, S.TS).distinct().count()
        if night > 1:  # night 1's files have no `removed` column
            assert {r[0] for r in lake.read(S.REMOVED_ITEMS).select(S.ITEM_ID).collect()} == removed
        metrics = lake.read(S.METRICS)
        assert {r[0] for r in metrics.select(S.RUN_ID).distinct().collect()} == {
            f"night-{n}" for n in range(1, night + 1)
        }
        keys = [c for c in metrics.columns if c != S.VALUE]
        assert metrics.count() == metrics.select(*keys).distinct().count()

        # train and recommend refreshed: every item ingested so far is in the id map, the lists
        # are this night's, and no removed item is in them
        assert (
            lake.read(S.ID_MAP_ITEMS).select(S.ITEM_ID).distinct().count()
            == lake.read(S.ID_MAP_ITEMS).count()
        )
        assert set(texts) <= {r[0] for r in lake.read(S.ID_MAP_ITEMS).select(S.ITEM_ID).collect()}
        for table, key in ((S.ITEM_FACTORS, S.ITEM_ID), (S.USER_FACTORS, S.USER_ID)):
            fitted = lake.read(table)
            assert fitted.count() == fitted.select(key).distinct().count(), (night, table)
        recs = lake.read(S.RECOMMENDATIONS)
        written = stages["recommend"]["summary"]["version"]
        assert DeltaTable(str(root / S.RECOMMENDATIONS)).version() == written > recs_version
        recs_version = written
        assert not {r[0] for r in recs.select(S.ITEM_ID).distinct().collect()} & removed
        report.append(
            f"night {night}: encoded {stages['encode']['summary']['encoded']}, "
            f"items {stages['ingest']['summary']['items']}, events new "
            f"{stages['ingest']['summary']['interactions']['new']}, "
            + ", ".join(f"{s} {stages[s]['seconds']} s" for s in stages)
        )

        if night == 1:
            output = capsys.readouterr().out
            stage_names = list(stages)
            for i, stage in enumerate(stage_names, 1):
                assert f"[{i}/{len(stage_names)}] {stage}" in output and "done in" in output
            # the closing summary: one headline row per variant
            assert {
                line.split()[0]
                for line in output.splitlines()
                if line.split()[:1] and line.split()[0] in VARIANTS
            } == VARIANTS
            html = Path(stages["evaluate"]["summary"]["report"]["html"])
            assert html.is_file() and html.stat().st_size > 10_000
            # the engine asked for wrote the commits (delta-spark names itself in engineInfo)
            info = DeltaTable(str(root / S.RECOMMENDATIONS)).history(1)[0]
            assert ("Delta-Lake/" in str(info.get("engineInfo", ""))) == (engine == "delta-spark")

    with capsys.disabled():
        print("\n" + "\n".join(report))

    # night 3 retried under its run id: ingest and encode commit nothing, the rest is current
    versions = {t: DeltaTable(str(root / t)).version() for t in (S.ITEMS, S.INTERACTIONS, S.RECOMMENDATIONS)}
    again = pipeline.run(spark, cfg, run_id="night-3")["stages"]
    assert again["encode"]["summary"]["encoded"] == 0
    assert again["ingest"]["status"] == SUCCEEDED
    assert [s for s in REFRESHED if again[s]["status"] == "skipped"] == list(REFRESHED)
    assert "skipped (outputs current)" in capsys.readouterr().out
    assert {t: DeltaTable(str(root / t)).version() for t in versions} == versions

    # a changed recommend setting makes recommend and evaluate stale, not train
    changed_cfg = load_config(overrides=[*overrides, "recommend.k=7"])
    lake = Lake(spark, str(root), engine)
    assert {s: pipeline.is_current(spark, lake, changed_cfg, s) for s in REFRESHED} == {
        "train": True,
        "recommend": False,
        "evaluate": False,
    }
    assert all(pipeline.is_current(spark, lake, cfg, s) for s in REFRESHED)
