"""Run tracking in MLflow (``tracking.mlflow``): each stage run's config, time, summary and metrics.

The `runs` table stays the source of truth; MLflow is where many ML teams already look. With
``tracking.mlflow`` set to a tracking URI (``http://host:5000``, ``databricks``,
``sqlite:///path/mlflow.db``), every stage run (each attempt, as in `runs`) becomes one MLflow run
in the experiment ``tracking.experiment``, named ``<run_id>/<stage>``, with

* tags ``longtail.run_id``, ``longtail.stage``, ``longtail.status`` (and the error on failure);
* params: the whole validated config, flattened (``recommend.k`` = ``10``);
* metrics: ``seconds`` and every number in the stage's summary (``items/rows``, ...); for
  ``evaluate`` also the run's rows of the `metrics` table, as ``<variant>/<metric>_at_<k>/<segment>``
  (``<variant>/<metric>/<segment>`` for metrics without k; MLflow metric names cannot hold ``@``);
* artifacts: ``summary.json``, ``config.json`` and, for ``evaluate``, the HTML report when it was
  written to a local folder.

A tracking failure (server down, package missing) is logged as a warning and never fails the
stage. ``pip install 'mlflow-skinny>=3' sqlalchemy alembic`` is enough for any of the URIs above
(MLflow 3.13 and later refuse a plain ``file:`` store).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import Config, flatten

if TYPE_CHECKING:
    from longtail.lake import Lake
    from longtail.lake.runs import StageRecord

log = logging.getLogger(__name__)

MAX_PARAM = 6000  # MLflow's limit on a param value's length
MAX_PARAMS, MAX_METRICS = 100, 1000  # MLflow's limits per log_batch call
_NAME = re.compile(r"[^A-Za-z0-9_\-. :/]")  # MLflow refuses other characters in names


def available() -> bool:
    """True when the ``mlflow`` package can be imported."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def _metrics(pairs: Iterable[tuple[str, Any]]) -> dict[str, float]:
    """The finite numbers among ``(name, value)`` pairs (booleans are not figures), under names
    MLflow accepts."""
    return {
        _NAME.sub("_", name): float(value)
        for name, value in pairs
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def _evaluation_metrics(lake: Lake, run_id: str) -> dict[str, float]:
    """The `metrics` rows of ``run_id`` (variants x metrics x k x segments: hundreds of rows)."""
    if not lake.exists(S.METRICS):
        return {}
    rows = lake.read(S.METRICS).where(F.col(S.RUN_ID) == F.lit(run_id)).collect()
    at = {k: "" if k is None else f"_at_{k}" for k in {r[S.K] for r in rows}}
    return _metrics((f"{r[S.VARIANT]}/{r[S.METRIC]}{at[r[S.K]]}/{r[S.SEGMENT]}", r[S.VALUE]) for r in rows)


def artifact_location(cfg: Config) -> str | None:
    """Where a new experiment keeps its artifacts: ``tracking.artifacts``; else, for a ``sqlite:``
    store, an ``mlartifacts`` folder beside the database file (MLflow's own default is
    ``./mlruns`` under whatever folder the job happened to start in); else the server's default.

    Example:
        >>> artifact_location(cfg)  # tracking.mlflow = sqlite:////srv/mlflow/mlflow.db
        '/srv/mlflow/mlartifacts'
    """
    if cfg.tracking.artifacts:
        return cfg.tracking.artifacts
    uri = cfg.tracking.mlflow or ""
    if uri.startswith("sqlite:///"):
        return os.path.join(os.path.dirname(os.path.abspath(uri[len("sqlite:///") :])), "mlartifacts")
    return None


def log_stage_run(cfg: Config, lake: Lake, record: StageRecord, error: str | None = None) -> str | None:
    """Log one finished stage run to MLflow when ``tracking.mlflow`` is set; returns the MLflow run
    id (None: tracking off or failed, with a warning)."""
    uri = cfg.tracking.mlflow
    if not uri:
        return None
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        log.warning(
            "tracking.mlflow is set but the mlflow package is not installed "
            "(pip install 'mlflow-skinny>=3' sqlalchemy alembic); run %s/%s not tracked",
            record.run_id,
            record.stage,
        )
        return None
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is not None:
            exp_id = experiment.experiment_id
        else:
            exp_id = client.create_experiment(
                cfg.tracking.experiment, artifact_location=artifact_location(cfg)
            )
        tags = {
            "longtail.run_id": record.run_id,
            "longtail.stage": record.stage,
            "longtail.status": record.status,
            "mlflow.runName": f"{record.run_id}/{record.stage}",
        }
        if error:
            tags["longtail.error"] = error[:5000]
        run = client.create_run(exp_id, tags=tags)
        rid = run.info.run_id
        config = cfg.to_dict()
        params = [
            Param(k, (v if isinstance(v, str) else json.dumps(v, default=str))[:MAX_PARAM])
            for k, v in flatten(config)
        ]
        summary = ((key.replace(".", "/"), value) for key, value in flatten(record.summary))
        metrics = {"seconds": float(record.seconds), **_metrics(summary)}
        if record.stage == "evaluate" and record.status == "succeeded":
            metrics |= _evaluation_metrics(lake, record.run_id)
        at = int(record.started_at.replace(tzinfo=dt.timezone.utc).timestamp() * 1000)
        points = [Metric(k, v, at, 0) for k, v in sorted(metrics.items())]
        for i in range(0, len(params), MAX_PARAMS):
            client.log_batch(rid, params=params[i : i + MAX_PARAMS])
        for i in range(0, len(points), MAX_METRICS):
            client.log_batch(rid, metrics=points[i : i + MAX_METRICS])
        client.log_dict(rid, json.loads(json.dumps(record.summary, default=str)), "summary.json")
        client.log_dict(rid, json.loads(json.dumps(config, default=str)), "config.json")
        report = record.summary.get("report") if record.stage == "evaluate" else None
        html = report.get("html") if isinstance(report, dict) else None
        if html and os.path.isfile(html):
            client.log_artifact(rid, html, "report")
        client.set_terminated(rid, "FINISHED" if record.status == "succeeded" else "FAILED")
        return rid
    except Exception:  # tracking never fails a stage: `runs` has the record
        log.warning(
            "could not log run %s/%s to MLflow at %s", record.run_id, record.stage, uri, exc_info=True
        )
        return None
