"""The environment every benchmark script sets before it imports ``longtail`` or starts Spark.

Imported first by the scripts in this folder (``import _env``: a script's own folder is on
``sys.path``). It puts ``lib/`` on this process's path and on ``PYTHONPATH``, so that Spark's Python
workers import ``longtail`` from ``lib/`` as this process does, and points the workers at this
interpreter. :func:`driver` sets the driver JVM's options, which must be in place before the JVM
starts (the first ``build_session``); a value the caller already exported wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / "lib"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO / "lib"), os.environ.get("PYTHONPATH", "")) if p
)
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def driver(memory: str = "4g", java_options: str | None = None, *, force: bool = False) -> None:
    """Set ``PYSPARK_SUBMIT_ARGS``: the driver's heap and, optionally, its JVM options.

    ``force`` replaces a value already in the environment (a script whose ``--driver-memory``
    option must win); otherwise an exported value is kept.
    """
    args = f"--driver-memory {memory}"
    if java_options:
        args += f" --driver-java-options '{java_options}'"
    if force:
        os.environ["PYSPARK_SUBMIT_ARGS"] = f"{args} pyspark-shell"
    else:
        os.environ.setdefault("PYSPARK_SUBMIT_ARGS", f"{args} pyspark-shell")


def dataset_names(value: str, allowed: tuple[str, ...]) -> list[str]:
    """The names of a comma-separated ``--datasets`` value; exits naming any not in ``allowed``."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise SystemExit(f"--datasets: unknown {bad}; allowed: {list(allowed)}")
    return names
