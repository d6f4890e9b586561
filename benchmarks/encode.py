"""Encode throughput: sentence-transformers vs the bare TextEncoder vs the Spark `encode` stage.

Prints a table of measured items/s on the same texts and the same cores:

  (a) ``SentenceTransformer(path).encode``: its defaults (batch 32, fp32) and its best (batch 256;
      fp16 weights on GPU only);
  (b) :class:`longtail.encoder.TextEncoder` (length-sorted token-budget batches);
  (c) the Spark stage ``longtail.encode.run`` in local mode (``local[N]``, N = the cores used),
      end to end: reading ``items``, dedupe, encoding, the MERGE commit; plus a Python worker's peak
      RSS at two catalogue sizes (n/4, then n).

Texts: the shared movie overviews (title + overview, as the stage builds them), repeated with a
small variation per copy ("Part k.") to reach ``--n`` distinct texts; the mean tokens per item is
printed. Parts (a) and (b) need only torch, transformers and sentence-transformers (``--no-spark``),
so the script runs on a bare GPU box; ``--arch-from-config bert-base`` times random weights of a
BERT-base-sized model (with the MiniLM tokenizer) where the real weights are not at hand.

Examples:
    python benchmarks/encode.py --n 2000 --device cpu
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
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
# Spark's Python workers import longtail from lib/ like this process does.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO / "lib"), os.environ.get("PYTHONPATH", "")) if p
)
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

DATA = Path("/work/shared/data/movielens_tmdb/items.csv")
ARCHS = {
    # hidden, layers, heads, intermediate
    "bert-base": (768, 12, 12, 3072),
    "minilm-l6": (384, 6, 12, 1536),
}


def load_texts(path: Path, n: int) -> list[str]:
    """``n`` distinct catalogue-like texts: the overviews, copy k > 0 ending in ``Part k.``."""
    from longtail.text import encoder_text

    csv.field_size_limit(1 << 24)
    with path.open(newline="", encoding="utf-8") as fh:
        base = [encoder_text(r["title"], r["description"]) for r in csv.DictReader(fh)]
    base = [t for t in base if t]
    return [base[i % len(base)] + ("" if i < len(base) else f" Part {i // len(base)}.") for i in range(n)]


def model_dir(model: str, arch: str | None, tmp: Path) -> str:
    """The model directory to time: the real one, or random weights of ``arch`` with its tokenizer."""
    from longtail.encoder import resolve_model_path

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


def timed(fn, *args, repeat: int = 1) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls (and the last result); CUDA is synchronised around it."""
    import torch

    best, result = float("inf"), None
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_st(path: str, texts: list[str], device: str, threads: int, repeat: int) -> list[dict]:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    st = SentenceTransformer(path, device=device)
    st.encode(texts[:64])  # warm-up
    rows = []
    secs, ref = timed(lambda: st.encode(texts, normalize_embeddings=True), repeat=repeat)
    rows.append({"what": "sentence-transformers defaults", "dtype": "fp32", "batch": "32 rows", "s": secs})
    if device.startswith("cuda"):
        st = st.half()
        dtype = "fp16"
    else:
        dtype = "fp32"
    st.encode(texts[:256], batch_size=256)
    secs, _ = timed(lambda: st.encode(texts, batch_size=256, normalize_embeddings=True), repeat=repeat)
    rows.append({"what": "sentence-transformers best", "dtype": dtype, "batch": "256 rows", "s": secs})
    bench_st.reference = np.asarray(ref)  # type: ignore[attr-defined]
    return rows


def bench_encoder(args, path: str, texts: list[str], device: str, threads: int) -> tuple[list[dict], float]:
    import numpy as np

    from longtail.encoder import TextEncoder

    enc = TextEncoder(
        path, device=device, dtype=args.dtype, batch_tokens=args.batch_tokens, num_threads=threads
    )
    enc.encode(texts[:256])  # warm-up
    secs, vecs = timed(enc.encode, texts, repeat=args.repeat)
    ref = getattr(bench_st, "reference", None)
    cosine = float(np.mean(np.sum(vecs * ref, axis=1))) if ref is not None else float("nan")
    dtype = str(enc.dtype).removeprefix("torch.")
    row = {"what": "TextEncoder (bare)", "dtype": dtype, "batch": f"{enc.batch_tokens} tokens", "s": secs}
    return [row], cosine


def bench_spark(
    args, path: str, texts: list[str], threads: int
) -> tuple[list[dict], list[tuple[int, float]]]:
    from longtail import encode
    from longtail import schema as S
    from longtail.config import load_config
    from longtail.lake import Lake
    from longtail.session import build_session
    from longtail.text import content_hash

    spark = build_session(
        "bench-encode",
        master=f"local[{threads}]",
        extra={"spark.default.parallelism": str(threads), "spark.sql.shuffle.partitions": str(threads)},
    )
    from longtail.encoder import CPU_BATCH_TOKENS

    budget = min(args.batch_tokens, CPU_BATCH_TOKENS) if args.device == "cpu" else args.batch_tokens
    rows, rss = [], []
    sizes = [max(1, len(texts) // 4), len(texts)]
    try:
        for size in sizes:
            with tempfile.TemporaryDirectory() as root:
                lake = Lake(spark, root)
                now = dt.datetime(2024, 1, 1)
                data = [(f"m{i}", None, t, None, content_hash(t), now) for i, t in enumerate(texts[:size])]
                lake.overwrite(S.ITEMS, spark.createDataFrame(data, S.ITEMS_SCHEMA).repartition(threads))
                cfg = load_config(
                    overrides=[
                        f"lake.root={root}",
                        f"encoder.model={path}",
                        f"encoder.device={'cpu' if args.device == 'cpu' else args.device}",
                        f"encoder.dtype={args.dtype}",
                        f"encoder.batch_tokens={args.batch_tokens}",
                    ]
                )
                t0 = time.perf_counter()
                summary = encode.run(spark, cfg, lake=lake)
                secs = time.perf_counter() - t0
                assert summary["encoded"] == size, summary
                rss.append((size, summary["worker_peak_rss_mb"]))
                if size == len(texts):
                    rows.append(
                        {
                            "what": f"Spark stage, local[{threads}], end to end",
                            "dtype": args.dtype,
                            "batch": f"{budget} tokens",
                            "s": secs,
                        }
                    )
    finally:
        spark.stop()
    return rows, rss


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="texts to encode (distinct)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--model", default="default", help="'default' (packaged MiniLM-L6), a directory or hub id")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU cores used by every part")
    p.add_argument("--repeat", type=int, default=1, help="time each part this many times, keep the best")
    p.add_argument("--no-spark", action="store_true", help="skip part (c): no pyspark needed")
    p.add_argument("--no-st", action="store_true", help="skip part (a)")
    p.add_argument("--arch-from-config", choices=sorted(ARCHS), help="random weights of this size")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)

    import torch

    texts = load_texts(DATA, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        path = model_dir(args.model, args.arch_from_config, Path(tmp))
        from longtail.encoder import TextEncoder

        tokens = TextEncoder(path, device="cpu").tokenize(texts)[1]
        rows: list[dict] = []
        if not args.no_st:
            rows += bench_st(path, texts, args.device, args.threads, args.repeat)
        enc_rows, cosine = bench_encoder(args, path, texts, args.device, args.threads)
        rows += enc_rows
        rss: list[tuple[int, float]] = []
        if not args.no_spark:
            spark_rows, rss = bench_spark(args, path, texts, args.threads)
            rows += spark_rows

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "none"
    print(
        f"\nmodel {args.arch_from_config or args.model} ({'random weights' if args.arch_from_config else path}); "
        f"{len(texts)} texts from {DATA.name}, mean {tokens.mean():.1f} tokens/item (max_length 256); "
        f"device {args.device}, {args.threads} CPU threads ({cpu}), GPU {gpu}; torch {torch.__version__}"
    )
    base = rows[0]["s"] if rows and not args.no_st else None
    print(
        f"| {'what':44} | {'dtype':8} | {'batch':14} | {'seconds':>8} | {'items/s':>9} | {'vs ST defaults':>14} |"
    )
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 16}|{'-' * 10}|{'-' * 11}|{'-' * 16}|")
    for r in rows:
        r["items_per_s"] = len(texts) / r["s"]
        ratio = f"{base / r['s']:.2f}x" if base else "-"
        print(
            f"| {r['what']:44} | {r['dtype']:8} | {r['batch']:14} | {r['s']:8.2f} | "
            f"{r['items_per_s']:9.1f} | {ratio:>14} |"
        )
    bare = next((r for r in rows if r["what"].startswith("TextEncoder")), None)
    stage = next((r for r in rows if r["what"].startswith("Spark")), None)
    if bare and stage:
        print(f"Spark stage / bare encoder: {stage['items_per_s'] / bare['items_per_s']:.0%}")
    if cosine == cosine:
        print(f"mean cosine TextEncoder vs sentence-transformers defaults: {cosine:.5f}")
    for size, mb in rss:
        print(f"Python worker peak RSS after encoding a catalogue of {size} items: {mb:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "rss": rss, "cosine": cosine}, indent=1))


if __name__ == "__main__":
    main()
