"""Nothing of catalogue or user-base size reaches the driver in the production stages.

``ingest``, ``encode``, ``train`` and ``recommend`` run on a sample whose catalogue and user base
are far larger than the bound below, while every ``DataFrame.collect`` and ``toPandas`` (``first``,
``take`` and ``head`` go through ``collect``) is counted. The documented exceptions are the
projection head's and the Mult-VAE's training sets, capped by ``train.head.max_items`` and
``train.vae.max_interactions`` (set low here). ``evaluate``
is a report over sampled lists and not covered (its bootstrap collects per-user metric rows;
docs/evaluation.md). A new ``collect()`` of a whole table fails this test at any size.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest
from helpers import make_tiny_bert

from longtail.core.config import load_config
from longtail.lake.runs import run_stage
from longtail.stages import load_stage

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ITEMS, USERS = 900, 600
HEAD_CAP = 40  # train.head.max_items
VAE_CAP = 50  # train.vae.max_interactions
BOUND = 64  # rows any other driver-side result may have: far below ITEMS and USERS


def _counting(
    real: Callable[..., Any], seen: list[tuple[int, str]], size: Callable[[Any], int]
) -> Callable[..., Any]:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = real(self, *args, **kwargs)
        here = [f for f in traceback.extract_stack()[:-1] if "/longtail/" in f.filename]
        where = f"{here[-1].filename.rsplit('/longtail/', 1)[1]}:{here[-1].lineno}" if here else "?"
        seen.append((size(out), where))
        return out

    return wrapper


def test_the_production_stages_bring_no_table_to_the_driver(spark, tmp_path, monkeypatch):
    model = make_tiny_bert(tmp_path / "tiny")
    overrides = [
        f"lake.root={tmp_path / 'lake'}",
        "lake.engine=delta-rs",
        f"encoder.model={model}",
        "sample.preset=sparse",
        f"sample.n_items={ITEMS}",
        f"sample.n_users={USERS}",
        "train.als.rank=4",
        "train.als.max_iter=3",
        f"train.head.max_items={HEAD_CAP}",
        f"train.vae.max_interactions={VAE_CAP}",
        "recommend.candidates=20",
        "recommend.ranker.model=logistic",
        "recommend.ranker.pop_penalty=0.1",
        "recommend.ranker.tail_boost=0",
    ]
    cfg = load_config(overrides=overrides)
    load_stage("generate-sample").run(spark, cfg)
    seen: list[tuple[int, str]] = []
    cls = type(spark.range(1))  # the session's concrete DataFrame class (pyspark.sql.classic)
    monkeypatch.setattr(cls, "collect", _counting(cls.collect, seen, len))
    monkeypatch.setattr(cls, "toPandas", _counting(cls.toPandas, seen, len))
    summaries = {}
    for stage in ("ingest", "encode", "train", "recommend"):
        record = run_stage(spark, cfg, stage, load_stage(stage).run, run_id="bounds")
        summaries[stage] = record.summary
    # the sample really is larger than the bound, and the stages really did their work
    assert summaries["ingest"]["items"]["changed"] >= ITEMS - 5
    assert summaries["recommend"]["users"] > BOUND
    assert seen, "no driver-side result was counted: the patch did not take"
    head = [(n, w) for n, w in seen if w.startswith("ml/cf.py")]
    vae = [(n, w) for n, w in seen if w.startswith("ml/vae.py")]
    others = [(n, w) for n, w in seen if not w.startswith(("ml/cf.py", "ml/vae.py"))]
    assert max(n for n, _ in head) <= HEAD_CAP, head
    assert vae and max(n for n, _ in vae) <= VAE_CAP, vae
    assert max(n for n, _ in others) <= BOUND, sorted(others, reverse=True)[:5]
