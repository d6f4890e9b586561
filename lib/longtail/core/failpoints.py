"""Named fail points: kill the process at an exact point of a write, for the fault tests.

A run started with ``LONGTAIL_FAILPOINT=<point>`` SIGKILLs its whole process group (the launcher,
the JVM, the Python workers: what ``kill -9`` of a job does) when it reaches that point; any other
run passes every point at the cost of one dictionary lookup. The points the lake facade marks:

* ``read:<table>`` -- a stage has just started reading the table (nothing of its own written yet);
* ``before-commit:<table>`` -- the write's data files are in place and its commit is next (the
  delta-rs engine stages the files first; with delta-spark the point is just before the JVM write,
  which writes and commits in one call);
* ``committed:<table>`` -- the commit is done; whatever the stage writes after it is not;
* ``compacted:<table>`` -- ``maintain`` committed the table's compaction (its checkpoint, its
  vacuum and the other tables are next).

``<point>@N`` fires on the N-th time the point is reached (default the first). Used by
``tests/test_faults.py`` and ``benchmarks/faults.py``; never set it in a production job.

Example:
    $ LONGTAIL_FAILPOINT=before-commit:recommendations ./spark-submit.sh recommend   # dies with 137
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "LONGTAIL_FAILPOINT"

log = logging.getLogger(__name__)
_hits: dict[str, int] = {}


def hit(point: str) -> None:
    """Mark ``point``; when ``$LONGTAIL_FAILPOINT`` names it (and its hit count), kill the process group."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] != (int(nth) if nth else 1):
        return
    log.warning("fail point %s reached: killing the process group", wanted)
    for h in logging.getLogger().handlers:  # the run's log file says where it stopped
        h.flush()
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    finally:  # not a group leader's group we may signal (e.g. in a sandbox): at least this process
        os.kill(os.getpid(), signal.SIGKILL)


def before_commit(table_path: str) -> None:
    """:func:`hit` ``before-commit:<table>`` for the table stored at ``table_path`` (its last part)."""
    hit(f"before-commit:{table_path.rstrip('/').rsplit('/', 1)[-1]}")
