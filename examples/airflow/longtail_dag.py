"""Airflow DAG: the longtail stages as one nightly run, one task per stage.

Copy this file into the DAGs folder and set, as Airflow Variables or environment variables:

    LONGTAIL_HOME   the longtail checkout (its ./spark-submit.sh and set-up venv) on the workers
    LONGTAIL_CONF   the job's YAML config (lake.root, input paths, ...), e.g. /etc/longtail/prod.yaml
    LONGTAIL_SPARK  Spark's options for spark-submit.sh, e.g. "--master yarn --deploy-mode client"
                    (default: local mode)
    LONGTAIL_SET    extra `key=value` overrides, separated by spaces (optional)

Each task runs ``./spark-submit.sh <stage> --conf $LONGTAIL_CONF --run-id {{ ds }}``: the logical
date is the run id, so a retried task or a back-filled night reuses it and the stages' idempotence
(docs/scheduling.md) makes the repeat a no-op or a replacement, never a duplicate. The job's exit
code decides what Airflow does: 2 (config), 3 (bad input) fail the task at once, without the
retries that could not help; 1, 4 and 5 (a Spark failure, a missing input, a conflicting run) are
retried. The stage's one-line JSON summary is the task's return value (XCom).

Works with Airflow 3 (``airflow.sdk``) and 2.x (``airflow.models``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
from typing import Any

try:  # Airflow 3
    from airflow.sdk import DAG, Variable, task
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 2
    from airflow.decorators import task
    from airflow.exceptions import AirflowFailException
    from airflow.models import DAG, Variable

STAGES = ("ingest", "encode", "train", "recommend", "evaluate", "maintain")
NO_RETRY = {2: "config or usage error", 3: "bad input over ingest.max_bad_fraction"}


def setting(name: str, default: str | None = None) -> str | None:
    """An Airflow Variable, else the environment variable of the same name, else ``default``."""
    try:
        value = Variable.get(name, default=None)
    except Exception:  # no metadata database reachable (e.g. while the file is parsed in a test)
        value = None
    return value if value is not None else os.environ.get(name, default)


def command(stage: str, run_id: str) -> list[str]:
    """The ``spark-submit.sh`` command line of ``stage`` for the night ``run_id``."""
    home = setting("LONGTAIL_HOME")
    if not home:
        raise AirflowFailException(
            "set LONGTAIL_HOME (Airflow Variable or environment) to the longtail checkout"
        )
    cmd = [os.path.join(home, "spark-submit.sh"), stage, "--run-id", run_id]
    conf = setting("LONGTAIL_CONF")
    if conf:
        cmd += ["--conf", conf]
    for pair in shlex.split(setting("LONGTAIL_SET", "") or ""):
        cmd += ["--set", pair]
    return cmd + shlex.split(setting("LONGTAIL_SPARK", "") or "")


def run_stage(stage: str, run_id: str) -> dict[str, Any]:
    """Run one stage; its JSON summary line, or an exception that tells Airflow whether to retry."""
    done = subprocess.run(command(stage, run_id), capture_output=True, text=True, check=False)
    print(done.stdout[-20_000:])
    print(done.stderr[-20_000:])
    result: dict[str, Any] = {}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    if done.returncode in NO_RETRY:
        raise AirflowFailException(f"longtail {stage} exited {done.returncode}: {NO_RETRY[done.returncode]}")
    if done.returncode != 0:
        raise RuntimeError(
            f"longtail {stage} exited {done.returncode}: {result.get('error', done.stderr[-500:])}"
        )
    return result


with DAG(
    dag_id="longtail_nightly",
    schedule="0 2 * * *",  # 02:00 every night
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,  # the lake is safe under overlapping nights; one at a time is cheaper
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=5)},
    tags=["longtail"],
) as dag:
    tasks = {}
    for stage in STAGES:

        @task(task_id=stage)
        def stage_task(stage: str = stage, ds: str | None = None) -> dict[str, Any]:
            return run_stage(stage, ds or dt.date.today().isoformat())

        tasks[stage] = stage_task()
    tasks["ingest"] >> tasks["encode"] >> tasks["train"] >> tasks["recommend"] >> tasks["evaluate"]
    tasks["evaluate"] >> tasks["maintain"]
