"""Progress of a long Spark job on the driver: items done, items/s, ETA, from an accumulator.

The tasks add the items they finish to a Spark accumulator; a daemon thread on the driver reads it
while the job runs and prints a line when it has grown (at most one line per ``every`` seconds).
Spark merges a task's accumulator updates into the driver's value when the task ends, so the count
moves in steps of one task's items: progress is as fine as the job's partitions.

Example:
    >>> with CountProgress(spark, "encode", total=n, unit="texts") as p:
    ...     df.mapInPandas(make_fn(p.accumulator), schema).write...  # tasks call accumulator.add(k)
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from pyspark.sql import SparkSession

from longtail.core.logs import progress


def format_progress(label: str, done: int, total: int, seconds: float, unit: str) -> str:
    """One progress line, e.g. ``encode: 750/1500 texts (50%), 41.2 texts/s, ETA 18 s``.

    Example:
        >>> format_progress("encode", 750, 1500, 18.2, "texts")
        '  encode: 750/1500 texts (50%), 41.2 texts/s, ETA 18 s'
    """
    rate = done / seconds if seconds > 0 else 0.0
    share = f" ({100 * done / total:.0f}%)" if total else ""
    eta = f", ETA {(total - done) / rate:.0f} s" if rate > 0 and total > done else ""
    return f"  {label}: {done}/{total} {unit}{share}, {rate:.1f} {unit}/s{eta}"


class CountProgress:
    """A context manager that prints the progress of the Spark job(s) run inside it.

    Args:
        spark: the session; the accumulator lives in its SparkContext.
        label: what is being done, e.g. ``"encode"``.
        total: the number of items the job will add to :attr:`accumulator`.
        unit: the items' name in the line.
        every: at most one line per this many seconds.
    """

    def __init__(
        self, spark: SparkSession, label: str, *, total: int, unit: str = "items", every: float = 5.0
    ) -> None:
        self.accumulator: Any = spark.sparkContext.accumulator(0)
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"longtail-progress-{label}", daemon=True)
        self._t0 = 0.0

    def __enter__(self) -> CountProgress:
        self._t0 = time.perf_counter()
        if self.total > 0:
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        shown, last = 0, float("-inf")
        while not self._stop.wait(0.5):
            done = int(self.accumulator.value)
            now = time.perf_counter()
            if done != shown and now - last >= self.every and done < self.total:
                line = format_progress(self.label, done, self.total, now - self._t0, self.unit)
                self.lines.append(line)
                progress(line)
                shown, last = done, now
