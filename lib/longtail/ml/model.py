"""What ``train`` leaves in the lake and later stages read: the trained model and the current text vectors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import Config, EncoderConfig
from longtail.core.errors import MissingInputError
from longtail.core.files import fetch_dir, read_text
from longtail.core.uris import join_uri
from longtail.lake import Lake
from longtail.ml import ranker as L
from longtail.ml import vae as V
from longtail.ml.encoder import inspect_model
from longtail.ml.head import ProjectionHead
from longtail.ml.vae import VaeModel

log = logging.getLogger(__name__)


@dataclass
class Model:
    """What ``train`` produces and ``recommend`` reads (lazy DataFrames plus the head).

    Attributes:
        model_id: the encoder ``model_id`` whose vectors the head reads.
        user_map, item_map: ``(user_id, user_idx)`` and ``(item_id, item_idx)``.
        user_factors, item_factors: ``(user_id, user_idx, features)``, ``(item_id, item_idx, features)``.
        head: the text-to-CF projection head.
        rank: the ALS rank (factor size).
        ranker: the learned fusion (:mod:`longtail.ml.ranker`); None: not fitted.
        vae: the Mult-VAE (:mod:`longtail.ml.vae`); None: not fitted (``train.vae.enabled: false``).
        synthetic: the generated pairs ALS learned from too (:mod:`longtail.ml.augment`:
            ``user_idx, item_idx, rating, n, score``); None: no augmentation.
    """

    model_id: str
    user_map: DataFrame
    item_map: DataFrame
    user_factors: DataFrame
    item_factors: DataFrame
    head: ProjectionHead
    rank: int
    ranker: L.Ranker | None = None
    vae: VaeModel | None = None
    synthetic: DataFrame | None = None  # generated ALS input (train.vae.augment), persisted

    def unpersist(self) -> None:
        for df in (self.user_map, self.item_map, self.user_factors, self.item_factors, self.synthetic):
            if df is not None:
                df.unpersist()
        if self.vae is not None:
            self.vae.unpersist()


# --- the stage -----------------------------------------------------------------------------------
def encoder_model_id(settings: EncoderConfig) -> str:
    """The ``model_id`` of the encoder that ``settings`` describe (from its files; the model is not loaded).

    Example:
        >>> encoder_model_id(cfg.encoder)
        'all-MiniLM-L6-v2@3c1b...'
    """
    return inspect_model(settings.model, pooling=settings.pooling, max_length=settings.max_length).model_id


# The fine-tuned encoders `finetune` wrote, each in its own folder, and the pointer to the current one.
FINETUNED_DIR = ("models", "encoder")
FINETUNED_POINTER = "current.json"


def finetuned_root(cfg: Config) -> str:
    """``<lake.root>/models/encoder``: where `finetune` writes its model folders and pointer."""
    return join_uri(cfg.lake.root, *FINETUNED_DIR)


def finetuned_pointer(cfg: Config, spark: SparkSession | None = None) -> dict[str, Any] | None:
    """The current fine-tuned encoder of the lake (``path``, ``model_id``, ``base_model_id``,
    ``run_id``) as `finetune` last published it; None when it never ran."""
    text = read_text(join_uri(finetuned_root(cfg), FINETUNED_POINTER), spark=spark)
    return json.loads(text) if text else None


def encoder_settings(cfg: Config, spark: SparkSession | None = None) -> EncoderConfig:
    """The encoder every stage uses: ``cfg.encoder``, with ``model`` replaced by the lake's current
    fine-tuned copy when ``encoder.use_finetuned`` is ``auto`` (and one exists for this base model)
    or ``always``. A fine-tuned folder on an object store is copied to a local cache once.

    Raises:
        MissingInputError: ``use_finetuned: always`` and no fine-tuned model of this base model.
    """
    enc = cfg.encoder
    if enc.use_finetuned == "never":
        return enc
    pointer = finetuned_pointer(cfg, spark)
    base_id = encoder_model_id(enc)
    if pointer is None or pointer.get("base_model_id") != base_id:
        if enc.use_finetuned == "always":
            found = f"one of {pointer.get('base_model_id')!r}" if pointer else "none"
            raise MissingInputError(
                f"encoder.use_finetuned=always but the lake holds no fine-tuned copy of {base_id!r} "
                f"(it holds {found}): run finetune first"
            )
        if pointer is not None:
            log.warning(
                "the lake's fine-tuned encoder was made from %s, not from encoder.model (%s): using the base model",
                pointer.get("base_model_id"),
                base_id,
            )
        return enc
    name = str(pointer["path"]).rstrip("/").rsplit("/", 1)[-1]
    local = fetch_dir(
        str(pointer["path"]), os.path.join(tempfile.gettempdir(), "longtail-models", name), spark=spark
    )
    return dataclasses.replace(enc, model=local)


MODEL_FOLDERS = ("ranker", "vae", "encoder")  # under <lake.root>/models: one folder per run


def model_folders_in_use(lake: Lake, cfg: Config) -> dict[str, set[str] | None]:
    """Per kind of :data:`MODEL_FOLDERS`, the names of the folders the lake's current state
    references: the ranker and the Mult-VAE of the current ``projection_head`` row (the last
    complete `train`), the fine-tuned encoder of ``models/encoder/current.json``. None for a kind
    whose reference cannot be read (no head, no pointer): nothing of that kind is known to be
    unused."""

    def name(path: Any) -> str:
        return str(path).rstrip("/").rsplit("/", 1)[-1]

    out: dict[str, set[str] | None] = {"ranker": None, "vae": None, "encoder": None}
    if lake.exists(S.PROJECTION_HEAD):
        rows = lake.read(S.PROJECTION_HEAD).select("spec").collect()  # one row
        if len(rows) == 1:
            extra = json.loads(rows[0]["spec"]).get("extra", {})
            for kind in ("ranker", "vae"):
                path = (extra.get(kind) or {}).get("path")
                out[kind] = {name(path)} if path else set()
    pointer = finetuned_pointer(cfg, lake.spark)
    if pointer is not None:
        out["encoder"] = {name(pointer["path"])}
    return out


def head_row(spark: SparkSession, head: ProjectionHead, run_id: str) -> DataFrame:
    """The ``projection_head`` table's one row for ``head``."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return spark.createDataFrame(
        [(run_id, head.spec.model_id, head.spec.to_json(), bytearray(head.to_bytes()), now)],
        S.PROJECTION_HEAD_SCHEMA,
    )


def load_model(lake: Lake, *, model_id: str | None = None) -> Model:
    """The model the last complete ``train`` run wrote; raises :class:`MissingInputError` if there is
    none, if ``train`` did not finish (factor tables newer than the head), or if the head was
    trained for another encoder model than ``model_id``."""
    needed = (S.ID_MAP_USERS, S.ID_MAP_ITEMS, S.USER_FACTORS, S.ITEM_FACTORS, S.PROJECTION_HEAD)
    missing = [t for t in needed if not lake.exists(t)]
    if missing:
        raise MissingInputError(f"tables {missing} do not exist under {lake.root}: run train first")
    rows = lake.read(S.PROJECTION_HEAD).collect()  # one row
    if len(rows) != 1:
        raise MissingInputError(f"projection_head holds {len(rows)} rows, expected 1: run train again")
    head = ProjectionHead.from_bytes(rows[0]["weights"], rows[0]["spec"])
    written = head.spec.extra.get("tables", {})
    for table in (S.USER_FACTORS, S.ITEM_FACTORS):
        if written.get(table) != lake.version(table):
            raise MissingInputError(
                f"{table} is at version {lake.version(table)} but the projection head was trained with "
                f"version {written.get(table)}: a train run did not finish; run train again"
            )
    if model_id is not None and head.spec.model_id != model_id:
        raise MissingInputError(
            f"the projection head was trained on vectors of {head.spec.model_id!r}, but encoder.model "
            f"gives {model_id!r}: run train again after encode"
        )
    ranker = None
    saved = head.spec.extra.get("ranker")
    if saved:
        try:
            ranker = L.load(
                saved["path"],
                saved["features"],
                saved.get("info"),
                signal=saved.get("signal"),
                pop_penalty=float(saved.get("pop_penalty", 0.0)),
                tail_boost=float(saved.get("tail_boost", 0.0)),
            )
        except Exception as exc:  # any read failure means the same: train again
            raise MissingInputError(
                f"the learned ranker recorded by train at {saved['path']!r} cannot be read ({exc}): "
                "run train again"
            ) from exc
    vae = None
    saved_vae = head.spec.extra.get("vae")
    if saved_vae:
        try:
            vae = V.load(lake.spark, saved_vae["path"])
        except Exception as exc:  # any read failure means the same: train again
            raise MissingInputError(
                f"the Mult-VAE recorded by train at {saved_vae['path']!r} cannot be read ({exc}): "
                "run train again"
            ) from exc
    return Model(
        model_id=head.spec.model_id,
        user_map=lake.read(S.ID_MAP_USERS),
        item_map=lake.read(S.ID_MAP_ITEMS),
        user_factors=lake.read(S.USER_FACTORS),
        item_factors=lake.read(S.ITEM_FACTORS),
        head=head,
        rank=head.spec.out_dim,
        ranker=ranker,
        vae=vae,
    )


def listed_items(lake: Lake) -> DataFrame:
    """The catalogue that may be recommended: `items` without the ones in `removed_items`.

    Example:
        >>> catalogue = listed_items(lake)  # recommend's candidate items
    """
    items = lake.read(S.ITEMS)
    if not lake.exists(S.REMOVED_ITEMS):
        return items
    return items.join(lake.read(S.REMOVED_ITEMS).select(S.ITEM_ID), S.ITEM_ID, "left_anti")


def current_embeddings(
    source: Lake | DataFrame, model_id: str, *, items: DataFrame | None = None
) -> DataFrame:
    """One vector per item of ``items``: the row of ``model_id`` whose content_hash is current.

    Items without such a row (not yet encoded, or whose text changed since) are absent; rows of
    other models and of items no longer in ``items`` are ignored.

    Args:
        source: a :class:`Lake` (``items`` and ``item_embeddings`` are read from it) or an
            ``item_embeddings`` DataFrame (then pass ``items``).
        model_id: the model whose vectors to return (e.g. ``TextEncoder.model_id``,
            :func:`longtail.ml.encoder.model_id`).
        items: the items DataFrame (needs item_id and content_hash); default: the lake's.

    Example:
        >>> vecs = current_embeddings(lake, encoder.model_id(cfg.encoder.model))
    """
    if isinstance(source, Lake):
        embeddings = source.read(S.ITEM_EMBEDDINGS)
        items = items if items is not None else source.read(S.ITEMS)
    else:
        embeddings = source
        if items is None:
            raise ValueError("current_embeddings(DataFrame, ...) needs items=")
    S.require_columns(items, [S.ITEM_ID, S.CONTENT_HASH], "items")
    keys = items.select(S.ITEM_ID, S.CONTENT_HASH).dropDuplicates([S.ITEM_ID, S.CONTENT_HASH])
    rows = embeddings.where(F.col(S.MODEL_ID) == F.lit(model_id))
    return rows.join(keys, [S.ITEM_ID, S.CONTENT_HASH], "inner").select(
        *S.ITEM_EMBEDDINGS_SCHEMA.fieldNames()
    )
