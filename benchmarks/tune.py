"""Choose the re-ranking defaults on VALIDATION splits of every dataset, by a rule fixed in advance.

``fused_rerank``'s settings (``recommend.min_tail_share``, ``min_cold_share``, ``reserve_cap``)
trade accuracy for tail reach. They are chosen here, never on the test figures that
``benchmarks/quality.py`` prints: for each dataset (the same lakes as quality.py), ONE ``evaluate``
with ``evaluate.holdout: validation`` (the test part set aside untouched, the training part split
again the same way) ranks the single signals and every grid point from one candidate set and one
learned ranker.

The rule (written before any figure was seen): a grid point *passes* a dataset when, on its
validation split, it meets issue 10's ``fused_rerank`` targets: NDCG@10 >= 0.95 x max(cf, content),
long-tail coverage@10 (cold included) >= max(3 x cf's, 0.20), cold Recall@20 (users with a cold
validation item) >= 0.03 where the split has such users. The chosen point passes the most
(dataset, target) pairs; ties go to the highest worst-dataset NDCG ratio (NDCG / best signal's).
Run under the benchmark lock::

    flock /tmp/longtail-bench.lock .venv/bin/python benchmarks/tune.py --lake-root /tmp/lt_quality3
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # sets sys.path and the Spark environment for lib/
from _env import dataset_names

GRID = {
    "min_tail_share": (0.1, 0.2, 0.3),
    "min_cold_share": (0.0, 0.1),
    "reserve_cap": (0.0, 1.0, 3.0),
}
TARGET_NDCG_RATIO = 0.95
TARGET_COV = 0.20
TARGET_COV_X_CF = 3.0
TARGET_COLD = 0.03


def grid_points() -> list[dict[str, float]]:
    keys = list(GRID)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*GRID.values())]


def point_name(point: dict[str, float]) -> str:
    return "rerank[" + ", ".join(f"{k}={v:g}" for k, v in point.items()) + "]"


def checks(row: dict[str, Any], base: dict[str, Any]) -> dict[str, bool | None]:
    """Which targets a list meets on one dataset's validation split (None: not measurable)."""
    best = max(base["cf"]["NDCG@10"] or 0.0, base["content"]["NDCG@10"] or 0.0)
    cov_target = max(TARGET_COV_X_CF * (base["cf"]["LT cov@10 (incl. cold)"] or 0.0), TARGET_COV)
    cold = row["cold Recall@20 (users with a cold test item)"]
    return {
        "ndcg": (row["NDCG@10"] or 0.0) >= TARGET_NDCG_RATIO * best,
        "coverage": (row["LT cov@10 (incl. cold)"] or 0.0) >= cov_target,
        "cold": None if cold is None else cold >= TARGET_COLD,
    }


def choose(per_dataset: dict[str, dict[str, dict[str, Any]]], names: list[str]) -> tuple[str, list[Any]]:
    """The rule of the module doc: ``(chosen name, [(name, passed, worst ratio), ...])``."""
    scored = []
    for name in names:
        passed, ratios = 0, []
        for rows in per_dataset.values():
            best = max(rows["cf"]["NDCG@10"] or 0.0, rows["content"]["NDCG@10"] or 0.0)
            passed += sum(1 for ok in checks(rows[name], rows).values() if ok)
            ratios.append((rows[name]["NDCG@10"] or 0.0) / best if best else 0.0)
        scored.append((name, passed, min(ratios)))
    scored.sort(key=lambda t: (-t[1], -t[2]))
    return scored[0][0], scored


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--movies", default=quality.parse_args([]).movies)
    p.add_argument("--datasets", default=",".join(quality.DATASETS))
    p.add_argument("--lake-root", default="/tmp/lt_quality3")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--json", help="write every figure as JSON to this file")
    args = p.parse_args(argv)
    args.conf = []

    from longtail.core.config import load_config
    from longtail.core.session import build_session
    from longtail.lake import Lake
    from longtail.lake.runs import new_run_id
    from longtail.stages import encode, ingest
    from longtail.stages import evaluate as E

    spark = build_session("longtail-tune", master=args.master)
    spark.sparkContext.setLogLevel("WARN")
    points = grid_points()
    names = [point_name(pt) for pt in points]
    specs = [E.ListSpec(v, v) for v in ("cf", "content", "fused")]
    specs += [
        E.ListSpec(n, "fused_rerank", overrides=tuple(pt.items()), sweep=("grid", float(i)))
        for i, (n, pt) in enumerate(zip(names, points, strict=True))
    ]
    per_dataset: dict[str, dict[str, dict[str, Any]]] = {}
    out: dict[str, Any] = {"grid": GRID, "datasets": {}}
    for name in dataset_names(args.datasets, quality.DATASETS):
        lake_dir = Path(args.lake_root) / name
        lake_dir.mkdir(parents=True, exist_ok=True)
        confs, overrides = quality.inputs(spark, name, args, lake_dir)
        cfg = load_config(
            confs,
            [
                f"lake.root={lake_dir}",
                *overrides,
                "evaluate.holdout=validation",
                "evaluate.bootstrap=0",
                "evaluate.report=false",
            ],
        )
        lake = Lake.from_config(spark, cfg)
        for stage in (ingest, encode):
            stage.run(spark, cfg, lake=lake, run_id=new_run_id())
        t0 = time.perf_counter()
        result = E.evaluate_lake(spark, cfg, lake, run_id=f"tune-{name}", specs=specs)
        rows = quality.headline(result["all_metrics"])
        per_dataset[name] = rows
        print(f"\n## {name} (validation split; {time.perf_counter() - t0:.0f} s; ranker {result['ranker']})")
        print(f"split: {result['split']}\n")
        cols = [*[title for *_, title in quality.COLUMNS][:5], quality.COLUMNS[5][3]]
        print("| list | " + " | ".join(cols) + " | targets met |")
        print("|---|" + "---:|" * (len(cols) + 1))
        for spec in specs:
            r = rows[spec.name]
            met = checks(r, rows) if spec.variant == "fused_rerank" else {}
            cells = " | ".join("-" if r[c] is None else f"{r[c]:.4f}" for c in cols)
            flags = ", ".join(k for k, ok in met.items() if ok) or "-"
            print(f"| {spec.name} | {cells} | {flags} |", flush=True)
        out["datasets"][name] = {"rows": rows, "split": result["split"], "ranker": result["ranker"]}
    chosen, ranking = choose(per_dataset, names)
    print(f"\nchosen by the rule: {chosen}")
    print("points by (targets passed, worst-dataset NDCG ratio):")
    for n, passed, ratio in ranking:
        print(f"  {n}: {passed} passed, worst NDCG ratio {ratio:.3f}")
    out["chosen"], out["ranking"] = chosen, ranking
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
