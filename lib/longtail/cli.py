"""Command line of the stage jobs: ``<stage> [--conf FILE ...] [--set key=value ...] [--run-id ID]``.

``jobs/<stage>.py`` calls :func:`run_job`; ``spark-submit.sh`` puts Spark's own options in front.
The config is loaded and validated before Spark starts, so a typo costs no cluster time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from longtail.config import Config, ConfigError, load_config

log = logging.getLogger("longtail")

# stage name -> module under longtail (each has run(spark, cfg, *, lake, run_id) -> dict)
STAGES: dict[str, str] = {
    "generate-sample": "sample",
    "ingest": "ingest",
    "encode": "encode",
    "train": "train",
    "recommend": "recommend",
    "evaluate": "evaluate",
    "pipeline": "pipeline",
}
STAGE_HELP = {
    "generate-sample": "write a deterministic synthetic catalogue and interaction log (CSV)",
    "ingest": "raw items + interactions -> items, interactions, quarantine",
    "encode": "BERT vectors of new or changed item texts -> item_embeddings (MERGE)",
    "train": "ALS factors and the text-to-CF projection head",
    "recommend": "fused top-K lists -> recommendations",
    "evaluate": "time-based hold-out, all variants, metrics + HTML report",
    "pipeline": "all stages in order under one run id (the default)",
}


class StageNotBuiltError(RuntimeError):
    """The stage's module is not part of this build."""


def parser(stage: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"longtail {stage}" if stage else "longtail",
        description="longtail stage job. Stages: " + "; ".join(f"{k}: {v}" for k, v in STAGE_HELP.items()),
    )
    if stage is None:
        p.add_argument("stage", choices=sorted(STAGES), help="the stage to run")
    p.add_argument(
        "--conf", action="append", default=[], metavar="FILE", help="YAML config over conf/base.yaml"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. recommend.k=20",
    )
    p.add_argument("--run-id", default=None, help="run id (default: run.id from config, else a new one)")
    return p


def load_stage_module(stage: str) -> Any:
    """Import ``longtail.<module>`` for ``stage``; a clear error if the stage is unknown or not built."""
    if stage not in STAGES:
        raise StageNotBuiltError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    name = f"longtail.{STAGES[stage]}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise StageNotBuiltError(f"stage {stage!r} is not built yet in this version of longtail") from exc
        raise


def check_args(stage: str, argv: Sequence[str]) -> int:
    """Validate a job's arguments and config without starting anything (the launcher's pre-flight).

    Returns 0, or 2 after printing the error: a bad key costs no JVM start-up, let alone cluster time.
    """
    args = parser(stage).parse_args(argv)
    try:
        load_config(args.conf, args.set)
    except ConfigError as exc:
        print(f"longtail: {exc}", file=sys.stderr)
        return 2
    return 0


def run_job(stage: str, argv: Sequence[str] | None = None) -> int:
    """Parse arguments, validate the config, build the session, run the stage, stop the session."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser(stage).parse_args(argv)
    try:
        cfg = load_config(args.conf, args.set)
    except ConfigError as exc:
        print(f"longtail: {exc}", file=sys.stderr)
        return 2
    try:
        module = load_stage_module(stage)
    except StageNotBuiltError as exc:
        print(f"longtail: {exc}", file=sys.stderr)
        return 2

    from longtail.runs import new_run_id, run_stage
    from longtail.session import build_session

    run_id = args.run_id or cfg.run.id or new_run_id()
    spark = build_session(f"longtail-{stage}")
    try:
        try:
            record = run_stage(spark, cfg, stage, module.run, run_id=run_id)
        except Exception as exc:
            log.exception("stage %s failed (run %s)", stage, run_id)
            print(f"longtail: stage {stage} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(
            json.dumps(
                {
                    "stage": stage,
                    "run_id": run_id,
                    "seconds": round(record.seconds, 1),
                    "summary": record.summary,
                },
                default=str,
            )
        )
        return 0
    finally:
        spark.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``longtail <stage> ...`` (console entry point): the same as ``jobs/<stage>.py`` in-process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        parser().parse_args(argv or ["--help"])
        return 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        parser().parse_args(argv)  # prints the allowed stages and exits 2
    return run_job(stage, rest)


def describe(cfg: Config) -> str:
    """A one-line description of where a run reads and writes."""
    src = (
        f"{cfg.input.items}, {cfg.input.interactions}"
        if cfg.input.items
        else f"generated sample at {cfg.sample_path}"
    )
    return f"lake {cfg.lake.root} ({cfg.lake.engine}); input: {src}"
