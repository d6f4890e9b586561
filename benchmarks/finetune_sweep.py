"""Fine-tuning settings on the movie data: training length x merge weight x seed, one training each.

Per seed, the encoder is fine-tuned ONCE on evaluate's training part (``--holdout validation``:
the training part of the validation split, the test part never read) with ``--steps`` steps; each
``--weights`` value then saves the model at ``base + weight x (tuned - base)``
(``finetune.merge_weight``), encodes the whole catalogue with it, and ranks the ``content`` variant
through :func:`longtail.stages.evaluate.evaluate` exactly as ``evaluate`` ranks ``content_ft`` (the
same split, ALS/head/profiles on the training part, lists at each k). The frozen encoder's
``content`` is measured once the same way. Prints one row per (steps, seed, weight): NDCG@10, its
gain over the frozen encoder, Recall@20, cold Recall@20 (users with a cold test item), training
seconds; and the mean gain per setting over the seeds. With ``--soup N`` each seed ``s`` stands for
``finetune.seed=s, finetune.soup=N``: N trainings (seeds s .. s+N-1) averaged in weight space before
the weight applies. Run under the benchmark lock::

    flock /tmp/longtail-bench.lock .venv/bin/python benchmarks/finetune_sweep.py \\
        --lake-root /tmp/lt_ftsweep --holdout validation --steps 40 --weights 0.25 0.5 1 --seeds 7 42 1
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _env import REPO, driver  # lib/ on the path, Spark's workers pointed at it

driver("4g")

# what the sweep ranks and how: content only, nothing that does not change it
SETTINGS = [
    "evaluate.variants=[content]",
    "evaluate.bootstrap=0",
    "evaluate.report=false",
    "evaluate.finetuned=never",
    "recommend.fusion=blend",
    "train.vae.enabled=false",
]
# (metric, k, segment, column)
COLUMNS = (
    ("ndcg", 10, "all", "NDCG@10"),
    ("recall", 20, "all", "Recall@20"),
    ("recall", 20, "cold", "cold R@20"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--movies", default=str(REPO.parent / "shared" / "data" / "movielens_tmdb"))
    p.add_argument("--lake-root", default="/tmp/lt_ftsweep")
    p.add_argument("--holdout", choices=["validation", "test"], default="validation")
    p.add_argument("--steps", type=int, nargs="+", default=[10], help="finetune.max_steps values")
    p.add_argument("--weights", type=float, nargs="+", default=[1.0], help="finetune.merge_weight values")
    p.add_argument("--seeds", type=int, nargs="+", default=[7], help="finetune.seed values")
    p.add_argument(
        "--soup",
        type=int,
        default=1,
        help="each seed s stands for finetune.seed=s with finetune.soup=N: N trainings (seeds s .. s+N-1) averaged",
    )
    p.add_argument("--set", action="append", default=[], help="further config overrides (key=value)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--json", help="write every row as JSON to this file")
    return p.parse_args(argv)


def content_figures(all_metrics: Any) -> dict[str, float | None]:
    """The ``content`` list's :data:`COLUMNS` from evaluate's ``all_metrics`` (pandas)."""
    rows = all_metrics[all_metrics["variant"] == "content"]
    got = {(r.metric, int(r.k), r.segment): float(r.value) for r in rows.itertuples()}
    return {title: got.get((m, k, seg)) for m, k, seg, title in COLUMNS}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from longtail.core import schema as S
    from longtail.core.config import load_config
    from longtail.core.session import build_session
    from longtail.lake import Lake
    from longtail.lake.runs import new_run_id
    from longtail.ml import finetune as FT
    from longtail.ml.encoder import inspect_model
    from longtail.ml.encoding import encode_items
    from longtail.ml.model import current_embeddings, encoder_model_id
    from longtail.stages import encode, ingest
    from longtail.stages import evaluate as E

    data = Path(args.movies).resolve()
    overrides = [
        f"lake.root={args.lake_root}",
        f"input.items={data / 'catalogue.csv'}",
        f"input.interactions={data / 'interactions.csv'}",
        f"evaluate.holdout={args.holdout}",
        *SETTINGS,
        *args.set,
    ]
    cfg = load_config(overrides=overrides)
    spark = build_session("longtail-finetune-sweep", master=args.master)
    spark.sparkContext.setLogLevel("WARN")
    lake = Lake.from_config(spark, cfg)
    for stage in (ingest, encode):  # incremental: a second run re-uses the lake
        stage.run(spark, cfg, lake=lake, run_id=new_run_id())
    items = lake.read(S.ITEMS).persist()
    interactions = lake.read(S.INTERACTIONS).persist()
    train_part, _ = E.split(interactions, cfg)  # what evaluate fine-tunes content_ft on
    base = inspect_model(cfg.encoder.model, pooling=cfg.encoder.pooling, max_length=cfg.encoder.max_length)
    spec = [E.ListSpec("content", "content")]

    def measure(embeddings: Any, model_id: str) -> dict[str, float | None]:
        result = E.evaluate(
            spark, cfg, interactions=interactions, items=items, embeddings=embeddings,
            model_id=model_id, run_id=new_run_id(), specs=spec,
        )  # fmt: skip
        result["metrics"].unpersist()
        return content_figures(result["all_metrics"])

    mid = encoder_model_id(cfg.encoder)
    frozen = measure(current_embeddings(lake, mid, items=items), mid)
    print(f"frozen {cfg.encoder.model}: {frozen}", flush=True)
    rows: list[dict[str, Any]] = []
    soups = {seed: [seed + n for n in range(args.soup)] for seed in args.seeds}  # what finetune.soup trains
    every = sorted({one for seeds in soups.values() for one in seeds})
    samples = dict(zip(every, FT.co_occurrence_samples(train_part, items, cfg.finetune, every), strict=True))
    for steps in args.steps:
        for seed, seeds in soups.items():
            models, infos = [], []
            for one in seeds:
                ft = dataclasses.replace(cfg.finetune, max_steps=steps, seed=one)
                model, tokenizer, info = FT.train(base.path, samples[one], ft, pooling=base.pooling)
                models.append(model)
                infos.append(info)
            info = {
                "train_seconds": sum(i["train_seconds"] for i in infos),
                "loss_first": statistics.mean(i["loss_first"] for i in infos),
                "loss_last": statistics.mean(i["loss_last"] for i in infos),
            }
            for weight in args.weights:
                with tempfile.TemporaryDirectory(prefix="longtail-ftsweep-") as tmp:
                    folder = FT.save(
                        copy.deepcopy(models), tokenizer, base.path, Path(tmp) / "m", {},
                        merge_weight=weight, seeds=seeds,
                    )  # fmt: skip
                    settings = dataclasses.replace(cfg.encoder, model=str(folder))
                    tuned_id = encoder_model_id(settings)
                    vectors = encode_items(spark, settings, items, model_id=tuned_id).localCheckpoint(
                        eager=True
                    )
                got = measure(vectors, tuned_id)
                vectors.unpersist()
                gain = got["NDCG@10"] / frozen["NDCG@10"] - 1 if frozen["NDCG@10"] else None
                row = {"steps": steps, "seed": seed, "soup": args.soup, "weight": weight, **got, "gain": gain,
                       "train_seconds": info["train_seconds"], "loss_first": info["loss_first"],
                       "loss_last": info["loss_last"]}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)

    print(
        f"\nholdout {args.holdout}; frozen content: "
        + ", ".join(f"{k} {v:.4f}" for k, v in frozen.items() if v is not None)
    )
    print("| steps | soup | weight | seed | NDCG@10 | gain | Recall@20 | cold R@20 | train s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['steps']} | {r['soup']} | {r['weight']:g} | {r['seed']} | {r['NDCG@10']:.4f} | {r['gain']:+.0%} | "
            f"{r['Recall@20']:.4f} | {r['cold R@20']:.4f} | {r['train_seconds']:.0f} |"
        )
    print("\n| steps | weight | mean gain (sd) over seeds |\n|---:|---:|---:|")
    for steps in args.steps:
        for weight in args.weights:
            gains = [r["gain"] for r in rows if r["steps"] == steps and r["weight"] == weight]
            sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
            print(f"| {steps} | {weight:g} | {statistics.mean(gains):+.0%} ({sd:.0%}) |")
    machine = f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, master {args.master}"
    print(f"\nmachine: {machine}")
    if args.json:
        Path(args.json).write_text(json.dumps({"frozen": frozen, "rows": rows, "machine": machine,
                                               "args": vars(args)}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
