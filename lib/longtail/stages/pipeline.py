"""`pipeline`: every stage in order under one run id, skipping stages whose outputs are current.

generate-sample (only when no input is configured) -> ingest -> encode -> train -> recommend ->
evaluate. ``ingest`` and ``encode`` always run: both are incremental and commit nothing when their
inputs have not changed. ``train``, ``recommend`` and ``evaluate`` are skipped when the `runs` table
holds a succeeded run of the same stage that read exactly the table versions that are current now
(and whose outputs are still at the versions it wrote), under the same settings for that stage (see
:data:`SETTINGS`). Each stage prints a line when it starts and one with its time when it ends; the
pipeline ends with the headline metrics table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import Config
from longtail.core.logs import progress
from longtail.lake import Lake
from longtail.lake.runs import SUCCEEDED, new_run_id, run_stage
from longtail.stages import STAGES, load_stage

log = logging.getLogger(__name__)

# maintain is scheduled on its own (it needs no fresh data and may run beside other stages)
ORDER = tuple(s for s in STAGES if s not in ("pipeline", "maintain", "finetune"))
# finetune runs inside the pipeline (before encode) only with finetune.enabled: minutes of CPU
OPTIONAL = {"finetune": "encode"}
# The config sections whose values decide whether a stage's earlier output is still current.
SETTINGS: dict[str, tuple[str, ...]] = {
    "finetune": ("encoder", "finetune"),
    "train": ("encoder", "train"),
    "recommend": ("encoder", "train", "recommend"),
    "evaluate": ("encoder", "finetune", "train", "recommend", "evaluate"),
}
ALWAYS = ("ingest", "encode")  # incremental stages: they find out themselves that nothing changed
HEADLINE = (
    ("ndcg", 10, "all"),
    ("recall", 20, "all"),
    ("long_tail_coverage", 10, "all"),
    ("aplt", 10, "all"),
    ("recall", 20, "cold"),
)


def is_current(spark: SparkSession, lake: Lake, cfg: Config, stage: str) -> bool:
    """True when a succeeded run of ``stage`` read the table versions current now, with the same
    settings for that stage. The `runs` table is small (one row per stage run)."""
    if stage not in SETTINGS or not lake.exists(S.RUNS):
        return False
    done = [
        r
        for r in lake.rows(
            S.RUNS, ["stage", "status", "finished_at", "config", "tables_read", "tables_written"]
        )
        if r["stage"] == stage and r["status"] == SUCCEEDED
    ]
    if not done:
        return False
    last = max(done, key=lambda r: r["finished_at"])
    read = json.loads(last["tables_read"] or "{}")
    written = json.loads(last["tables_written"] or "{}")
    # Every table the run read must still be at the version it read, and every table it wrote at
    # the version it wrote; a table it read and then wrote (recommend reads the previous
    # `recommendations`) is expected at the written version. `runs` is bookkeeping, not an input.
    expected = {table: version for table, version in read.items() if table != S.RUNS} | written
    if not read or any(lake.version(table) != version for table, version in expected.items()):
        return False
    then = json.loads(last["config"])
    now = cfg.to_dict()
    same = json.loads(json.dumps({k: now[k] for k in SETTINGS[stage]}, default=str))
    return all(then.get(k) == same[k] for k in SETTINGS[stage])


def run(
    spark: SparkSession, cfg: Config, *, lake: Lake | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Run all stages under ``run_id``; returns each stage's status, time and summary."""
    run_id = run_id or new_run_id()
    stages = [s for s in ORDER if s != "generate-sample" or cfg.input.items is None]
    if cfg.finetune.enabled:
        stages.insert(stages.index(OPTIONAL["finetune"]), "finetune")
    out: dict[str, Any] = {"run_id": run_id, "stages": {}}
    t_all = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        stage_lake = Lake(spark, cfg.lake.root, cfg.lake.engine)  # fresh: reads/writes per stage
        prefix = f"[{i}/{len(stages)}] {stage:<15}"
        check_lake = Lake(spark, cfg.lake.root, cfg.lake.engine)  # its read of `runs` is not the stage's
        if stage not in ALWAYS and is_current(spark, check_lake, cfg, stage):
            _progress(f"{prefix} skipped (outputs current)")
            out["stages"][stage] = {"status": "skipped"}
            continue
        fn: Callable[..., dict[str, Any]] = load_stage(stage).run
        _progress(f"{prefix} ...")
        record = run_stage(spark, cfg, stage, fn, run_id=run_id, lake=stage_lake)
        _progress(f"{prefix} done in {record.seconds:7.1f} s  {_short(record.summary)}")
        out["stages"][stage] = {
            "status": record.status,
            "seconds": round(record.seconds, 1),
            "summary": record.summary,
        }
    out["seconds"] = round(time.perf_counter() - t_all, 1)
    table = headline_table(lake or Lake(spark, cfg.lake.root, cfg.lake.engine), run_id)
    if table:
        print("\n" + table, flush=True)  # not logged too: a multi-line log record reads as a second table
    _progress(f"pipeline {run_id} finished in {out['seconds']:.1f} s; lake: {cfg.lake.root}")
    return out


def headline_table(lake: Lake, run_id: str) -> str:
    """The headline metrics of ``run_id`` as a fixed-width table (variants x headline metrics),
    read from the `metrics` table; empty when the run wrote no metrics."""
    if not lake.exists(S.METRICS):
        return ""
    wanted = F.lit(False)
    for metric, k, segment in HEADLINE:
        wanted = wanted | ((F.col(S.METRIC) == metric) & (F.col(S.K) == k) & (F.col(S.SEGMENT) == segment))
    rows = lake.read(S.METRICS).where((F.col(S.RUN_ID) == run_id) & wanted).collect()  # <= 5 x variants
    if not rows:
        return ""
    values = {(r[S.VARIANT], r[S.METRIC], r[S.K], r[S.SEGMENT]): r[S.VALUE] for r in rows}
    variants = sorted({r[S.VARIANT] for r in rows}, key=_variant_order)
    names = [f"{m}@{k}" + ("" if seg == "all" else f" ({seg})") for m, k, seg in HEADLINE]
    width = max(len(n) for n in names) + 2
    lines = ["variant".ljust(14) + "".join(n.rjust(width) for n in names)]
    for v in variants:
        cells = []
        for m, k, seg in HEADLINE:
            value = values.get((v, m, k, seg))
            cells.append(("-" if value is None else f"{value:.4f}").rjust(width))
        lines.append(v.ljust(14) + "".join(cells))
    return "\n".join(lines)


def _variant_order(v: str) -> int:
    order = ("popular", "cf", "content", "fused", "fused_rerank")
    return order.index(v) if v in order else len(order)


def _short(summary: dict[str, Any]) -> str:
    text = json.dumps(summary, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def _progress(line: str) -> None:
    progress(line, log)
