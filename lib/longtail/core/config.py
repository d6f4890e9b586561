"""Typed, frozen configuration, loaded from YAML and validated before Spark starts.

Layers, later ones win: ``conf/base.yaml`` -> each ``--conf FILE`` in order -> each
``--set a.b=c`` override. The result is a tree of frozen dataclasses; an unknown key or a bad value
raises :class:`ConfigError` naming the dotted key and what is allowed.

Example:
    >>> cfg = load_config(overrides=["recommend.k=20", "lake.root=/tmp/lake"])
    >>> cfg.recommend.k
    20
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from longtail.core.uris import join_uri

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"  # lib/longtail/core/config.py -> <repo>/conf
# conf/base.yaml is rendered from the dataclasses below (longtail.core.configdoc; a test checks they
# agree), so an installed wheel, which has no conf/, starts from the same defaults without it.
BASE_CONF = CONF_DIR / "base.yaml"
IN_CHECKOUT = (CONF_DIR.parent / "lib" / "longtail").is_dir()

VARIANTS = ("popular", "cf", "content", "vae", "fused", "fused_rerank")
ABLATIONS = ("vae",)  # signals `evaluate.ablate` can leave out of the learned fusion


class ConfigError(ValueError):
    """A configuration key is unknown or its value is not allowed."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


_SECRET_PARAMS = re.compile(
    r"[?&](sig|signature|token|secret|password|access[_-]?key|x-amz-signature|sas)=", re.I
)


def _has_credentials(uri: str) -> bool:
    """True for ``scheme://user:password@host/...`` or a URI whose query carries a secret (SAS, signature)."""
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://([^/@]*)@", uri)
    return bool((m and ":" in m.group(1)) or _SECRET_PARAMS.search(uri))


# --- sections ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LakeConfig:
    """Where the Delta tables live and which engine commits to them (docs/lake.md)."""

    root: str = "lake"
    """Where every table lives: a local path or an `s3a://`, `abfss://`, `hdfs://` URI."""
    engine: Literal["auto", "delta-rs", "delta-spark"] = "auto"
    """Delta engine; `auto`: delta-spark when its jars are on the classpath, else delta-rs."""
    stale_run_hours: float = 24.0  # a `running` row older than this, never finished, is abandoned
    """A `runs` row still `running` after this many hours, with no final row, is marked
    `abandoned` by the next stage run (sooner when its process, on the same host, is gone)."""

    def __post_init__(self) -> None:
        _check(bool(self.root), "lake.root", "must be a non-empty path or URI")
        _check(self.stale_run_hours > 0, "lake.stale_run_hours", "must be > 0")


@dataclass(frozen=True)
class InputConfig:
    """The raw input files that `ingest` reads."""

    items: str | None = None
    """Items file, folder or Delta table (CSV, JSON lines, Parquet, Delta); null: the generated sample."""
    interactions: str | None = None
    """Interactions, in the same forms; set together with `input.items`."""
    format: Literal["auto", "csv", "json", "parquet", "delta"] = "auto"
    """Input format; `auto`: from the extension (`.csv`, `.json`/`.jsonl`, `.parquet`, a folder with
    `_delta_log`)."""

    def __post_init__(self) -> None:
        _check(
            (self.items is None) == (self.interactions is None),
            "input.items",
            "set input.items and input.interactions together (or neither, for the generated sample)",
        )


@dataclass(frozen=True)
class SampleConfig:
    """The synthetic catalogue and interaction log that `generate-sample` writes."""

    path: str | None = None  # None: <lake.root>/sample_input
    """Where the sample files are written; null: `<lake.root>/sample_input`."""
    n_items: int = 1500
    """Items in the sample catalogue."""
    n_users: int = 300
    """Users in the sample log."""
    n_topics: int = 12
    """Topics the sample's items and users are drawn from."""
    interactions_per_user: int = 30
    """Mean interactions per user."""
    months: int = 12
    """Months of timestamps the log spans."""
    popularity_exponent: float = 1.1
    """Power-law exponent of item popularity (larger: a longer, thinner tail)."""
    seed: int = 42
    """Random seed; the sample is deterministic."""
    preset: Literal["dense", "sparse"] = "dense"
    """`dense`: about `interactions_per_user` per user over `months` months; `sparse`: 1-3 interactions per user within `sparse_days`, most
    items never bought (conf/sample-sparse.yaml: 30,000 users x 5,000 items)."""
    sparse_days: int = 4
    """Sparse preset: the days the whole log spans."""
    sparse_active_share: float = 0.25
    """Sparse preset: the share of the catalogue that is ever bought."""

    def __post_init__(self) -> None:
        for name in ("n_items", "n_users", "n_topics", "interactions_per_user", "months", "sparse_days"):
            _check(getattr(self, name) >= 1, f"sample.{name}", "must be >= 1")
        _check(self.popularity_exponent > 0, "sample.popularity_exponent", "must be > 0")
        _check(0 < self.sparse_active_share <= 1, "sample.sparse_active_share", "must be in (0, 1]")


@dataclass(frozen=True)
class IngestConfig:
    """How `ingest` reads and checks the raw input."""

    max_bad_fraction: float = 0.05
    """A source whose quarantined share of rows passes this fails the stage."""
    ts_column: str = "auto"  # auto: 'ts', else 'timestamp'
    """Interaction time column; `auto`: `ts`, else `timestamp`."""
    ts_unit: Literal["auto", "s", "ms"] = "auto"  # numeric timestamps; strings are parsed as ISO-8601
    """Unit of numeric timestamps; `auto`: seconds, milliseconds from 1e11 on (strings are parsed as
    ISO-8601)."""
    weight_column: str = "auto"  # auto: 'weight', else 'rating', else 1.0 for every row
    """Interaction weight column; `auto`: `weight`, else `rating`, else 1.0 for every row."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.max_bad_fraction <= 1.0, "ingest.max_bad_fraction", "must be in [0, 1]")


@dataclass(frozen=True)
class EncoderConfig:
    """The text encoder that `encode` runs inside Spark (docs/encode.md)."""

    model: str = "default"  # 'default' = packaged all-MiniLM-L6-v2; or a directory or hub id
    """`default`: the packaged all-MiniLM-L6-v2; or any BERT-family directory or hub id available offline."""
    max_length: int = 256
    """Tokens per text at most (longer texts are truncated)."""
    batch_tokens: int = 16384
    """Padded tokens per encoder batch (texts are sorted by length first)."""
    pooling: Literal["auto", "mean", "cls"] = "auto"
    """`auto`: the model's sentence-transformers pooling config, else mean pooling."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """`auto`: bfloat16 on GPU, float32 on CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: the GPU Spark assigned the task, if any, else CPU."""
    arrow_batch_rows: int | None = None
    """Rows per Arrow batch sent to the encoder; null: the Spark profile's
    `spark.sql.execution.arrow.maxRecordsPerBatch` (conf/spark/local.conf 2048, gpu.conf 8192)."""
    torch_threads: int = 0  # 0: Spark task CPUs (spark.task.cpus)
    """Torch threads per task; 0: `spark.task.cpus`."""
    texts_per_task: int = 20000
    """Distinct texts per `encode` task at most: the texts are cut into max(default parallelism,
    ceil(texts / texts_per_task)) tasks, rounded up to a multiple of the parallelism, so a failed or
    slow task holds a bounded slice and a large catalogue is not cut into one task per core."""
    cpu_linear: Literal["auto", "onednn", "aten"] = "auto"  # fp32 linear layers on CPU
    """fp32 linear layers on CPU: oneDNN or torch's BLAS (`aten`); `auto`: oneDNN where a timing is >= 10%
    faster, timed once per host and kept in `$LONGTAIL_CACHE_DIR` (default ~/.cache/longtail; delete
    `cpu_linear.json` there to time again). The two give vectors that differ at fp32 rounding: set
    `aten` or `onednn` where hosts or runs must agree bit for bit (benchmarks)."""
    use_finetuned: Literal["auto", "never", "always"] = "auto"
    """`auto`: the lake's fine-tuned copy of `model` when `finetune` made one (its own `model_id`), else
    `model`; `never`: `model` itself (switching back re-encodes nothing); `always`: fail without one."""

    def __post_init__(self) -> None:
        _check(bool(self.model), "encoder.model", "must name 'default', a directory or a hub id")
        _check(8 <= self.max_length <= 8192, "encoder.max_length", "must be in [8, 8192]")
        _check(self.batch_tokens >= self.max_length, "encoder.batch_tokens", "must be >= encoder.max_length")
        _check(
            self.arrow_batch_rows is None or self.arrow_batch_rows >= 1,
            "encoder.arrow_batch_rows",
            "must be >= 1 or null",
        )
        _check(self.torch_threads >= 0, "encoder.torch_threads", "must be >= 0")
        _check(self.texts_per_task >= 1, "encoder.texts_per_task", "must be >= 1")


@dataclass(frozen=True)
class FinetuneConfig:
    """Contrastive fine-tuning of the encoder on items consumed together (`finetune`, docs/finetune.md)."""

    enabled: bool = False
    """Run `finetune` inside `pipeline` (before `encode`); `./spark-submit.sh finetune` runs it regardless."""
    method: Literal["lora", "top_layers"] = "lora"
    """`lora`: LoRA adapters (peft) on the attention and feed-forward projections, merged into a copy of the
    weights; `top_layers`: train the last `top_layers` transformer layers. The base model stays untouched."""
    lora_rank: int = 16
    """LoRA rank r."""
    lora_alpha: int = 32
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    top_layers: int = 2
    """`top_layers`: how many of the last transformer layers train."""
    window: int = 3
    """A pair is two distinct items within this many positions of each other in a user's history (by time)."""
    head_damping: float = 0.5
    """Pairs are sampled with weight n_users(pair) / (n_i * n_j) ** (damping / 2): 0 samples by co-occurrence
    count (head pairs dominate), 1 by cosine association."""
    max_pairs: int = 20000
    """Pairs sampled for training at most (weighted, without replacement; they come to the driver)."""
    batch_size: int = 32
    """Pairs per step; the other pairs' items are each pair's negatives (no item twice in a batch)."""
    epochs: float = 1.0
    """Passes over the sampled pairs, cut at `max_steps` (and on CPU at `cpu_max_steps`) steps."""
    max_steps: int = 10
    """Steps at most on any device (0: no cap, `epochs` decide). Chosen on the movie data's validation
    split: a small move of the encoder raised `content`'s NDCG@10, longer training lowered it
    (docs/finetune.md)."""
    cpu_max_steps: int = 150
    """Steps at most when training on the CPU (it then finishes in minutes)."""
    learning_rate: float = 0.001
    """AdamW learning rate (linear warm-up over the first 10% of steps, then linear decay)."""
    scale: float = 20.0
    """Cosine similarities are multiplied by this before the softmax of the ranking loss."""
    merge_weight: float = 0.5
    """The fine-tuned weights' share in the saved model: base + merge_weight x (tuned - base), a
    weight-space interpolation (WiSE-FT; for LoRA, the adapter's update scaled). 1: the tuned model.
    0.5 with `soup: 5` was the best of the settings measured on the movie data's validation split
    (docs/finetune.md)."""
    soup: int = 5
    """Trainings averaged into the saved model: `soup` trainings with seeds `seed`, `seed + 1`, ...
    (each its own pair sample, batch order and adapter initialisation), the saved weights base +
    merge_weight x the mean of their updates (a uniform model soup). 1: one training. Averaging
    takes most of the pair sample's luck out of the result; it costs `soup` times the training."""
    max_length: int = 64
    """Tokens per text in training (encoding keeps `encoder.max_length`)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: the driver's GPU if it has one, else CPU."""
    seed: int = 7
    """Seed of the pair sample, the batches and the adapter's initialisation."""

    def __post_init__(self) -> None:
        _check(self.lora_rank >= 1, "finetune.lora_rank", "must be >= 1")
        _check(self.lora_alpha > 0, "finetune.lora_alpha", "must be > 0")
        _check(self.top_layers >= 1, "finetune.top_layers", "must be >= 1")
        _check(self.window >= 1, "finetune.window", "must be >= 1")
        _check(0 <= self.head_damping <= 2, "finetune.head_damping", "must be in [0, 2]")
        _check(self.max_pairs >= 2, "finetune.max_pairs", "must be >= 2")
        _check(self.batch_size >= 2, "finetune.batch_size", "must be >= 2 (in-batch negatives)")
        _check(self.epochs > 0, "finetune.epochs", "must be > 0")
        _check(self.max_steps >= 0, "finetune.max_steps", "must be >= 0 (0: no cap)")
        _check(self.cpu_max_steps >= 1, "finetune.cpu_max_steps", "must be >= 1")
        _check(self.learning_rate > 0, "finetune.learning_rate", "must be > 0")
        _check(self.scale > 0, "finetune.scale", "must be > 0")
        _check(0 < self.merge_weight <= 1, "finetune.merge_weight", "must be in (0, 1]")
        _check(1 <= self.soup <= 64, "finetune.soup", "must be in [1, 64]")
        _check(8 <= self.max_length <= 8192, "finetune.max_length", "must be in [8, 8192]")


@dataclass(frozen=True)
class AlsConfig:
    """Spark MLlib ALS on implicit feedback."""

    rank: int = 32
    """Latent factors per user and item."""
    reg: float = 0.1
    """L2 regularisation."""
    alpha: float = 1.0
    """Confidence scale of implicit feedback."""
    max_iter: int = 10
    """Alternating iterations."""
    seed: int = 42
    """Random seed of the factor initialisation."""

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "train.als.rank", "must be >= 1")
        _check(self.reg >= 0, "train.als.reg", "must be >= 0")
        _check(self.alpha >= 0, "train.als.alpha", "must be >= 0")
        _check(self.max_iter >= 1, "train.als.max_iter", "must be >= 1")


@dataclass(frozen=True)
class HeadConfig:
    """The text-to-CF projection head: CF factors for items ALS has none for (docs/scoring.md)."""

    hidden: int = 0  # 0: linear head; > 0: 2-layer MLP with this many hidden units
    """0: closed-form ridge (linear); > 0: a 2-layer MLP with this many hidden units."""
    epochs: int = 300
    """MLP only: training epochs."""
    lr: float = 0.01
    """MLP only: learning rate."""
    weight_decay: float = 1e-4
    """MLP only: weight decay."""
    l2: float = 10.0  # ridge penalty of the linear head (sum-of-squares loss scale)
    """Ridge penalty of the linear head (sum-of-squares loss scale)."""
    min_count: int = 5  # items with at least this many interactions train the head
    """Items with at least this many interactions train the head."""
    max_items: int = 500_000  # training rows collected to the driver at most (sampled beyond)
    """Training rows collected to the driver at most (sampled beyond)."""
    seed: int = 42
    """Random seed (sampling, MLP initialisation)."""

    def __post_init__(self) -> None:
        _check(self.hidden >= 0, "train.head.hidden", "must be >= 0")
        _check(self.epochs >= 1, "train.head.epochs", "must be >= 1")
        _check(self.lr > 0, "train.head.lr", "must be > 0")
        _check(self.l2 >= 0, "train.head.l2", "must be >= 0")
        _check(self.min_count >= 1, "train.head.min_count", "must be >= 1")
        _check(self.max_items >= 1, "train.head.max_items", "must be >= 1")


@dataclass(frozen=True)
class VaeConfig:
    """The Mult-VAE signal (Liang et al. 2018; docs/scoring.md, "The Mult-VAE signal")."""

    enabled: bool = True
    """Fit the Mult-VAE in `train` (and in `evaluate` on its training part): a `vae` candidate
    signal, ranker feature and variant. false: none of these."""
    hidden: int = 256
    """Units of the encoder's and the decoder's hidden layer."""
    latent: int = 64
    """Dimensions of the latent code."""
    dropout: float = 0.5
    """Dropout on the input (the paper's denoising of the user's history)."""
    epochs: int = 100
    """Passes over the users (cut by `max_steps`)."""
    max_steps: int = 1500
    """Optimisation steps at most (bounds the time on a large log; CPU: about 0.1 s a step at 18k items)."""
    batch_size: int = 256
    """Users per step."""
    learning_rate: float = 1e-3
    """Adam's learning rate."""
    anneal_cap: float = 0.2
    """Largest KL weight: annealed linearly from 0, reached at 80% of the steps."""
    max_interactions: int = 5_000_000
    """(user, item) pairs trained on the driver at most; beyond: a seeded user sample of this many, or every
    pair on the executors when `processes` is set."""
    max_items: int = 100_000
    """Items the model has a row for, at most: the items with the most users (ties: the lower index); the
    others get no `vae` score, like items without interactions. Each modelled item costs about 16 KB in the
    training process (its input and output rows, their gradients and Adam's moments, its column of a
    batch; measured in docs/scaling.md), so this bounds the driver's (or each process's) memory where
    `max_interactions` alone would not: 100,000 items is about 1.7 GB."""
    processes: int = 0
    """Beyond `max_interactions` pairs, train on every pair with TorchDistributor over this many Spark barrier
    tasks (one shard of users each, DistributedDataParallel; the executors need torch). 0: on the driver, on
    the user sample (docs/scoring.md)."""
    gpu: Literal["auto", "always", "never"] = "auto"
    """`processes`: train on the executors' GPUs (NCCL): `auto` when `spark.task.resource.gpu.amount` is set,
    `always`, `never` (CPU, gloo)."""
    text: bool = True
    """Condition the decoder's item side on the text vectors: an item's output row is its own row
    (starting at zero) plus a learned projection of its text vector, so an item with few
    interactions decodes like items with similar text. Its vectors reach the driver with the pairs.
    On: chosen on validation splits (docs/evaluation.md)."""
    augment: bool = False
    """Generated interactions for ALS: each long-tail item gets its `augment_users` most plausible
    users by the VAE, added to ALS's input (never to `interactions`; written to
    `synthetic_interactions`). Off: measured not to help (docs/scoring.md)."""
    augment_users: int = 5
    """`augment`: generated users per long-tail item."""
    augment_weight: float = 0.25
    """`augment`: the implicit rating of a generated pair (a real interaction's is its weight, >= 1)."""
    seed: int = 42
    """Seed of the initialisation, the batches, dropout and the user sample."""

    def __post_init__(self) -> None:
        _check(self.hidden >= 1, "train.vae.hidden", "must be >= 1")
        _check(self.latent >= 1, "train.vae.latent", "must be >= 1")
        _check(0 <= self.dropout < 1, "train.vae.dropout", "must be in [0, 1)")
        _check(self.epochs >= 1, "train.vae.epochs", "must be >= 1")
        _check(self.max_steps >= 1, "train.vae.max_steps", "must be >= 1")
        _check(self.batch_size >= 1, "train.vae.batch_size", "must be >= 1")
        _check(self.learning_rate > 0, "train.vae.learning_rate", "must be > 0")
        _check(self.anneal_cap >= 0, "train.vae.anneal_cap", "must be >= 0")
        _check(self.max_interactions >= 2, "train.vae.max_interactions", "must be >= 2")
        _check(self.max_items >= 2, "train.vae.max_items", "must be >= 2")
        _check(self.processes >= 0, "train.vae.processes", "must be >= 0 (0: train on the driver)")
        _check(self.gpu in ("auto", "always", "never"), "train.vae.gpu", "allowed: auto, always, never")
        _check(self.augment_users >= 1, "train.vae.augment_users", "must be >= 1")
        _check(self.augment_weight > 0, "train.vae.augment_weight", "must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """What `train` fits: ALS, the projection head and the Mult-VAE."""

    als: AlsConfig = field(default_factory=AlsConfig)
    """Spark MLlib ALS."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """The projection head."""
    vae: VaeConfig = field(default_factory=VaeConfig)
    """The Mult-VAE signal."""
    checkpoint_dir: str | None = None  # None: <lake.root>/_checkpoints
    """ALS checkpoint directory (keeps its lineage short); null: `<lake.root>/_checkpoints`."""


@dataclass(frozen=True)
class RankerConfig:
    """The second-stage ranker that learns the fusion of CF and content scores."""

    model: Literal["auto", "gbt", "logistic"] = "auto"  # the learned fusion's classifier
    """The learned fusion's model: `gbt` (MLlib gradient-boosted trees), `logistic` (logistic
    regression), or `auto`: both are fitted on most labelled users and the one ranking the other
    users' held-out items best (NDCG@k) wins, with CF alone and content alone as contenders too, so
    the fusion never ships below its best single signal on that data."""
    validation_fraction: float = 0.25  # model=auto: share of labelled users that choose the model
    """`model: auto`: the share of labelled users (a seeded hash) held out to choose the model
    (with `folds: 1`)."""
    folds: int = 1  # >= 2: choose the model and the penalty by cross-validation over users
    """How the model and the popularity penalty are chosen: `1`, on the `validation_fraction` of the
    labelled users held out (models fitted on the rest); `K >= 2`, K-fold over users: every user's
    lists are ranked by models fitted on the other folds and count in the choice, then the chosen
    model is fitted on all labelled users (2K + 1 fits instead of 2)."""
    label_fraction: float = 0.2  # per user, the latest share of training interactions used as labels
    """Per user, the latest share of training interactions held out as the ranker's labels."""
    negatives: int = 50  # negatives sampled per user (all positives among the candidates are kept)
    """Negatives sampled per user (every positive among the candidates is kept)."""
    trees: int = 30  # gbt: number of trees
    """gbt: number of trees."""
    depth: int = 4  # gbt: tree depth
    """gbt: tree depth."""
    step: float = 0.1  # gbt: learning rate
    """gbt: learning rate."""
    reg: float = 0.01  # logistic: L2 penalty
    """logistic: L2 penalty."""
    pop_penalty: Literal["auto"] | float = "auto"  # beta: log-odds - beta * log(1 + n_i)
    """Popularity penalty of the learned score: `beta * log(1 + n_i)` (n_i the item's training
    interactions) is subtracted from the log-odds, so that `fused` reaches the tail. `auto`: chosen
    on the validation users, with the tail boost (`accuracy_tolerance`)."""
    pop_penalty_grid: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
    """`pop_penalty: auto`: the values tried on the validation users."""
    tail_boost: Literal["auto"] | float = "auto"  # lambda: log-odds + lambda * [tail] * max(content z, 0)
    """Tail boost of the learned score: `lambda * max(z, 0)` is added to the log-odds of a tail item
    (cold ones included), z being the user's content z-score for it, so that each user's list
    reaches the tail items that user's own history points to. `auto`: chosen with the popularity
    penalty (below)."""
    tail_boost_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
    """`tail_boost: auto`: the values tried on the validation users (with every penalty value)."""
    accuracy_tolerance: float = 0.02  # auto penalty / boost: share of the ranker's NDCG they may give up
    """`pop_penalty` or `tail_boost` `auto`: of the pairs (penalty, boost) tried, those whose NDCG@k
    on the validation users stays at or above `(1 - accuracy_tolerance)` x the ranker's without
    either are allowed, and the one reaching the most distinct tail items there is taken."""
    lead_tolerance: float = 0.0  # auto penalty / boost: at most this share where the ranker leads
    """`pop_penalty` or `tail_boost` `auto`, where the ranker leads the better of CF and content on
    the validation users: the pairs may give up more than `accuracy_tolerance`, down to `(1 +
    accuracy_tolerance)` x that signal's NDCG@k, but at most this share of the ranker's own.
    At or below `accuracy_tolerance` (the default, 0): the lead is not spent. Off by default: 0.15,
    chosen on validation splits, put `fused` below ALS on the sparse sample's test split
    (docs/evaluation.md)."""
    propensity_power: float = 0.0  # positives weighted by (1 + n_i) ** -power in the ranker's fit
    """Inverse-propensity weighting of the ranker's training positives: each weighs `(1 + n_i) **
    -propensity_power` (n_i the item's inner-training interactions), scaled to a mean of 1 over the
    positives; negatives weigh 1. The ranker then learns which items a user chooses beyond how often
    items are chosen at all (a popular item's label says less about the user). 0: unweighted."""
    use_vae: bool = True
    """Whether the Mult-VAE's score, z-score and rank are ranker features and `vae` a single-signal
    contender (with `train.vae.enabled`; without a VAE they are 0 either way)."""
    max_users: int = 5_000  # users whose latest interactions label the ranker's training rows
    """Users labelled for the ranker: every user up to this many; beyond, a seeded hash sample of about this many, and every
    interaction of the others stays in the inner training part the feature model (ALS, head, Mult-VAE) learns from, so that it
    sees nearly as much of the log as the production one (docs/scoring.md, "Labelled users")."""
    seed: int = 42
    """Seed of the negative sampling and the user sample."""

    def __post_init__(self) -> None:
        _check(0 < self.label_fraction < 1, "recommend.ranker.label_fraction", "must be in (0, 1)")
        _check(0 < self.validation_fraction < 1, "recommend.ranker.validation_fraction", "must be in (0, 1)")
        _check(1 <= self.folds <= 20, "recommend.ranker.folds", "must be in [1, 20]")
        _check(self.negatives >= 1, "recommend.ranker.negatives", "must be >= 1")
        _check(self.trees >= 1, "recommend.ranker.trees", "must be >= 1")
        _check(1 <= self.depth <= 30, "recommend.ranker.depth", "must be in [1, 30]")
        _check(0 < self.step <= 1, "recommend.ranker.step", "must be in (0, 1]")
        _check(self.reg >= 0, "recommend.ranker.reg", "must be >= 0")
        _check(self.max_users >= 1, "recommend.ranker.max_users", "must be >= 1")
        _check(
            self.pop_penalty == "auto"
            or (isinstance(self.pop_penalty, int | float) and self.pop_penalty >= 0),
            "recommend.ranker.pop_penalty",
            "must be auto or a number >= 0",
        )
        _check(
            len(self.pop_penalty_grid) > 0 and all(b >= 0 for b in self.pop_penalty_grid),
            "recommend.ranker.pop_penalty_grid",
            "must hold at least one number, all >= 0",
        )
        _check(
            self.tail_boost == "auto" or (isinstance(self.tail_boost, int | float) and self.tail_boost >= 0),
            "recommend.ranker.tail_boost",
            "must be auto or a number >= 0",
        )
        _check(
            len(self.tail_boost_grid) > 0 and all(b >= 0 for b in self.tail_boost_grid),
            "recommend.ranker.tail_boost_grid",
            "must hold at least one number, all >= 0",
        )
        _check(0 <= self.accuracy_tolerance < 1, "recommend.ranker.accuracy_tolerance", "must be in [0, 1)")
        _check(0 <= self.lead_tolerance < 1, "recommend.ranker.lead_tolerance", "must be in [0, 1)")
        _check(0 <= self.propensity_power <= 2, "recommend.ranker.propensity_power", "must be in [0, 2]")


@dataclass(frozen=True)
class RecommendConfig:
    """How `recommend` scores and orders each user's list (docs/scoring.md)."""

    k: int = 10
    """List length."""
    variant: Literal["popular", "cf", "content", "vae", "fused", "fused_rerank"] = "fused_rerank"
    """Which ordering `recommend` writes."""
    candidates: int = 100  # CF top-N and content top-N per user
    """CF top-N and content top-N per user (their union is ranked)."""
    centre: bool = True  # subtract the catalogue's mean vector before cosine
    """Subtract the catalogue's mean text vector before cosine (hubness remedy)."""
    half_life_days: float | None = 180.0  # recency decay of the user profile; None: no decay
    """Recency decay of content profiles, in days; null: no decay."""
    profile_weights: Literal["weight", "uniform"] = "weight"  # interaction weights in the profile mean
    """Content profiles weigh each interaction by its `weight`, or 1 each (`uniform`)."""
    head_prior: float = 0.0  # CF factors (n*als + c*head)/(n + c); 0: the head only where ALS has none
    """CF factors (n*als + c*head)/(n + c); 0: the head only for items ALS has none for."""
    fusion_k: float = 50.0  # evidence weight w_i = n_i / (n_i + fusion_k)
    """Evidence weight of CF, w_i = n_i / (n_i + fusion_k)."""
    normalise: Literal["zscore", "rank"] = "zscore"
    """Score normalisation: `zscore` per user over the unseen catalogue, or `rank` (percentile among
    candidates)."""
    popularity_penalty: float = 0.0  # subtracted: popularity_penalty * log(1 + n_i)
    """Subtracted from the fused score: popularity_penalty * log(1 + n_i)."""
    rerank_rounds: int = 3
    """`fused_rerank`: rounds of exposure counting."""
    rerank_strength: float = 0.0  # subtracted: rerank_strength * log(1 + exposure)
    """`fused_rerank`: subtracted, rerank_strength * log(1 + exposure); 0 (no exposure rounds) was
    chosen on validation splits (`benchmarks/tune.py`, docs/evaluation.md)."""
    min_tail_share: float = 0.1
    """`fused_rerank`: share of each list reserved for long-tail items (0.1: chosen on validation
    splits by `benchmarks/tune.py`)."""
    min_cold_share: float = 0.1  # fused_rerank: share of each list reserved for items with no interactions
    """`fused_rerank`: share of each list reserved for cold items (no interactions; 0.1: chosen on
    validation splits by `benchmarks/tune.py`)."""
    reserve_cap: float = 1.0
    """`fused_rerank`: spread the reserved places over the catalogue. Each flagged item (long-tail,
    cold) is offered to at most `ceil(reserve_cap x fair share)` users, those it ranks highest for
    among their flagged candidates (fair share = users x reserved places / distinct flagged
    candidates); a user with no offer takes their best flagged item. 0: no cap (each user's best
    flagged items, whoever else gets them). 1: chosen on validation splits by `benchmarks/tune.py`."""
    head_rule: Literal["mass", "items"] = "mass"
    """How the head is cut from the training counts (ml/segments.py): `mass` (the items holding
    `head_share` of the interactions) or `items` (`head_fraction` of the interacted items); cold items are
    never head, tied items never split."""
    head_share: float = 0.8
    """`mass` rule: the head = the most popular items holding at most this share of training interactions."""
    head_fraction: float = 0.2
    """`items` rule: the head = at most this share of the items that have training interactions."""
    block_users: int = 8192
    """Blocked top-K: users per block (docs/scaling.md: 8192 x 16384 for 384 dimensions)."""
    block_items: int = 16384
    """Blocked top-K: items per block."""
    fusion: Literal["learned", "blend"] = "learned"
    """`fused`: the learned ranker's order (trained by `train`), or the z-score `blend` (for comparison)."""
    ranker: RankerConfig = field(default_factory=RankerConfig)
    """The learned fusion ranker (docs/scoring.md, "Learned fusion")."""

    def __post_init__(self) -> None:
        _check(self.k >= 1, "recommend.k", "must be >= 1")
        _check(self.candidates >= self.k, "recommend.candidates", "must be >= recommend.k")
        _check(
            self.half_life_days is None or self.half_life_days > 0,
            "recommend.half_life_days",
            "must be > 0 or null",
        )
        _check(self.fusion_k > 0, "recommend.fusion_k", "must be > 0")
        _check(self.head_prior >= 0, "recommend.head_prior", "must be >= 0")
        _check(self.popularity_penalty >= 0, "recommend.popularity_penalty", "must be >= 0")
        _check(self.rerank_rounds >= 0, "recommend.rerank_rounds", "must be >= 0")
        _check(self.rerank_strength >= 0, "recommend.rerank_strength", "must be >= 0")
        _check(0 <= self.min_tail_share <= 1, "recommend.min_tail_share", "must be in [0, 1]")
        _check(0 <= self.min_cold_share <= 1, "recommend.min_cold_share", "must be in [0, 1]")
        _check(self.reserve_cap >= 0, "recommend.reserve_cap", "must be >= 0 (0: no cap)")
        _check(
            self.min_tail_share + self.min_cold_share <= 1,
            "recommend.min_cold_share",
            "must be <= 1 - recommend.min_tail_share (the reserved places cannot exceed the list)",
        )
        _check(0 < self.head_fraction < 1, "recommend.head_fraction", "must be in (0, 1)")
        _check(0 < self.head_share < 1, "recommend.head_share", "must be in (0, 1)")
        _check(self.block_users >= 1, "recommend.block_users", "must be >= 1")
        _check(self.block_items >= 1, "recommend.block_items", "must be >= 1")


@dataclass(frozen=True)
class EvaluateConfig:
    """The time-based hold-out and the report of `evaluate` (docs/evaluation.md)."""

    k: tuple[int, ...] = (10, 20)
    """Cut-offs of every metric; the lists for each k are ranked, re-ranked and reserved at length k."""
    test_fraction: float = 0.2
    """Per user, this last share of interactions (at least one) goes to test."""
    cutoff: str | None = None  # ISO-8601 time: a global cut-off instead of the per-user fraction
    """ISO-8601 time: a global cut-off instead (ts >= cutoff goes to test); null: per user."""
    variants: tuple[str, ...] = VARIANTS
    """Variants to measure."""
    # test: train on the training part, measure on the test part. validation: set the test part
    # aside untouched, split the training part again the same way and measure on that (for tuning).
    holdout: Literal["test", "validation"] = "test"
    """`test`: measure on the test part; `validation`: set it aside, split the training part again and measure
    there (for tuning)."""
    sweep: tuple[float, ...] = ()  # fusion_k values: a trade-off curve of `fused`; empty: none
    """`fusion_k` values: a trade-off curve of `fused` in the report; empty: none."""
    sweep_rerank: tuple[float, ...] = ()  # rerank_strength values: a curve of `fused_rerank`
    """`rerank_strength` values: a trade-off curve of `fused_rerank`; empty: none."""
    sweep_penalty: tuple[float, ...] = ()
    """Popularity penalties of the learned ranker (`recommend.ranker.pop_penalty`): a trade-off curve of `fused`
    ranked with each in place of the one the ranker chose (`recommend.fusion: learned`); empty: none."""
    report: bool = True  # write the HTML + Markdown report
    """Write the HTML and Markdown report."""
    report_dir: str | None = None  # None: <lake.root>/reports
    """Where reports go; null: `<lake.root>/reports`."""
    bootstrap: int = 1000
    """Paired bootstrap resamples of users for the 95% intervals of each variant's difference to `cf`; 0: none."""
    bootstrap_seed: int = 42
    """Seed of the bootstrap resampling (and of the `max_users` sample)."""
    max_users: int | None = None
    """Evaluate about this many test users: a seeded hash sample of the users with a test interaction (each
    kept with probability max_users / test users), for logs too large to rank every test user; every model
    still trains on the whole training part. Accuracy and its intervals estimate the full figures;
    coverage, Gini and the other catalogue-wide metrics count the sampled users' lists only (lower than
    over every user): compare those between runs of one sample size. null: every test user."""
    ablate: tuple[str, ...] = ()
    """Signals to leave out of a second fit of the learned fusion on the same training part: for each (allowed:
    `vae`), `fused` and `fused_rerank` are ranked again without it as `<variant>_no_<signal>`, with intervals of
    the difference it makes (docs/evaluation.md). Empty: none (each costs another ranker fit)."""
    finetuned: Literal["auto", "always", "never"] = "auto"
    """Rank `content_ft`, `fused_ft`, `fused_rerank_ft` with the encoder fine-tuned on the training part only
    (docs/finetune.md): `auto` when the lake's fine-tuned encoder is in use, `always` even without one (to
    decide whether fine-tuning pays), `never`."""

    def __post_init__(self) -> None:
        _check(self.bootstrap >= 0, "evaluate.bootstrap", "must be >= 0 (0: no intervals)")
        _check(self.max_users is None or self.max_users >= 1, "evaluate.max_users", "must be >= 1 or null")
        _check(
            len(self.k) >= 1 and all(k >= 1 for k in self.k), "evaluate.k", "must be a list of integers >= 1"
        )
        _check(0 < self.test_fraction < 1, "evaluate.test_fraction", "must be in (0, 1)")
        _check(all(v > 0 for v in self.sweep), "evaluate.sweep", "fusion_k values must be > 0")
        _check(all(v >= 0 for v in self.sweep_rerank), "evaluate.sweep_rerank", "values must be >= 0")
        _check(all(v >= 0 for v in self.sweep_penalty), "evaluate.sweep_penalty", "values must be >= 0")
        if self.cutoff is not None:
            try:
                dt.datetime.fromisoformat(self.cutoff.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError("evaluate.cutoff", f"{self.cutoff!r} is not an ISO-8601 time") from None
        _check(
            all(a in ABLATIONS for a in self.ablate),
            "evaluate.ablate",
            f"allowed: {list(ABLATIONS)}; got {list(self.ablate)}",
        )
        bad = [v for v in self.variants if v not in VARIANTS]
        _check(
            not bad and len(self.variants) >= 1, "evaluate.variants", f"allowed: {list(VARIANTS)}; got {bad}"
        )


@dataclass(frozen=True)
class MaintainConfig:
    """What `maintain` does to the tables: compaction, log checkpoints, VACUUM (docs/lake.md)."""

    retention_hours: float = (
        168.0  # VACUUM keeps unreferenced files younger than this (Delta's default: 7 days)
    )
    """VACUUM deletes unreferenced files (removed by later versions, or orphans of killed writes) older than this, in hours (Delta's default: 168, 7 days)."""
    compact: bool = True  # bin-pack small files (daily appends) into files of about target_file_mb
    """Bin-pack small files (e.g. of daily appends) into files of about `target_file_mb`."""
    target_file_mb: int = 128
    """Target size of compacted files, in MiB."""
    checkpoint: bool = True  # write a log checkpoint at the current version
    """Write a Delta log checkpoint at the current version."""
    tables: tuple[str, ...] = ()  # empty: every longtail table that exists under lake.root
    """Tables to maintain; empty: every longtail table that exists under `lake.root`."""
    models: bool = True
    """Delete the per-run model folders under `<lake.root>/models` (`ranker`, `vae`, fine-tuned
    `encoder`) that the lake's current state does not reference and whose newest file is older
    than `retention_hours`."""

    def __post_init__(self) -> None:
        _check(
            self.retention_hours >= 0, "maintain.retention_hours", f"must be >= 0, got {self.retention_hours}"
        )
        _check(
            self.target_file_mb >= 1, "maintain.target_file_mb", f"must be >= 1, got {self.target_file_mb}"
        )


@dataclass(frozen=True)
class RunConfig:
    """Run bookkeeping."""

    id: str | None = None  # None: generated per invocation
    """Run id recorded in `runs`; null: generated per invocation (`--run-id` wins)."""


def flatten(value: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as ``(dotted.key, leaf)`` pairs; lists, scalars and empty mappings are leaves
    (the config as MLflow params, the report's context tables).

    Example:
        >>> flatten({"a": {"b": 1, "c": [2]}})
        [('a.b', 1), ('a.c', [2])]
    """
    out: list[tuple[str, Any]] = []
    for key, leaf in value.items():
        name = f"{prefix}{key}"
        if isinstance(leaf, Mapping) and leaf:
            out += flatten(leaf, f"{name}.")
        else:
            out.append((name, leaf))
    return out


@dataclass(frozen=True)
class TrackingConfig:
    """Run tracking outside the lake (docs/scheduling.md, "Run tracking in MLflow")."""

    mlflow: str | None = None
    """MLflow tracking URI (`http://host:5000`, `databricks`, `sqlite:///path/mlflow.db`): each stage
    run is logged there too (config, time, summary, evaluate's metrics); null: off. Needs the
    `mlflow-skinny` package (plus `sqlalchemy`, `alembic` for `sqlite:`). The `runs` table stays
    the record."""
    experiment: str = "longtail"
    """MLflow experiment the runs go to (created when missing)."""
    artifacts: str | None = None
    """Artifact location of the experiment when longtail creates it; null: beside the database for a
    `sqlite:` store (`mlartifacts/`), else the tracking server's default."""

    def __post_init__(self) -> None:
        _check(bool(self.experiment), "tracking.experiment", "must be a non-empty name")
        _check(self.mlflow is None or bool(self.mlflow.strip()), "tracking.mlflow", "must be a URI or null")


@dataclass(frozen=True)
class Config:
    """The whole configuration: one section per stage or concern."""

    lake: LakeConfig = field(default_factory=LakeConfig)
    """Tables."""
    input: InputConfig = field(default_factory=InputConfig)
    """Raw input."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """The generated sample."""
    ingest: IngestConfig = field(default_factory=IngestConfig)
    """Ingest."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Text encoder."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Encoder fine-tuning."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training."""
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    """Scoring."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """Evaluation."""
    maintain: MaintainConfig = field(default_factory=MaintainConfig)
    """Table maintenance."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run bookkeeping."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run tracking in MLflow."""

    def __post_init__(self) -> None:
        # The config is recorded in the `runs` table and in reports: no credentials in it. Storage
        # credentials belong in the Spark/Hadoop configuration or the environment.
        for key, uri in (
            ("lake.root", self.lake.root),
            ("input.items", self.input.items),
            ("input.interactions", self.input.interactions),
            ("sample.path", self.sample.path),
            ("train.checkpoint_dir", self.train.checkpoint_dir),
            ("evaluate.report_dir", self.evaluate.report_dir),
            ("tracking.mlflow", self.tracking.mlflow),
            ("tracking.artifacts", self.tracking.artifacts),
        ):
            _check(
                not uri or not _has_credentials(uri),
                key,
                "holds credentials (user:password@ or a secret query parameter); the config is recorded in "
                "the runs table: pass credentials through Spark/Hadoop settings (spark.hadoop.fs.s3a.*) "
                "or the environment instead",
            )
        _check(
            not self.evaluate.sweep_penalty or self.recommend.fusion == "learned",
            "evaluate.sweep_penalty",
            "sweeps the learned ranker's popularity penalty: it needs recommend.fusion: learned",
        )

    @property
    def sample_path(self) -> str:
        return self.sample.path or join_uri(self.lake.root, "sample_input")

    @property
    def sample_inputs(self) -> tuple[str, str]:
        """The (items, interactions) paths that ``generate-sample`` writes and ``ingest`` reads by default."""
        return join_uri(self.sample_path, "items.csv"), join_uri(self.sample_path, "interactions.csv")

    @property
    def checkpoint_dir(self) -> str:
        return self.train.checkpoint_dir or join_uri(self.lake.root, "_checkpoints")

    @property
    def report_dir(self) -> str:
        return self.evaluate.report_dir or join_uri(self.lake.root, "reports")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


# --- loading -------------------------------------------------------------------------------------
def load_config(
    files: Iterable[str | Path] = (), overrides: Iterable[str] = (), *, base: bool = True
) -> Config:
    """Build a validated :class:`Config` from YAML files and ``a.b=c`` overrides.

    Args:
        files: YAML files applied in order over ``conf/base.yaml``.
        overrides: ``dotted.key=value`` strings; the value is parsed as YAML (``20``, ``[10, 20]``,
            ``null``, ``true``).
        base: start from ``conf/base.yaml`` (off: start from the dataclass defaults).
    """
    tree: dict[str, Any] = {}
    paths = ([BASE_CONF] if base and IN_CHECKOUT and BASE_CONF.exists() else []) + [Path(f) for f in files]
    for path in paths:
        if not path.exists():
            raise ConfigError("--conf", f"file not found: {path}")
        if not path.is_file():
            raise ConfigError("--conf", f"not a file: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError("--conf", f"{path} is not valid YAML: {_first_line(exc)}") from exc
        except OSError as exc:
            raise ConfigError("--conf", f"cannot read {path}: {exc.strerror or exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(
                "--conf", f"{path} must hold a mapping of sections, got {type(loaded).__name__}"
            )
        _deep_merge(tree, loaded)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, "an override is written key=value, e.g. recommend.k=20")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(
                key.strip(), f"the value {raw!r} is not valid YAML ({_first_line(exc)}); quote it: key='...'"
            ) from exc
        _deep_merge(tree, _nest(key.strip(), value))
    return build(Config, tree, "")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    node: Any = value
    for part in reversed(dotted.split(".")):
        node = {part: node}
    return node


def _deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def build(cls: type, data: Any, prefix: str) -> Any:
    """Turn a nested mapping into dataclass ``cls``, checking every key and value type."""
    where = prefix or "<root>"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(where, f"must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(key, f"unknown key; allowed keys here: {sorted(fields)}")
    kwargs = {name: _coerce(hints[name], data[name], f"{prefix}.{name}" if prefix else name) for name in data}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(key, f"{value!r} is not allowed ({'; '.join(e.split(': ', 1)[1] for e in errors)})")
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"{value!r} is not allowed; allowed values: {list(args)}")
        return value
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(items))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, list | dict):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return str(value)
    raise ConfigError(key, f"unsupported type {tp!r}")  # a programming error in the dataclasses
