"""The per-run evaluation report: one self-contained ``report.html`` and a ``report.md`` beside it.

Inputs are the small, already-collected results of `evaluate` (the metrics table, Lorenz points,
recall by decile, an optional sweep over the fusion knob) and a context dict (data sources, row
counts, split summary, config, timings). Output, under ``out_dir`` (``<lake.root>/reports/<run_id>``):

* ``report.html``: tables, the three plots embedded as base64 PNG, inline CSS, no external
  resources (it opens offline and can be mailed as one file);
* ``report.md`` and the PNGs it references by relative path (``tradeoff.png``, ``lorenz.png``,
  ``deciles.png``), for repositories and wikis.

``out_dir`` may be a local path (or ``file:`` URI) or any Hadoop URI (``s3a://``, ``abfss://``,
``hdfs://``): those are written through Spark's Hadoop FileSystem, with the caller's credentials
configuration, which is why ``spark`` is a parameter. No half-written report: every file is
written under a temporary name and renamed, and ``report.html`` is written last, so its presence
means the report is complete.

Example:
    >>> paths = write_report(
    ...     "lake/reports/run-1", run_id="run-1", metrics=m, lorenz=l, deciles=d, sweep=None,
    ...     context={"config": cfg.to_dict()}, k=10, spark=spark)
    >>> paths["html"]
    'lake/reports/run-1/report.html'
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from longtail.core.files import write_files
from longtail.report.render import (
    ACCURACY_COLUMNS,
    BEYOND_COLUMNS,
    DECILES_PNG,
    HTML_NAME,
    LORENZ_PNG,
    MD_NAME,
    TRADEOFF_PNG,
    metric_table,
    plot_deciles,
    plot_lorenz,
    plot_tradeoff,
    render_html,
    render_markdown,
    segment_table,
)

log = logging.getLogger(__name__)


def write_report(
    out_dir: str,
    *,
    run_id: str,
    metrics: pd.DataFrame,
    lorenz: pd.DataFrame,
    deciles: pd.DataFrame,
    sweep: pd.DataFrame | None,
    context: Mapping[str, Any],
    k: int,
    spark: SparkSession | None = None,
    intervals: pd.DataFrame | None = None,
    ablation: pd.DataFrame | None = None,
) -> dict[str, str]:
    """Write ``report.html`` (self-contained) and ``report.md`` with its PNGs into ``out_dir``.

    Args:
        out_dir: a local path or a Hadoop URI, e.g. ``<lake.root>/reports/<run_id>``.
        run_id: the run the report belongs to (shown in the title).
        metrics: ``variant``, ``metric``, ``k``, ``segment``, ``value`` (``run_id`` may be present).
        lorenz: ``variant``, ``share_of_items``, ``share_of_exposure`` (:func:`longtail.ml.metrics.lorenz_curve`).
        deciles: ``variant``, ``decile``, ``recall``, ``n_test`` (:func:`longtail.ml.metrics.recall_by_decile`).
        sweep: ``variant``, ``param``, ``value``, ``ndcg``, ``long_tail_coverage`` (points of a curve
            over the fusion knob), or None / empty for no curves.
        context: JSON-able facts shown in a collapsible section (sources, counts, split, config,
            timings); top-level keys become sub-headings.
        k: the cut-off of the plots.
        spark: needed only when ``out_dir`` is not local.
        intervals: each variant's difference to ``cf`` with its bootstrap interval
            (:func:`longtail.ml.bootstrap.intervals`), or None for none.
        ablation: the same columns, ``variant`` naming a difference (``fused - fused_no_vae``):
            what an ablated signal adds (``evaluate.ablate``); None or empty: no such section.

    Returns:
        ``{"html": ..., "md": ..., "tradeoff_png": ..., "lorenz_png": ..., "deciles_png": ...}``:
        the written paths (or URIs).

    Example:
        >>> write_report(out, run_id="r1", metrics=m, lorenz=l, deciles=d, sweep=None, context={}, k=10)["html"]
    """
    metrics = metrics.dropna(subset=["k"])  # every metric of longtail.ml.metrics has a K
    metrics = metrics.assign(k=metrics["k"].astype(int), value=metrics["value"].astype(float))
    main = metric_table(metrics, ACCURACY_COLUMNS)
    beyond = metric_table(metrics, BEYOND_COLUMNS)
    segments = segment_table(metrics)
    pngs = {
        TRADEOFF_PNG: plot_tradeoff(metrics, sweep, k=k),
        LORENZ_PNG: plot_lorenz(lorenz, metrics, k=k),
        DECILES_PNG: plot_deciles(deciles, k=k),
    }
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    common = {"run_id": run_id, "k": k, "main": main, "beyond": beyond, "segments": segments, "context": context,
              "generated": generated, "intervals": intervals, "ablation": ablation}  # fmt: skip
    md = render_markdown(png_names=pngs, **common)
    page = render_html(pngs=pngs, **common)
    # the HTML last: once it exists, the report is complete
    files = [*pngs.items(), (MD_NAME, md.encode("utf-8")), (HTML_NAME, page.encode("utf-8"))]
    written = write_files(out_dir, files, spark=spark)
    log.info("report written to %s", written[HTML_NAME])
    return {
        "html": written[HTML_NAME],
        "md": written[MD_NAME],
        "tradeoff_png": written[TRADEOFF_PNG],
        "lorenz_png": written[LORENZ_PNG],
        "deciles_png": written[DECILES_PNG],
    }
