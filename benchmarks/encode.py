"""Encode throughput: sentence-transformers vs the bare TextEncoder vs the Spark `encode` stage.

Prints a table of measured items/s on the same texts and the same cores, as the median and the
spread (slowest-fastest) of ``--rounds`` interleaved rounds (each round times every row once, in
turn, so a neighbour's load falls on all rows alike):

  (a) ``SentenceTransformer(path).encode`` with its defaults (batch 32) and at the other batch
      sizes of ``--st-batches`` (fp16 weights on GPU only);
  (b) :class:`longtail.ml.encoder.TextEncoder` as configured (``cpu_linear=auto``), and on CPU also
      with torch's own linear layers (``cpu_linear=aten``, the code before oneDNN) for an A/B;
  (c) the Spark stage ``longtail.stages.encode.run`` in local mode (``local[N]``, N = the cores used), end
      to end on a fresh lake each round: reading ``items``, dedupe, encoding, the MERGE commit. The
      session and its Python workers are warmed by one stage run on 64 items first (the model is
      loaded once per worker, as in a long-lived session; the cold load is timed separately), and
      again, untimed, before each round's run: Spark ends a Python worker idle for a minute.

Every timed run records the 1-minute load average at its start and the CPU share that processes
other than this benchmark (and its JVM and Python workers) took during it, from ``/proc/stat``:
the machine is shared, and a run with ``others`` above ~0.1 core was disturbed.

``--rss-sizes 3000,30000`` measures a Spark Python worker's peak RSS (``getrusage`` inside the UDF,
the stage's ``worker_peak_rss_mb``) after encoding each catalogue size, each in a fresh process (new
JVM, new workers); ``--rss-calls N`` measures one process that encodes N texts in calls of
2,048 texts (conf/spark/local.conf's ``spark.sql.execution.arrow.maxRecordsPerBatch``), as a worker does, printing peak and current RSS after each call.

Texts: the shared movie overviews (title + overview, as the stage builds them), repeated with a
small variation per copy ("Part k.") to reach ``--n`` distinct texts; the mean tokens per item is
printed. Parts (a) and (b) need only torch, transformers and sentence-transformers (``--no-spark``),
so the script runs on a bare GPU box; ``--arch-from-config bert-base`` times random weights of a
BERT-base-sized model (with the MiniLM tokenizer) where the real weights are not at hand.

Examples:
    python benchmarks/encode.py --n 3000 --rounds 3
    python benchmarks/encode.py --n 3000 --no-st --no-spark --rss-sizes 3000,30000 --rss-calls 30000
    python benchmarks/encode.py --n 100000 --device cuda --no-spark
    python benchmarks/encode.py --n 100000 --device cuda --no-spark --arch-from-config bert-base
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _env  # noqa: F401  (lib/ on the path, Spark's workers pointed at it)

# conf/spark/local.conf's spark.sql.execution.arrow.maxRecordsPerBatch: the rows per Arrow batch that
# a local-mode encode task hands the encoder (encoder.arrow_batch_rows: null leaves it to the profile).
LOCAL_ARROW_BATCH_ROWS = 2048

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

DATA = Path("/work/shared/data/movielens_tmdb/items.csv")
ARCHS = {
    # hidden, layers, heads, intermediate
    "bert-base": (768, 12, 12, 3072),
    "minilm-l6": (384, 6, 12, 1536),
    # MiniLM's widths with 2 layers: benchmarks/scale.py's encoder beyond the real model's sizes
    "small-2l": (384, 2, 12, 1536),
}


def load_texts(path: Path, n: int) -> list[str]:
    """``n`` distinct catalogue-like texts: the overviews, copy k > 0 ending in ``Part k.``."""
    from longtail.core.text import encoder_text

    csv.field_size_limit(1 << 24)
    with path.open(newline="", encoding="utf-8") as fh:
        base = [encoder_text(r["title"], r["description"]) for r in csv.DictReader(fh)]
    base = [t for t in base if t]
    return [base[i % len(base)] + ("" if i < len(base) else f" Part {i // len(base)}.") for i in range(n)]


def model_dir(model: str, arch: str | None, tmp: Path) -> str:
    """The model directory to time: the real one, or random weights of ``arch`` with its tokenizer."""
    from longtail.ml.encoder import resolve_model_path

    _, path = resolve_model_path(model)
    if arch is None:
        return str(path)
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    hidden, layers, heads, inter = ARCHS[arch]
    out = tmp / f"random-{arch}"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (path / name).exists():
            shutil.copy(path / name, out / name)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inter, max_position_embeddings=512,
    )  # fmt: skip
    BertModel(cfg).save_pretrained(str(out), safe_serialization=True)
    return str(out)


# --- measuring on a shared machine ----------------------------------------------------------------
_HZ = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU seconds all processes of the machine have spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / _HZ  # minus idle and iowait


def _tree_seconds(root: int | None = None) -> float:
    """CPU seconds of this process and its descendants (the JVM, Spark's Python workers), with
    those of descendants that have exited (``cutime``/``cstime`` of their parent): Spark ends a
    Python worker that has been idle for a minute, and its CPU time must not vanish from the sum."""
    parent, cpu = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        cpu[pid] = sum(int(x) for x in fields[11:15]) / _HZ  # utime, stime, cutime, cstime
    mine, todo = set(), [root or os.getpid()]
    while todo:
        pid = todo.pop()
        mine.add(pid)
        todo += [c for c, p in parent.items() if p == pid and c not in mine]
    return sum(cpu.get(p, 0.0) for p in mine)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Run:
    """One timed run: wall seconds, 1-min load at its start, other processes' CPU share during it."""

    seconds: float
    load: float
    others: float


@dataclass
class Row:
    """A row of the table: a way to encode the texts, timed once per round."""

    what: str
    dtype: str
    batch: str
    fn: Callable[[], object]
    prepare: Callable[[], None] = lambda: None
    runs: list[Run] = field(default_factory=list)
    result: object = None

    def time_once(self) -> None:
        self.prepare()
        _sync()
        load = os.getloadavg()[0]
        busy0, own0, t0 = _busy_seconds(), _tree_seconds(), time.perf_counter()
        self.result = self.fn()
        _sync()
        wall = time.perf_counter() - t0
        others = (_busy_seconds() - busy0 - (_tree_seconds() - own0)) / wall
        self.runs.append(Run(wall, load, max(0.0, others)))


# --- the rows --------------------------------------------------------------------------------------
def st_rows(path: str, texts: list[str], device: str, threads: int, batches: list[int]) -> list[Row]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    st = SentenceTransformer(path, device=device)
    dtype = "fp32"
    if device.startswith("cuda"):
        st = st.half()
        dtype = "fp16"
    st.encode(texts[:64])  # warm-up
    rows = []
    for b in batches:
        name = "sentence-transformers defaults" if b == 32 else "sentence-transformers"
        rows.append(
            Row(
                name,
                dtype,
                f"{b} rows",
                lambda b=b: st.encode(texts, batch_size=b, normalize_embeddings=True),
            )
        )
    return rows


def encoder_rows(args, path: str, texts: list[str]) -> tuple[list[Row], dict[str, float]]:
    """The bare encoder (as configured, and with torch's linear layers on CPU), and its load time."""
    from longtail.ml.encoder import TextEncoder

    variants = ["auto", "aten"] if args.device == "cpu" and not args.no_aten else ["auto"]
    rows, load_s = [], {}
    for cpu_linear in variants:
        t0 = time.perf_counter()
        enc = TextEncoder(
            path,
            device=args.device,
            dtype=args.dtype,
            batch_tokens=args.batch_tokens,
            num_threads=args.threads,
            cpu_linear=cpu_linear,
        )
        load_s[enc.linear_backend] = time.perf_counter() - t0
        enc.encode(texts[:256])  # warm-up
        label = f"TextEncoder (bare, linear {enc.linear_backend})"
        dtype = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(
            str(enc.dtype).removeprefix("torch."), str(enc.dtype)
        )
        rows.append(Row(label, dtype, f"{enc.batch_tokens} tokens", lambda enc=enc: enc.encode(texts)))
    return rows, load_s


def _items_lake(spark, root: str, texts: list[str], partitions: int):
    from longtail.core import schema as S
    from longtail.core.text import content_hash
    from longtail.lake import Lake

    lake = Lake(spark, root)
    now = dt.datetime(2024, 1, 1)
    data = [(f"m{i}", None, t, None, content_hash(t), now) for i, t in enumerate(texts)]
    lake.overwrite(S.ITEMS, spark.createDataFrame(data, S.ITEMS_SCHEMA).repartition(partitions))
    return lake


def _stage_config(args, path: str, root: str):
    from longtail.core.config import load_config

    return load_config(
        overrides=[
            f"lake.root={root}",
            f"encoder.model={path}",
            f"encoder.device={args.device}",
            f"encoder.dtype={args.dtype}",
            f"encoder.batch_tokens={args.batch_tokens}",
        ]
    )


def _session(threads: int):
    from longtail.core.session import build_session

    return build_session(
        "bench-encode",
        master=f"local[{threads}]",
        extra={
            "spark.default.parallelism": str(threads),
            "spark.sql.shuffle.partitions": str(threads),
            "spark.ui.showConsoleProgress": "false",
            # as conf/spark/local.conf sets it for the launcher's local runs
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(LOCAL_ARROW_BATCH_ROWS),
        },
    )


def spark_row(args, path: str, texts: list[str], tmp: Path) -> tuple[Row, object, dict]:
    """The stage end to end on a fresh lake per round, after a warm-up run (returns the session)."""
    from longtail.ml.encoder import CPU_BATCH_TOKENS
    from longtail.stages import encode

    spark = _session(args.threads)
    t0 = time.perf_counter()
    warm_texts = [f"{t} (warm-up)" for t in texts[:64]]
    warm = _items_lake(spark, str(tmp / "lake-warm"), warm_texts, args.threads)
    summary = encode.run(spark, _stage_config(args, path, str(tmp / "lake-warm")), lake=warm)
    cold = {"seconds": time.perf_counter() - t0, "workers": summary["workers"]}
    state: dict = {}

    def prepare() -> None:
        # Spark ends Python workers idle for a minute (the other rows take longer than that), so
        # warm them again, untimed: the timed run measures workers that hold the model already.
        root = tempfile.mkdtemp(dir=tmp, prefix="lake-warm-")
        encode.run(
            spark, _stage_config(args, path, root), lake=_items_lake(spark, root, warm_texts, args.threads)
        )
        root = tempfile.mkdtemp(dir=tmp, prefix="lake-")
        state["lake"] = _items_lake(spark, root, texts, args.threads)
        state["cfg"] = _stage_config(args, path, root)

    def run() -> dict:
        out = encode.run(spark, state["cfg"], lake=state["lake"])
        assert out["encoded"] == len(texts), out
        return out

    budget = min(args.batch_tokens, CPU_BATCH_TOKENS) if args.device == "cpu" else args.batch_tokens
    dtype = "fp32" if args.device == "cpu" and args.dtype == "auto" else args.dtype
    row = Row(f"Spark stage, local[{args.threads}], end to end", dtype, f"{budget} tokens", run, prepare)
    return row, spark, cold


# --- memory ----------------------------------------------------------------------------------------
def rss_child_stage(args, path: str, texts: list[str]) -> dict:
    """In a fresh process: the stage on ``texts``; a Python worker's peak RSS (MiB)."""
    from longtail.stages import encode

    spark = _session(args.threads)
    try:
        with tempfile.TemporaryDirectory() as root:
            lake = _items_lake(spark, root, texts, args.threads)
            t0 = time.perf_counter()
            summary = encode.run(spark, _stage_config(args, path, root), lake=lake)
            summary["bench_seconds"] = time.perf_counter() - t0
    finally:
        spark.stop()
    return summary


def rss_child_calls(args, path: str, texts: list[str]) -> dict:
    """In a fresh process: one encoder (1 thread, like a worker) fed one Arrow batch at a time."""
    from longtail.ml.encoder import TextEncoder

    rows = LOCAL_ARROW_BATCH_ROWS
    enc = TextEncoder(
        path, device=args.device, dtype=args.dtype, batch_tokens=args.batch_tokens, num_threads=1
    )
    peak, current = [], []
    for start in range(0, len(texts), rows):
        enc.encode(texts[start : start + rows])
        status = _proc_status()
        peak.append(round(status["VmHWM"] / 1024))
        current.append(round(status["VmRSS"] / 1024))
    return {"batch_rows": rows, "calls": len(peak), "peak_mib": peak, "current_mib": current}


def _proc_status() -> dict[str, int]:
    """VmHWM/VmRSS (KiB) of this process: unlike ``ru_maxrss``, VmHWM does not carry the parent's
    RSS at fork over into an exec'd child such as this one."""
    with open("/proc/self/status") as fh:
        return {
            k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in fh) if k in ("VmHWM", "VmRSS")
        }


def run_child(argv: list[str], kind: str, size: int) -> dict:
    cmd = [sys.executable, __file__, *argv, f"--child-{kind}", str(size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- the table -------------------------------------------------------------------------------------
def report(rows: list[Row], n: int) -> list[dict]:
    base = next((r for r in rows if r.what == "sentence-transformers defaults"), None)
    base_s = statistics.median(x.seconds for x in base.runs) if base else None
    print(
        f"| {'what':44} | {'dtype':5} | {'batch':12} | {'seconds':>7} | {'items/s: median [min-max]':>26} "
        f"| {'vs ST defaults':>14} | {'others':>6} |"
    )
    print(f"|{'-' * 46}|{'-' * 7}|{'-' * 14}|{'-' * 9}|{'-' * 28}|{'-' * 16}|{'-' * 8}|")
    out = []
    for r in rows:
        secs = [x.seconds for x in r.runs]
        med = statistics.median(secs)
        ips = sorted(n / s for s in secs)
        ratio = f"{base_s / med:.2f}x" if base_s else "-"
        spread = f"{n / med:7.1f} [{ips[0]:.1f}-{ips[-1]:.1f}]"
        print(
            f"| {r.what:44} | {r.dtype:5} | {r.batch:12} | {med:7.2f} | {spread:>26} | {ratio:>14} "
            f"| {max(x.others for x in r.runs):6.2f} |"
        )
        out.append(
            {
                "what": r.what,
                "dtype": r.dtype,
                "batch": r.batch,
                "seconds": secs,
                "median_items_per_s": n / med,
                "loads": [x.load for x in r.runs],
                "others": [x.others for x in r.runs],
            }
        )
    return out


def per_round_ratio(a: Row, b: Row) -> str:
    """Median and spread of a/b speed over rounds (a and b timed next to each other in each round)."""
    ratios = sorted(y.seconds / x.seconds for x, y in zip(a.runs, b.runs, strict=True))
    return f"{statistics.median(ratios):.2f}x [{ratios[0]:.2f}-{ratios[-1]:.2f}]"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3000, help="texts to encode (distinct)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--model", default="default", help="'default' (packaged MiniLM-L6), a directory or hub id")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU cores used by every part")
    p.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; the table shows median and spread"
    )
    p.add_argument(
        "--st-batches", default="32,16", help="sentence-transformers batch sizes (32: its default)"
    )
    p.add_argument("--no-spark", action="store_true", help="skip part (c): no pyspark needed")
    p.add_argument("--no-st", action="store_true", help="skip part (a)")
    p.add_argument(
        "--no-aten", action="store_true", help="skip the TextEncoder row with torch's linear layers"
    )
    p.add_argument("--arch-from-config", choices=sorted(ARCHS), help="random weights of this size")
    p.add_argument(
        "--rss-sizes", default="", help="catalogue sizes for a Spark worker's peak RSS, e.g. 3000,30000"
    )
    p.add_argument(
        "--rss-calls", type=int, default=0, help="texts for the per-call RSS series of one encoder"
    )
    p.add_argument("--texts", default=str(DATA), help="CSV with title and description columns")
    p.add_argument(
        "--parity",
        action="store_true",
        help="also encode every text with TextEncoder in float32 on the same device and print the "
        "cosine of the timed encoder's vectors to it (bf16/fp16 parity)",
    )
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--child-stage", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--child-calls", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    parent_argv = [a for a in argv if not a.startswith("--child-")]

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        path = model_dir(args.model, args.arch_from_config, tmp)
        if args.child_stage or args.child_calls:
            texts = load_texts(Path(args.texts), args.child_stage or args.child_calls)
            fn = rss_child_stage if args.child_stage else rss_child_calls
            print(json.dumps(fn(args, path, texts), default=str))
            return
        load_start = os.getloadavg()
        texts = load_texts(Path(args.texts), args.n)
        from longtail.ml.encoder import TextEncoder

        tokens = TextEncoder(path, device="cpu", cpu_linear="aten").tokenize(texts)[1]
        rows: list[Row] = []
        if not args.no_st:
            rows += st_rows(
                path, texts, args.device, args.threads, [int(b) for b in args.st_batches.split(",")]
            )
        enc_rows, load_s = encoder_rows(args, path, texts)
        rows += enc_rows
        spark, cold = None, None
        if not args.no_spark:
            stage, spark, cold = spark_row(args, path, texts, tmp)
            rows.append(stage)
        try:
            for r in range(args.rounds):
                for row in rows:
                    row.time_once()
                    print(
                        f"round {r + 1}: {row.what} ({row.batch}): {len(texts) / row.runs[-1].seconds:.1f} items/s, "
                        f"load {row.runs[-1].load:.2f}, others {row.runs[-1].others:.2f}",
                        flush=True,
                    )
        finally:
            if spark is not None:
                spark.stop()
        rss_stage = {
            s: run_child(parent_argv, "stage", s) for s in map(int, filter(None, args.rss_sizes.split(",")))
        }
        rss_calls = run_child(parent_argv, "calls", args.rss_calls) if args.rss_calls else None
    load_end = os.getloadavg()

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "none"
    print(
        f"\nmodel {args.arch_from_config or args.model} ({'random weights' if args.arch_from_config else path}); "
        f"{len(texts)} texts from {Path(args.texts).name}, mean {tokens.mean():.1f} tokens/item (max_length 256); "
        f"device {args.device}, {args.threads} CPU threads ({cpu}, torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}), GPU {gpu}; torch {torch.__version__}; "
        f"{args.rounds} interleaved rounds"
    )
    fmt = ", ".join
    print(
        f"load average (1, 5, 15 min): at start {fmt(f'{x:.2f}' for x in load_start)}, "
        f"at end {fmt(f'{x:.2f}' for x in load_end)}"
    )
    if rows and rows[0].runs:
        table = report(rows, len(texts))
    else:
        table = []
    st = next((r for r in rows if r.what == "sentence-transformers defaults"), None)
    bare = next((r for r in rows if r.what.startswith("TextEncoder")), None)
    aten = next((r for r in rows if r.what.endswith("linear aten)")), None)
    stage = next((r for r in rows if r.what.startswith("Spark")), None)
    if st and bare and st.runs:
        print(f"TextEncoder / ST defaults, per round: {per_round_ratio(bare, st)}")
    if aten and bare and aten is not bare and aten.runs:
        print(
            f"TextEncoder, {bare.what.split(', ')[-1][:-1]} / linear aten, per round: "
            f"{per_round_ratio(bare, aten)}"
        )
    if stage and bare and stage.runs:
        print(f"Spark stage / bare encoder, per round: {per_round_ratio(stage, bare)}")
    print("encoder load (s): " + ", ".join(f"linear {k} {v:.2f}" for k, v in load_s.items()))
    if cold:
        print(
            f"Spark warm-up (session, {cold['workers']} workers loading the model, 64 items): "
            f"{cold['seconds']:.1f} s"
        )
    cosine = float("nan")
    ref = st.result if st else None
    if ref is not None and bare is not None and bare.result is not None:
        import numpy as np

        cos = np.sum(np.asarray(bare.result) * np.asarray(ref), axis=1)
        cosine = float(cos.mean())
        print(f"cosine TextEncoder vs sentence-transformers defaults: mean {cosine:.6f}, min {cos.min():.6f}")
    parity = None
    if args.parity and bare is not None and bare.result is not None:
        import numpy as np

        from longtail.ml.encoder import TextEncoder

        ref32 = TextEncoder(path, device=args.device, dtype="float32", batch_tokens=args.batch_tokens).encode(
            texts
        )
        cos = np.sum(np.asarray(bare.result) * ref32, axis=1)
        parity = {"dtype": bare.dtype, "mean": float(cos.mean()), "min": float(cos.min())}
        print(
            f"parity: TextEncoder {bare.dtype} vs TextEncoder fp32 on {args.device}, {len(texts)} texts: "
            f"cosine mean {cos.mean():.7f}, min {cos.min():.7f}"
        )
    for size, summary in rss_stage.items():
        print(
            f"Spark stage, catalogue of {size} items: Python worker peak RSS {summary['worker_peak_rss_mb']:.0f} MiB "
            f"({summary['workers']} workers, {summary['bench_seconds']:.1f} s)"
        )
    if rss_calls:
        print(
            f"one encoder, {rss_calls['calls']} calls of {rss_calls['batch_rows']} texts: peak RSS (MiB) after each "
            f"call {rss_calls['peak_mib']}; current RSS {rss_calls['current_mib']}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": table,
                    "cosine": cosine,
                    "parity_vs_fp32": parity,
                    "load_start": load_start,
                    "load_end": load_end,
                    "encoder_load_s": load_s,
                    "rss_stage": rss_stage,
                    "rss_calls": rss_calls,
                },
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
