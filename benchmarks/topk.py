"""Blocked top-K throughput: ``longtail.ml.topk.blocked_top_k`` in local mode against numpy's matmul rate.

For each size (users x items) the script

1. generates L2-normalised random float32 vectors inside Spark (``mapInArrow``, seeded per
   partition) and writes them to Parquet under ``--tmp`` (not timed);
2. times ``blocked_top_k`` end to end in ``local[N]``: the call (its sizing aggregate job) and one
   action that consumes every row and every column of the result (an aggregate of the row count,
   the sums of every score and rank column), so the whole top-K is computed; the inputs are read
   from the Parquet files inside the timed region;
3. reports the wall time, GFLOP/s (``2 x users x items x dims`` per signal, over the wall time),
   that as a fraction of THIS machine's single-process numpy float32 matmul rate on the same shapes
   (``(min(block_queries, 2048) x dims) @ (dims x items)``, numpy with its default threads, best of
   ``--numpy-repeat``; the 1-thread rate is shown too), and the time per (user x item) pair, so that
   linear scaling shows.

Run the timings under the shared benchmark lock so that benchmarks do not overlap, and look at the
load average first (it is printed with every row)::

    uptime
    flock /tmp/longtail-bench.lock .venv/bin/python benchmarks/topk.py
    flock /tmp/longtail-bench.lock .venv/bin/python benchmarks/topk.py --sizes 25000x25000 --cf-dims 32
    flock /tmp/longtail-bench.lock .venv/bin/python benchmarks/topk.py --sizes 25000x25000 --sweep

Options: ``--sizes 50000x50000,100000x50000`` (users x items), ``--dims 384``, ``--k 100``,
``--cores 2``, ``--block-queries 8192 --block-items 16384``, ``--cf-dims 32`` (a second signal, like
recommend's ALS factors, with the same k), ``--sweep`` (every block size of ``--sweep-queries`` x
``--sweep-items``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _env import driver  # lib/ on the path, Spark's workers pointed at it

NUMPY_MAX_ROWS = 2048  # the reference product's rows: min(block_queries, this); its output stays < 1 GB


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        users, items = part.lower().split("x")
        sizes.append((int(float(users)), int(float(items))))
    return sizes


def numpy_rate(rows: int, dims: int, items: int, repeat: int, threads: int | None) -> tuple[float, float]:
    """(best, median) GFLOP/s of a float32 ``(rows x dims) @ (dims x items)`` in this process."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, dims), dtype=np.float32)
    b = rng.standard_normal((items, dims), dtype=np.float32)
    times = []
    with threadpool_limits(limits=threads):
        a @ b[: min(items, 4096)].T  # warm-up
        for _ in range(repeat):
            t0 = time.perf_counter()
            a @ b.T
            times.append(time.perf_counter() - t0)
    flops = 2.0 * rows * dims * items
    return flops / min(times) / 1e9, flops / statistics.median(times) / 1e9


def random_vectors(spark, n: int, dims: dict[str, int], seed: int, path: str, key: str) -> None:
    """``n`` rows of (key int, one normalised float32 vector column per entry of ``dims``) -> Parquet."""
    import pyarrow as pa

    fields = ", ".join(f"{c} array<float>" for c in dims)

    def gen(batches):
        import numpy as np

        for batch in batches:
            ids = batch.column(0).to_numpy()
            if ids.size == 0:
                continue
            rng = np.random.default_rng([seed, int(ids[0])])
            cols = [pa.array(ids.astype(np.int32))]
            for d in dims.values():
                v = rng.standard_normal((ids.size, d), dtype=np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                offsets = pa.array(np.arange(0, (ids.size + 1) * d, d, dtype=np.int32))
                cols.append(pa.ListArray.from_arrays(offsets, pa.array(v.reshape(-1))))
            yield pa.RecordBatch.from_arrays(cols, names=[key, *dims])

    parts = max(1, n // 20000)
    spark.range(0, n, 1, parts).mapInArrow(gen, f"{key} int, {fields}").write.mode("overwrite").parquet(path)


def run_one(spark, args, users: int, items: int, block_queries: int, block_items: int, tmp: str) -> dict:
    from pyspark.sql import functions as F

    from longtail.ml.topk import Signal, blocked_top_k

    q_dims = {"content_q": args.dims} | ({"cf_q": args.cf_dims} if args.cf_dims else {})
    i_dims = {"content_i": args.dims} | ({"cf_i": args.cf_dims} if args.cf_dims else {})
    q_path, i_path = (
        f"{tmp}/users_{users}_{args.dims}_{args.cf_dims}",
        f"{tmp}/items_{items}_{args.dims}_{args.cf_dims}",
    )
    if not Path(q_path).exists():
        random_vectors(spark, users, q_dims, 1, q_path, "user_idx")
    if not Path(i_path).exists():
        random_vectors(spark, items, i_dims, 2, i_path, "item_idx")
    signals = [Signal("content_score", "content_q", "content_i", args.k)]
    if args.cf_dims:
        signals.append(Signal("cf_score", "cf_q", "cf_i", args.k))
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = blocked_top_k(
        spark.read.parquet(q_path),
        spark.read.parquet(i_path),
        signals,
        block_queries=block_queries,
        block_items=block_items,
        item_blocks_per_task=args.item_blocks_per_task,
        query_blocks_per_task=args.query_blocks_per_task,
    )
    sums = [F.sum(c).alias(c) for c in result.columns[2:]]
    row = result.agg(F.count(F.lit(1)).alias("rows"), *sums).first()
    secs = time.perf_counter() - t0
    assert row is not None
    dims_total = args.dims + (args.cf_dims or 0)
    return {
        "users": users,
        "items": items,
        "dims": dims_total,
        "block_queries": block_queries,
        "block_items": block_items,
        "seconds": secs,
        "gflops": 2.0 * users * items * dims_total / secs / 1e9,
        "ns_per_pair": secs / (users * items) * 1e9,
        "rows": int(row["rows"]),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def print_table(rows: list[dict]) -> None:
    """The Markdown table. ``fraction`` is over the BEST numpy rate of all rows (a numpy timing that
    another process disturbed would flatter the row it was taken after)."""
    ref = max(r["numpy_gflops"] for r in rows)
    head = (
        "| users x items | blocks (q x i) | wall s | GFLOP/s | numpy GFLOP/s after the run: best (median; 1 thr) "
        f"| fraction of {ref:.0f} | ns / pair | rows | load 1m before/after |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c) + 2) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['users']:,} x {r['items']:,} | {r['block_queries']} x {r['block_items']} | {r['seconds']:.1f} "
            f"| {r['gflops']:.1f} | {r['numpy_gflops']:.1f} ({r['numpy_median_gflops']:.1f}; "
            f"{r['numpy_1thread_gflops']:.1f}) | {r['gflops'] / ref:.0%} | {r['ns_per_pair']:.2f} | {r['rows']:,} "
            f"| {r['load_before']:.2f} / {r['load_after']:.2f} |"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="50000x50000,100000x50000", help="users x items, comma-separated")
    p.add_argument("--dims", type=int, default=384, help="content vector length")
    p.add_argument("--cf-dims", type=int, default=0, help="add a CF signal of this rank (0: content only)")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="local[N]")
    from longtail.ml.topk import DEFAULT_BLOCK_ITEMS, DEFAULT_BLOCK_QUERIES

    # the config's defaults (recommend.block_users x block_items), which blocked_top_k also uses;
    # tuned on this 2-core machine (docs/scaling.md)
    p.add_argument("--block-queries", type=int, default=DEFAULT_BLOCK_QUERIES)
    p.add_argument("--block-items", type=int, default=DEFAULT_BLOCK_ITEMS)
    p.add_argument("--query-blocks-per-task", type=int, default=1)
    p.add_argument("--item-blocks-per-task", type=int, default=16)
    p.add_argument(
        "--sweep", action="store_true", help="time every block size of --sweep-queries x --sweep-items"
    )
    p.add_argument("--sweep-queries", default="1024,4096,8192")
    p.add_argument("--sweep-items", default="4096,8192,16384")
    p.add_argument(
        "--repeat", type=int, default=1, help="time each size this many times (every run is shown)"
    )
    p.add_argument("--numpy-repeat", type=int, default=5)
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--tmp", default=os.path.join(tempfile.gettempdir(), "longtail-bench-topk"))
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    sizes = parse_sizes(args.sizes)

    # the driver JVM is started by this process: its heap must be set before it starts
    driver(args.driver_memory, force=True)
    from longtail.core.session import build_session

    spark = build_session(
        "longtail-bench-topk",
        master=f"local[{args.cores}]",
        extra={
            "spark.sql.shuffle.partitions": str(2 * args.cores),
            "spark.local.dir": args.tmp,
            "spark.ui.showConsoleProgress": "false",
        },
    )
    blocks = [(args.block_queries, args.block_items)]
    if args.sweep:
        blocks = [
            (int(q), int(i)) for q in args.sweep_queries.split(",") for i in args.sweep_items.split(",")
        ]
    rows = []
    try:
        # warm-up (not timed): starts the Python workers and the JIT as a long-lived session has them
        run_one(spark, args, 2000, 3000, 512, 1024, args.tmp)
        for users, items in sizes:
            for (bq, bi), _ in itertools.product(blocks, range(args.repeat)):
                r = run_one(spark, args, users, items, bq, bi, args.tmp)
                rows_np = min(bq, NUMPY_MAX_ROWS)
                best, median = numpy_rate(rows_np, r["dims"], items, args.numpy_repeat, None)
                one, _ = numpy_rate(rows_np, r["dims"], items, max(2, args.numpy_repeat // 2), 1)
                r |= {"numpy_gflops": best, "numpy_median_gflops": median, "numpy_1thread_gflops": one}
                rows.append(r)
                print(json.dumps(r), flush=True)
    finally:
        spark.stop()
    signals = f"content {args.dims}" + (f" + CF {args.cf_dims}" if args.cf_dims else "")
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; local[{args.cores}]; "
          f"signals: {signals}, k={args.k}; item_blocks_per_task={args.item_blocks_per_task}")  # fmt: skip
    print("forced: one aggregate over every row and every score/rank column of the result; timed: the call")
    print(
        "(its sizing job) and that action, inputs read from Parquet; a small warm-up run before (not timed)"
    )
    print(f"numpy: float32 (min(block_queries, {NUMPY_MAX_ROWS}) x dims) @ (dims x items), default threads, best of "
          f"{args.numpy_repeat} after each run (median and 1-thread best shown)\n")  # fmt: skip
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
