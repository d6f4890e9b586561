"""A stage through spark-submit.sh against a real multi-process standalone cluster.

The test starts a standalone master and two workers on 127.0.0.1 with pyspark's own
``bin/spark-class``. The workers run without lib/ on their PYTHONPATH, so the executors can import
longtail only from the zip that spark-submit.sh ships with --py-files: shipping the package and
writing Delta data files from executor processes are proven here, not assumed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyspark
import pytest
from deltalake import DeltaTable
from test_ingest import INTERACTIONS_CSV, ITEMS_CSV

REPO = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).parent

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[1:3]} exited early:\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(
        f"no '{text}' in {path} after {timeout} s:\n{path.read_text(errors='replace')[-3000:]}"
    )


@pytest.fixture(scope="module")
def standalone(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("cluster")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_HOME")}
    env.update(SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1", SPARK_NO_DAEMONIZE="1")
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = tmp / f"{name}.log"
        proc = subprocess.Popen([spark_class, *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc, log

    try:
        master, master_log = start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(_free_port()),
        )
        _wait_for(master_log, "I have been elected leader", master)
        for i in range(2):
            worker, worker_log = start(
                f"worker{i}",
                "org.apache.spark.deploy.worker.Worker",
                url,
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                "1g",
                "--webui-port",
                str(_free_port()),
                "--work-dir",
                str(tmp / f"work{i}"),
            )
            _wait_for(worker_log, "Successfully registered with master", worker)
        yield url, tmp
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_ingest_on_a_standalone_cluster(standalone, tmp_path):
    url, cluster_dir = standalone
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    (tmp_path / "interactions.csv").write_text(INTERACTIONS_CSV)
    lake = tmp_path / "lake"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["LONGTAIL_PYTHON"] = sys.executable
    cmd = [
        str(REPO / "spark-submit.sh"),
        "ingest",
        "--master",
        url,
        "--conf",
        "spark.executor.memory=768m",
        "--conf",
        "spark.cores.max=2",
        "--conf",
        "spark.sql.shuffle.partitions=2",
        "--set",
        f"lake.root={lake}",
        "--set",
        f"input.items={tmp_path / 'items.csv'}",
        "--set",
        f"input.interactions={tmp_path / 'interactions.csv'}",
        "--set",
        "ingest.max_bad_fraction=1.0",
        "--run-id",
        "cluster-run",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert '"stage": "ingest"' in done.stdout

    assert DeltaTable(str(lake / "items")).to_pyarrow_table().num_rows == 3
    assert DeltaTable(str(lake / "interactions")).to_pyarrow_table().num_rows == 3
    assert DeltaTable(str(lake / "quarantine")).to_pyarrow_table().num_rows == 5 + 9
    runs = DeltaTable(str(lake / "runs")).to_pyarrow_table().to_pylist()
    assert sorted((r["run_id"], r["stage"], r["status"]) for r in runs) == [
        ("cluster-run", "ingest", "running"),
        ("cluster-run", "ingest", "succeeded"),
    ]

    # The executors ran in the workers' processes, with the package from the shipped zip.
    assert (REPO / "build" / "longtail.zip").exists()
    executor_logs = list(cluster_dir.glob("work*/app-*/*/stderr"))
    assert executor_logs, "no executor ran on the standalone workers"
