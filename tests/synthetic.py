"""A tiny synthetic lake for the train / recommend / evaluate tests: two topics that text and
taste agree on, a popularity skew, and cold items.

Items ``a00..a19`` belong to topic A and ``b00..b19`` to topic B; their text vectors (dim 32, the
tiny BERT's width) point along the topic's direction plus noise. Users ``u00..u29`` each like one
topic (even users A, odd users B) and interact with items of that topic, the low-numbered ones
far more often (power law); ``a18, a19, b18, b19`` never get an interaction (cold).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from longtail.core import schema as S
from longtail.core.config import load_config
from longtail.core.text import content_hash
from longtail.lake import Lake
from longtail.ml.encoder import inspect_model

DIM = 32
T0 = dt.datetime(2024, 1, 1)
N_PER_TOPIC = 20
COLD = ("a18", "a19", "b18", "b19")


def item_ids() -> list[str]:
    return [f"{t}{i:02d}" for t in "ab" for i in range(N_PER_TOPIC)]


def vectors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    topic = {"a": rng.normal(size=DIM), "b": rng.normal(size=DIM)}
    out = {}
    for item in item_ids():
        v = topic[item[0]] + 0.6 * rng.normal(size=DIM)
        out[item] = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def interactions(seed: int = 0, n_users: int = 30) -> list[tuple[str, str, dt.datetime, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    warm = np.arange(N_PER_TOPIC - 2)
    p = 1.0 / (warm + 1.0) ** 1.1
    p /= p.sum()
    for u in range(n_users):
        t = "ab"[u % 2]
        picks = rng.choice(warm, size=8, replace=False, p=p)
        for j, i in enumerate(picks):
            rows.append((f"u{u:02d}", f"{t}{i:02d}", T0 + dt.timedelta(days=int(u + 3 * j)), 1.0 + (j % 3)))
    return rows


def item_rows(ids: list[str]) -> list[tuple]:
    """`items` rows of ``ids``: title the upper-cased id, description ``text of <id>``."""
    return [(i, i.upper(), f"text of {i}", None, content_hash(f"text of {i}"), T0) for i in ids]


def embedding_rows(vecs: dict[str, np.ndarray], mid: str) -> list[tuple]:
    """`item_embeddings` rows of ``vecs`` (item -> vector) for the texts of :func:`item_rows`."""
    return [(i, content_hash(f"text of {i}"), mid, v.tolist(), T0) for i, v in vecs.items()]


def build_lake(spark, root: str, model_dir: str) -> tuple[Lake, str]:
    """Write items, interactions and item_embeddings (under the tiny BERT's model_id) to ``root``."""
    lake = Lake(spark, root)
    mid = inspect_model(model_dir).model_id
    lake.overwrite(S.ITEMS, spark.createDataFrame(item_rows(item_ids()), S.ITEMS_SCHEMA))
    lake.overwrite(S.INTERACTIONS, spark.createDataFrame(interactions(), S.INTERACTIONS_SCHEMA))
    emb = embedding_rows(vectors(), mid)
    lake.overwrite(S.ITEM_EMBEDDINGS, spark.createDataFrame(emb, S.ITEM_EMBEDDINGS_SCHEMA))
    return lake, mid


def config_overrides(root: str, model_dir: str | Path) -> list[str]:
    """The ``--set`` overrides of :func:`config` (small ALS and Mult-VAE, lists and blocks for the tiny lake)."""
    return [
        f"lake.root={root}",
        f"encoder.model={model_dir}",
        "train.als.rank=4",
        "train.als.max_iter=8",
        "train.head.min_count=2",
        "train.vae.hidden=16",
        "train.vae.latent=4",
        "recommend.k=5",
        "recommend.candidates=8",
        "recommend.block_users=7",
        "recommend.block_items=9",
    ]


def config(root: str, model_dir: str | Path, *extra: str):
    return load_config(overrides=[*config_overrides(root, model_dir), *extra])
