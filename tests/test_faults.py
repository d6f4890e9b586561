"""Kill at any point: every stage as a real ``spark-submit`` process, SIGKILLed at a named point.

One lake goes through the pipeline. Each stage is first started as a subprocess with
``LONGTAIL_FAILPOINT`` set (``longtail.core.failpoints``), which kills the whole process group
(launcher, JVM, Python workers) at an exact point of a write: before a commit whose data files
are already in place, right after one of several commits, while reading, or after a compaction.
Then:

* every table loads with deltalake at its latest version, and DuckDB reads the files that version
  lists with the same row count (no half-written version, no dangling file reference);
* the table the point names did not move (before a commit) or moved by one (after it);
* the stage is run again (in this process, as a scheduled retry: the same run id) and its tables
  hold exactly the rows a clean run gives (counts known from the input by construction);
* ``runs`` shows the killed attempt as ``abandoned`` (the re-run marked it: its process is gone).

Marked ``faults`` (and ``slow``): ``-m "not faults"`` skips it in a quick local run.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import synthetic
from deltalake import DeltaTable
from helpers import make_tiny_bert

from longtail.core import schema as S
from longtail.core.config import Config, load_config
from longtail.core.errors import MissingInputError
from longtail.core.failpoints import ENV
from longtail.core.text import content_hash, encoder_text
from longtail.lake import Lake
from longtail.lake.runs import ABANDONED, RUNNING, SUCCEEDED, run_stage
from longtail.ml.encoder import TextEncoder
from longtail.ml.model import load_model
from longtail.stages import load_stage

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[1]

# The input carries big rows (issue 11): one description of ~4 MB, a user with 10^5 events and an
# item with 10^5 events (from 20 users), beside the synthetic lake's 40 items and 240 events.
BIG_ITEM, HEAVY_USER, HOT_ITEM, BIG = "big", "u_heavy", "b00", 100_000
HEAVY_ITEMS = [f"a{i:02d}" for i in range(10)]
HOT_USERS = [f"h{j:02d}" for j in range(20)]
N_ITEMS = len(synthetic.item_ids()) + 1
N_EVENTS = 240 + 2 * BIG
N_USERS = 30 + 1 + len(HOT_USERS)
WARM_ITEMS = len(synthetic.item_ids()) - len(synthetic.COLD)  # the big item has no event
K = 5

# (stage, fail point): before a commit whose files are written, after one commit of several,
# while reading, after maintain's compaction of one table. Run in this order on one lake, each
# stage on the previous one's output. (evaluate's retry after its metrics commit, which replaces
# the run's rows, is test_evaluate's; killing it there would cost a whole evaluation here.)
CASES = [
    ("ingest", "before-commit:interactions"),
    ("encode", "before-commit:item_embeddings"),
    ("train", "committed:user_factors"),
    ("recommend", "before-commit:recommendations"),
    ("evaluate", "read:interactions"),
    ("maintain", "compacted:runs"),
]


def _big_text() -> str:
    words = "the heist of a dark city night love war story man woman film old new life".split()
    return " ".join(np.random.default_rng(0).choice(words, size=800_000))  # ~4 MB


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("faults")
    model = make_tiny_bert(tmp / "tiny")
    items = tmp / "items.csv"
    with items.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "description"])
        w.writerows((i, i.upper(), f"text of {i}") for i in synthetic.item_ids())
        w.writerow([BIG_ITEM, "Big", _big_text()])
    t0 = 1_704_067_200
    events = tmp / "interactions.csv"
    with events.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp", "rating"])
        w.writerows((u, i, int(ts.timestamp()), w_) for u, i, ts, w_ in synthetic.interactions())
        w.writerows((HEAVY_USER, HEAVY_ITEMS[n % 10], t0 + n, 1) for n in range(BIG))
        w.writerows((HOT_USERS[n % 20], HOT_ITEM, t0 + n, 1) for n in range(BIG))
    overrides = [
        f"input.items={items}",
        f"input.interactions={events}",
        "recommend.fusion=blend",
        "recommend.block_users=16",
        "evaluate.k=[5]",
        "evaluate.variants=[popular, cf, content]",
        "evaluate.bootstrap=50",
        "evaluate.report=false",
    ]
    return tmp / "lake", [*synthetic.config_overrides(str(tmp / "lake"), model), *overrides]


def _killed(stage: str, point: str, overrides: list[str], run_id: str) -> None:
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [str(ROOT / "spark-submit.sh"), stage, *sets, "--run-id", run_id,
           "--conf", "spark.ui.enabled=false", "--master", "local[2]"]  # fmt: skip
    env = {**os.environ, "LONGTAIL_PYTHON": sys.executable, ENV: point}
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, start_new_session=True
    )
    assert proc.returncode == -9, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])


def _readable(root: Path) -> dict[str, tuple[int, int]]:
    """Per table: (version, rows), after checking that DuckDB counts the same rows in the files
    the latest version lists as deltalake does."""
    out = {}
    for path in sorted(p.parent for p in root.glob("*/_delta_log")):
        dt = DeltaTable(str(path))
        rows = dt.to_pyarrow_table().num_rows
        files = dt.file_uris()
        n = duckdb.sql(f"select count(*) from read_parquet({files!r})").fetchall()[0][0] if files else 0
        assert n == rows, (path.name, n, rows)
        out[path.name] = (dt.version(), rows)
    return out


def _expected(lake: Lake, cfg: Config, stage: str, run_id: str) -> None:
    """The tables a clean run of ``stage`` gives, by construction of the input."""
    if stage == "ingest":
        assert lake.read(S.ITEMS).count() == N_ITEMS
        big = lake.read(S.ITEMS).where(f"{S.ITEM_ID} = '{BIG_ITEM}'").first()
        assert big[S.DESCRIPTION] == _big_text() and big[S.CONTENT_HASH] == content_hash(
            encoder_text("Big", _big_text())
        )
        events = lake.read(S.INTERACTIONS)
        assert events.count() == N_EVENTS == events.select(S.USER_ID, S.ITEM_ID, S.TS).distinct().count()
        assert events.where(f"{S.USER_ID} = '{HEAVY_USER}'").count() == BIG
    elif stage == "encode":
        emb = lake.read(S.ITEM_EMBEDDINGS)
        assert emb.count() == N_ITEMS == emb.select(S.ITEM_ID).distinct().count()
        # the ~4 MB description's vector is that of its first few thousand characters
        enc = TextEncoder(cfg.encoder.model, device="cpu", max_length=cfg.encoder.max_length)
        got = np.array(emb.where(f"{S.ITEM_ID} = '{BIG_ITEM}'").first()[S.EMBEDDING])
        want = enc.encode([encoder_text("Big", _big_text())[:20_000]])[0]
        np.testing.assert_allclose(got, want, atol=1e-5)
    elif stage == "train":
        assert lake.read(S.USER_FACTORS).count() == N_USERS
        assert lake.read(S.ITEM_FACTORS).count() == WARM_ITEMS
        load_model(lake)  # the factor tables and the head are of one run
    elif stage == "recommend":
        recs = lake.read(S.RECOMMENDATIONS)
        assert recs.count() == N_USERS * K == recs.select(S.USER_ID, S.RANK).distinct().count()
        heavy = {r[S.ITEM_ID] for r in recs.where(f"{S.USER_ID} = '{HEAVY_USER}'").collect()}
        assert len(heavy) == K and not heavy & set(HEAVY_ITEMS)  # seen items excluded
    elif stage == "evaluate":
        rows = lake.read(S.METRICS).where(f"{S.RUN_ID} = '{run_id}'")
        keys = [c for c in rows.columns if c != S.VALUE]
        assert rows.count() > 0 and rows.count() == rows.select(*keys).distinct().count()


def test_every_stage_killed_at_a_fail_point_leaves_committed_tables_and_reruns_exactly(spark, setting):
    root, overrides = setting
    cfg = load_config(overrides=overrides)
    for stage, point in CASES:
        run_id = f"kill-{stage}"
        before = _readable(root) if root.exists() else {}
        _killed(stage, point, overrides, run_id)

        after = _readable(root)
        kind, _, table = point.partition(":")
        moved = {t for t in after if t in before and after[t][0] != before[t][0]}
        new = set(after) - set(before)
        if kind == "before-commit":
            assert table not in moved | new, (stage, point)
        elif kind == "committed":
            assert table in moved | new, (stage, point)
        elif kind == "read":  # nothing written but the killed run's own `running` row
            assert moved | new <= {S.RUNS}, (stage, moved | new)
        else:  # compacted: the compaction is the table's latest commit, and it changed no row
            assert DeltaTable(str(root / table)).history(1)[0]["operation"] == "OPTIMIZE"
            assert after[table][1] == before[table][1] + 1  # + the killed run's own `running` row
        if stage == "train":  # half a train run: the next recommend is refused, not misled
            with pytest.raises(MissingInputError, match="run train"):
                load_model(Lake(spark, str(root)))

        lake = Lake(spark, str(root))
        record = run_stage(spark, cfg, stage, load_stage(stage).run, run_id=run_id, lake=lake)
        assert record.status == SUCCEEDED
        _expected(Lake(spark, str(root)), cfg, stage, run_id)
        _readable(root)

        # the killed attempt (its only row `running`) was marked `abandoned` by the re-run
        runs = Lake(spark, str(root)).read(S.RUNS).where(f"run_id = '{run_id}' and stage = '{stage}'")
        by_attempt: dict = {}
        for r in runs.collect():
            by_attempt.setdefault(r["started_at"], []).append(r["status"])
        assert sorted(tuple(sorted(s)) for s in by_attempt.values()) == [
            (ABANDONED, RUNNING),
            (RUNNING, SUCCEEDED),
        ], by_attempt
