"""The quiet console and the run's log file: what goes where, and encode-style progress lines."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator

import pytest

from longtail.cli import check_args
from longtail.core import logs
from longtail.core.progress import CountProgress, format_progress


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("longtail")
    saved = (list(root.handlers), root.level, ours.level)
    yield
    for h in [h for h in root.handlers if h not in saved[0]]:
        root.removeHandler(h)
        h.close()
    root.setLevel(saved[1])
    ours.setLevel(saved[2])
    logging.captureWarnings(False)


def test_log_file_is_in_the_lake_for_local_roots_and_local_for_remote_ones(tmp_path, monkeypatch):
    assert logs.log_file(str(tmp_path), "r1") == (tmp_path / "logs" / "r1.log", True)
    assert logs.log_file(f"file://{tmp_path}", "r1") == (tmp_path / "logs" / "r1.log", True)
    monkeypatch.setenv(logs.LOG_DIR_ENV, str(tmp_path / "here"))
    assert logs.log_file("s3a://bucket/lake", "r2") == (tmp_path / "here" / "r2.log", False)


def test_quiet_console_shows_progress_and_warnings_the_file_everything(tmp_path, capsys, restore_logging):
    path = tmp_path / "logs" / "run.log"
    logs.setup(path, verbose=False)
    log = logging.getLogger("longtail.stages.x")
    log.debug("a debug detail")
    log.info("an info line")
    logs.progress("[1/2] x  done", log)
    log.warning("needs action")
    logging.getLogger("some.library").info("library chatter")
    logging.getLogger("some.library").warning("library warning")
    out, err = capsys.readouterr()
    assert out == "[1/2] x  done\n"  # printed once, not repeated by a log handler
    assert "needs action" in err and "library warning" in err
    assert "an info line" not in err and "a debug detail" not in err and "[1/2]" not in err
    text = path.read_text()
    for line in ("a debug detail", "an info line", "[1/2] x  done", "needs action", "library warning"):
        assert line in text
    assert "library chatter" not in text  # other libraries: warnings and up only


def test_verbose_console_shows_longtail_info_too(tmp_path, capsys, restore_logging):
    logs.setup(tmp_path / "run.log", verbose=True)
    logs.setup(tmp_path / "run.log", verbose=True)  # a second call replaces, not doubles, the handlers
    logging.getLogger("longtail.x").info("an info line")
    logs.progress("a progress line")
    out, err = capsys.readouterr()
    assert err.count("an info line") == 1 and out == "a progress line\n" and "a progress line" not in err


def test_preflight_prints_the_run_id_and_its_log_file(tmp_path, capsys):
    assert check_args("ingest", ["--set", f"lake.root={tmp_path}", "--run-id", "r7", "--verbose"]) == 0
    assert capsys.readouterr().out == f"r7\t{tmp_path / 'logs' / 'r7.log'}\n"
    assert check_args("ingest", ["--set", "recommend.k=0"]) == 2


def test_progress_line_format():
    assert format_progress("encode", 750, 1500, 18.2, "texts") == (
        "  encode: 750/1500 texts (50%), 41.2 texts/s, ETA 18 s"
    )
    assert format_progress("encode", 0, 10, 3.0, "texts") == "  encode: 0/10 texts (0%), 0.0 texts/s"


@pytest.mark.spark
def test_count_progress_reports_tasks_as_they_finish(spark, capsys):
    with CountProgress(spark, "work", total=8, unit="rows", every=0) as shown:
        acc = shown.accumulator

        def slow(x: int) -> None:
            time.sleep(1.0)
            acc.add(1)

        spark.sparkContext.parallelize(range(8), 4).foreach(slow)
    assert shown.accumulator.value == 8
    # local[2] runs the 4 two-row tasks two at a time (done at about 2 s and 4 s): a line in between
    assert shown.lines, "no progress line while the job ran"
    for line in shown.lines:
        m = re.fullmatch(r"  work: (\d)/8 rows \(\d+%\), [\d.]+ rows/s, ETA \d+ s", line)
        assert m and 0 < int(m.group(1)) < 8, line
    assert capsys.readouterr().out.splitlines() == shown.lines
