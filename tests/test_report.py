"""The per-run report: files, embedded plots, no external resources, Markdown images that exist."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longtail.core.files import write_files
from longtail.report import write_report
from longtail.report.render import format_value, metric_table

VARIANTS = ("popular", "cf", "content", "fused", "fused_rerank")
KS = (10, 20)


def fake_inputs(seed: int = 3) -> dict:
    """Plausible inputs for the five pipeline variants (also used to render a sample report)."""
    rng = np.random.default_rng(seed)
    base = {  # variant: (ndcg@10, long-tail coverage@10, gini@10)
        "popular": (0.052, 0.000, 0.995),
        "cf": (0.071, 0.082, 0.93),
        "content": (0.041, 0.301, 0.71),
        "fused": (0.066, 0.120, 0.88),
        "fused_rerank": (0.062, 0.344, 0.64),
    }
    rows = []
    for v, (ndcg, ltc, g) in base.items():
        for k in KS:
            grow = 1.0 if k == 10 else 1.45
            acc = {"recall": ndcg * 1.6 * grow, "ndcg": ndcg * (1.0 if k == 10 else 1.2),
                   "hit_rate": min(1.0, ndcg * 6 * grow), "map": ndcg * 0.55, "precision": ndcg * 0.4 / grow}  # fmt: skip
            for seg, f in (
                ("all", 1.0),
                ("head", 1.3),
                ("tail", 0.35),
                ("cold", 0.08 if v != "popular" else 0.0),
            ):
                rows += [(v, m, k, seg, x * f) for m, x in acc.items()]
            beyond = {
                "catalog_coverage": 0.02 + ltc * 0.8 * grow, "long_tail_coverage": min(1.0, ltc * grow),
                "aplt": ltc * 0.7, "arp": 850.0 * (1 - ltc), "gini": g, "entropy": 4 + 6 * (1 - g),
                "novelty": 5.5 + 4 * ltc,
            }  # fmt: skip
            rows += [(v, m, k, "all", x) for m, x in beyond.items()]
    metrics = pd.DataFrame(rows, columns=["variant", "metric", "k", "segment", "value"])
    shares = np.linspace(0, 1, 101)
    lorenz = pd.concat(
        [
            pd.DataFrame(
                {"variant": v, "share_of_items": shares, "share_of_exposure": shares ** (1 + 30 * g**4)}
            )
            for v, (_, _, g) in base.items()
        ],
        ignore_index=True,
    )
    dec = []
    for v, (ndcg, ltc, _) in base.items():
        for d in range(1, 11):
            head_bias = np.exp(-(d - 1) * (1.2 - 2.5 * ltc))
            dec.append((v, d, float(ndcg * 2.2 * head_bias * rng.uniform(0.8, 1.2)), int(4000 / d)))
    deciles = pd.DataFrame(dec, columns=["variant", "decile", "recall", "n_test"])
    sweep = pd.DataFrame(
        [
            ("fused", "fusion_k", fk, 0.071 - 0.0012 * np.log1p(fk), 0.08 + 0.025 * np.log1p(fk))
            for fk in (1, 3, 10, 30, 100)
        ],
        columns=["variant", "param", "value", "ndcg", "long_tail_coverage"],
    )
    context = {
        "data": {
            "items": "lake/items (version 3)",
            "interactions": "lake/interactions (version 5)",
            "catalog_items": 9742,
            "train_interactions": 80668,
            "test_interactions": 20168,
        },
        "split": {
            "mode": "per user",
            "test_fraction": 0.2,
            "users": 610,
            "cold_users": 0,
            "cold_items": 1270,
        },
        "config": {
            "evaluate": {"k": list(KS), "test_fraction": 0.2},
            "recommend": {"k": 20, "fusion_k": 10.0},
        },
        "timings_s": {"split": 3.2, "train": 61.0, "recommend": 95.4, "metrics": 12.5},
    }
    return {"metrics": metrics, "lorenz": lorenz, "deciles": deciles, "sweep": sweep, "context": context}


def test_report_files_and_contents(tmp_path: Path):
    inputs = fake_inputs()
    out = tmp_path / "reports" / "run-42"
    paths = write_report(str(out), run_id="run-42", k=10, **inputs)
    assert set(paths) == {"html", "md", "tradeoff_png", "lorenz_png", "deciles_png"}
    assert all(Path(p).is_file() for p in paths.values())
    assert sorted(p.name for p in out.iterdir()) == [
        "deciles.png",
        "lorenz.png",
        "report.html",
        "report.md",
        "tradeoff.png",
    ]

    page = Path(paths["html"]).read_text(encoding="utf-8")
    assert "run-42" in page
    for v in VARIANTS:
        assert f">{v}<" in page
    m = inputs["metrics"]
    for metric in ("ndcg", "long_tail_coverage", "gini", "arp", "novelty"):
        for k in KS:
            value = m[
                (m.variant == "cf") & (m.metric == metric) & (m.k == k) & (m.segment == "all")
            ].value.item()
            assert format_value(metric, value) in page, (metric, k)
    # the segment table: cf's tail recall@20
    tail = m[(m.variant == "cf") & (m.metric == "recall") & (m.k == 20) & (m.segment == "tail")].value.item()
    assert format_value("recall", tail) in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) >= 3 and all(len(i) > 1000 for i in images)
    assert not re.search(r"https?://", page)  # self-contained: no external resources
    assert "<details>" in page and "fusion_k" in page  # the data and config section

    md = Path(paths["md"]).read_text(encoding="utf-8")
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(refs) == ["deciles.png", "lorenz.png", "tradeoff.png"]
    assert all((out / r).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for r in refs)
    assert "| fused_rerank |" in md


def test_report_without_sweep_and_with_gaps(tmp_path: Path):
    inputs = fake_inputs()
    m = inputs["metrics"]
    inputs["metrics"] = m[~((m.segment == "cold") | ((m.variant == "popular") & (m.metric == "gini")))]
    inputs["sweep"] = None
    paths = write_report(str(tmp_path), run_id="r", k=20, **inputs)
    page = Path(paths["html"]).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3 and ">cold<" not in page


def test_report_with_two_sweeps_and_a_missing_point(tmp_path: Path):
    inputs = fake_inputs()
    rerank = pd.DataFrame(
        [
            ("fused_rerank", "rerank_strength", s, 0.064 - 0.01 * s, 0.2 + 0.3 * s)
            for s in (0.0, 0.1, 0.2, 0.4)
        ]
        + [("fused_rerank", "rerank_strength", 0.8, None, None)],
        columns=["variant", "param", "value", "ndcg", "long_tail_coverage"],
    )
    inputs["sweep"] = pd.concat([inputs["sweep"], rerank], ignore_index=True)
    paths = write_report(str(tmp_path), run_id="r", k=10, **inputs)
    assert Path(paths["tradeoff_png"]).stat().st_size > 10_000


def test_metric_table_orders_variants_and_ks():
    t = metric_table(fake_inputs()["metrics"], ("recall", "ndcg"))
    assert list(t.index) == list(VARIANTS)
    assert list(t.columns) == [("recall", 10), ("ndcg", 10), ("recall", 20), ("ndcg", 20)]


def test_rewrite_replaces_files_and_leaves_no_temporaries(tmp_path: Path):
    write_files(str(tmp_path), [("a.txt", b"old")])
    write_files(f"file://{tmp_path}", [("a.txt", b"new"), ("b.txt", b"b")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert (tmp_path / "a.txt").read_bytes() == b"new"


def test_uri_without_spark_fails_clearly():
    with pytest.raises(ValueError, match="SparkSession"):
        write_files("s3a://bucket/reports/r1", [("a.txt", b"x")])


@pytest.mark.spark
def test_hadoop_filesystem_writer(spark, tmp_path: Path):
    from longtail.core.files import _write_hadoop

    uri = f"file://{tmp_path}/hadoop/run"
    _write_hadoop(spark, uri, [("x.bin", b"\x00\x01first")])
    written = _write_hadoop(spark, uri, [("x.bin", b"\x00\x01second"), ("report.html", b"<html></html>")])
    assert written == {"x.bin": f"{uri}/x.bin", "report.html": f"{uri}/report.html"}
    folder = tmp_path / "hadoop" / "run"
    assert (folder / "x.bin").read_bytes() == b"\x00\x01second"
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".crc")) == ["report.html", "x.bin"]


def test_report_shows_what_an_ablated_signal_adds_only_when_there_is_one(tmp_path: Path):
    from longtail.ml.bootstrap import INTERVAL_COLUMNS
    from longtail.stages.evaluate import ablation_table

    inputs = fake_inputs()
    rows = pd.DataFrame(
        [("fused", "ndcg", 10, "all", 0.0017, -0.0078, 0.0120, 610, 1000)], columns=list(INTERVAL_COLUMNS)
    )
    ablation = ablation_table({"pairs": [("fused", "fused_no_vae")], "intervals": rows})
    assert ablation is not None and list(ablation["variant"]) == ["fused - fused_no_vae"]
    paths = write_report(str(tmp_path / "a"), run_id="r", k=10, ablation=ablation, **inputs)
    page = Path(paths["html"]).read_text(encoding="utf-8")
    md = Path(paths["md"]).read_text(encoding="utf-8")
    for text in (page, md):
        assert "What ablated signals add" in text and "fused - fused_no_vae" in text
        assert "+0.0017 [-0.0078, +0.0120]" in text
    assert ablation_table({"pairs": [], "intervals": rows.iloc[:0]}) is None
    plain = write_report(str(tmp_path / "b"), run_id="r", k=10, **inputs)
    assert "What ablated signals add" not in Path(plain["html"]).read_text(encoding="utf-8")
