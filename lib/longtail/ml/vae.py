"""Mult-VAE: a generative collaborative signal that models each user's whole item distribution.

Liang, Krishnan, Hoffman and Jebara, "Variational Autoencoders for Collaborative Filtering"
(WWW 2018). A user is the multi-hot vector ``x`` of the items they interacted with; the model is

    h = tanh(W_enc . normalise(dropout(x)) + b_enc)        encoder, ``hidden`` units
    mu, logvar = W_lat . h + b_lat                         ``latent`` dimensions
    z = mu + eps * exp(logvar / 2)  (mu when scoring)
    d = tanh(W_dec . z + b_dec)                            decoder, ``hidden`` units
    logits = W_out . d + b_out                             one logit per item

trained on the multinomial log-likelihood of ``x`` under ``softmax(logits)`` plus ``beta`` times
the KL divergence of ``N(mu, exp(logvar))`` from ``N(0, 1)``, with ``beta`` annealed linearly from
0 to ``anneal_cap`` (the paper's "partially regularised" objective). The multinomial likelihood
spreads one unit of probability over the whole catalogue, so a user's mass is not spent on the
few head items a per-item (Bernoulli or squared) loss would favour: the reason this signal is
here, next to ALS, for the long tail.

**Where it runs.** Training is single-process PyTorch on the driver: the ``(user, item)`` pairs of
at most ``train.vae.max_interactions`` interactions (a seeded sample of users beyond) are collected,
the documented exception to the no-collect rule (like the projection head's training set). The
model has one input and one output row per item, so its memory grows with the items it models
(about 16 KB each in training): at most ``train.vae.max_items``, those with the most users, the
others scored like items without interactions (below). With
``train.vae.processes`` set, a larger log is trained on whole by :func:`fit_distributed`
(``TorchDistributor`` over Spark barrier tasks, one shard of users each) instead of sampled.
Scoring never holds the catalogue on the driver: the item side of the model is a DataFrame of
per-item rows (the encoder's input column ``vae_enc`` and the output layer's row plus its bias,
``vae_dec``), saved as Parquet; a user's vector is computed on the executors by summing the
``vae_enc`` rows of the user's items (the first layer of a multi-hot input is exactly that sum,
scaled by ``1 / sqrt(n)`` for the L2 normalisation) and applying the small dense layers; it is
``[d, 1]``, so that ``user . item = W_out_i . d + b_out_i`` is the item's logit, and the
blocked top-K ranks users by it like any other signal. The softmax is monotone per user, so the
logit order is the probability order.

Items without a training interaction have no output row (the model knows nothing of them): their
``vae`` score is null, and the other signals (content, the head's CF vectors) carry them. So have
the items beyond ``max_items``, whose pairs are left out of training and of users' vectors alike.

**The text side** (``train.vae.text``, on by default): the output row of item ``i`` becomes
``W_out_i + P . t_i``, ``t_i`` its text vector and ``P`` one projection learned for all items, with
``W_out`` starting at zero. An item seen a few times gets few gradient steps on its own row, so its
row stays close to what its text predicts from all the other items: it decodes near items with
similar descriptions instead of near its random initialisation. The sum is folded into the saved
row, so scoring, persistence and the item side's size do not change.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core import schema as S
from longtail.core.config import VaeConfig
from longtail.core.files import read_bytes, write_files

log = logging.getLogger(__name__)

VAE = "vae"  # the signal's name in the candidates
VAE_VEC = "vae_vec"  # user and item vectors of the blocked top-K
ENC, DEC = "vae_enc", "vae_dec"  # per-item rows of the encoder's first and the decoder's last layer
DENSE_FILE, CARD_FILE, ITEMS_DIR = "dense.safetensors", "vae.json", "items"
DENSE = ("enc_b", "lat_w", "lat_b", "dec_w", "dec_b")  # the dense weights' names (numpy, (out, in))


class VaeError(ValueError):
    """The VAE cannot be trained on this input (too little data) or its files are unreadable."""


@dataclass
class VaeModel:
    """A trained Mult-VAE: the small dense weights on the driver, the item side as a DataFrame.

    Attributes:
        spec: ``hidden``, ``latent``, ``items`` (output columns), ``users`` and ``interactions``
            trained on, ``steps``, ``epochs``, ``loss`` (first and last epoch), ``seconds``, ``seed``.
        dense: :data:`DENSE` -> float32 arrays, ``torch.nn.Linear`` layout ``(out, in)``.
        items: ``(item_idx, vae_enc, vae_dec)``: per item, the encoder's input column (``hidden``
            floats) and the output layer's row with its bias appended (``hidden + 1`` floats).
        path: where :func:`save` wrote it (None: not saved).
    """

    spec: dict[str, Any]
    dense: dict[str, np.ndarray]
    items: DataFrame
    path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def unpersist(self) -> None:
        self.items.unpersist()


# --- the network ---------------------------------------------------------------------------------
def network(n_items: int, hidden: int, latent: int, dropout: float, text: np.ndarray | None = None) -> Any:
    """The Mult-VAE module (``torch.nn.Module``); ``forward(x) -> (logits, mu, logvar)``.

    ``text`` (``(n_items, dim)``, one text vector per output item, zeros where an item has none)
    conditions the item side: item ``i``'s output row is ``W_out_i + P . t_i`` with ``P`` a
    learned ``(hidden, dim)`` projection shared by all items and ``W_out`` starting at zero, so an
    item's row is its text's until its own interactions move it (:meth:`item_rows` gives the sum).
    """
    import torch
    from torch import nn

    class MultVae(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(dropout)
            self.enc = nn.Linear(n_items, hidden)
            self.lat = nn.Linear(hidden, 2 * latent)
            self.dec = nn.Linear(latent, hidden)
            self.out = nn.Linear(hidden, n_items)
            self.proj: Any = None
            if text is not None:
                self.register_buffer("text", torch.from_numpy(np.asarray(text, np.float32)))
                self.proj = nn.Linear(text.shape[1], hidden, bias=False)
                nn.init.zeros_(self.out.weight)

        def item_rows(self) -> Any:
            """The output layer's weight, ``(n_items, hidden)``, text term included."""
            if self.proj is None:
                return self.out.weight
            return self.out.weight + self.proj(self.text)

        def forward(self, x: Any) -> tuple[Any, Any, Any]:
            h = nn.functional.normalize(x, dim=1)
            h = torch.tanh(self.enc(self.drop(h)))
            mu, logvar = self.lat(h).chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
            d = torch.tanh(self.dec(z))
            return nn.functional.linear(d, self.item_rows(), self.out.bias), mu, logvar

    return MultVae()


def loss(logits: Any, x: Any, mu: Any, logvar: Any, beta: float) -> Any:
    """The Mult-VAE objective, averaged over the users of the batch: the multinomial negative
    log-likelihood ``-sum_i x_i log softmax(logits)_i`` plus ``beta`` times
    ``KL(N(mu, exp(logvar)) || N(0, 1)) = -1/2 sum (1 + logvar - mu^2 - exp(logvar))``."""
    import torch

    nll = -(torch.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
    return nll + beta * kl


def beta_at(step: int, total: int, cap: float) -> float:
    """KL weight at optimisation ``step`` of ``total``: linear from 0, reaching ``cap`` at 80% of
    the steps and staying there."""
    return cap * min(1.0, step / max(1.0, 0.8 * total))


# --- training ------------------------------------------------------------------------------------
def modelled_pairs(ratings: DataFrame, cfg: VaeConfig) -> tuple[DataFrame, int, dict[str, Any]]:
    """The distinct ``(user_idx, item_idx)`` pairs of the items the model will have a row for: all
    of them, or beyond ``cfg.max_items`` items the ``max_items`` with the most users (ties: the
    lower index; one ordered top-``max_items`` job, semi-joined back). Also returns how many pairs
    that is (summed from the per-item counts, not counted again) and ``items_total`` (items with a
    pair) and ``items_dropped`` (those left without a row)."""
    pairs = ratings.select(S.USER_IDX, S.ITEM_IDX).distinct()
    per_item = pairs.groupBy(S.ITEM_IDX).agg(F.count(F.lit(1)).alias("_users"))
    sizes = per_item.agg(F.count(F.lit(1)).alias("items"), F.sum("_users").alias("pairs")).first()
    assert sizes is not None  # an aggregate without grouping has exactly one row
    n_items, n_pairs = int(sizes["items"]), int(sizes["pairs"] or 0)
    if n_items > cfg.max_items:
        # materialised once (max_items rows): its pair count and the semi-join below both read it,
        # instead of each running the per-item aggregate over every pair again
        kept = (
            per_item.orderBy(F.col("_users").desc(), S.ITEM_IDX)
            .limit(cfg.max_items)
            .localCheckpoint(eager=True)
        )
        kept_size = kept.agg(F.sum("_users")).first()
        assert kept_size is not None
        n_pairs = int(kept_size[0])
        pairs = pairs.join(F.broadcast(kept.select(S.ITEM_IDX)), S.ITEM_IDX, "left_semi").select(
            S.USER_IDX, S.ITEM_IDX
        )
        log.warning(
            "train.vae.max_items: %d items have interactions; the model keeps the %d with the most users, "
            "the other %d get no vae score",
            n_items,
            cfg.max_items,
            n_items - cfg.max_items,
        )
    return pairs, n_pairs, {"items_total": n_items, "items_dropped": max(0, n_items - cfg.max_items)}


def training_pairs(ratings: DataFrame, cfg: VaeConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(user_idx, item_idx)`` arrays of at most ``cfg.max_interactions`` distinct pairs of the
    modelled items (:func:`modelled_pairs`), on the driver: every user when they fit, else a seeded
    hash sample of users (whole histories), cut at the cap. Also returns the counts before
    sampling."""
    pairs, total, item_counts = modelled_pairs(ratings, cfg)
    fraction = min(1.0, cfg.max_interactions / max(total, 1))
    if fraction < 1.0:
        bucket = F.abs(F.xxhash64(F.col(S.USER_IDX), F.lit(cfg.seed))) % 1_000_000
        pairs = pairs.where(bucket < math.floor(fraction * 1_000_000))
    got = cast(pd.DataFrame, pairs.orderBy(S.USER_IDX, S.ITEM_IDX).limit(cfg.max_interactions).toPandas())
    users = got[S.USER_IDX].to_numpy(np.int64)
    items = got[S.ITEM_IDX].to_numpy(np.int64)
    return (
        users,
        items,
        {"interactions_total": int(total), "user_fraction": round(fraction, 6), **item_counts},
    )


def fit(
    spark: SparkSession,
    ratings: DataFrame,
    cfg: VaeConfig,
    *,
    text: DataFrame | None = None,
    staging: str | None = None,
) -> VaeModel:
    """Train the Mult-VAE on ``ratings`` (``user_idx, item_idx``, one row per interaction or per
    pair) and return it with its item side as a DataFrame (not persisted, not saved).

    With ``cfg.text``, ``text`` (``item_idx, embedding``: the current text vectors) conditions the
    item side (:func:`network`); the vectors of the items trained on are collected to the driver
    with the pairs. When the log holds more than ``cfg.max_interactions`` pairs and
    ``cfg.processes`` is set, training runs on the executors instead (:func:`fit_distributed`,
    staging the pairs under ``staging``). Raises :class:`VaeError` when fewer than 2 users or 2
    items remain, or when ``cfg.text`` is on and ``text`` is None.
    """
    if cfg.text and text is None:
        raise VaeError("train.vae.text is on but no text vectors were given (run encode first)")
    if cfg.processes > 0:
        total = ratings.select(S.USER_IDX, S.ITEM_IDX).distinct().count()
        if total > cfg.max_interactions:
            if staging is None:
                raise VaeError("train.vae.processes: distributed training needs a staging folder (lake.root)")
            return fit_distributed(spark, ratings, cfg, text=text, staging=staging)
    import torch

    t0 = time.perf_counter()
    users, items, counts = training_pairs(ratings, cfg)
    item_ids, cols = np.unique(items, return_inverse=True)
    user_ids, rows = np.unique(users, return_inverse=True)
    _check_size(len(user_ids), len(item_ids))
    torch.manual_seed(cfg.seed)
    vectors, with_text = (None, 0)
    if cfg.text:
        assert text is not None
        vectors, with_text = text_matrix(spark, text, item_ids)
    net = network(len(item_ids), cfg.hidden, cfg.latent, cfg.dropout, vectors)
    total = total_steps(len(user_ids), cfg)
    steps, losses = train_steps(
        net,
        net,
        UserRows(rows, cols, len(item_ids)),
        cfg,
        total=total,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    enc, out, dense = export(net)
    spec = _spec(cfg, len(item_ids), len(user_ids), len(users), counts, steps, losses, with_text, t0)
    log.info("vae: %s", spec)
    return VaeModel(spec, dense, item_rows(spark, item_ids, enc, out))


def _check_size(n_users: int, n_items: int) -> None:
    if n_users < 2 or n_items < 2:
        raise VaeError(
            f"train.vae: {n_users} users and {n_items} items to learn from; at least 2 "
            "of each are needed (set train.vae.enabled=false for such a log)"
        )


def total_steps(n_users: int, cfg: VaeConfig) -> int:
    """Optimisation steps: ``epochs`` passes of ``batch_size`` users, at most ``max_steps``."""
    return min(cfg.epochs * math.ceil(n_users / cfg.batch_size), cfg.max_steps)


class UserRows:
    """Users' histories as CSR: ``rows`` (dense user positions) and ``cols`` (item columns) of the
    pairs; :meth:`batch` builds the multi-hot input of some users."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, n_items: int) -> None:
        order = np.argsort(rows, kind="stable")
        self.cols = cols[order]
        self.n_users = int(rows.max()) + 1 if len(rows) else 0
        self.starts = np.searchsorted(rows[order], np.arange(self.n_users + 1))
        self.n_items = n_items

    def batch(self, users: np.ndarray, device: Any = None) -> Any:
        import torch

        x = torch.zeros(len(users), self.n_items)
        for r, u in enumerate(users):
            x[r, torch.from_numpy(self.cols[self.starts[u] : self.starts[u + 1]])] = 1.0
        return x if device is None else x.to(device)


def train_steps(
    net: Any,
    module: Any,
    data: UserRows,
    cfg: VaeConfig,
    *,
    total: int,
    batch_size: int,
    seed: int,
    device: Any = None,
) -> tuple[int, list[float]]:
    """Exactly ``total`` Adam steps of ``batch_size`` users, passes over ``data``'s users in seeded
    random order (every process of a distributed run takes the same number of steps). ``net`` is
    what is called (the module, or its DistributedDataParallel wrapper), ``module`` the model.
    Returns the steps taken and the mean loss of each pass."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    step = 0
    module.train()
    while step < total:
        perm = rng.permutation(data.n_users)
        running, seen = 0.0, 0
        for lo in range(0, data.n_users, batch_size):
            if step >= total:
                break
            x = data.batch(perm[lo : lo + batch_size], device)
            logits, mu, logvar = net(x)
            value = loss(logits, x, mu, logvar, beta_at(step, total, cfg.anneal_cap))
            opt.zero_grad()
            value.backward()
            opt.step()
            step += 1
            running += value.item() * len(x)
            seen += len(x)
        if seen:
            losses.append(running / seen)
    module.eval()
    return step, losses


def export(net: Any) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``(enc, out, dense)`` of a trained :func:`network`: the encoder's input columns
    ``(items, hidden)``, the output rows with the text term folded in and the bias appended
    ``(items, hidden + 1)``, and the dense weights (:data:`DENSE`)."""
    import torch

    def host(t: Any) -> np.ndarray:
        return np.asarray(t.detach().cpu().numpy(), np.float32)

    with torch.no_grad():
        enc = host(net.enc.weight).T.copy()
        out = np.concatenate([host(net.item_rows()), host(net.out.bias)[:, None]], axis=1)
        dense = {
            "enc_b": host(net.enc.bias),
            "lat_w": host(net.lat.weight),
            "lat_b": host(net.lat.bias),
            "dec_w": host(net.dec.weight),
            "dec_b": host(net.dec.bias),
        }
    return enc, out, dense


def _spec(
    cfg: VaeConfig,
    n_items: int,
    n_users: int,
    n_pairs: int,
    counts: dict[str, Any],
    steps: int,
    losses: list[float],
    with_text: int,
    t0: float,
    processes: int = 1,
) -> dict[str, Any]:
    return {
        "hidden": cfg.hidden,
        "latent": cfg.latent,
        "items": n_items,
        "users": n_users,
        "interactions": n_pairs,
        **counts,
        "steps": steps,
        "epochs": len(losses),
        "loss": [round(losses[0], 4), round(losses[-1], 4)] if losses else None,
        "anneal_cap": cfg.anneal_cap,
        "text": bool(cfg.text),
        "text_items": with_text,
        "processes": processes,
        "seed": cfg.seed,
        "seconds": round(time.perf_counter() - t0, 3),
    }


# --- training on the executors (TorchDistributor) ------------------------------------------------
SHARD = "shard"


def fit_distributed(
    spark: SparkSession,
    ratings: DataFrame,
    cfg: VaeConfig,
    *,
    text: DataFrame | None,
    staging: str,
) -> VaeModel:
    """Train on every pair with ``TorchDistributor`` over ``cfg.processes`` Spark barrier tasks.

    Spark stages the distinct pairs under ``staging`` as Parquet partitioned into one shard per
    process (whole users, by a seeded hash), with the items trained on (and their text vectors);
    each process reads only its shard and the items, builds the same network (same seed) and takes
    the same number of steps of ``batch_size / processes`` users, DistributedDataParallel
    averaging the gradients (gloo on CPU, NCCL on GPUs: ``cfg.gpu``). Nothing of log size reaches
    the driver; the trained weights (catalogue size, as on the driver path) come back from rank 0.
    The staging folder is deleted afterwards. The lake must be local or on S3 (the processes read
    it with pyarrow, S3 credentials from the session's S3A settings).
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    from longtail.core.files import delete_folder
    from longtail.core.uris import join_uri, s3_storage_options

    t0 = time.perf_counter()
    n = cfg.processes
    pairs, _, item_counts = modelled_pairs(ratings, cfg)  # n_pairs: from the staged shards below
    pairs = pairs.withColumn(
        SHARD, F.pmod(F.xxhash64(F.col(S.USER_IDX), F.lit(cfg.seed)), F.lit(n)).cast("int")
    )
    items = pairs.select(S.ITEM_IDX).distinct()
    if cfg.text:
        assert text is not None
        vectors = text.select(S.ITEM_IDX, S.EMBEDDING).dropDuplicates([S.ITEM_IDX])
        items = items.join(vectors, S.ITEM_IDX, "left")
    try:
        pairs.repartition(n, SHARD).write.mode("overwrite").partitionBy(SHARD).parquet(
            join_uri(staging, "pairs")
        )
        items.write.mode("overwrite").parquet(join_uri(staging, "items"))
        written = spark.read.parquet(join_uri(staging, "pairs"))
        per_shard = {
            int(r[SHARD]): (int(r["u"]), int(r["p"]))
            for r in written.groupBy(SHARD)
            .agg(F.countDistinct(S.USER_IDX).alias("u"), F.count(F.lit(1)).alias("p"))
            .collect()
        }  # one row per process
        n_users = sum(u for u, _ in per_shard.values())
        n_pairs = sum(p for _, p in per_shard.values())  # every distinct pair of the log
        staged = spark.read.parquet(join_uri(staging, "items"))
        _check_size(n_users, staged.count())
        if cfg.text and staged.where(F.col(S.EMBEDDING).isNotNull()).isEmpty():
            raise VaeError(NO_TEXT)  # as on the driver path, before any process starts
        empty = [s for s in range(n) if s not in per_shard]
        if empty:
            raise VaeError(
                f"train.vae.processes={n}: shards {empty} have no user (fewer users than processes); "
                "lower train.vae.processes"
            )
        job = {
            "gpu": uses_gpu(spark, cfg),
            "staging": staging,
            "storage": s3_storage_options(spark, staging),
            "cfg": dataclasses.asdict(cfg),
            "total": total_steps(n_users, cfg),
            "batch_size": math.ceil(cfg.batch_size / n),
        }
        got = cast(
            dict[str, Any],
            TorchDistributor(num_processes=n, local_mode=False, use_gpu=bool(job["gpu"])).run(
                train_process, job
            ),
        )
    finally:
        delete_folder(staging, spark=spark)
    item_ids = got["item_ids"]
    with_text = got["text_items"]
    counts = {"interactions_total": n_pairs, "user_fraction": 1.0, **item_counts}
    spec = _spec(
        cfg,
        len(item_ids),
        n_users,
        n_pairs,
        counts,
        got["steps"],
        got["losses"],
        with_text,
        t0,
        processes=n,
    )
    log.info("vae (TorchDistributor, %d processes): %s", n, spec)
    return VaeModel(spec, got["dense"], item_rows(spark, item_ids, got["enc"], got["out"]))


def uses_gpu(spark: SparkSession, cfg: VaeConfig) -> bool:
    """``train.vae.gpu`` resolved: ``auto`` is True when Spark schedules GPUs to tasks."""
    if cfg.gpu != "auto":
        return cfg.gpu == "always"
    try:
        return float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) > 0
    except ValueError:
        return False


def train_process(job: dict[str, Any]) -> dict[str, Any] | None:
    """One process of :func:`fit_distributed` (run by TorchDistributor, on an executor): read the
    items and this rank's shard, train with DistributedDataParallel; rank 0 returns the weights."""
    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from longtail.core.uris import arrow_filesystem, join_uri

    cfg = VaeConfig(**job["cfg"])
    gpu = bool(job["gpu"])
    dist.init_process_group("nccl" if gpu else "gloo")
    try:
        rank = dist.get_rank()
        device = (
            torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}") if gpu else torch.device("cpu")
        )
        fs, root = arrow_filesystem(job["staging"], job["storage"])
        items = pq.read_table(join_uri(root, "items"), filesystem=fs).to_pandas().sort_values(S.ITEM_IDX)
        item_ids = items[S.ITEM_IDX].to_numpy(np.int64)
        vectors, with_text = None, 0
        if cfg.text:
            vectors, with_text = vectors_in_order(items, item_ids)
        shard = pq.read_table(join_uri(root, "pairs", f"{SHARD}={rank}"), filesystem=fs).to_pandas()
        _, rows = np.unique(shard[S.USER_IDX].to_numpy(np.int64), return_inverse=True)
        cols = np.searchsorted(item_ids, shard[S.ITEM_IDX].to_numpy(np.int64))
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        net = network(len(item_ids), cfg.hidden, cfg.latent, cfg.dropout, vectors).to(device)
        # the text buffer is the same in every process: not broadcast at every step (the keyword
        # was renamed in recent torch)
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        ddp = DistributedDataParallel(net, **cast(dict[str, Any], {sync: False}))
        steps, losses = train_steps(
            ddp,
            net,
            UserRows(rows, cols, len(item_ids)),
            cfg,
            total=int(job["total"]),
            batch_size=int(job["batch_size"]),
            seed=cfg.seed + rank,
            device=device,
        )
        if rank != 0:
            return None
        enc, out, dense = export(net)
        return {
            "item_ids": item_ids,
            "enc": enc,
            "out": out,
            "dense": dense,
            "steps": steps,
            "losses": losses,
            "text_items": with_text,
        }
    finally:
        dist.destroy_process_group()


def text_matrix(spark: SparkSession, text: DataFrame, item_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """``(len(item_ids), dim)`` text vectors in ``item_ids``' order (zeros for an item without
    one) and how many items have one. Only the vectors of ``item_ids`` (the items of the pairs
    trained on, at most ``max_interactions``) reach the driver, ``dim`` floats each."""
    wanted = spark.createDataFrame(pd.DataFrame({S.ITEM_IDX: item_ids.astype(np.int32)}))
    rows = cast(
        pd.DataFrame,
        text.select(S.ITEM_IDX, S.EMBEDDING).join(wanted, S.ITEM_IDX, "left_semi").toPandas(),
    )
    return vectors_in_order(rows, item_ids)


NO_TEXT = "train.vae.text: none of the items trained on has a text vector (run encode first)"


def vectors_in_order(rows: pd.DataFrame, item_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """``(len(item_ids), dim)`` from ``rows`` (``item_idx, embedding``; null embeddings and
    repeated ids ignored) in the order of the sorted ``item_ids``, zeros where an item has none,
    and how many have one. :class:`VaeError` when none has."""
    rows = rows.dropna(subset=[S.EMBEDDING]).drop_duplicates(S.ITEM_IDX)
    if rows.empty:
        raise VaeError(NO_TEXT)
    vectors = np.stack(rows[S.EMBEDDING].to_numpy()).astype(np.float32)
    out = np.zeros((len(item_ids), vectors.shape[1]), np.float32)
    out[np.searchsorted(item_ids, rows[S.ITEM_IDX].to_numpy(np.int64))] = vectors
    return out, len(rows)


def item_rows(spark: SparkSession, item_ids: np.ndarray, enc: np.ndarray, out: np.ndarray) -> DataFrame:
    """``(item_idx, vae_enc, vae_dec)`` from the trained matrices (the one driver-to-executor
    transfer of catalogue size, at training time only)."""
    pdf = pd.DataFrame({S.ITEM_IDX: item_ids.astype(np.int32), ENC: list(enc), DEC: list(out)})
    return spark.createDataFrame(pdf, ITEMS_SCHEMA)


ITEMS_SCHEMA = T.StructType(
    [
        T.StructField(S.ITEM_IDX, T.IntegerType(), False),
        T.StructField(ENC, T.ArrayType(T.FloatType(), False), False),
        T.StructField(DEC, T.ArrayType(T.FloatType(), False), False),
    ]
)


# --- scoring -------------------------------------------------------------------------------------
def item_vectors(model: VaeModel) -> DataFrame:
    """``(item_idx, vae_vec)``: the output layer's row of each item with its bias."""
    return model.items.select(S.ITEM_IDX, F.col(DEC).alias(VAE_VEC))


def user_vectors(model: VaeModel, history: DataFrame) -> DataFrame:
    """``(user_idx, vae_vec)`` of every user of ``history`` (``user_idx, item_idx``) with at least
    one item the model knows: ``[d, 1]``, ``d`` the decoder's hidden layer at the posterior mean."""
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.ml.stat import Summarizer

    rows = (
        history.select(S.USER_IDX, S.ITEM_IDX)
        .distinct()
        .join(model.items.select(S.ITEM_IDX, array_to_vector(F.col(ENC)).alias("_e")), S.ITEM_IDX)
    )
    summed = rows.groupBy(S.USER_IDX).agg(
        vector_to_array(Summarizer.sum(F.col("_e")), "float32").alias("_s"), F.count(F.lit(1)).alias("_n")
    )
    dense = {k: v.astype(np.float32) for k, v in model.dense.items()}
    latent = int(model.spec["latent"])
    out = T.StructType(
        [T.StructField(S.USER_IDX, T.IntegerType()), T.StructField(VAE_VEC, T.ArrayType(T.FloatType()))]
    )

    def apply(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if pdf.empty:
                continue
            s = np.stack(pdf["_s"].to_numpy()).astype(np.float32)
            n = pdf["_n"].to_numpy(np.float32)[:, None]
            h = np.tanh(s / np.sqrt(n) + dense["enc_b"])
            mu = h @ dense["lat_w"][:latent].T + dense["lat_b"][:latent]
            d = np.tanh(mu @ dense["dec_w"].T + dense["dec_b"])
            vec = np.concatenate([d, np.ones((len(d), 1), np.float32)], axis=1)
            yield pd.DataFrame({S.USER_IDX: pdf[S.USER_IDX].astype(np.int32), VAE_VEC: list(vec)})

    return summed.mapInPandas(apply, out)


def score_users(model: VaeModel, histories: list[list[int]], item_ids: np.ndarray) -> np.ndarray:
    """The logits of ``item_ids`` for each history (lists of item_idx), on the driver: the
    reference the Spark path (:func:`user_vectors` . :func:`item_vectors`) is tested against.
    ``item_ids`` must be items of the model; returns ``(len(histories), len(item_ids))``."""
    rows = cast(pd.DataFrame, model.items.toPandas()).set_index(S.ITEM_IDX)
    enc = np.stack(rows[ENC].to_numpy())
    dec = np.stack(rows.loc[item_ids, DEC].to_numpy())
    pos = {int(i): p for p, i in enumerate(rows.index)}
    latent = int(model.spec["latent"])
    d = model.dense
    out = np.zeros((len(histories), len(item_ids)), np.float64)
    for r, hist in enumerate(histories):
        x = np.zeros(len(rows), np.float32)
        x[[pos[i] for i in hist if i in pos]] = 1.0
        h = np.tanh(enc.T @ (x / np.linalg.norm(x)) + d["enc_b"])
        mu = d["lat_w"][:latent] @ h + d["lat_b"][:latent]
        dd = np.tanh(d["dec_w"] @ mu + d["dec_b"])
        out[r] = dec[:, :-1] @ dd + dec[:, -1]
    return out


# --- persistence ---------------------------------------------------------------------------------
def save(spark: SparkSession, model: VaeModel, path: str) -> VaeModel:
    """Write the model under ``path``: ``items/`` (Parquet, the item side), ``dense.safetensors``
    (the dense weights) and ``vae.json`` (the spec), the card last. Returns it with ``path``."""
    from safetensors.numpy import save as st_save

    model.items.write.mode("overwrite").parquet(f"{path.rstrip('/')}/{ITEMS_DIR}")
    blob = st_save({k: np.ascontiguousarray(model.dense[k]) for k in DENSE})
    card = json.dumps({"format": "longtail-mult-vae/1", **model.spec}, sort_keys=True).encode()
    write_files(path, [(DENSE_FILE, blob), (CARD_FILE, card)], spark=spark)
    return VaeModel(model.spec, model.dense, model.items, path, model.info)


def load(spark: SparkSession, path: str) -> VaeModel:
    """Read a model :func:`save` wrote; :class:`VaeError` names what is missing."""
    from safetensors.numpy import load as st_load

    card = read_bytes(f"{path.rstrip('/')}/{CARD_FILE}", spark=spark)
    blob = read_bytes(f"{path.rstrip('/')}/{DENSE_FILE}", spark=spark)
    if card is None or blob is None:
        raise VaeError(f"no Mult-VAE at {path!r} ({CARD_FILE} or {DENSE_FILE} missing)")
    spec = json.loads(card)
    spec.pop("format", None)
    dense = st_load(blob)
    items = spark.read.schema(ITEMS_SCHEMA).parquet(f"{path.rstrip('/')}/{ITEMS_DIR}")
    return VaeModel(spec, dense, items, path)
