"""How much cold Recall@K any ranker can reach on a generated sample: a topic-oracle upper bound.

The sample generator (``longtail.stages.generate_sample``) gives each item a topic and writes
its description from that topic's vocabulary alone; which items sell, and how often, is drawn
independently of the text (``sample.sparse_active_share`` of the catalogue, a power law within
it). An item without training interactions (**cold**, ``evaluate``'s segment) is therefore, to
anything that reads its text, its category or the training log, interchangeable with every other
cold item of its topic. A list that holds ``R`` cold items can at best hold the ``R`` cold items
with the highest chance of being a test item of the user; even knowing the topics of the user's
cold test items (an oracle: no ranker knows them), that chance is ``c_t / n_t`` for an item of
topic ``t``, ``n_t`` the topic's cold items and ``c_t`` the user's cold test items among them.
The bound per user with a cold test item is then the sum of the ``R`` largest such chances over
the user's cold test items; its mean is the most cold Recall@K (``evaluate``'s ``recall`` in
segment ``cold``, users with a cold test item) a list with ``R`` cold places can expect.

Reads the lakes ``benchmarks/quality.py`` wrote (``--lake-root``, one folder per dataset; only the
generated samples, whose ``category`` starts with the item's true topic), splits ``interactions``
exactly as ``evaluate`` does (``evaluate.holdout``, default config plus ``--conf``) and prints, per
dataset, the bound for ``R`` = 1, 2, ... and the smallest ``R`` that reaches ``--target``.
``fused_rerank`` reserves ``ceil(recommend.min_cold_share x K)`` cold places (2 at K = 20)::

    .venv/bin/python benchmarks/cold_bound.py --lake-root /tmp/lt_quality3 --datasets dense,sparse
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from _env import dataset_names, driver  # lib/ on the path, Spark's workers pointed at it

driver("2g")

DATASETS = ("dense", "sparse")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lake-root", default="/tmp/lt_quality3", help="quality.py's lakes (one per dataset)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: dense,sparse")
    p.add_argument("--conf", action="append", default=[], help="extra YAML profile(s), as quality.py's")
    p.add_argument("--k", type=int, default=20, help="list length of the recall (default 20)")
    p.add_argument("--target", type=float, default=0.03, help="the cold recall to reach (issue 10: 0.03)")
    p.add_argument("--master", default="local[2]")
    return p.parse_args(argv)


def oracle_curve(cold_test: dict[str, list[str]], pool: dict[str, int], k: int) -> list[float]:
    """The bound for ``R`` = 1 .. ``k`` cold places: element ``R - 1`` is the mean over users of the
    best expected recall of ``R`` cold items (the module doc).

    ``cold_test``: user -> topics of the user's cold test items (one entry per item);
    ``pool``: topic -> cold items of the topic in the catalogue.

    >>> oracle_curve({"u": ["a"]}, {"a": 4, "b": 2}, 2)
    [0.25, 0.5]
    >>> oracle_curve({"u": ["a", "b"]}, {"a": 4, "b": 2}, 2)  # both places on b: 2 x (1/2) / 2 items
    [0.25, 0.5]
    """
    totals = [0.0] * k
    for topics in cold_test.values():
        # each cold item's chance, best first: one topic's items share theirs
        best = sorted(((topics.count(t) / pool[t], pool[t]) for t in set(topics)), reverse=True)
        chances = ([c for c, n in best for _ in range(min(n, k))] + [0.0] * k)[:k]
        running = 0.0
        for places, chance in enumerate(chances):
            running += chance
            totals[places] += running / len(topics)
    return [total / len(cold_test) for total in totals]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pyspark.sql import functions as F

    from longtail.core import schema as S
    from longtail.core.config import load_config
    from longtail.core.session import build_session
    from longtail.lake import Lake
    from longtail.stages import evaluate as E

    names = dataset_names(args.datasets, DATASETS)  # movies: no generative topic to bound on
    spark = build_session("longtail-cold-bound", master=args.master)
    spark.sparkContext.setLogLevel("WARN")
    for name in names:
        lake_dir = Path(args.lake_root) / name
        cfg = load_config(args.conf, [f"lake.root={lake_dir}"])
        lake = Lake.from_config(spark, cfg)
        lake.require("cold_bound", S.ITEMS, S.INTERACTIONS)
        topic = F.split(F.col(S.CATEGORY), r"\|").getItem(0).alias("topic")
        items = lake.read(S.ITEMS).select(S.ITEM_ID, topic)
        train, test = E.split(lake.read(S.INTERACTIONS), cfg)
        cold = items.join(train.select(S.ITEM_ID).distinct(), S.ITEM_ID, "left_anti")
        pool = {r["topic"]: int(r["count"]) for r in cold.groupBy("topic").count().collect()}
        cold_test: dict[str, list[str]] = {}
        for r in test.select(S.USER_ID, S.ITEM_ID).distinct().join(cold, S.ITEM_ID).collect():
            cold_test.setdefault(r[S.USER_ID], []).append(r["topic"])
        if not cold_test:
            print(f"\n## {name}: no test item is cold; nothing to bound")
            continue
        reserved = math.ceil(cfg.recommend.min_cold_share * args.k)
        print(f"\n## {name}: {lake_dir} (evaluate.holdout: {cfg.evaluate.holdout})")
        print(
            f"users with a cold test item: {len(cold_test)}; cold test interactions: "
            f"{sum(map(len, cold_test.values()))}; cold catalogue items: {sum(pool.values())} "
            f"(per topic {min(pool.values())}-{max(pool.values())}); fused_rerank reserves {reserved} "
            f"of {args.k} places\n"
        )
        print(f"| cold places in the top {args.k} | oracle bound on cold Recall@{args.k} |")
        print("|---:|---:|")
        reach = None
        for places, bound in enumerate(oracle_curve(cold_test, pool, args.k), start=1):
            if places <= max(reserved, 4) or places % 5 == 0 or (reach is None and bound >= args.target):
                print(f"| {places}{' (reserved)' if places == reserved else ''} | {bound:.4f} |")
            if reach is None and bound >= args.target:
                reach = places
        print(
            f"\nsmallest number of cold places that reaches {args.target}: "
            f"{reach if reach is not None else f'none of 1-{args.k}'}",
            flush=True,
        )
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
