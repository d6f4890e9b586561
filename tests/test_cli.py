"""The launcher and the job command line: help, argument routing, config errors before Spark starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from longtail.cli import parser
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
