"""The wheel: it builds, installs into a fresh venv, and its `longtail` entry point runs stages.

The fresh venv gets the wheel alone (``--no-deps``); its third-party packages (pyspark, torch, ...)
come from this project's venv through a ``.pth`` line, so that the test needs no download of
several GB. What is checked is the package itself: ``longtail`` imports from the venv's
site-packages (not from ``lib/``), the entry point is installed, and the stages run from another
folder with no ``conf/`` beside them (the defaults come from the dataclasses, which
``conf/base.yaml`` is rendered from).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


# nothing of the checkout on the path: pytest puts lib/ on PYTHONPATH for its own subprocesses
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_HOME")}


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", ENV)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_installs_and_its_entry_point_runs_stages(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(src),
        ]
    )
    wheels = list(dist.glob("longtail-*.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    purelib = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    # the third-party packages from this venv, after the fresh venv's own site-packages
    (purelib / "zz_project_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheels[0])])
    where = _run([str(py), "-c", "import longtail; print(longtail.__file__)"], cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(purelib), where
    entry = venv / "bin" / "longtail"
    assert entry.exists()

    work = tmp_path / "job"  # no conf/, no lib/: what a cluster node has
    work.mkdir()
    env = {**ENV, "PYSPARK_PYTHON": str(py)}
    sets = [
        "--set", f"lake.root={work / 'lake'}",
        "--set", f"sample.path={work / 'sample'}",
        "--set", "sample.n_items=120",
        "--set", "sample.n_users=20",
        "--set", "lake.engine=delta-rs",
    ]  # fmt: skip
    out = {}
    for stage in ("generate-sample", "ingest"):
        done = _run([str(entry), stage, *sets], cwd=work, env=env)
        out[stage] = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
        assert out[stage]["stage"] == stage
    summary = out["ingest"]["summary"]["items"]
    # the generator appends two bad items (an empty description, an empty id): quarantined
    assert (summary["rows"], summary["changed"]) == (122, 120)
    assert summary["quarantined"] == {"missing item_id": 1, "empty description": 1}
    bad = subprocess.run(
        [str(entry), "ingest", "--set", "recommend.k=0"], cwd=work, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "recommend.k" in bad.stderr
