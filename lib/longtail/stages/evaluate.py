"""`evaluate`: a time-based hold-out, every variant from the same code, metrics and a report.

1. **Hold-out** (:func:`longtail.holdout.time_split`): per user, the last ``evaluate.test_fraction``
   of the interactions go to test (or everything after ``evaluate.cutoff``). With
   ``evaluate.holdout: validation`` the test part is set aside untouched and the training part is
   split again the same way: tuning runs measure on that validation part, never on test.
2. **Training on the training part only**: ALS, the projection head, item popularity, head/tail
   segments and user profiles all come from the training part (:func:`longtail.train.fit`); only
   the text vectors (which need no interactions) are shared with production.
3. **Lists, at each cut-off as they ship**: for every k of ``evaluate.k`` every variant in
   ``evaluate.variants`` is ranked, re-ranked and given its reserved places at length k by
   :mod:`longtail.ml.scoring`, exactly as ``recommend`` with ``recommend.k = k`` would (one
   candidate pass at the largest k, cut down per k by :func:`~longtail.ml.scoring.candidates_at`),
   for every user with a test interaction, or a seeded hash sample of about
   ``evaluate.max_users`` of them (users without history get the popular list). Metrics
   @k are measured on the k-lists, never cut from longer ones. ``evaluate.sweep`` (fusion_k values),
   ``evaluate.sweep_rerank`` (rerank_strength values) and ``evaluate.sweep_penalty`` (the learned
   ranker's popularity penalty in place of the one it chose) add points for the report's curve.
4. **Metrics** (:mod:`longtail.ml.metrics`), computed in Spark and appended to ``metrics`` under
   the run id (merged on run_id, variant, metric, k, segment: re-running a run id replaces its
   rows). **Intervals** (:mod:`longtail.ml.bootstrap`): paired bootstrap 95% intervals over users
   of each variant's difference to ``cf`` (``evaluate.bootstrap`` resamples), returned and shown
   in the report (not a lake table).
5. **Report** (:mod:`longtail.report`): ``<evaluate.report_dir>/<run_id>/report.{html,md}``.
6. **Fine-tuned encoder, side by side**: when the lake has a fine-tuned encoder in use (`finetune`
   ran; ``encoder.use_finetuned`` is not ``never``), the variants above use the base model's
   vectors, and the base model is fine-tuned again on the training part only (the production
   copy saw the test part) to rank ``content_ft``, ``fused_ft`` and ``fused_rerank_ft`` from the
   same candidates' code: the comparison the report shows, with intervals against ``cf``.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import Config, EncoderConfig, EvaluateConfig, join_uri
from longtail.lake import Lake
from longtail.lake.runs import new_run_id
from longtail.ml import bootstrap, cf, holdout
from longtail.ml import finetune as FT
from longtail.ml import metrics as M
from longtail.ml import scoring as R
from longtail.ml.encoding import encode_items
from longtail.ml.fusion import fit_ranker
from longtail.ml.model import Model, current_embeddings, encoder_model_id, encoder_settings

log = logging.getLogger(__name__)

METRIC_KEYS = [S.RUN_ID, S.VARIANT, S.METRIC, S.K, S.SEGMENT]
SWEEP_FUSION = "fusion_k"
SWEEP_RERANK = "rerank_strength"
SWEEP_PENALTY = "pop_penalty"
BASELINE = "cf"  # the variant every interval's difference is taken to


def split(interactions: DataFrame, cfg: Config) -> tuple[DataFrame, DataFrame]:
    """``(train, test)`` as ``evaluate.holdout`` says (the validation split carves the training part)."""
    ev = cfg.evaluate
    train, test = holdout.time_split(interactions, test_fraction=ev.test_fraction, cutoff=ev.cutoff)
    if ev.holdout == "validation":
        train, test = holdout.time_split(train, test_fraction=ev.test_fraction, cutoff=None)
    return train, test


@dataclass(frozen=True)
class ListSpec:
    """One list to evaluate: ``name`` (the ``variant`` value in ``metrics``), the ranking
    ``variant``, optional overrides of ``recommend.fusion_k`` / ``recommend.rerank_strength`` / the
    learned ranker's popularity penalty, and ``sweep = (param, value)`` when it is a point of a
    trade-off curve (kept out of the table).
    """

    name: str
    variant: str
    fusion_k: float | None = None
    rerank_strength: float | None = None
    pop_penalty: float | None = None
    sweep: tuple[str, float] | None = None
    overrides: tuple[tuple[str, float], ...] = ()
    """Further ``recommend`` settings for this list only, e.g. ``(("min_tail_share", 0.2),)``
    (validated as the config validates them): how ``benchmarks/tune.py`` ranks a grid of
    re-ranking settings from one candidate set."""


def sample_test_users(test_part: DataFrame, ev: EvaluateConfig) -> tuple[DataFrame, dict[str, Any] | None]:
    """``evaluate.max_users``: the test rows of a seeded hash sample of the test users (whole users:
    all of a kept user's test rows), and ``{"users", "of", "share"}``; unchanged (and None) without
    a cap, or with no more test users than the cap. Each user is kept when
    ``|xxhash64(user_id, bootstrap_seed)| mod 10^6 < share * 10^6``, ``share = max_users / users``:
    about ``max_users`` users, the same ones in every run with the same seed."""
    if ev.max_users is None:
        return test_part, None
    n_users = test_part.select(S.USER_ID).distinct().count()
    if n_users <= ev.max_users:
        return test_part, {"users": n_users, "of": n_users, "share": 1.0}
    share = ev.max_users / n_users
    kept = test_part.where(holdout.in_user_sample(share, ev.bootstrap_seed))
    n_kept = kept.select(S.USER_ID).distinct().count()
    log.info("evaluate: %d of %d test users evaluated (evaluate.max_users %d)", n_kept, n_users, ev.max_users)
    return kept, {"users": n_kept, "of": n_users, "share": round(share, 6)}


def list_specs(ev: EvaluateConfig) -> list[ListSpec]:
    """The config's lists: each of ``evaluate.variants``, then the points of ``evaluate.sweep``
    (``fused`` at each fusion_k), ``evaluate.sweep_rerank`` (``fused_rerank`` at each strength) and
    ``evaluate.sweep_penalty`` (``fused`` at each popularity penalty of the learned ranker)."""
    specs = [ListSpec(v, v) for v in ev.variants]
    for value in ev.sweep:
        specs.append(
            ListSpec(
                f"fused [{SWEEP_FUSION}={value:g}]", "fused", fusion_k=value, sweep=(SWEEP_FUSION, value)
            )
        )
    for value in ev.sweep_rerank:
        name = f"fused_rerank [{SWEEP_RERANK}={value:g}]"
        specs.append(ListSpec(name, "fused_rerank", rerank_strength=value, sweep=(SWEEP_RERANK, value)))
    for value in ev.sweep_penalty:
        name = f"fused [{SWEEP_PENALTY}={value:g}]"
        specs.append(ListSpec(name, "fused", pop_penalty=value, sweep=(SWEEP_PENALTY, value)))
    return specs


def evaluate(
    spark: SparkSession,
    cfg: Config,
    *,
    interactions: DataFrame,
    items: DataFrame,
    embeddings: DataFrame,
    model_id: str,
    run_id: str,
    specs: Sequence[ListSpec] | None = None,
    finetune_from: EncoderConfig | None = None,
) -> dict[str, Any]:
    """Split, train on the training part, rank every list of ``specs``, compute the metrics.

    ``specs`` default to :func:`list_specs` of the config (the variants, then the sweep points).
    ``finetune_from``: also fine-tune this encoder on the training part only and rank the text
    variants (content, fused, fused_rerank) with its vectors as ``<variant>_ft`` (step 6 of the
    module doc); ``embeddings`` are then the base encoder's.

    Returns:
        ``metrics`` (a DataFrame in the ``metrics`` table's schema, persisted), ``sweep`` (pandas,
        one row per sweep point, may be empty), ``all_metrics`` (pandas: every list's metrics,
        sweep points included), ``intervals`` (pandas, :data:`longtail.ml.bootstrap.INTERVAL_COLUMNS`:
        each variant's difference to ``cf`` with its bootstrap interval), ``lorenz`` and
        ``deciles`` (pandas), ``split`` (counts; with ``evaluate.max_users``, ``evaluated_sample``:
        :func:`sample_test_users`), ``users`` (evaluated and excluded users),
        ``seconds`` per step.
    """
    ev = cfg.evaluate
    ks = sorted(set(ev.k))
    k_max = ks[-1]
    rec_cfg = dataclasses.replace(cfg.recommend, k=k_max, candidates=max(cfg.recommend.candidates, k_max))
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    train_part, full_test = split(interactions, cfg)
    train_part, full_test = train_part.persist(), full_test.persist()
    split_counts = holdout.split_summary(train_part, full_test, items)
    test_part, sample = sample_test_users(full_test, ev)
    if sample is not None:
        split_counts["evaluated_sample"] = sample
    times["split"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, _, _ = cf.fit(spark, cfg, train_part, items, embeddings, model_id=model_id)
    times["train"] = time.perf_counter() - t0
    ranker_info = None
    if cfg.recommend.fusion == "learned":  # the learned fusion, fitted on the training part only
        t0 = time.perf_counter()
        model.ranker = fit_ranker(spark, cfg, train_part, items, embeddings, model_id=model_id)
        ranker_info = model.ranker.info
        times["ranker"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    test_users = test_part.select(S.USER_ID).distinct()
    cands = R.candidates(
        spark,
        rec_cfg,
        model=model,
        interactions=train_part,
        embeddings=embeddings,
        users=test_users,
        catalogue=items,
    )
    specs = list(specs) if specs is not None else list_specs(ev)
    if model.vae is None and any(p.variant == "vae" for p in specs):
        log.info("evaluate: no 'vae' list (train.vae.enabled is false)")
        specs = [p for p in specs if p.variant != "vae"]
    names = [p.name for p in specs]
    if len(set(names)) != len(names) or all(p.sweep is not None for p in specs):
        raise ValueError(f"evaluate: list names must be unique and one at least no sweep point: {names}")
    lists = ranked_lists(cands, specs, cfg, ks=ks)
    times["recommend"] = time.perf_counter() - t0
    ablated: dict[str, Any] = {"variants": [], "pairs": [], "rankers": {}}
    if ev.ablate and cfg.recommend.fusion == "learned":
        t0 = time.perf_counter()
        ab_lists, ablated = _ablated_lists(
            spark, cfg, model, train_part, items, embeddings, specs, ks=ks, users=test_users, rec_cfg=rec_cfg
        )
        specs = [*specs, *(ListSpec(name, name) for name in ablated["variants"])]
        lists = [*lists, *ab_lists]
        times["ablate"] = time.perf_counter() - t0
    finetuned = None
    if finetune_from is not None:
        t0 = time.perf_counter()
        ft_lists, finetuned = _finetuned_lists(
            spark, cfg, finetune_from, train_part, items, specs, ks=ks, users=test_users, rec_cfg=rec_cfg
        )
        specs = [*specs, *(ListSpec(name, name) for name in finetuned["variants"])]
        lists = [*lists, *ft_lists]
        times["finetune"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    recs = lists[0]
    for more in lists[1:]:
        recs = recs.unionByName(more)

    t0 = time.perf_counter()
    stats = cands.stats
    n_train_users = train_part.select(S.USER_ID).distinct().count()
    test_pairs = test_part.select(S.USER_ID, S.ITEM_ID)
    per_k = [M.evaluate_all(_at(recs, k), test_pairs, stats, ks=[k], n_train_users=n_train_users) for k in ks]
    all_metrics = per_k[0]
    for more in per_k[1:]:
        all_metrics = all_metrics.unionByName(more)
    all_metrics = all_metrics.persist()
    main = [p.name for p in specs if p.sweep is None]
    table = all_metrics.where(F.col(S.VARIANT).isin(main)).select(
        F.lit(run_id).alias(S.RUN_ID), *[c for c in S.METRICS_SCHEMA.fieldNames() if c != S.RUN_ID]
    )
    table = S.conform(table, S.METRICS_SCHEMA).persist()
    sweep = _sweep_table(all_metrics, [p for p in specs if p.sweep is not None], k=ks[0])
    points = all_metrics.toPandas()  # specs x metrics x ks x segments: small
    main_recs = recs.where(F.col(S.VARIANT).isin(main))
    first = _at(main_recs, ks[0])
    lorenz = M.lorenz_curve(first, stats, k=ks[0])
    deciles = M.recall_by_decile(first, test_pairs, stats, k=ks[0])
    users = M.evaluated_users(first, test_pairs, stats)
    times["metrics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    intervals = bootstrap.intervals(
        main_recs, test_pairs, stats, ks=ks, baseline=BASELINE, n_boot=ev.bootstrap, seed=ev.bootstrap_seed
    )
    ablation = [
        bootstrap.intervals(
            main_recs.where(F.col(S.VARIANT).isin(full, without)),
            test_pairs,
            stats,
            ks=ks,
            baseline=without,
            n_boot=ev.bootstrap,
            seed=ev.bootstrap_seed,
        )
        for full, without in ablated["pairs"]
    ]
    ablation_intervals = (
        pd.concat(ablation, ignore_index=True)
        if ablation
        else pd.DataFrame([], columns=list(bootstrap.INTERVAL_COLUMNS))
    )
    times["intervals"] = time.perf_counter() - t0
    table.count()  # materialise before the inputs go
    for df in (*lists, all_metrics, train_part, full_test):
        df.unpersist()
    cands.unpersist()
    vae_spec = None if model.vae is None else model.vae.spec
    model.unpersist()
    return {
        "metrics": table,
        "sweep": sweep,
        "all_metrics": points,
        "intervals": intervals,
        "ablation": {**ablated, "intervals": ablation_intervals},
        "lorenz": lorenz,
        "deciles": deciles,
        "split": split_counts,
        "users": users,
        "ranker": ranker_info,
        "vae": vae_spec,
        "finetuned": finetuned,
        "seconds": {k: round(v, 2) for k, v in times.items()},
    }


FINETUNED_VARIANTS = ("content", "fused", "fused_rerank")  # the variants that read text vectors
FT_SUFFIX = "_ft"


def _finetuned_lists(
    spark: SparkSession,
    cfg: Config,
    base: EncoderConfig,
    train_part: DataFrame,
    items: DataFrame,
    specs: Sequence[ListSpec],
    *,
    ks: Sequence[int],
    users: DataFrame,
    rec_cfg: Any,
) -> tuple[list[DataFrame], dict[str, Any]]:
    """Step 6 of the module doc: ``base`` fine-tuned on ``train_part`` only (evaluate's test part
    never reaches the pairs), every item encoded with it in memory (nothing enters the lake), ALS,
    head and ranker fitted again over those vectors, and the text variants of ``specs`` ranked from
    them as ``<name>_ft``. Returns the materialised lists and the fine-tuning card."""
    wanted = [s for s in specs if s.sweep is None and s.variant in FINETUNED_VARIANTS]
    if not wanted:
        return [], {"variants": [], "card": None}
    with tempfile.TemporaryDirectory(prefix="longtail-evaluate-ft-") as tmp:
        folder = Path(tmp) / "finetuned"
        card = FT.finetune(train_part, items, base, cfg.finetune, folder)
        settings = dataclasses.replace(base, model=str(folder))
        mid = encoder_model_id(settings)
        # materialised while the folder exists: the Python workers load the model from it
        vectors = encode_items(spark, settings, items, model_id=mid).localCheckpoint(eager=True)
    model, _, _ = cf.fit(spark, cfg, train_part, items, vectors, model_id=mid)
    if cfg.recommend.fusion == "learned":
        model.ranker = fit_ranker(spark, cfg, train_part, items, vectors, model_id=mid)
    cands = R.candidates(
        spark, rec_cfg, model=model, interactions=train_part, embeddings=vectors, users=users, catalogue=items
    )
    ft_specs = [dataclasses.replace(s, name=s.name + FT_SUFFIX) for s in wanted]
    lists = ranked_lists(cands, ft_specs, cfg, ks=ks)
    cands.unpersist()
    model.unpersist()
    return lists, {"variants": [s.name for s in ft_specs], "card": card, "model_id": mid}


def ablation_name(variant: str, signal: str) -> str:
    """``fused`` without ``vae`` -> ``fused_no_vae``."""
    return f"{variant}_no_{signal}"


ABLATED_VARIANTS = ("fused", "fused_rerank")  # the variants the learned fusion ranks


def _ablated_lists(
    spark: SparkSession,
    cfg: Config,
    model: Model,
    train_part: DataFrame,
    items: DataFrame,
    embeddings: DataFrame,
    specs: Sequence[ListSpec],
    *,
    ks: Sequence[int],
    users: DataFrame,
    rec_cfg: Any,
) -> tuple[list[DataFrame], dict[str, Any]]:
    """``evaluate.ablate``: for each signal, the learned fusion fitted again on ``train_part``
    without it (its candidates, features and single-signal contender gone) and ``fused`` /
    ``fused_rerank`` ranked with that ranker as ``<name>_no_<signal>``. ALS, the head and the other
    signals are the ones ``model`` holds (with ``train.vae.augment`` off ALS does not depend on the
    VAE; with it on, ALS keeps the generated pairs, which is said in the log). Returns the
    materialised lists and ``{"variants": names, "pairs": [(full, without), ...], "rankers":
    {signal: what the ranker without it learned and chose}}``."""
    wanted = [s for s in specs if s.sweep is None and s.variant in ABLATED_VARIANTS]
    out: list[DataFrame] = []
    info: dict[str, Any] = {"variants": [], "pairs": [], "rankers": {}}
    for signal in cfg.evaluate.ablate:
        if signal == "vae" and model.vae is None:
            log.info("evaluate.ablate: no VAE was fitted (train.vae.enabled is false); nothing to leave out")
            continue
        if signal == "vae" and cfg.train.vae.augment:
            log.warning("evaluate.ablate: ALS keeps the VAE's generated pairs (train.vae.augment is on)")
        ranker_cfg = dataclasses.replace(cfg.recommend.ranker, use_vae=False)
        without = dataclasses.replace(
            cfg,
            train=dataclasses.replace(cfg.train, vae=dataclasses.replace(cfg.train.vae, enabled=False)),
            recommend=dataclasses.replace(cfg.recommend, ranker=ranker_cfg),
        )
        ranker = fit_ranker(spark, without, train_part, items, embeddings, model_id=model.model_id)
        reduced = dataclasses.replace(model, vae=None, ranker=ranker)
        cands = R.candidates(
            spark,
            rec_cfg,
            model=reduced,
            interactions=train_part,
            embeddings=embeddings,
            users=users,
            catalogue=items,
        )
        named = [dataclasses.replace(s, name=ablation_name(s.name, signal)) for s in wanted]
        out += ranked_lists(cands, named, cfg, ks=ks)
        cands.unpersist()
        info["rankers"][signal] = {k: v for k, v in (ranker.info or {}).items() if k != "importances"}
        info["variants"] += [s.name for s in named]
        info["pairs"] += [(s.name, ablation_name(s.name, signal)) for s in wanted]
    return out, info


def evaluate_lake(
    spark: SparkSession, cfg: Config, lake: Lake, *, run_id: str, specs: Sequence[ListSpec] | None = None
) -> dict[str, Any]:
    """:func:`evaluate` on the lake's current ``interactions``, ``items`` and the current encoder's
    vectors (what the stage and the quality benchmarks measure); nothing is written."""
    mid = encoder_model_id(cfg.encoder)
    items = lake.read(S.ITEMS)
    embeddings = current_embeddings(lake, mid, items=items)
    # a fine-tuned encoder in use: the base model's variants beside the fine-tuned ones (step 6)
    wanted = cfg.evaluate.finetuned
    compare = wanted == "always" or (
        wanted == "auto" and encoder_settings(cfg, spark).model != cfg.encoder.model
    )
    if compare:  # items that only the fine-tuned model encoded get their base vector now
        missing = items.join(embeddings.select(S.ITEM_ID), S.ITEM_ID, "left_anti")
        embeddings = embeddings.unionByName(encode_items(spark, cfg.encoder, missing, model_id=mid))
    return evaluate(
        spark,
        cfg,
        interactions=lake.read(S.INTERACTIONS),
        items=items,
        embeddings=embeddings,
        model_id=mid,
        run_id=run_id,
        specs=specs,
        finetune_from=cfg.encoder if compare else None,
    )


def ranked_lists(
    cands: R.Candidates, specs: Sequence[ListSpec], cfg: Config, *, ks: Sequence[int]
) -> list[DataFrame]:
    """Every list of ``specs`` at every cut-off k of ``ks``, ranked at length k as ``recommend``
    with ``recommend.k = k`` ranks it: ``(k, variant, user_id, item_id, rank)`` DataFrames, one
    per (k, spec), each materialised (``cands`` built at ``max(ks)`` with at least
    ``max(recommend.candidates, max(ks))`` candidates)."""
    out = []
    for k in sorted(set(ks)):
        rec_k = dataclasses.replace(cfg.recommend, k=k, candidates=max(cfg.recommend.candidates, k))
        cands_k = R.candidates_at(cands, k=k, n_candidates=rec_k.candidates)
        for spec in specs:
            overrides: dict[str, Any] = dict(spec.overrides)
            rec_spec = dataclasses.replace(rec_k, **overrides) if overrides else rec_k
            ranked = R.rank_variant(
                cands_k,
                spec.variant,
                rec_spec,
                fusion_k=spec.fusion_k,
                rerank_strength=spec.rerank_strength,
                pop_penalty=spec.pop_penalty,
            )
            # materialised one by one with the lineage cut: the metrics join each list several
            # times, and with the ranking plans inlined the driver's plan trees grew past 2 GiB
            out.append(_named(ranked, cands, spec.name, k).localCheckpoint(eager=True))
        cands_k.release_learned()  # the lists are materialised; the view's ranker scores can go
    return out


def _at(recs: DataFrame, k: int) -> DataFrame:
    """The lists ranked at length ``k`` (without the ``k`` column)."""
    return recs.where(F.col(S.K) == k).drop(S.K)


def _named(ranked: DataFrame, cands: R.Candidates, variant: str, k: int) -> DataFrame:
    """A ranked variant as ``(k, variant, user_id, item_id, rank)`` rows for the metrics."""
    return (
        ranked.join(cands.users, S.USER_IDX)
        .join(cands.items, S.ITEM_IDX)
        .select(
            F.lit(k).cast("int").alias(S.K),
            F.lit(variant).alias(S.VARIANT),
            S.USER_ID,
            S.ITEM_ID,
            F.col(S.RANK).cast("int").alias(S.RANK),
        )
    )


def _sweep_table(all_metrics: DataFrame, points: list[ListSpec], *, k: int) -> Any:
    """One row per sweep point: variant, param, value and its headline metrics at ``k``."""
    import pandas as pd

    columns = ["variant", "param", "value", "ndcg", "long_tail_coverage", "recall", "cold_recall", "aplt"]
    if not points:
        return pd.DataFrame(columns=columns)
    names = [p.name for p in points]
    rows = (
        all_metrics.where(F.col(S.VARIANT).isin(names) & (F.col(S.K) == k))
        .where(
            F.col(S.SEGMENT).isin(M.ALL, M.COLD)
            & F.col(S.METRIC).isin(M.NDCG, M.LONG_TAIL_COVERAGE, M.RECALL, M.APLT)
        )
        .collect()  # a few numbers per sweep point
    )
    found = {(r[S.VARIANT], r[S.METRIC], r[S.SEGMENT]): r[S.VALUE] for r in rows}
    out = []
    for p in points:
        assert p.sweep is not None
        out.append(
            {
                "variant": p.variant,
                "param": p.sweep[0],
                "value": p.sweep[1],
                "ndcg": found.get((p.name, M.NDCG, M.ALL)),
                "long_tail_coverage": found.get((p.name, M.LONG_TAIL_COVERAGE, M.ALL)),
                "recall": found.get((p.name, M.RECALL, M.ALL)),
                "cold_recall": found.get((p.name, M.RECALL, M.COLD)),
                "aplt": found.get((p.name, M.APLT, M.ALL)),
            }
        )
    return pd.DataFrame(out, columns=columns)


def run(
    spark: SparkSession, cfg: Config, *, lake: Lake | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Evaluate every variant on a hold-out of the lake's interactions; write metrics and report."""
    t0 = time.perf_counter()
    lake = lake or Lake.from_config(spark, cfg)
    lake.require("evaluate", S.INTERACTIONS, S.ITEMS, S.ITEM_EMBEDDINGS)
    run_id = run_id or new_run_id()
    mid = encoder_model_id(cfg.encoder)  # the base model: `<variant>_ft` lists name the fine-tuned one
    result = evaluate_lake(spark, cfg, lake, run_id=run_id)
    table = result["metrics"]
    version = lake.merge(S.METRICS, table, keys=METRIC_KEYS)
    metrics_pdf = table.drop(S.RUN_ID).toPandas()  # variants x metrics x k x segments: small
    table.unpersist()
    summary: dict[str, Any] = {
        "holdout": cfg.evaluate.holdout,
        "split": result["split"],
        "users": result["users"],
        "metrics_rows": len(metrics_pdf),
        "metrics_version": version,
        "ranker": result["ranker"],
        "seconds": result["seconds"],
    }
    if result["finetuned"]:
        ft = result["finetuned"]
        card = ft["card"] or {}
        summary["finetuned"] = {
            "variants": ft["variants"],
            "model_id": ft.get("model_id"),
            "base_model_id": mid,
            **{
                k: card.get(k)
                for k in ("method", "pairs", "steps", "loss_first", "loss_last", "train_seconds")
            },
        }
    if cfg.evaluate.report:
        summary["report"] = write_run_report(
            spark, cfg, lake=lake, result=result, metrics=metrics_pdf, run_id=run_id, model_id=mid
        )
    summary["sweep"] = result["sweep"].to_dict(orient="records")
    summary["intervals"] = result["intervals"].to_dict(orient="records")
    if result["ablation"]["pairs"]:  # evaluate.ablate: each full variant's difference to its ablation
        summary["ablation"] = result["ablation"]["intervals"].to_dict(orient="records")
    summary["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    log.info("evaluate: %s", summary)
    return summary


def write_run_report(
    spark: SparkSession,
    cfg: Config,
    *,
    lake: Lake,
    result: dict[str, Any],
    metrics: Any,
    run_id: str,
    model_id: str,
    holdout: str | None = None,
) -> dict[str, str]:
    """Write the report of an :func:`evaluate` result to ``<evaluate.report_dir>/<run_id>``.

    ``metrics``: the run's metrics table as pandas (without ``run_id``); ``holdout``: how the
    report names the hold-out (default ``evaluate.holdout``). Returns the written paths.
    """
    from longtail import report

    context = {
        "run_id": run_id,
        "lake": lake.root,
        "inputs": {
            "items": cfg.input.items or "generated sample",
            "interactions": cfg.input.interactions,
        },
        "encoder_model_id": model_id,
        "holdout": holdout or cfg.evaluate.holdout,
        "split": result["split"],
        "users": result["users"],
        # the learned fusion's choice, inner validation and inner split (None for fusion: blend):
        # its held_out_* counts read beside the split's test_interactions* (docs/scoring.md)
        "ranker": result.get("ranker"),
        "finetuned": result.get("finetuned"),
        "seconds": result["seconds"],
        "config": cfg.to_dict(),
    }
    return report.write_report(
        join_uri(cfg.report_dir, run_id),
        run_id=run_id,
        metrics=metrics,
        lorenz=result["lorenz"],
        deciles=result["deciles"],
        sweep=result["sweep"],
        context=context,
        k=sorted(cfg.evaluate.k)[0],
        spark=spark,
        intervals=result.get("intervals"),
        ablation=ablation_table(result.get("ablation")),
    )


def ablation_table(ablation: dict[str, Any] | None) -> pd.DataFrame | None:
    """The ablation intervals with ``variant`` naming the difference (``fused - fused_no_vae``)."""
    if not ablation or not ablation.get("pairs"):
        return None
    names = {full: f"{full} - {without}" for full, without in ablation["pairs"]}
    rows = ablation["intervals"]
    return rows.assign(variant=rows[S.VARIANT].map(names).fillna(rows[S.VARIANT]))
