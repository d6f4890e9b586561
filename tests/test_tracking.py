"""Run tracking in MLflow (``tracking.mlflow``): what a stage run logs, and that tracking never
fails a stage. A real MLflow client on a SQLite store in the test's folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from longtail.cli import check_args, run_job
from longtail.core import schema as S
from longtail.core.config import ConfigError, load_config
from longtail.lake import Lake, tracking
from longtail.lake.runs import FAILED, SUCCEEDED, run_stage

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.spark


def _runs(uri: str) -> dict[str, object]:
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("longtail")
    return {r.data.tags["mlflow.runName"]: r for r in client.search_runs([exp.experiment_id])}


def test_a_stage_run_is_logged_with_config_summary_metrics_and_report(spark, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(overrides=[f"lake.root={tmp_path / 'lake'}", f"tracking.mlflow={uri}", "recommend.k=7"])
    lake = Lake.from_config(spark, cfg)
    rows = [("r1", "fused", "ndcg", 10, "all", 0.25), ("r1", "fused", "coverage", None, "all", 0.5)]
    rows += [("r0", "fused", "ndcg", 10, "all", 0.99)]  # another run's row: not this run's metric
    lake.overwrite(S.METRICS, spark.createDataFrame(rows, S.METRICS_SCHEMA))
    html = tmp_path / "report.html"
    html.write_text("<html>report</html>")

    def evaluate(spark, cfg, **_):
        return {"users": 40, "split": {"train": 300, "test": 45}, "report": {"html": str(html)}, "ok": True}

    record = run_stage(spark, cfg, "evaluate", evaluate, run_id="r1", lake=lake)
    assert record.status == SUCCEEDED
    run = _runs(uri)["r1/evaluate"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["longtail.run_id"] == "r1" and run.data.tags["longtail.status"] == SUCCEEDED
    assert run.data.params["recommend.k"] == "7" and run.data.params["lake.root"] == str(tmp_path / "lake")
    metrics = run.data.metrics
    assert metrics["users"] == 40 and metrics["split/train"] == 300 and metrics["seconds"] > 0
    assert metrics["fused/ndcg_at_10/all"] == 0.25 and metrics["fused/coverage/all"] == 0.5
    assert "ok" not in metrics  # booleans are not figures
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.json", "report"} <= files
    assert client.list_artifacts(run.info.run_id, "report")[0].path == "report/report.html"
    # beside the database, not in whatever folder the job started in
    assert (tmp_path / "mlartifacts").is_dir() and not Path("mlruns").exists()
    logged = json.loads(
        open(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))).read()
    )
    assert logged["split"] == {"train": 300, "test": 45}


def test_a_failed_stage_is_logged_as_failed_and_its_error_still_raised(spark, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(overrides=[f"lake.root={tmp_path / 'lake'}", f"tracking.mlflow={uri}"])

    def broken(spark, cfg, **_):
        raise ValueError("no luck")

    with pytest.raises(ValueError, match="no luck"):
        run_stage(spark, cfg, "train", broken, run_id="r2")
    run = _runs(uri)["r2/train"]
    assert run.info.status == "FAILED" and run.data.tags["longtail.status"] == FAILED
    assert run.data.tags["longtail.error"] == "ValueError: no luck"


def test_an_unreachable_tracking_server_never_fails_the_stage(spark, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = load_config(overrides=[f"lake.root={tmp_path / 'lake'}", "tracking.mlflow=http://127.0.0.1:9"])
    with caplog.at_level(logging.WARNING, logger="longtail.lake.tracking"):
        record = run_stage(spark, cfg, "train", lambda spark, cfg, **_: {"n": 1}, run_id="r3")
    assert record.status == SUCCEEDED and record.summary == {"n": 1}
    assert "could not log run r3/train to MLflow at http://127.0.0.1:9" in caplog.text


def test_tracking_config_is_checked_and_a_missing_package_is_refused_before_spark(
    tmp_path, monkeypatch, capsys
):
    with pytest.raises(ConfigError, match=r"tracking\.mlflow"):
        load_config(overrides=["tracking.mlflow=http://user:secret@host:5000"])  # a credential
    with pytest.raises(ConfigError, match=r"tracking\.experiment"):
        load_config(overrides=["tracking.experiment="])
    monkeypatch.setattr(tracking, "available", lambda: False)
    args = ["--set", f"lake.root={tmp_path}", "--set", "tracking.mlflow=databricks"]
    assert check_args("train", args) == 2  # the launcher's pre-flight: no JVM started
    assert "the mlflow package is not installed" in capsys.readouterr().err
    assert run_job("train", args) == 2
    assert "the mlflow package is not installed" in capsys.readouterr().err
