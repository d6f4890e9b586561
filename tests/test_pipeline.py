"""`pipeline`: every stage on a small generated sample, then a re-run that skips what is current."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from deltalake import DeltaTable
from helpers import make_tiny_bert

from longtail.core import schema as S
from longtail.core.config import load_config
from longtail.lake import Lake, is_delta_spark_available
from longtail.lake.runs import SUCCEEDED
from longtail.stages import pipeline

pytestmark = pytest.mark.spark

VARIANTS = {"popular", "cf", "content", "fused", "fused_rerank"}


# delta-rs is what a machine without the connector runs (the README's quickstart); the same pipeline on
# delta-spark is the cluster path. Both slow: a whole pipeline (every stage, ALS, report), then a
# second run that skips what is current.
@pytest.mark.slow
@pytest.mark.parametrize(
    "engine",
    [
        "delta-rs",
        pytest.param(
            "delta-spark",
            marks=[
                pytest.mark.delta_spark,
                # Three pipeline runs on delta-spark took 15-20 minutes on a 2-core machine (before
                # the third became a staleness check and snapshotPartitions was lowered), which
                # would push the default run far past its budget; opt in until the suite is split.
                pytest.mark.skipif(
                    not os.environ.get("LONGTAIL_E2E_DELTA_SPARK"),
                    reason="the pipeline on delta-spark runs with LONGTAIL_E2E_DELTA_SPARK=1",
                ),
            ],
        ),
    ],
)
def test_pipeline_runs_every_stage_then_skips_the_current_ones(spark, tmp_path, capsys, engine):
    if engine == "delta-spark" and not is_delta_spark_available(spark):
        pytest.skip("delta-spark connector not on the classpath (--no-delta-spark)")
    model = make_tiny_bert(tmp_path / "tiny")
    root = tmp_path / "lake"
    overrides = [
        f"lake.root={root}",
        f"lake.engine={engine}",
        f"encoder.model={model}",
        "sample.n_items=120",
        "sample.n_users=40",
        "sample.interactions_per_user=12",
        "train.als.rank=4",
        "train.als.max_iter=5",
        "train.head.min_count=2",
        "recommend.candidates=20",
        "recommend.block_users=16",
        "recommend.block_items=64",
        # the learned fusion end to end, with its cheapest ranker (the auto choice between GBT and
        # logistic and the penalty sweep have their own tests in test_ranker / test_evaluate)
        "recommend.ranker.model=logistic",
        "recommend.ranker.pop_penalty=0.1",
        "evaluate.bootstrap=200",
    ]
    cfg = load_config(overrides=overrides)

    first = pipeline.run(spark, cfg, run_id="first")
    assert list(first["stages"]) == list(pipeline.ORDER)
    assert {s["status"] for s in first["stages"].values()} == {SUCCEEDED}
    out = capsys.readouterr().out
    for i, stage in enumerate(pipeline.ORDER, 1):
        assert f"[{i}/6] {stage}" in out and "done in" in out
    # the closing summary: one headline row per variant
    assert {
        line.split()[0] for line in out.splitlines() if line.split()[:1] and line.split()[0] in VARIANTS
    } == VARIANTS
    metrics = DeltaTable(str(root / S.METRICS)).to_pandas()
    assert set(metrics[S.VARIANT]) == VARIANTS and set(metrics[S.RUN_ID]) == {"first"}
    report = Path(first["stages"]["evaluate"]["summary"]["report"]["html"])
    assert report.is_file() and report.stat().st_size > 10_000
    recs_version = DeltaTable(str(root / S.RECOMMENDATIONS)).version()
    # the engine asked for wrote the commits (delta-spark names itself in engineInfo)
    info = DeltaTable(str(root / S.RECOMMENDATIONS)).history(1)[0]
    assert ("Delta-Lake/" in str(info.get("engineInfo", ""))) == (engine == "delta-spark")

    second = pipeline.run(spark, cfg, run_id="second")
    stages = second["stages"]
    assert stages["encode"]["summary"]["encoded"] == 0
    assert stages["ingest"]["status"] == SUCCEEDED
    assert [s for s in ("train", "recommend", "evaluate") if stages[s]["status"] == "skipped"] == [
        "train",
        "recommend",
        "evaluate",
    ]
    assert "skipped (outputs current)" in capsys.readouterr().out
    assert DeltaTable(str(root / S.RECOMMENDATIONS)).version() == recs_version

    # a changed recommend setting makes recommend and evaluate stale, not train (the decision the
    # second run just took; running them again would only repeat the stages' own tests)
    changed = load_config(overrides=[*overrides, "recommend.k=7"])
    lake = Lake(spark, str(root), engine)
    assert {s: pipeline.is_current(spark, lake, changed, s) for s in ("train", "recommend", "evaluate")} == {
        "train": True,
        "recommend": False,
        "evaluate": False,
    }
    assert all(pipeline.is_current(spark, lake, cfg, s) for s in ("train", "recommend", "evaluate"))
