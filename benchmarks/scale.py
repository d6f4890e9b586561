"""How each stage's cost grows with the catalogue: wall time, peak memory, shuffle bytes per stage.

For each size N (``--sizes``, items) a sparse sample is generated (``sample.preset: sparse``,
``--users-per-item`` x N users with 1-3 interactions each, most items never bought) into its own
lake under ``--lake-root``, outside the measurement (the generator is a pandas tool on the driver,
not a pipeline stage). Then ``ingest``, ``encode``, ``train``, ``recommend`` and ``evaluate`` run
one after another in one local Spark session, each measured:

* wall time;
* peak RSS of the driver: the Python process and the JVM (local mode: the JVM also runs the
  executors' tasks, so its RSS is driver + executor heap and off-heap);
* peak RSS of one Spark Python worker (the largest single worker process seen);
* shuffle read and write bytes, summed over the stage's completed Spark stages (Spark's REST
  status API: the UI runs for this reason, with enough retained stages).

The RSS figures are sampled every 0.25 s from ``/proc`` (Linux). Between consecutive sizes the
table gives each stage's growth exponent ``log(t2/t1) / log(N2/N1)``. The encoder is the real
all-MiniLM-L6-v2 up to ``--real-encoder-max`` items and a 2-layer BERT with random weights and the
same tokenizer beyond (the Spark plumbing measured without hours of CPU inference); the table says
which. ``--max-users`` caps the users of a size (the candidate top-K costs users x items, so the
growth table gives exponents in both), ``--stages`` runs a subset, ``--merge`` adds the sizes of
earlier runs' ``--json`` files to the tables and the plot. Run under the benchmark lock::

    flock /tmp/longtail-bench.lock .venv/bin/python benchmarks/scale.py --sizes 2000 20000 \\
        --lake-root /tmp/lt_scale --json /tmp/lt_scale.json --plot docs/scaling-curves.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _env import REPO, driver  # lib/ on the path, Spark's workers pointed at it

# the local profile's driver heap (conf/spark/local.conf) and the launcher's JVM logging (Spark's
# warnings to a file next to the lakes, the console keeps the tables), set before the JVM starts
driver(
    "4g",
    f"-Dlog4j2.configurationFile={REPO}/conf/spark/log4j2.properties -Dlongtail.log.file=/tmp/longtail-scale-spark.log",
)

STAGES = ("ingest", "encode", "train", "recommend", "evaluate")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=None,
        help="catalogue sizes to run (default 10000 100000 1000000, or none with --merge: then the "
        "tables of earlier runs are printed and nothing runs)",
    )
    p.add_argument("--users-per-item", type=float, default=2.0)
    p.add_argument(
        "--max-users",
        type=int,
        default=0,
        help="at most this many users per size (0: no cap). The candidate top-K is users x items by "
        "nature; a cap keeps the largest sizes within a small machine's hours, and the growth table "
        "then gives exponents in items and in users x items",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="the stages to run, in pipeline order (default: all; e.g. leave out evaluate at 10^6)",
    )
    p.add_argument(
        "--merge",
        nargs="*",
        default=[],
        help="--json files of earlier runs whose sizes join this run's tables and plot (the same machine)",
    )
    p.add_argument("--real-encoder-max", type=int, default=100_000)
    p.add_argument(
        "--warmup",
        type=int,
        default=500,
        help="items of an unreported first run that warms the JVM and the workers (0: none); without "
        "it the first size carries the JIT and model-loading costs",
    )
    p.add_argument("--lake-root", default="/tmp/lt_scale")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--set", action="append", default=[], help="extra config overrides for every size")
    p.add_argument("--json", help="write every figure as JSON to this file")
    p.add_argument("--plot", help="write the curves (time and peak RSS per stage) to this PNG")
    args = p.parse_args(argv)
    if args.sizes is None:  # --merge alone prints earlier runs; it never starts the default sizes
        args.sizes = [] if args.merge else [10_000, 100_000, 1_000_000]
    return args


# --- memory: /proc ---------------------------------------------------------------------------------
def _processes() -> dict[int, tuple[int, str, int]]:
    """``{pid: (ppid, command name, rss bytes)}`` of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                head, rest = fh.read().rsplit(")", 1)
            fields = rest.split()
            out[int(entry.name)] = (int(fields[1]), head.split("(", 1)[1], int(fields[21]) * _PAGE)
        except (OSError, IndexError, ValueError):
            continue
    return out


class PeakRss:
    """Samples the driver (Python), the JVM and the Python workers below it until stopped."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak = {"driver_python": 0, "driver_jvm": 0, "python_worker": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            procs = _processes()
            children: dict[int, list[int]] = {}
            for pid, (ppid, _, _) in procs.items():
                children.setdefault(ppid, []).append(pid)
            self.peak["driver_python"] = max(self.peak["driver_python"], procs.get(me, (0, "", 0))[2])
            for jvm in (p for p in children.get(me, []) if procs[p][1] == "java"):
                self.peak["driver_jvm"] = max(self.peak["driver_jvm"], procs[jvm][2])
                todo = list(children.get(jvm, []))
                while todo:
                    pid = todo.pop()
                    todo.extend(children.get(pid, []))
                    if procs[pid][1].startswith("python"):
                        self.peak["python_worker"] = max(self.peak["python_worker"], procs[pid][2])
            self._stop.wait(self.interval)


# --- shuffle bytes: Spark's REST status API ----------------------------------------------------------
def shuffle_totals(spark: Any) -> tuple[int, int]:
    """(shuffle read bytes, shuffle write bytes) over every completed stage of the application."""
    sc = spark.sparkContext
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/stages?status=complete"
    with urllib.request.urlopen(url, timeout=60) as resp:
        stages = json.load(resp)
    return (
        sum(int(s.get("shuffleReadBytes", 0)) for s in stages),
        sum(int(s.get("shuffleWriteBytes", 0)) for s in stages),
    )


# --- one size --------------------------------------------------------------------------------------
def run_size(
    spark: Any,
    n: int,
    args: argparse.Namespace,
    small_model: str | None,
    done: Callable[[dict[str, Any]], None] = lambda _: None,
) -> dict[str, Any]:
    """Generate size ``n`` (unless its lake has the sample) and run the stages; ``done`` gets the
    size's figures so far after every stage (a long size leaves its finished stages on disk)."""
    from longtail.core.config import load_config
    from longtail.lake.runs import run_stage
    from longtail.stages import load_stage

    root = Path(args.lake_root) / f"n{n}"
    users = int(n * args.users_per_item)
    if args.max_users:
        users = min(users, args.max_users)
    encoder = "real all-MiniLM-L6-v2" if small_model is None else "random 2-layer BERT (MiniLM tokenizer)"
    overrides = [
        f"lake.root={root}",
        "sample.preset=sparse",
        f"sample.n_items={n}",
        f"sample.n_users={users}",
        *([f"encoder.model={small_model}"] if small_model else []),
        *args.set,
    ]
    cfg = load_config(overrides=overrides)
    sample = load_config(overrides=[*overrides, f"sample.path={root}/sample_input"])
    t0 = time.perf_counter()
    if not (root / "sample_input" / "items.csv").exists():  # a re-run keeps its lake and sample
        load_stage("generate-sample").run(spark, sample)
    generated = time.perf_counter() - t0
    cfg = load_config(
        overrides=[
            *overrides,
            f"input.items={root}/sample_input/items.csv",
            f"input.interactions={root}/sample_input/interactions.csv",
        ]
    )
    out: dict[str, Any] = {
        "items": n,
        "users": users,
        "encoder": encoder,
        "generate_s": generated,
        "stages": {},
    }
    for stage in [s for s in STAGES if s in args.stages]:
        read0, write0 = shuffle_totals(spark)
        with PeakRss() as rss:
            record = run_stage(spark, cfg, stage, load_stage(stage).run, run_id=f"scale-{n}")
        read1, write1 = shuffle_totals(spark)
        out["stages"][stage] = {
            "seconds": record.seconds,
            "status": record.status,
            "peak_rss_mb": {k: v / 2**20 for k, v in rss.peak.items()},
            "shuffle_read_mb": (read1 - read0) / 2**20,
            "shuffle_write_mb": (write1 - write0) / 2**20,
        }
        print(f"  n={n:>9,} {stage:<10} {record.seconds:8.1f} s", flush=True)
        done(out)
        spark.catalog.clearCache()
    return out


def exponent(a: float, b: float, n_a: int, n_b: int) -> float | None:
    """log(b / a) / log(n_b / n_a); None where a time is 0 or the sizes are equal."""
    return math.log(b / a) / math.log(n_b / n_a) if a > 0 and b > 0 and n_a != n_b else None


def _peak(stage: dict[str, Any], proc: str) -> float | None:
    """A stage's peak RSS (MB) of ``proc``, or None where the run did not record it."""
    return (stage.get("peak_rss_mb") or {}).get(proc)


def _cell(value: float | None, fmt: str) -> str:
    """A figure, or "n/a" where a run did not record it."""
    return "n/a" if value is None else format(value, fmt)


def print_tables(results: list[dict[str, Any]]) -> None:
    print("\n| items | users | encoder | stage | wall s | driver Python MB | driver JVM MB | "
          "Python worker MB | shuffle read MB | shuffle write MB |")  # fmt: skip
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for stage, s in r["stages"].items():
            cells = [_cell(_peak(s, p), ".0f") for p in ("driver_python", "driver_jvm", "python_worker")] + [
                _cell(s.get(k), ".1f") for k in ("shuffle_read_mb", "shuffle_write_mb")
            ]
            print(
                f"| {r['items']:,} | {r['users']:,} | {r['encoder']} | {stage} | {s['seconds']:.1f} | "
                + " | ".join(cells)
                + " |"
            )
    if len(results) < 2:
        return
    pairs = list(itertools.pairwise(results))
    if len(results) > 2:  # and end to end
        pairs.append((results[0], results[-1]))
    for title, size in (
        ("items", lambda r: r["items"]),
        ("users x items (the candidate top-K's input)", lambda r: r["items"] * r["users"]),
    ):
        print(f"\nGrowth exponent of wall time between sizes, in {title} (1.0 = linear):\n")
        print("| stage | " + " | ".join(f"{a['items']:,} -> {b['items']:,}" for a, b in pairs) + " |")
        print("|---|" + "---:|" * len(pairs))
        for stage in STAGES:
            cells = []
            for a, b in pairs:
                sa, sb = a["stages"].get(stage), b["stages"].get(stage)
                e = exponent(sa["seconds"], sb["seconds"], size(a), size(b)) if sa and sb else None
                cells.append("-" if e is None else f"{e:.2f}")
            print(f"| {stage} | " + " | ".join(cells) + " |")
    first, last = results[0], results[-1]
    common = [s for s in first["stages"] if s in last["stages"]]
    for proc in ("driver_jvm", "driver_python"):
        before, after = ([_peak(r["stages"][s], proc) for s in common] for r in (first, last))
        if not common or None in before or None in after:
            continue
        ratio = max(after) / max(before)
        print(
            f"\nPeak {proc} RSS at {last['items']:,} items / at {first['items']:,} ({', '.join(common)}): {ratio:.2f}x"
        )


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for stage in STAGES:
        runs = [r for r in results if stage in r["stages"]]
        if not runs:
            continue
        ax1.plot(
            [r["items"] for r in runs], [r["stages"][stage]["seconds"] for r in runs], marker="o", label=stage
        )
        rss = [(r["items"], _peak(r["stages"][stage], "driver_jvm")) for r in runs]
        rss = [(n, v) for n, v in rss if v is not None]
        ax2.plot([n for n, _ in rss], [v for _, v in rss], marker="o", label=stage)
    for ax, title in ((ax1, "wall time (s)"), (ax2, "peak driver JVM RSS (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalogue items")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(f"longtail stages by catalogue size ({platform.node()}, {os.cpu_count()} cores, local[2])")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_sizes(args) if args.sizes else []
    for path in args.merge:
        results.extend(json.loads(Path(path).read_text()))
    results = combined(results)
    print_tables(results)
    if args.plot:
        plot(results, args.plot)
    return 0


def combined(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (items, users, encoder), by size: the stages of runs of the same size joined
    (e.g. a size whose later stages were run again), the later run's figures winning."""
    out: dict[tuple[int, int, str], dict[str, Any]] = {}
    for r in results:
        key = (r["items"], r["users"], r["encoder"])
        if key in out:
            out[key]["stages"] = {**out[key]["stages"], **r["stages"]}
        else:
            out[key] = {**r, "stages": dict(r["stages"])}
    for r in out.values():
        r["stages"] = {s: r["stages"][s] for s in STAGES if s in r["stages"]}
    return [out[k] for k in sorted(out)]


def run_sizes(args: argparse.Namespace) -> list[dict[str, Any]]:
    from encode import model_dir

    from longtail.core.session import build_session
    from longtail.ml.encoder import DEFAULT_MODEL

    spark = build_session(
        "longtail-scale",
        master=args.master,
        extra={
            "spark.ui.enabled": "true",
            "spark.ui.retainedStages": "100000",
            "spark.ui.retainedJobs": "100000",
        },
    )
    Path(args.lake_root).mkdir(parents=True, exist_ok=True)
    small = None
    if any(n > args.real_encoder_max for n in args.sizes):
        small = model_dir(DEFAULT_MODEL, "small-2l", Path(args.lake_root))
    results: list[dict[str, Any]] = []
    print(f"host: {platform.node()} ({os.cpu_count()} cores), Spark {spark.version}, master {args.master}")
    if args.warmup:
        print(f"warm-up run at {args.warmup:,} items (not reported)", flush=True)
        run_size(spark, args.warmup, args, None)

    def save(partial: dict[str, Any]) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps([*results, partial], indent=1))

    for n in sorted(args.sizes):
        results.append(run_size(spark, n, args, small if n > args.real_encoder_max else None, save))
    spark.stop()
    return results


if __name__ == "__main__":
    raise SystemExit(main())
