"""Recommendation quality on three datasets, with the default config and nothing chosen by figures.

Datasets (``--datasets``, default all three):

* ``movies``: the shared MovieLens + TMDB data, ``catalogue.csv`` (rated movies plus 1,264 never
  rated, so cold items exist in the catalogue) and ``interactions.csv``;
* ``dense``: the generated sample with the default ``sample`` settings (``preset: dense``);
* ``sparse``: the generated sample with ``conf/sample-sparse.yaml`` (30,000 users with 1-3
  interactions over 4 days, 5,000 items of which 75% are never bought).

Each dataset gets its own lake under ``--lake-root`` (``ingest`` and ``encode`` are incremental:
a second run re-uses them), then ONE ``evaluate`` with the default config (``conf/base.yaml``:
holdout ``test``, every variant, ``evaluate.k`` [10, 20], the bootstrap intervals). No setting is
tuned, here or elsewhere, on these figures. One table per dataset: the headline metrics and each
variant's difference to ``cf`` with its paired bootstrap 95% interval. ``--json`` writes every
figure; each dataset's report lands in ``<lake>/reports/<run_id>``.

The text vectors are encoded with torch's own linear layers (``--cpu-linear aten``, i.e.
``encoder.cpu_linear=aten``), not the default ``auto``: ``auto`` takes oneDNN or torch's BLAS by
a timing (kept per host, docs/encode.md), so two hosts, or one host before and after its timing is
deleted, may encode the same items either way, and the two differ at fp32 rounding (up to 2e-7 per
component), which is enough to change the learned ranker's choice on the sparse sample
(docs/evaluation.md, "Run-to-run variation"). With the pin, a fresh ``--lake-root`` gives the same
figures on the same machine; items already in a re-used lake keep the vectors they were encoded
with. Run under the benchmark lock::

    flock /tmp/longtail-bench.lock .venv/bin/python benchmarks/quality.py --lake-root /tmp/lt_quality3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from _env import REPO, dataset_names, driver  # lib/ on the path, Spark's workers pointed at it

# the coverage bootstrap collects up to 2 million list rows: more than the default 1 GiB driver heap
driver("4g")

DATASETS = ("movies", "dense", "sparse")
# (metric, k, segment, column title): the table's value columns
COLUMNS = (
    ("ndcg", 10, "all", "NDCG@10"),
    ("recall", 20, "all", "Recall@20"),
    ("long_tail_coverage", 10, "all", "LT cov@10 (incl. cold)"),
    ("long_tail_coverage_interacted", 10, "all", "LT cov@10 (interacted)"),
    ("aplt", 10, "all", "APLT@10"),
    ("recall", 20, "cold", "cold Recall@20 (users with a cold test item)"),
    ("recall_all_users", 20, "cold", "cold Recall@20 (all users)"),
)
# (metric, k): the differences to cf shown with their intervals
DIFFS = (("ndcg", 10), ("recall", 20), ("long_tail_coverage", 10), ("long_tail_coverage_interacted", 10))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from longtail.ml.encoder import CPU_LINEARS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--movies", default=str(REPO.parent / "shared" / "data" / "movielens_tmdb"))
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: movies,dense,sparse")
    p.add_argument("--lake-root", default="/tmp/lt_quality3", help="one lake per dataset below this")
    p.add_argument("--master", default="local[2]")
    p.add_argument(
        "--conf", action="append", default=[], help="extra YAML profile(s) for every dataset (default: none)"
    )
    p.add_argument("--json", help="write every figure as JSON to this file")
    p.add_argument(
        "--sample-seed",
        type=int,
        help="generate the dense and sparse samples with this sample.seed instead of the default: a second "
        "draw of the same generator, to choose settings on (with evaluate.holdout: test) where a validation "
        "split leaves too little history (the sparse sample); use its own --lake-root",
    )
    p.add_argument(
        "--finetune",
        action="store_true",
        help="evaluate.finetuned=always: the encoder fine-tuned on each training part (docs/finetune.md) "
        "ranks content_ft, fused_ft, fused_rerank_ft beside the base model's variants",
    )
    p.add_argument(
        "--ablate",
        action="append",
        default=[],
        choices=["vae"],
        help="evaluate.ablate: also rank fused and fused_rerank with the ranker fitted without this signal "
        "(<variant>_no_<signal>) and print the paired difference it makes",
    )
    p.add_argument(
        "--cpu-linear",
        default="aten",
        choices=CPU_LINEARS,
        help="encoder.cpu_linear for the items this run encodes (default aten: the same vectors at any load; "
        "auto, the production default, picks by a timing kept per host)",
    )
    return p.parse_args(argv)


def headline(all_metrics: Any) -> dict[str, dict[str, float | None]]:
    """``{variant: {column title: value}}`` from evaluate's ``all_metrics`` (pandas)."""
    out: dict[str, dict[str, float | None]] = {}
    for name, rows in all_metrics.groupby("variant"):
        values = {(r.metric, int(r.k), r.segment): float(r.value) for r in rows.itertuples()}
        out[str(name)] = {title: values.get((m, k, seg)) for m, k, seg, title in COLUMNS}
    return out


def differences(intervals: Any) -> dict[str, dict[str, str]]:
    """``{variant: {"dNDCG@10": "+0.0012 [-0.0030, +0.0051]", ...}}`` from evaluate's intervals."""
    out: dict[str, dict[str, str]] = {}
    for r in intervals.itertuples():
        if (r.metric, int(r.k)) in DIFFS:
            title = f"d{_short(r.metric)}@{int(r.k)}"
            out.setdefault(str(r.variant), {})[title] = f"{r.diff:+.4f} [{r.lo:+.4f}, {r.hi:+.4f}]"
    return out


def _short(metric: str) -> str:
    return {
        "ndcg": "NDCG",
        "recall": "Recall",
        "long_tail_coverage": "LTcov",
        "long_tail_coverage_interacted": "LTcov(int.)",
    }[metric]


def table(
    rows: dict[str, dict[str, float | None]], diffs: dict[str, dict[str, str]], names: list[str]
) -> str:
    titles = [c[3] for c in COLUMNS]
    diff_titles = [f"d{_short(m)}@{k}" for m, k in DIFFS]
    lines = [
        "| variant | " + " | ".join(titles) + " |",
        "|---|" + "---:|" * len(titles),
    ]
    for name in names:
        cells = ["-" if rows[name][t] is None else f"{rows[name][t]:.4f}" for t in titles]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| variant vs cf | " + " | ".join(f"{t} [95% CI]" for t in diff_titles) + " |",
        "|---|" + "---:|" * len(diff_titles),
    ]
    for name in names:
        if name in diffs:
            lines.append(f"| {name} | " + " | ".join(diffs[name].get(t, "-") for t in diff_titles) + " |")
    return "\n".join(lines)


def ablation_table(diffs: dict[str, dict[str, str]], pairs: list[tuple[str, str]]) -> str:
    """The paired difference each ablated signal makes: ``<variant>`` minus ``<variant>_no_<signal>``."""
    diff_titles = [f"d{_short(m)}@{k}" for m, k in DIFFS]
    lines = [
        "",
        "| with minus without | " + " | ".join(f"{t} [95% CI]" for t in diff_titles) + " |",
        "|---|" + "---:|" * len(diff_titles),
    ]
    for full, without in pairs:
        if full in diffs:
            cells = " | ".join(diffs[full].get(t, "-") for t in diff_titles)
            lines.append(f"| {full} - {without} | {cells} |")
    return "\n".join(lines)


def inputs(spark: Any, name: str, args: argparse.Namespace, lake_dir: Path) -> tuple[list[str], list[str]]:
    """``(conf files, overrides)`` that point the config at the dataset (generating a sample)."""
    from longtail.core.config import load_config
    from longtail.stages import generate_sample

    if name == "movies":
        data = Path(args.movies).resolve()
        return [], [
            f"input.items={data / 'catalogue.csv'}",
            f"input.interactions={data / 'interactions.csv'}",
        ]
    confs = [str(REPO / "conf" / "sample-sparse.yaml")] if name == "sparse" else []
    sample_dir = lake_dir / "sample_input"
    seed = [] if args.sample_seed is None else [f"sample.seed={args.sample_seed}"]
    cfg = load_config(confs, [f"sample.path={sample_dir}", *seed])
    if not (sample_dir / "interactions.csv").exists():
        generate_sample.run(spark, cfg)
    items, interactions = cfg.sample_inputs
    return confs, [f"input.items={items}", f"input.interactions={interactions}", *seed]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from longtail.core import schema as S
    from longtail.core.config import load_config
    from longtail.core.session import build_session
    from longtail.lake import Lake
    from longtail.lake.runs import new_run_id
    from longtail.ml.model import encoder_model_id
    from longtail.stages import encode, ingest
    from longtail.stages import evaluate as E

    names = dataset_names(args.datasets, DATASETS)
    spark = build_session("longtail-quality", master=args.master)
    spark.sparkContext.setLogLevel("WARN")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, Any] = {}
    for name in names:
        lake_dir = Path(args.lake_root) / name
        lake_dir.mkdir(parents=True, exist_ok=True)
        confs, overrides = inputs(spark, name, args, lake_dir)
        tuned = [f"encoder.cpu_linear={args.cpu_linear}"]
        if args.finetune:
            tuned.append("evaluate.finetuned=always")
        if args.ablate:
            tuned.append(f"evaluate.ablate=[{','.join(args.ablate)}]")
        cfg = load_config([*confs, *args.conf], [f"lake.root={lake_dir}", *overrides, *tuned])
        lake = Lake.from_config(spark, cfg)
        seconds: dict[str, float] = {}
        for stage_name, stage in (("ingest", ingest), ("encode", encode)):
            t0 = time.perf_counter()
            stage.run(spark, cfg, lake=lake, run_id=new_run_id())
            seconds[stage_name] = round(time.perf_counter() - t0, 1)
        mid = encoder_model_id(cfg.encoder)
        run_id = f"quality-{name}-{stamp}"
        t0 = time.perf_counter()
        result = E.evaluate_lake(spark, cfg, lake, run_id=run_id)
        seconds["evaluate"] = round(time.perf_counter() - t0, 1)
        rows = headline(result["all_metrics"])
        diffs = differences(result["intervals"])
        ft_names = (result.get("finetuned") or {}).get("variants", [])
        ab_names = result["ablation"]["variants"]
        variants = [v for v in [*cfg.evaluate.variants, *ab_names, *ft_names] if v in rows]
        paths = E.write_run_report(
            spark,
            cfg,
            lake=lake,
            result=result,
            metrics=result["metrics"].drop(S.RUN_ID).toPandas(),
            run_id=run_id,
            model_id=mid,
        )
        print(f"\n## {name}: {cfg.input.interactions}")
        print(f"split: {result['split']}")
        print(f"seconds: {seconds} {result['seconds']}; report: {paths['html']}")
        ranker = result["ranker"] or {}
        print(f"ranker: {ranker.get('model')}; inner validation: {ranker.get('validation')}\n")
        if result.get("finetuned"):
            card = result["finetuned"]["card"] or {}
            keep = (
                "method",
                "pairs",
                "pair_candidates",
                "steps",
                "loss_first",
                "loss_last",
                "train_seconds",
                "device",
            )
            print(f"fine-tuned on the training part: { ({k: card.get(k) for k in keep}) }")
        print(table(rows, diffs, variants), flush=True)
        sweep = result["sweep"]
        if not sweep.empty:  # evaluate.sweep*: points of a trade-off curve, @ the first k
            print(f"trade-off points @{min(cfg.evaluate.k)}:\n{sweep.to_string(index=False)}", flush=True)
        ablation = differences(result["ablation"]["intervals"])
        if ablation:
            print(ablation_table(ablation, result["ablation"]["pairs"]), flush=True)
            for signal, info in result["ablation"]["rankers"].items():
                print(
                    f"ranker without {signal}: {info.get('model')}; inner validation: {info.get('validation')}"
                )
        report[name] = {
            "metrics": rows,
            "differences_to_cf": diffs,
            "split": result["split"],
            "ranker": {k: v for k, v in (result["ranker"] or {}).items() if k != "importances"},
            "seconds": {**seconds, **result["seconds"]},
            "sweep": result["sweep"].to_dict("records"),
            "finetuned": (result.get("finetuned") or {}).get("card"),
            "ablation": {"differences": ablation, "rankers": result["ablation"]["rankers"]},
            "report": paths,
        }
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, master {args.master}; load average {os.getloadavg()}"
    )
    print(f"\nmachine: {machine}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"datasets": report, "machine": machine}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
