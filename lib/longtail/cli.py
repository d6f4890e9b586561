"""Command line of the stage jobs: ``<stage> [--conf FILE ...] [--set key=value ...] [--run-id ID]``.

``jobs/<stage>.py`` calls :func:`run_job`; ``spark-submit.sh`` puts Spark's own options in front.
The config is loaded and validated before Spark starts, so a typo costs no cluster time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from longtail.core import logs
from longtail.core.config import Config, ConfigError, load_config
from longtail.core.errors import ConnectorMissingError
from longtail.core.logs import log_file
from longtail.core.uris import scheme
from longtail.stages import STAGES, StageNotBuiltError, load_stage

log = logging.getLogger("longtail")


def parser(stage: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"longtail {stage}" if stage else "longtail",
        description="longtail stage job. Stages: "
        + "; ".join(f"{s.name}: {s.help}" for s in STAGES.values()),
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
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show longtail's INFO/DEBUG log on the console (it always goes to the run's log file)",
    )
    return p


def check_args(stage: str, argv: Sequence[str]) -> int:
    """Validate a job's arguments and config without starting anything (the launcher's pre-flight).

    On success prints ``<run id>\t<log file>`` on stdout: the launcher passes the run id on to the
    job and points the Spark JVM's log at the same file as longtail's (``-Dlongtail.log.file``).

    Returns 0, or 2 after printing the error: a bad key costs no JVM start-up, let alone cluster time.
    """
    args = parser(stage).parse_args(argv)
    try:
        cfg = load_config(args.conf, args.set)
    except ConfigError as exc:
        print(f"longtail: {exc}", file=sys.stderr)
        return 2
    if _refused(cfg):
        return 2
    from longtail.lake.runs import new_run_id

    run_id = args.run_id or cfg.run.id or new_run_id()
    print(f"{run_id}\t{log_file(cfg.lake.root, run_id)[0]}")
    return 0


def _refused(cfg: Config) -> bool:
    """Settings that are valid but cannot run here (the launcher's pre-flight and run_job both
    ask): ``tracking.mlflow`` without the mlflow package. Prints why."""
    from longtail.lake import tracking

    if cfg.tracking.mlflow and not tracking.available():
        print(
            "longtail: config key 'tracking.mlflow' is set but the mlflow package is not installed: "
            "pip install 'mlflow-skinny>=3' sqlalchemy alembic, or unset the key",
            file=sys.stderr,
        )
        return True
    return False


def run_job(
    stage: str, argv: Sequence[str] | None = None, *, run: Callable[..., dict[str, Any]] | None = None
) -> int:
    """Parse arguments, validate the config, build the session, run the stage, stop the session.

    ``run`` is the stage's ``run`` function (``jobs/<stage>.py`` passes it explicitly); by default it
    is looked up by name in :data:`longtail.stages.STAGES`.
    """
    args = parser(stage).parse_args(argv)
    try:
        cfg = load_config(args.conf, args.set)
    except ConfigError as exc:
        print(f"longtail: {exc}", file=sys.stderr)
        return 2
    if _refused(cfg):
        return 2
    if run is None:
        try:
            run = load_stage(stage).run
        except StageNotBuiltError as exc:
            print(f"longtail: {exc}", file=sys.stderr)
            return 2

    from longtail.core.session import build_session
    from longtail.lake.runs import new_run_id, run_stage

    run_id = args.run_id or cfg.run.id or new_run_id()
    path, in_lake = log_file(cfg.lake.root, run_id)
    logs.setup(path, verbose=args.verbose)
    log.info("longtail %s, run %s: %s", stage, run_id, describe(cfg))
    where = f"log: {path}" + ("" if in_lake else f" (a local file: lake.root {cfg.lake.root} is not local)")
    from pyspark import SparkContext

    # a session that was running before (a Databricks job task, a notebook) belongs to its host:
    # only the one this call starts is stopped at the end
    owned = SparkContext._active_spark_context is None
    try:
        spark = build_session(
            f"longtail-{stage}",
            delta_spark=cfg.lake.engine == "delta-spark",
            s3a=scheme(cfg.lake.root) == "s3a",
        )
    except ConnectorMissingError as exc:  # the set-up, not the data: no retry helps
        log.error("%s", exc, extra={logs.PRINTED: True})
        print(f"longtail: {exc}", file=sys.stderr)
        return _failed(stage, run_id, exc, USAGE, "config", str(exc))
    try:
        try:
            record = run_stage(spark, cfg, stage, run, run_id=run_id)
        except Exception as exc:
            # the traceback goes to the file (and to the console with --verbose), the one-line reason below
            log.exception("stage %s failed (run %s)", stage, run_id, extra={logs.PRINTED: not args.verbose})
            code, kind = exit_code(exc)
            print(f"longtail: stage {stage} failed: {type(exc).__name__}: {_brief(exc)}", file=sys.stderr)
            print(where, file=sys.stderr)
            return _failed(stage, run_id, exc, code, kind, _brief(exc, max_lines=1))
        result = json.dumps(
            {
                "stage": stage,
                "run_id": run_id,
                "status": "succeeded",
                "exit_code": OK,
                "seconds": round(record.seconds, 1),
                "summary": record.summary,
            },
            default=str,
        )
        if stage == "pipeline":  # its progress lines and table said it; the whole summary is for the file
            log.info("result: %s", result)
        else:  # one stage: its summary as one JSON line on stdout, for scripts
            print(result)
        print(where)
        return 0
    finally:
        if owned:
            spark.stop()


# Exit codes a scheduler can act on (docs/scheduling.md, "Exit codes").
OK, FAILED, USAGE, BAD_INPUT, MISSING_INPUT, CONFLICT = 0, 1, 2, 3, 4, 5


def exit_code(exc: BaseException) -> tuple[int, str]:
    """``(code, kind)`` for a stage's exception, from the first known error in its chain.

    ``kind`` is ``bad_input`` (3: fix the data, do not retry), ``missing_input`` (4: run the stage
    it names first), ``conflict`` (5: another run committed first; retry later) or ``failed``
    (1: anything else, a Spark failure or a bug; retry once, then alert).

    Example:
        >>> exit_code(BadInputError("items: 40 of 100 rows broke the contract"))
        (3, 'bad_input')
    """
    from longtail.core.errors import BadInputError, MissingInputError
    from longtail.lake import CommitConflictError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BadInputError):
            return BAD_INPUT, "bad_input"
        if isinstance(current, MissingInputError):
            return MISSING_INPUT, "missing_input"
        if isinstance(current, CommitConflictError):
            return CONFLICT, "conflict"
        current = current.__cause__ or current.__context__
    return FAILED, "failed"


def _failed(stage: str, run_id: str, exc: BaseException, code: int, kind: str, message: str) -> int:
    """Print a failed job's one JSON status line on stdout (for schedulers); returns ``code``."""
    error = {"type": type(exc).__name__, "kind": kind, "message": message}
    status = {"stage": stage, "run_id": run_id, "status": "failed", "exit_code": code, "error": error}
    print(json.dumps(status, default=str))
    return code


def _brief(exc: BaseException, max_lines: int = 10) -> str:
    """The exception's message, cut to ``max_lines`` lines: a failed Spark task's message carries
    the worker's and the JVM's stack traces, which the log file has in full."""
    lines = str(exc).strip().splitlines()
    if len(lines) <= max_lines:
        return "\n".join(lines)
    return "\n".join([*lines[:max_lines], f"... ({len(lines) - max_lines} more lines in the log file)"])


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
