"""Where longtail's messages go: a quiet console, the whole story in one file per run.

The console shows what a person running a job acts on: one line when a stage starts and one when it
ends (:func:`progress`), progress of long stages (encode: texts done, texts/s, ETA), warnings, and
the results. The run's log file, ``<lake.root>/logs/<run_id>.log``, gets every longtail record from
DEBUG up, every other Python library's warnings and, when the job was started by
``spark-submit.sh``, the Spark JVM's log (``conf/spark/log4j2.properties`` appends to the same
file). A lake on an object store gets a local file instead (:func:`log_file` says where), since a
log is appended to line by line and object stores cannot append. ``--verbose`` copies the file's
longtail records to the console.

Example:
    >>> path, in_lake = log_file("/tmp/lake", "20261130T120000Z-abc123")
    >>> str(path), in_lake
    ('/tmp/lake/logs/20261130T120000Z-abc123.log', True)
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from longtail.core.uris import is_local, local_path

# Set on the records that progress() has already printed, so that no console handler repeats them.
PRINTED = "longtail_printed"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DIR_ENV = "LONGTAIL_LOG_DIR"  # where logs of non-local lakes go (default: <tmp>/longtail-logs)
_HANDLER_FLAG = "_longtail_handler"

log = logging.getLogger("longtail")


def log_file(lake_root: str, run_id: str) -> tuple[Path, bool]:
    """The log file of run ``run_id``, and whether it lies in the lake.

    Args:
        lake_root: ``lake.root``: a local path, ``file:`` URI or a Hadoop URI (``s3a://``...).
        run_id: the run id; one file per run, shared by all stages of a pipeline.

    Returns:
        ``(path, True)`` for ``<lake.root>/logs/<run_id>.log`` under a local lake; ``(path, False)``
        for a local file under ``$LONGTAIL_LOG_DIR`` (else ``<tmp>/longtail-logs``) when the lake is
        remote, because a log grows by appends, which object stores do not offer.
    """
    name = f"{run_id}.log"
    if is_local(lake_root):
        return Path(local_path(lake_root)) / "logs" / name, True
    base = os.environ.get(LOG_DIR_ENV) or os.path.join(tempfile.gettempdir(), "longtail-logs")
    return Path(base) / name, False


class _NotPrinted(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, PRINTED, False)


def setup(path: Path | None, *, verbose: bool = False) -> None:
    """Configure logging for a job: the file gets everything, the console what needs a person.

    Replaces the handlers that an earlier call added (calling it twice is harmless).

    Args:
        path: the run's log file (parent folders are created); None: no file.
        verbose: the console also shows longtail's INFO and DEBUG records, as the file does.
    """
    root = logging.getLogger()
    _remove_handlers(root)
    root.setLevel(logging.WARNING)  # other libraries: warnings and errors only
    log.setLevel(logging.DEBUG)
    log.propagate = True
    handlers: list[logging.Handler] = []
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path, mode="a", encoding="utf-8")  # append: the JVM writes here too
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(FILE_FORMAT))
        handlers.append(fh)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter(FILE_FORMAT if verbose else "%(levelname)s %(name)s: %(message)s"))
    console.addFilter(_NotPrinted())
    handlers.append(console)
    for h in handlers:
        setattr(h, _HANDLER_FLAG, True)
        root.addHandler(h)
    logging.captureWarnings(True)  # Python warnings become records of 'py.warnings' (WARNING)


def reset() -> None:
    """Undo :func:`setup`: remove its handlers and stop routing Python warnings to logging (for a
    process that runs a job in-process and goes on, e.g. a test)."""
    _remove_handlers(logging.getLogger())
    logging.captureWarnings(False)


def _remove_handlers(root: logging.Logger) -> None:
    for h in [h for h in root.handlers if getattr(h, _HANDLER_FLAG, False)]:
        root.removeHandler(h)
        h.close()


def progress(line: str, logger: logging.Logger | None = None) -> None:
    """Print a progress line on stdout and record it in the log (INFO, not printed a second time).

    Progress is printed rather than only logged so that notebooks and tests, which configure no
    logging, still see it.
    """
    print(line, flush=True)
    (logger or log).info(line, extra={PRINTED: True})
