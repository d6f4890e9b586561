"""`evaluate`: the hold-out feeds every variant, metrics land in `metrics`, the report is written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import synthetic
from helpers import make_tiny_bert
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import VARIANTS
from longtail.ml import metrics as M
from longtail.stages import evaluate as E

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny"))


def _python_split(rows, fraction: float):
    """The per-user split in plain Python (ts, then item_id, then weight; n_test rounded half up)."""
    by_user: dict[str, list] = {}
    for r in rows:
        by_user.setdefault(r[0], []).append(r)
    train, test = [], []
    for events in by_user.values():
        events.sort(key=lambda r: (r[2], r[1], r[3]))
        n = len(events)
        n_test = 1 if n == 1 else min(n - 1, max(1, math.floor(n * fraction + 0.5)))
        train += events[: n - n_test]
        test += events[n - n_test :]
    return train, test


def _popular_recall(train, test, k: int) -> float:
    """Recall@k of the most-popular list (training counts, ties by item_id, seen items skipped)."""
    counts: dict[str, int] = {}
    for _, item, _, _ in train:
        counts[item] = counts.get(item, 0) + 1
    catalogue = sorted(synthetic.item_ids(), key=lambda i: (-counts.get(i, 0), i))
    seen: dict[str, set] = {}
    for user, item, _, _ in train:
        seen.setdefault(user, set()).add(item)
    relevant: dict[str, set] = {}
    for user, item, _, _ in test:
        relevant.setdefault(user, set()).add(item)
    recalls = []
    for user, rel in relevant.items():
        top = [i for i in catalogue if i not in seen.get(user, set())][:k]
        recalls.append(len(rel & set(top)) / len(rel))
    return sum(recalls) / len(recalls)


def test_evaluate_writes_every_variant_and_metric_and_a_report(spark, tmp_path: Path, model_dir):
    root = str(tmp_path / "lake")
    lake, _ = synthetic.build_lake(spark, root, model_dir)
    # the logistic ranker (the auto choice between it and GBT is test_ranker's); the penalty stays auto
    cfg = synthetic.config(
        root,
        model_dir,
        "evaluate.k=[3, 5]",
        "evaluate.sweep=[5, 500]",
        "evaluate.sweep_rerank=[0.5]",
        "evaluate.sweep_penalty=[0, 1]",
        "recommend.ranker.model=logistic",
    )
    summary = E.run(spark, cfg, lake=lake, run_id="eval-1")
    table = lake.read(S.METRICS)
    rows = table.collect()
    assert {r[S.RUN_ID] for r in rows} == {"eval-1"}
    assert {r[S.VARIANT] for r in rows} == set(VARIANTS)  # sweep points are not in the table
    assert {r[S.METRIC] for r in rows} == set(M.METRIC_NAMES)
    assert {r[S.K] for r in rows} == {3, 5}
    # a segment appears when some user has a test item in it (cold: no training interaction)
    train_rows, test_rows = _python_split(synthetic.interactions(), cfg.evaluate.test_fraction)
    has_cold = bool({r[1] for r in test_rows} - {r[1] for r in train_rows})
    assert {r[S.SEGMENT] for r in rows} == {M.ALL, M.HEAD, M.TAIL} | ({M.COLD} if has_cold else set())
    assert all(r[S.VALUE] is None or math.isfinite(r[S.VALUE]) for r in rows)
    value = {(r[S.VARIANT], r[S.METRIC], r[S.K], r[S.SEGMENT]): r[S.VALUE] for r in rows}

    # the wiring: popularity and exclusions come from the training part only, so the popular
    # list's recall equals a plain-Python computation on the same split
    assert summary["split"]["test_interactions"] == len(test_rows)
    for k in (3, 5):
        assert value[("popular", M.RECALL, k, M.ALL)] == pytest.approx(
            _popular_recall(train_rows, test_rows, k)
        )
    # the popular list never reaches an item without training interactions; content can
    assert (
        value[("popular", M.LONG_TAIL_COVERAGE, 5, M.ALL)]
        < value[("content", M.LONG_TAIL_COVERAGE, 5, M.ALL)]
    )
    # text predicts taste in the synthetic lake: every personalised variant beats popularity
    for v in ("cf", "content", "fused", "fused_rerank"):
        assert value[(v, M.NDCG, 5, M.ALL)] > value[("popular", M.NDCG, 5, M.ALL)], v

    assert len(summary["sweep"]) == 5
    assert {(p["param"], p["value"]) for p in summary["sweep"]} == {
        ("fusion_k", 5.0),
        ("fusion_k", 500.0),
        ("rerank_strength", 0.5),
        ("pop_penalty", 0.0),
        ("pop_penalty", 1.0),
    }
    assert all(p["ndcg"] is not None for p in summary["sweep"])
    # every variant's difference to cf, with its interval, at each k (default 1000 resamples)
    intervals = {(p["variant"], p["metric"], p["k"]): p for p in summary["intervals"]}
    want = {M.NDCG, M.RECALL, M.LONG_TAIL_COVERAGE, M.LONG_TAIL_COVERAGE_INTERACTED}
    assert set(intervals) == {(v, m, k) for v in VARIANTS if v != "cf" for m in want for k in (3, 5)}
    for (v, m, k), p in intervals.items():
        assert p["lo"] <= p["hi"] and p["n_boot"] == 1000, (v, m, k)
        if m in (M.NDCG, M.RECALL):  # the point difference is the difference of the table's values
            assert p["diff"] == pytest.approx(value[(v, m, k, M.ALL)] - value[("cf", m, k, M.ALL)])
            assert p["lo"] <= p["diff"] <= p["hi"]
    html = Path(summary["report"]["html"])
    assert html.exists() and html.parent.name == "eval-1"
    page = html.read_text()
    assert "fused_rerank" in page
    # the ranker's choice and inner split sit in the report's context, beside the outer split's
    ranker = summary["ranker"]
    for key in ("ranker", "held_out_on_items_without_history", "test_interactions_on_cold_items"):
        assert f"<th>{key}" in page or f"<h3>{key}</h3>" in page, key
    assert f"<th>model</th><td>{ranker['model']}</td>" in page

    # a re-run of the same run id replaces its rows (no duplicates); another run id appends (the
    # re-runs use the blend, which fits no ranker, and two variants without intervals: the rows are
    # what matters here, not the values)
    cfg_no_report = synthetic.config(
        root,
        model_dir,
        "evaluate.k=[3, 5]",
        "evaluate.report=false",
        "recommend.fusion=blend",
        "evaluate.variants=[popular, cf]",
        "evaluate.bootstrap=0",
    )
    assert "report" not in E.run(spark, cfg_no_report, lake=lake, run_id="eval-1")
    assert lake.read(S.METRICS).count() == len(rows)
    assert "report" not in E.run(spark, cfg_no_report, lake=lake, run_id="eval-2")
    rerun = [r for r in rows if r[S.VARIANT] in ("popular", "cf")]
    assert lake.read(S.METRICS).where(F.col(S.RUN_ID) == "eval-2").count() == len(rerun) > 0


def test_max_users_evaluates_whole_users_of_a_seeded_sample(spark, tmp_path: Path, model_dir):
    root = str(tmp_path / "lake")
    lake, _ = synthetic.build_lake(spark, root, model_dir)
    cfg = synthetic.config(root, model_dir)
    _, test = E.split(lake.read(S.INTERACTIONS), cfg)
    rows = test.collect()
    n = len({r[S.USER_ID] for r in rows})
    unchanged, info = E.sample_test_users(test, cfg.evaluate)
    assert unchanged is test and info is None
    everyone, info = E.sample_test_users(
        test, synthetic.config(root, model_dir, f"evaluate.max_users={n}").evaluate
    )
    assert everyone is test and info == {"users": n, "of": n, "share": 1.0}

    half = [f"evaluate.max_users={n // 2}"]
    kept, info = E.sample_test_users(test, synthetic.config(root, model_dir, *half).evaluate)
    kept_rows = kept.collect()
    users = {r[S.USER_ID] for r in kept_rows}
    assert info == {"users": len(users), "of": n, "share": round((n // 2) / n, 6)} and 0 < len(users) < n
    # whole users: every test row of a kept user and nothing else
    assert sorted(kept_rows) == sorted(r for r in rows if r[S.USER_ID] in users)
    # seeded: the same users again; another seed draws others
    again, _ = E.sample_test_users(test, synthetic.config(root, model_dir, *half).evaluate)
    assert {r[S.USER_ID] for r in again.collect()} == users
    other, _ = E.sample_test_users(
        test, synthetic.config(root, model_dir, *half, "evaluate.bootstrap_seed=7").evaluate
    )
    assert {r[S.USER_ID] for r in other.collect()} != users

    # evaluate measures the sample: the popular list's recall equals the plain-Python figure over
    # the kept users' test rows (training on the whole training part, as without a cap)
    run_cfg = synthetic.config(
        root,
        model_dir,
        *half,
        "evaluate.k=[5]",
        "evaluate.variants=[popular, cf]",
        "evaluate.bootstrap=0",
        "evaluate.report=false",
    )
    summary = E.run(spark, run_cfg, lake=lake, run_id="eval-sample")
    assert summary["split"]["evaluated_sample"] == info
    assert summary["split"]["test_users"] == n  # the split's counts stay those of the whole test part
    train_rows, test_rows = _python_split(synthetic.interactions(), cfg.evaluate.test_fraction)
    sampled = [r for r in test_rows if r[0] in users]
    value = {
        (r[S.VARIANT], r[S.METRIC], r[S.K], r[S.SEGMENT]): r[S.VALUE]
        for r in lake.read(S.METRICS).where(F.col(S.RUN_ID) == "eval-sample").collect()
    }
    assert value[("popular", M.RECALL, 5, M.ALL)] == pytest.approx(_popular_recall(train_rows, sampled, 5))
    assert value[("popular", M.RECALL, 5, M.ALL)] != pytest.approx(_popular_recall(train_rows, test_rows, 5))
    with pytest.raises(ValueError, match=r"evaluate\.max_users"):
        synthetic.config(root, model_dir, "evaluate.max_users=0")


def test_validation_holdout_never_sees_the_test_part(spark, tmp_path: Path, model_dir):
    root = str(tmp_path / "lake")
    lake, _ = synthetic.build_lake(spark, root, model_dir)
    cfg = synthetic.config(root, model_dir, "evaluate.holdout=validation")
    interactions = lake.read(S.INTERACTIONS)
    train_v, valid = E.split(interactions, cfg)
    _, test = E.split(interactions, synthetic.config(root, model_dir))
    keys = [S.USER_ID, S.ITEM_ID, S.TS]
    assert train_v.join(test, keys).count() == 0
    assert valid.join(test, keys).count() == 0
    assert train_v.join(valid, keys).count() == 0
    assert train_v.count() + valid.count() + test.count() == interactions.count()


def test_lists_at_each_k_are_what_recommend_writes_at_that_k(spark, tmp_path: Path, model_dir):
    """Measure what ships: the evaluation's k-lists equal ``recommend`` run with recommend.k = k
    (same training part, users and catalogue), re-ranking and reserved places included."""
    import dataclasses

    from longtail.ml import cf
    from longtail.ml import scoring as R
    from longtail.ml.model import current_embeddings

    root = str(tmp_path / "lake")
    lake, mid = synthetic.build_lake(spark, root, model_dir)
    cfg = synthetic.config(
        root,
        model_dir,
        "evaluate.k=[3, 5]",
        "recommend.min_tail_share=0.2",
        "recommend.min_cold_share=0.2",
        "recommend.ranker.model=logistic",
    )
    items = lake.read(S.ITEMS)
    embeddings = current_embeddings(lake, mid, items=items)
    train_part, test_part = E.split(lake.read(S.INTERACTIONS), cfg)
    model, _, _ = cf.fit(spark, cfg, train_part, items, embeddings, model_id=mid)
    if cfg.recommend.fusion == "learned":  # as evaluate does: the ranker from the training part
        from longtail.ml.fusion import fit_ranker

        model.ranker = fit_ranker(spark, cfg, train_part, items, embeddings, model_id=mid)
    users = test_part.select(S.USER_ID).distinct()
    k_max_cfg = dataclasses.replace(cfg.recommend, k=5, candidates=max(cfg.recommend.candidates, 5))
    cands = R.candidates(
        spark,
        k_max_cfg,
        model=model,
        interactions=train_part,
        embeddings=embeddings,
        users=users,
        catalogue=items,
    )
    variants = ["popular", "cf", "fused", "fused_rerank"]
    no_quota = E.ListSpec(
        "rerank_no_quota", "fused_rerank", overrides=(("min_tail_share", 0.0), ("min_cold_share", 0.0))
    )
    lists = E.ranked_lists(cands, [*(E.ListSpec(v, v) for v in variants), no_quota], cfg, ks=[3, 5])
    got = {
        (r[S.K], r[S.VARIANT], r[S.USER_ID], r[S.RANK]): r[S.ITEM_ID] for df in lists for r in df.collect()
    }
    # a list's overrides apply to it alone: without the quotas, fewer lists hold a cold item (one
    # without a training interaction)
    cold = set(synthetic.item_ids()) - {r[0] for r in train_part.select(S.ITEM_ID).distinct().collect()}
    cold_lists = {
        v: {u for (k, vv, u, _), i in got.items() if k == 5 and vv == v and i in cold}
        for v in ("fused_rerank", "rerank_no_quota")
    }
    assert len(cold_lists["fused_rerank"]) > len(cold_lists["rerank_no_quota"]), cold_lists
    got = {key: item for key, item in got.items() if key[1] != "rerank_no_quota"}
    differs = 0
    for k in (3, 5):
        rec_cfg = dataclasses.replace(cfg.recommend, k=k)
        shipped, shipped_cands = R.recommend(
            spark, rec_cfg, model=model, interactions=train_part, embeddings=embeddings,
            variants=variants, users=users, catalogue=items,
        )  # fmt: skip
        for v, df in shipped.items():
            want = {(k, v, r[S.USER_ID], r[S.RANK]): r[S.ITEM_ID] for r in df.collect()}
            assert want, v
            assert {key: got.get(key) for key in want} == want, (k, v)
            assert sum(1 for key in got if key[:2] == (k, v)) == len(want), (k, v)
        shipped_cands.unpersist()
    for v in variants:  # the 3-lists are not just the top 3 of the 5-lists (re-rank, reservations)
        differs += sum(
            got.get((3, v, u, r)) != got.get((5, v, u, r)) for (k, vv, u, r) in got if k == 3 and vv == v
        )
    assert differs > 0
    cands.unpersist()
