"""Tables, plots and the HTML/Markdown documents of the evaluation report."""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from longtail.core.config import VARIANTS, flatten

log = logging.getLogger(__name__)

HTML_NAME = "report.html"
MD_NAME = "report.md"
TRADEOFF_PNG = "tradeoff.png"
LORENZ_PNG = "lorenz.png"
DECILES_PNG = "deciles.png"

ACCURACY_COLUMNS = ("recall", "ndcg", "hit_rate", "map", "precision")
BEYOND_COLUMNS = (
    "catalog_coverage",
    "long_tail_coverage",
    "long_tail_coverage_interacted",
    "aplt",
    "aplt_interacted",
    "arp",
    "gini",
    "entropy",
    "novelty",
)
SEGMENT_COLUMNS = (*ACCURACY_COLUMNS, "recall_all_users")
SEGMENT_ORDER = ("all", "head", "tail", "cold")
LABELS = {
    "recall": "Recall",
    "ndcg": "NDCG",
    "hit_rate": "HitRate",
    "map": "MAP",
    "precision": "Precision",
    "catalog_coverage": "Catalog cov.",
    "long_tail_coverage": "LT cov.",
    "long_tail_coverage_interacted": "LT cov. (interacted)",
    "aplt": "APLT",
    "aplt_interacted": "APLT (interacted)",
    "recall_all_users": "Recall (all users)",
    "arp": "ARP",
    "gini": "Gini",
    "entropy": "Entropy",
    "novelty": "Novelty",
}
# Which way is "better", for highlighting the best variant per column (ARP: neither).
HIGHER_IS_BETTER = set(ACCURACY_COLUMNS) | {
    "catalog_coverage",
    "long_tail_coverage",
    "long_tail_coverage_interacted",
    "aplt",
    "aplt_interacted",
    "recall_all_users",
    "entropy",
    "novelty",
}
LOWER_IS_BETTER = {"gini"}
_DPI = 110


# --- tables --------------------------------------------------------------------------------------
def format_value(metric: str, value: Any) -> str:
    """How a metric value is printed in the tables: 4 decimals; ARP 1; bits 2; missing as 'n/a'."""
    if value is None or pd.isna(value):
        return "n/a"
    if metric == "arp":
        return f"{value:.1f}"
    if metric in ("entropy", "novelty"):
        return f"{value:.2f}"
    return f"{value:.4f}"


def variant_order(variants: Iterable[str]) -> list[str]:
    """The pipeline's variants in pipeline order (popular ... fused_rerank), then others by name."""
    present = list(dict.fromkeys(variants))
    known = [v for v in VARIANTS if v in present]
    return known + sorted(v for v in present if v not in VARIANTS)


def metric_table(metrics: pd.DataFrame, columns: Sequence[str], *, segment: str = "all") -> pd.DataFrame:
    """Variants as rows, (metric, k) as columns, for one segment (k ascending, then ``columns``).

    Example:
        >>> metric_table(m, ("recall", "ndcg")).loc["cf", ("ndcg", 10)]
    """
    sub = metrics[(metrics["segment"] == segment) & metrics["metric"].isin(columns)]
    if sub.empty:
        return pd.DataFrame()
    wide = sub.pivot_table(index="variant", columns=["metric", "k"], values="value", aggfunc="first")
    ks = sorted({int(k) for k in sub["k"]})
    ordered = [(m, k) for k in ks for m in columns if (m, k) in wide.columns]
    return wide.reindex(index=variant_order(wide.index), columns=pd.MultiIndex.from_tuples(ordered))


def segment_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """(variant, segment) as rows, (accuracy metric, k) as columns (with ``recall_all_users``)."""
    sub = metrics[metrics["metric"].isin(SEGMENT_COLUMNS)]
    if sub.empty:
        return pd.DataFrame()
    wide = sub.pivot_table(
        index=["variant", "segment"], columns=["metric", "k"], values="value", aggfunc="first"
    )
    ks = sorted({int(k) for k in sub["k"]})
    ordered = [(m, k) for k in ks for m in SEGMENT_COLUMNS if (m, k) in wide.columns]
    rows = [
        (v, s)
        for v in variant_order(sub["variant"])
        for s in [*SEGMENT_ORDER, *sorted(set(sub["segment"]) - set(SEGMENT_ORDER))]
        if (v, s) in wide.index
    ]
    return wide.reindex(index=pd.MultiIndex.from_tuples(rows), columns=pd.MultiIndex.from_tuples(ordered))


def interval_table(intervals: pd.DataFrame | None) -> pd.DataFrame:
    """(variant, metric@k) rows: the difference to the baseline and its bootstrap interval, as text.

    Example:
        >>> interval_table(result["intervals"]).iloc[0]["difference [95% interval]"]
        '+0.0123 [+0.0040, +0.0210]'
    """
    columns = ["variant", "metric", "difference [95% interval]", "users", "resamples"]
    if intervals is None or intervals.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    order = {v: i for i, v in enumerate(variant_order(intervals["variant"]))}
    for r in intervals.sort_values(["k", "metric"]).itertuples():
        rows.append(
            (
                r.variant,
                f"{LABELS.get(r.metric, r.metric)}@{int(r.k)}",
                f"{r.diff:+.4f} [{r.lo:+.4f}, {r.hi:+.4f}]",
                int(r.n_users),
                int(r.n_boot),
            )
        )
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values("variant", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)


def _plain_html(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plain_md(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_ABLATION_NOTE = (
    "Each variant with the signal minus the same variant ranked by a learned fusion fitted without it "
    "(evaluate.ablate), on the same users and resamples: what the signal adds to the fusion."
)
_INTERVAL_NOTE = (
    "Each variant minus cf on the same users, with a paired bootstrap 95% percentile interval over users "
    "(NDCG and Recall: means of per-user values; long-tail coverage: recomputed on each resample, which "
    "holds about 63% distinct users, and shifted by the bootstrap's bias estimate). An interval that "
    "excludes 0 marks a difference larger than the choice of evaluated users explains."
)


def _best(table: pd.DataFrame) -> dict[tuple[str, int], float]:
    best: dict[tuple[str, int], float] = {}
    for metric, k in table.columns:
        col = table[(metric, k)].dropna()
        if len(col) < 2:
            continue
        if metric in HIGHER_IS_BETTER:
            best[(metric, k)] = col.max()
        elif metric in LOWER_IS_BETTER:
            best[(metric, k)] = col.min()
    return best


def _html_table(
    table: pd.DataFrame, *, index_names: Sequence[str], group_best_by_level: int | None = None
) -> str:
    """A table with a two-row header (K, then metric); the best value per column in bold."""
    if table.empty:
        return "<p class='empty'>No values.</p>"
    ks = list(dict.fromkeys(k for _, k in table.columns))
    head1 = "".join(f"<th rowspan='2'>{html.escape(n)}</th>" for n in index_names)
    for k in ks:
        span = sum(1 for _, kk in table.columns if kk == k)
        head1 += f"<th colspan='{span}' class='kgroup'>@{k}</th>"
    head2 = "".join(
        f"<th class='{'kstart' if i == 0 or table.columns[i - 1][1] != k else ''}'>{LABELS.get(m, m)}</th>"
        for i, (m, k) in enumerate(table.columns)
    )
    groups = (
        [table]
        if group_best_by_level is None
        else [g for _, g in table.groupby(level=group_best_by_level, sort=False)]
    )
    best_of = {}
    for g in groups:
        for key, value in _best(g).items():
            for idx in g.index[g[key] == value]:
                best_of[(idx, key)] = True
    rows = []
    prev_first = None
    for idx, row in table.iterrows():
        keys = idx if isinstance(idx, tuple) else (idx,)
        first_of_group = len(keys) > 1 and keys[0] != prev_first
        prev_first = keys[0]
        cells = "".join(
            f"<th class='rowhead'>{html.escape(str(v)) if (j > 0 or len(keys) == 1 or first_of_group) else ''}</th>"
            for j, v in enumerate(keys)
        )
        for i, (m, k) in enumerate(table.columns):
            text = format_value(m, row[(m, k)])
            cls = "kstart" if i == 0 or table.columns[i - 1][1] != k else ""
            if best_of.get((idx, (m, k))):
                text = f"<strong>{text}</strong>"
            cells += f"<td class='{cls}'>{text}</td>"
        rows.append(f"<tr class='{'groupstart' if first_of_group else ''}'>{cells}</tr>")
    return f"<table><thead><tr>{head1}</tr><tr>{head2}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _md_table(table: pd.DataFrame, *, index_names: Sequence[str]) -> str:
    if table.empty:
        return "_No values._\n"
    header = [*index_names, *[f"{LABELS.get(m, m)}@{k}" for m, k in table.columns]]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(index_names) + ["---:"] * len(table.columns)) + "|",
    ]
    for idx, row in table.iterrows():
        keys = idx if isinstance(idx, tuple) else (idx,)
        cells = [str(v) for v in keys] + [format_value(m, row[(m, k)]) for m, k in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- plots ---------------------------------------------------------------------------------------
def _colours(variants: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {v: cmap(i % 10) for i, v in enumerate(variants)}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="grey")


# Label positions tried around a point, in order: (dx, dy) in points, horizontal alignment.
_LABEL_SPOTS = ((8, 5, "left"), (8, -13, "left"), (-8, 5, "right"), (-8, -13, "right"), (0, 10, "center"),
                (0, -20, "center"))  # fmt: skip


_SMALL_LABEL_SPOTS = ((3, -9, "left"), (3, 3, "left"), (-3, 3, "right"), (-3, -9, "right"))


def _place_labels(
    fig: Figure,
    ax: Any,
    texts: list[Any],
    obstacles: Sequence[Any] = (),
    spots: Sequence[tuple[int, int, str]] = _LABEL_SPOTS,
) -> None:
    """Move each point label to the first spot around its point that overlaps no other label.

    Spots are tried right, then left, then above and below the point; labels whose spot would leave
    the axes are skipped over. A label with no free spot keeps the first one that stays inside.
    """
    if not texts:
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = [o if isinstance(o, Bbox) else o.get_window_extent(renderer) for o in obstacles]
    for text in sorted(texts, key=lambda t: -t.xy[1]):
        chosen = None
        for dx, dy, ha in spots:
            text.set_position((dx, dy))
            text.set_horizontalalignment(ha)
            box = text.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if not inside:
                continue
            chosen = chosen or (dx, dy, ha)
            if not any(box.expanded(1.04, 1.2).overlaps(p) for p in placed):
                chosen = (dx, dy, ha)
                break
        dx, dy, ha = chosen or spots[0]
        text.set_position((dx, dy))
        text.set_horizontalalignment(ha)
        placed.append(text.get_window_extent(renderer))


def _line_boxes(ax: Any, lines: Sequence[Any], step_px: float = 6.0) -> list[Bbox]:
    """Small boxes along the given lines (in display coordinates), so labels keep off them."""
    boxes = []
    for line in lines:
        xy = ax.transData.transform(list(zip(line.get_xdata(), line.get_ydata(), strict=True)))
        for (x0, y0), (x1, y1) in itertools.pairwise(xy):
            n = max(1, int(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 / step_px))
            for t in range(n + 1):
                x, y = x0 + (x1 - x0) * t / n, y0 + (y1 - y0) * t / n
                boxes.append(Bbox.from_bounds(x - 3, y - 3, 6, 6))
    return boxes


def plot_tradeoff(metrics: pd.DataFrame, sweep: pd.DataFrame | None, *, k: int) -> bytes:
    """NDCG@K (y) against long-tail coverage@K (x): one labelled point per variant, a curve per sweep."""
    fig, ax = plt.subplots(figsize=(8.4, 5.4))
    sub = metrics[(metrics["k"] == k) & (metrics["segment"] == "all")]
    wide = sub.pivot_table(index="variant", columns="metric", values="value", aggfunc="first")
    sweeps = sweep if sweep is not None and not sweep.empty else None
    sweep_texts: list[Any] = []
    sweep_lines: list[Any] = []
    variants = variant_order([*wide.index, *([] if sweeps is None else sweeps["variant"])])
    colours = _colours(variants)
    if sweeps is not None:
        styles = ("-", "--", ":", "-.")
        for n, ((v, param), g) in enumerate(sweeps.groupby(["variant", "param"], sort=False)):
            g = g.dropna(subset=["ndcg", "long_tail_coverage"]).sort_values("value")
            style = styles[n % len(styles)]
            sweep_lines += ax.plot(g["long_tail_coverage"], g["ndcg"], style, marker=".", color=colours[v],
                                   alpha=0.55, lw=1.5, label=f"{v}: sweep over {param}")  # fmt: skip
            for _, r in g.iterrows():
                sweep_texts += [ax.annotate(f"{r['value']:g}", (r["long_tail_coverage"], r["ndcg"]), xytext=(3, -9),
                            textcoords="offset points", fontsize=7, color=colours[v], alpha=0.9)]  # fmt: skip
    texts = []
    have = {"ndcg", "long_tail_coverage"} <= set(wide.columns)
    if have:
        for v in variant_order(wide.index):
            x, y = wide.loc[v, "long_tail_coverage"], wide.loc[v, "ndcg"]
            if pd.isna(x) or pd.isna(y):
                continue
            ax.scatter([x], [y], s=70, color=colours[v], edgecolor="black", linewidth=0.6, zorder=3)
            texts.append(ax.annotate(v, (x, y), xytext=(8, 5), textcoords="offset points", fontsize=10,
                                     fontweight="bold", color=colours[v], zorder=4))  # fmt: skip
    else:
        _no_data(ax, f"NDCG@{k} / long-tail coverage@{k}")
    ax.set_xlabel(f"long-tail coverage@{k} (share of tail items recommended at least once)")
    ax.set_ylabel(f"NDCG@{k}")
    ax.set_title(f"Accuracy against long-tail coverage (K = {k}): up and right is better")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    if sweeps is not None:
        ax.legend(loc="best", fontsize=8, frameon=False)
    fig.canvas.draw()  # final limits, so that the line boxes are where the lines will be
    on_lines = _line_boxes(ax, sweep_lines)
    _place_labels(fig, ax, texts, on_lines)  # the variants first: they matter most
    _place_labels(fig, ax, sweep_texts, [*texts, *on_lines], spots=_SMALL_LABEL_SPOTS)
    return _png(fig)


def plot_lorenz(lorenz: pd.DataFrame, metrics: pd.DataFrame, *, k: int) -> bytes:
    """The Lorenz curve of top-K exposure per variant, with the line of equality (Gini in the legend)."""
    fig, ax = plt.subplots(figsize=(6.6, 5.6))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="equal exposure")
    gini = metrics[(metrics["metric"] == "gini") & (metrics["k"] == k)].set_index("variant")["value"]
    variants = variant_order(lorenz["variant"]) if not lorenz.empty else []
    colours = _colours(variant_order([*variants, *gini.index]))
    for v in variants:
        g = lorenz[lorenz["variant"] == v].sort_values("share_of_items")
        label = f"{v} (Gini {gini[v]:.3f})" if v in gini.index and not pd.isna(gini[v]) else v
        ax.plot(g["share_of_items"], g["share_of_exposure"], color=colours[v], lw=2, label=label)
    if not variants:
        _no_data(ax, "exposure")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("share of catalogue items (least exposed first)")
    ax.set_ylabel(f"share of top-{k} exposure")
    ax.set_title(f"Lorenz curve of exposure (K = {k})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    return _png(fig)


def plot_deciles(deciles: pd.DataFrame, *, k: int) -> bytes:
    """Recall@K per item-popularity decile (1 = most popular), grouped bars per variant."""
    fig, ax = plt.subplots(figsize=(10.0, 4.6))
    variants = variant_order(deciles["variant"]) if not deciles.empty else []
    colours = _colours(variants)
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        g = deciles[deciles["variant"] == v].sort_values("decile")
        xs = g["decile"] - 0.4 + width * (j + 0.5)
        ax.bar(xs, g["recall"].fillna(0.0), width=width, color=colours[v], label=v)
    if variants:
        n_test = deciles.drop_duplicates("decile").set_index("decile")["n_test"]
        ax.set_xticks(range(1, 11))
        ax.set_xticklabels([f"{d}\nn={int(n_test.get(d, 0))}" for d in range(1, 11)], fontsize=8)
        ax.legend(fontsize=9, frameon=False, ncols=min(5, len(variants)), loc="upper right")
    else:
        _no_data(ax, "deciles")
    ax.set_xlabel(
        "item-popularity decile of the test item (1 = the most popular 10% of the catalogue; n = test pairs)"
    )
    ax.set_ylabel(f"Recall@{k} (micro-averaged)")
    ax.set_title(f"Recall@{k} by item-popularity decile")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_xlim(0.5, 10.5)
    return _png(fig)


# --- context -------------------------------------------------------------------------------------
def _context_html(context: Mapping[str, Any]) -> str:
    """Each top-level key a sub-heading; mappings as dotted key/value tables (config: evaluate.k)."""
    parts = []
    for key, value in context.items():
        parts.append(f"<h3>{html.escape(str(key))}</h3>")
        if isinstance(value, Mapping):
            rows = "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(_scalar(v))}</td></tr>"
                for k, v in flatten(value)
            )
            parts.append(f"<table class='kv'>{rows}</table>")
        elif isinstance(value, list | tuple):
            parts.append(f"<pre>{html.escape(json.dumps(value, indent=2, default=str))}</pre>")
        else:
            parts.append(f"<p>{html.escape(_scalar(value))}</p>")
    return "".join(parts)


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return str(value) if len(str(value)) <= 10 else f"{value:.6g}"  # 1.0 stays 1.0, as in YAML
    if isinstance(value, list | tuple | Mapping) or value is None or isinstance(value, bool):
        return json.dumps(value, default=str)  # [10, 20], null, true: as in the YAML config
    return str(value)


def _context_md(context: Mapping[str, Any]) -> str:
    return "```json\n" + json.dumps(dict(context), indent=2, default=str) + "\n```\n"


# --- documents -----------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#5b6373;margin:0 0 12px}.note{color:#5b6373;font-size:13px;margin:6px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid #eceef1;text-align:right;white-space:nowrap}
thead th{background:#f0f2f5;font-weight:600;text-align:center}th.kgroup{border-left:2px solid #c9ced6}
th.rowhead{text-align:left;font-weight:600;background:#fafbfc}.kstart{border-left:2px solid #c9ced6}
tr.groupstart td,tr.groupstart th{border-top:2px solid #d5d9df}tbody tr:hover{background:#f5f8ff}
strong{color:#0b5394}table.kv th{text-align:left;font-weight:600;background:#fafbfc}table.kv td{text-align:left}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eceef1}
figcaption{color:#5b6373;font-size:13px;margin-top:4px}
details{margin-top:28px;border:1px solid #e3e6ea;border-radius:4px;padding:8px 14px}
summary{cursor:pointer;font-weight:600;font-size:16px}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px;max-height:480px}
.wrap{overflow-x:auto}
"""

_GLOSSARY = (
    "Recall, NDCG, HitRate, MAP (truncated at K) and Precision (hits / K) are averaged over users with at "
    "least one test item; catalog cov. = share of the whole catalogue recommended; LT cov. = share of "
    "long-tail items (tail and cold) recommended, (interacted): of tail items with training interactions; APLT = mean share of long-tail items per list; ARP = mean training "
    "popularity of recommended items; Gini and entropy (bits) of exposure over the catalogue; novelty = "
    "mean self-information log2((N+1)/(users(i)+1)) in bits. Best per column in bold (ARP: none). "
    "Definitions: docs/evaluation.md."
)


_SEGMENT_NOTE = (
    "head = the most popular items by training count (recommend.head_rule); tail = items with training "
    "interactions outside the head; cold = items with no training interaction (never head). A segment's "
    "metrics use only its test items as the relevant set, over the users that have one; Recall (all users) "
    "averages the same per-user recall over every evaluated user, 0 for users without such a test item."
)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _ablation_html(ablation: pd.DataFrame | None) -> str:
    if ablation is None or ablation.empty:
        return ""
    return (
        "<h2>What ablated signals add (paired bootstrap)</h2>"
        f"<div class='wrap'>{_plain_html(interval_table(ablation))}</div>"
        f"<p class='note'>{html.escape(_ABLATION_NOTE)}</p>"
    )


def render_html(
    *, run_id: str, k: int, main: pd.DataFrame, beyond: pd.DataFrame, segments: pd.DataFrame,
    pngs: Mapping[str, bytes], context: Mapping[str, Any], generated: str,
    intervals: pd.DataFrame | None = None, ablation: pd.DataFrame | None = None,
) -> str:  # fmt: skip
    """The report as one self-contained HTML page."""
    title = f"longtail evaluation — {run_id}"
    fig = {
        TRADEOFF_PNG: (
            "Accuracy against long-tail coverage",
            f"NDCG@{k} against long-tail coverage@{k}, one point per variant; lines: a variant swept over "
            "one of its knobs (labels: the knob's value).",
        ),
        LORENZ_PNG: (
            "Exposure: Lorenz curve",
            f"Share of all top-{k} slots taken by the least-exposed share of the catalogue; the further below "
            "the diagonal, the more concentrated the exposure.",
        ),
        DECILES_PNG: (
            "Recall by item popularity",
            f"Recall@{k} over test pairs whose item lies in each training-popularity decile of the catalogue "
            "(micro-averaged: hits / test pairs).",
        ),
    }
    figures = "".join(
        f"<h2>{html.escape(head)}</h2><figure><img alt='{html.escape(head)}' src='{_data_uri(pngs[name])}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, (head, caption) in fig.items()
        if name in pngs
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>longtail evaluation report</h1>
<p class="meta">run <code>{html.escape(run_id)}</code> · generated {html.escape(generated)} · plots at K = {k}</p>
<h2>Accuracy (all test items)</h2>
<div class="wrap">{_html_table(main, index_names=["variant"])}</div>
<h2>Long tail and exposure</h2>
<div class="wrap">{_html_table(beyond, index_names=["variant"])}</div>
<p class="note">{html.escape(_GLOSSARY)}</p>
<h2>Differences to cf (paired bootstrap)</h2>
<div class="wrap">{_plain_html(interval_table(intervals))}</div>
<p class="note">{html.escape(_INTERVAL_NOTE)}</p>
{_ablation_html(ablation)}
<h2>Accuracy by segment of the test item</h2>
<div class="wrap">{_html_table(segments, index_names=["variant", "segment"], group_best_by_level=1)}</div>
<p class="note">{html.escape(_SEGMENT_NOTE)}</p>
{figures}
<details><summary>Data and configuration</summary>{_context_html(context)}</details>
</main></body></html>
"""


def render_markdown(
    *, run_id: str, k: int, main: pd.DataFrame, beyond: pd.DataFrame, segments: pd.DataFrame,
    png_names: Iterable[str], context: Mapping[str, Any], generated: str,
    intervals: pd.DataFrame | None = None, ablation: pd.DataFrame | None = None,
) -> str:  # fmt: skip
    """The report as Markdown, the plots referenced by relative path."""
    names = set(png_names)
    figs = [
        (TRADEOFF_PNG, f"Accuracy against long-tail coverage (NDCG@{k} vs long-tail coverage@{k})"),
        (LORENZ_PNG, f"Lorenz curve of top-{k} exposure"),
        (DECILES_PNG, f"Recall@{k} by item-popularity decile"),
    ]
    out = [
        "# longtail evaluation report\n",
        f"Run `{run_id}`, generated {generated}; plots at K = {k}.\n",
        "## Accuracy (all test items)\n",
        _md_table(main, index_names=["variant"]),
        "## Long tail and exposure\n",
        _md_table(beyond, index_names=["variant"]),
        _GLOSSARY + "\n",
        "## Differences to cf (paired bootstrap)\n",
        _plain_md(interval_table(intervals)),
        _INTERVAL_NOTE + "\n",
        *(
            [
                "## What ablated signals add (paired bootstrap)\n",
                _plain_md(interval_table(ablation)),
                _ABLATION_NOTE + "\n",
            ]
            if ablation is not None and not ablation.empty
            else []
        ),
        "## Accuracy by segment of the test item\n",
        _md_table(segments, index_names=["variant", "segment"]),
        _SEGMENT_NOTE + "\n",
    ]
    for name, title in figs:
        if name in names:
            out += [f"## {title}\n", f"![{title}]({name})\n"]
    out += ["<details><summary>Data and configuration</summary>\n", _context_md(context), "</details>\n"]
    return "\n".join(out)
