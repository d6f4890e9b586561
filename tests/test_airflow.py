"""examples/airflow/longtail_dag.py under a real Airflow: it imports, and ``dag.test()`` runs a night.

Airflow lives in a venv of its own (``.venv-airflow``, made by ``.ci/run`` from
examples/airflow/requirements.txt; or ``LONGTAIL_AIRFLOW_PYTHON``): the DAG's tasks start
``./spark-submit.sh``, which runs this project's venv, so the two dependency sets never meet. The
test skips where that venv is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable
from helpers import make_tiny_bert

from longtail.core import schema as S
from longtail.core.config import load_config
from longtail.stages.generate_sample import generate_frames

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_PYTHON = Path(os.environ.get("LONGTAIL_AIRFLOW_PYTHON") or REPO / ".venv-airflow" / "bin" / "python")
DAG_FILE = REPO / "examples" / "airflow" / "longtail_dag.py"
STAGES = ["ingest", "encode", "train", "recommend", "evaluate", "maintain"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not AIRFLOW_PYTHON.exists(),
        reason=f"no Airflow venv at {AIRFLOW_PYTHON} (.ci/run makes it: "
        "python3 -m venv .venv-airflow && .venv-airflow/bin/pip install -r examples/airflow/requirements.txt)",
    ),
]

# Runs under the Airflow venv: parse the DAG file as the scheduler does, then run one night.
SCRIPT = """
import datetime as dt, json, sys
try:
    from airflow.dag_processing.dagbag import DagBag  # Airflow 3
except ImportError:
    from airflow.models.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.get_dag("longtail_nightly")
print(json.dumps({"tasks": sorted(dag.task_ids),
                  "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
                  "retries": {t.task_id: t.retries for t in dag.tasks}}))
run = dag.test(logical_date=dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc))
states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print(json.dumps({"state": str(run.state), "states": states}))
"""


def _airflow_env(home: Path, settings: list[str]) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "LONGTAIL_HOME": str(REPO),
        "LONGTAIL_PYTHON": sys.executable,  # spark-submit.sh runs the project's venv
        "LONGTAIL_SET": " ".join(settings),
        "LONGTAIL_SPARK": "--master local[2] --conf spark.ui.enabled=false",
    }


def test_the_dag_imports_and_dag_test_runs_one_night(tmp_path):
    model = make_tiny_bert(tmp_path / "tiny")
    lake = tmp_path / "lake"
    sample = ["sample.n_items=80", "sample.n_users=30", "sample.interactions_per_user=10"]
    items, events = generate_frames(load_config(overrides=sample))
    items.to_csv(tmp_path / "items.csv", index=False)
    events.to_csv(tmp_path / "interactions.csv", index=False)
    settings = [
        f"lake.root={lake}",
        f"input.items={tmp_path / 'items.csv'}",
        f"input.interactions={tmp_path / 'interactions.csv'}",
        f"encoder.model={model}",
        "train.als.rank=4",
        "train.als.max_iter=5",
        "train.head.min_count=2",
        "recommend.fusion=blend",
        "recommend.block_users=16",
        "recommend.block_items=64",
        # the DAG's wiring is the point: one cut-off, two variants, no intervals, no report
        "evaluate.k=[10]",
        "evaluate.variants=[cf,fused]",  # LONGTAIL_SET is split on spaces
        "evaluate.bootstrap=0",
        "evaluate.report=false",
    ]
    env = _airflow_env(tmp_path / "airflow", settings)
    migrate = subprocess.run(
        [str(AIRFLOW_PYTHON), "-m", "airflow", "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    done = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", SCRIPT, str(DAG_FILE.parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    # the script's two lines (the tasks also print each stage's JSON status line)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"')]
    shape = next((x for x in lines if "tasks" in x), None)
    night = next((x for x in lines if "states" in x), None)
    assert done.returncode == 0 and shape and night, (done.stdout[-3000:], done.stderr[-5000:])
    statuses = [x for x in lines if x.get("run_id") == "2026-11-30"]  # the tasks' XCom values
    assert sorted(x["stage"] for x in statuses) == sorted(STAGES)
    assert {x["status"] for x in statuses} == {"succeeded"}
    assert shape["tasks"] == sorted(STAGES)
    assert shape["upstream"] == {
        "ingest": [],
        "encode": ["ingest"],
        "train": ["encode"],
        "recommend": ["train"],
        "evaluate": ["recommend"],
        "maintain": ["evaluate"],
    }
    assert set(shape["retries"].values()) == {2}
    assert night["states"] == dict.fromkeys(STAGES, "success") and night["state"].endswith("success")

    # the logical date is every stage's run id, recorded in `runs`
    runs = DeltaTable(str(lake / S.RUNS)).to_pandas()
    done_stages = runs[(runs[S.RUN_ID] == "2026-11-30") & (runs["status"] == "succeeded")]["stage"]
    assert sorted(done_stages) == sorted(STAGES)
    recs = DeltaTable(str(lake / S.RECOMMENDATIONS)).to_pandas()
    assert len(recs) == recs[S.USER_ID].nunique() * 10  # recommend.k lists for every user
