"""Real concurrent runs: two `ingest` processes (spark-submit) on one new lake, started together,
one on each engine (the delta-spark one resolves the connector from the Ivy cache .ci/run fills)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _inputs(tmp: Path) -> tuple[str, str]:
    items = tmp / "items.csv"
    items.write_text(
        "item_id,title,description\n" + "".join(f"i{i},Item {i},about thing {i}\n" for i in range(50))
    )
    inter = tmp / "interactions.csv"
    inter.write_text(
        "user_id,item_id,timestamp,rating\n"
        + "".join(
            f"u{u},i{(u * 7 + j) % 50},{1704067200 + u * 100 + j},1\n" for u in range(40) for j in range(5)
        )
    )
    return str(items), str(inter)


def test_two_ingest_runs_started_together_write_every_event_once(tmp_path: Path, request) -> None:
    """One process on delta-spark and one on delta-rs, started together on one new lake: both
    engines' conflict checks meet (whichever commits second is rejected and retries), and a lake
    written by both stays exact. Without the connector (--no-delta-spark) both run delta-rs."""
    engines = (
        ["delta-rs", "delta-rs"]
        if request.config.getoption("--no-delta-spark")
        else ["delta-spark", "delta-rs"]
    )
    items, inter = _inputs(tmp_path)
    lake = tmp_path / "lake"
    env = {**os.environ, "LONGTAIL_PYTHON": sys.executable}
    cmd = [
        str(ROOT / "spark-submit.sh"), "ingest", "--set", f"lake.root={lake}",
        "--set", f"input.items={items}", "--set", f"input.interactions={inter}",
        "--conf", "spark.ui.enabled=false", "--master", "local[1]",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*cmd, *(["--delta-spark"] if e == "delta-spark" else ["--set", "lake.engine=delta-rs"])],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for e in engines
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    table = DeltaTable(str(lake / "interactions")).to_pyarrow_table()
    keys = list(zip(*(table.column(c).to_pylist() for c in ("user_id", "item_id", "ts")), strict=True))
    assert len(keys) == 200 and len(set(keys)) == 200
    assert DeltaTable(str(lake / "items")).to_pyarrow_table().num_rows == 50
    # each process wrote with the engine asked for: both record their run in `runs` (delta-spark
    # names itself in a commit's engineInfo, delta-rs does not)
    writers = {
        "Delta-Lake/" in str(h.get("engineInfo", "")) for h in DeltaTable(str(lake / "runs")).history()
    }
    assert writers == {e == "delta-spark" for e in engines}
