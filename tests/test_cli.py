"""The launcher and the job command line: help, argument routing, config errors before Spark starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longtail.cli import exit_code, parser, run_job
from longtail.core import logs
from longtail.core.errors import BadInputError, MissingInputError
from longtail.lake import CommitConflictError
from longtail.stages import STAGES, StageNotBuiltError, load_stage

REPO = Path(__file__).resolve().parents[1]


def _launch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, LONGTAIL_PYTHON=sys.executable)
    return subprocess.run(
        [str(REPO / "spark-submit.sh"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_stages_and_options():
    done = _launch("--help")
    assert done.returncode == 0
    for stage in STAGES:
        assert stage in done.stdout
    for option in (
        "--conf FILE",
        "--set KEY=VALUE",
        "--run-id",
        "--verbose",
        "--master",
        "--py-files",
        "--archives",
    ):
        assert option in done.stdout


def test_unknown_stage_is_refused():
    done = _launch("bogus")
    assert done.returncode == 2
    assert "unknown stage or argument 'bogus'" in done.stderr


def test_bad_config_fails_before_spark_with_the_key():
    # A job process that got as far as Spark would print Spark's banner on stderr; a config error
    # must come first and alone.
    done = _launch("ingest", "--set", "recommend.k=0", "--conf", "spark.ui.enabled=false")
    assert done.returncode == 2
    assert "config key 'recommend.k': must be >= 1" in done.stderr
    assert "SparkContext" not in done.stderr


def test_parser_takes_repeated_conf_and_set():
    args = parser("encode").parse_args(
        ["--conf", "a.yaml", "--conf", "b.yaml", "--set", "x=1", "--set", "y=2"]
    )
    assert args.conf == ["a.yaml", "b.yaml"] and args.set == ["x=1", "y=2"] and args.run_id is None


def test_every_stage_module_has_run():
    for stage in STAGES:
        try:
            module = load_stage(stage)
        except StageNotBuiltError:  # pragma: no cover - only while a stage is being built
            pytest.fail(f"stage {stage} is not built")
        assert callable(module.run)
    with pytest.raises(StageNotBuiltError, match="unknown stage"):
        load_stage("nope")


@pytest.fixture
def job_logging():
    """run_job configures the process's logging for a job; put it back afterwards."""
    yield
    logs.reset()


@pytest.mark.spark
@pytest.mark.parametrize(
    ("error", "code", "kind"),
    [
        (BadInputError("items: 5 of 8 rows (62.5%) broke the contract"), 3, "bad_input"),
        (MissingInputError("train: run ingest first"), 4, "missing_input"),
        (CommitConflictError("conflicting run"), 5, "conflict"),
        (ValueError("a bug"), 1, "failed"),
    ],
)
def test_a_failed_stage_exits_with_a_code_a_scheduler_can_act_on(
    spark, tmp_path, capsys, job_logging, error, code, kind
):
    def stage(spark, cfg, **_):
        try:
            raise error
        except Exception as exc:  # wrapped, as a Spark or py4j layer would: the chain is searched
            raise RuntimeError("the job failed") from exc

    root = tmp_path / "lake"
    assert run_job("ingest", ["--set", f"lake.root={root}", "--run-id", "r1"], run=stage) == code
    out = capsys.readouterr()
    line = json.loads(out.out.splitlines()[0])  # the one JSON line a scheduler parses
    assert line["status"] == "failed" and line["exit_code"] == code and line["run_id"] == "r1"
    assert line["error"]["kind"] == kind and line["error"]["type"] == "RuntimeError"
    assert "stage ingest failed: RuntimeError" in out.err
    assert exit_code(error) == (code, kind)  # unwrapped too


@pytest.mark.spark
def test_a_succeeded_stage_prints_one_json_line_with_its_status(spark, tmp_path, capsys, job_logging):
    root = tmp_path / "lake"
    assert run_job("ingest", ["--set", f"lake.root={root}"], run=lambda spark, cfg, **_: {"rows": 3}) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["status"] == "succeeded" and line["exit_code"] == 0 and line["summary"] == {"rows": 3}
