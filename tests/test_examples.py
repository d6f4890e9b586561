"""The orchestration examples stay in step with the package: real stages, a consistent DAG."""

from __future__ import annotations

from pathlib import Path

import yaml

from longtail.cli import parser
from longtail.stages import STAGES

REPO = Path(__file__).resolve().parents[1]


def test_databricks_bundle_runs_real_stages_in_a_consistent_order():
    bundle = yaml.safe_load((REPO / "examples" / "databricks" / "databricks.yml").read_text())
    job = bundle["resources"]["jobs"]["longtail_nightly"]
    tasks = {t["task_key"]: t for t in job["tasks"]}
    order = ["ingest", "encode", "train", "recommend", "evaluate", "maintain"]
    assert sorted(tasks) == sorted(order)
    done: set[str] = set()
    for key in order:  # every dependency is a task that comes earlier: no cycle, no dangling name
        deps = {d["task_key"] for d in tasks[key].get("depends_on", [])}
        assert deps <= done, (key, deps)
        done.add(key)
        wheel = tasks[key]["python_wheel_task"]
        assert (wheel["package_name"], wheel["entry_point"]) == ("longtail", "longtail")
        stage, *args = wheel["parameters"]
        assert stage == key and stage in STAGES
        parsed = parser(stage).parse_args(args)  # the entry point's own parser takes the arguments
        assert parsed.run_id == "{{job.start_time.iso_date}}"
        assert "lake.engine=delta-spark" in parsed.set
