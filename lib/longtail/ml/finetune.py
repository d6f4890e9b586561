"""Contrastive fine-tuning of the text encoder on items that users consume together.

The frozen encoder places items by what their texts say; a recommender needs them placed by who
consumes them. Fine-tuning moves the text space towards co-consumption, and since an item's vector
still comes from its text alone, the gain reaches tail and new items, whose text is all there is.

1. **Pairs** (:func:`co_occurrence_pairs`, :func:`co_occurrence_samples` for a soup; on the executors): per user, the interactions ordered by
   time; two distinct items at most ``window`` positions apart are a pair. Each pair counts the
   users that made it; pairs are sampled without replacement with weight
   ``n_users / (n_i * n_j) ** (head_damping / 2)`` (``n``: the items' user counts), so that pairs of
   two head items do not fill the sample. At most ``max_pairs`` come to the driver.
2. **Loss**: the multiple-negatives ranking loss, both ways: in a batch of B pairs each left text
   must pick its right text among the B right texts (and back), cosine similarities times
   ``scale`` through a softmax. Batches hold no item twice (another pair's copy of an item would
   be a false negative).
3. **Parameters**: LoRA adapters (``peft``) on the attention and feed-forward projections, or the
   last ``top_layers`` transformer layers. The base model's files are never written.
4. **Output** (:func:`save`): a model folder that :class:`~longtail.ml.encoder.TextEncoder` loads like
   any other: merged safetensors weights, the tokenizer, the base's sentence-transformers pooling
   files, the LoRA adapter on its own (``adapter/``), and ``finetune.json`` (the card: base model,
   method, pairs, steps, losses, the data it saw). Its weights differ, so its ``model_id`` does.
   With ``merge_weight`` below 1 the saved weights are ``base + merge_weight x (tuned - base)``
   (:func:`interpolate`): a longer run's direction, a shorter move. With ``soup`` > 1, ``soup``
   trainings (seeds ``seed``, ``seed + 1``, ...) are averaged in weight space (:func:`average`, a
   uniform model soup) and their adapters kept as ``adapter-<seed>/``.

Training is one process (the driver; its GPU when it has one). The pairs come from Spark.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import EncoderConfig, FinetuneConfig
from longtail.core.text import encoder_text
from longtail.ml.encoder import inspect_model, pick_device, pool

log = logging.getLogger(__name__)

CARD = "finetune.json"
ADAPTER_DIR = "adapter"
# BERT-family module names of the projections LoRA adapts (attention q/k/v and both dense layers
# of the attention output and the feed-forward block).
LORA_TARGETS = ("query", "key", "value", "dense")


class FinetuneError(RuntimeError):
    """Fine-tuning cannot run on this input (too few pairs, a missing package)."""


@dataclass
class Pairs:
    """The sampled training pairs and what they were drawn from.

    Attributes:
        pairs: ``(left item, right item)`` ids, at most ``max_pairs``.
        texts: item id -> its encoder text, for every item in ``pairs``.
        candidates: distinct pairs before sampling.
        users: users with at least two distinct items.
    """

    pairs: list[tuple[str, str]]
    texts: dict[str, str]
    candidates: int
    users: int
    stats: dict[str, Any] = field(default_factory=dict)


def _uniform(seed: int, *cols: str) -> Column:
    """A uniform number in (0, 1) per row, from a hash of ``cols`` and ``seed``: unlike
    ``rand(seed)``, whose stream is per partition, the same rows draw the same numbers however the
    input is partitioned (a lake rebuilt with another file layout samples the same pairs)."""
    bits = F.xxhash64(*[F.col(c) for c in cols], F.lit(seed)).bitwiseAND(F.lit((1 << 52) - 1))
    return (bits.cast("double") + F.lit(0.5)) / F.lit(float(1 << 52))


def co_occurrence_pairs(interactions: DataFrame, items: DataFrame, ft: FinetuneConfig) -> Pairs:
    """Step 1 of the module doc: the weighted sample of co-consumed item pairs, with their texts.

    ``interactions`` needs user_id, item_id, ts; ``items`` item_id, title, description. Only
    items of ``items`` take part (an interaction with an unknown item is no evidence about text).
    """
    return co_occurrence_samples(interactions, items, ft, [ft.seed])[0]


def co_occurrence_samples(
    interactions: DataFrame, items: DataFrame, ft: FinetuneConfig, seeds: Sequence[int]
) -> list[Pairs]:
    """:func:`co_occurrence_pairs` for each of ``seeds`` (a soup's trainings): the pairs are built,
    counted and weighted once; only the sample differs, each seed drawing the one
    :func:`co_occurrence_pairs` draws with it."""
    listed = items.select(S.ITEM_ID).distinct()
    first = (
        interactions.join(listed, S.ITEM_ID, "inner")
        .groupBy(S.USER_ID, S.ITEM_ID)
        .agg(F.min(S.TS).alias(S.TS))  # one position per (user, item): its first interaction
    )
    seq = first.withColumn(
        "_pos", F.row_number().over(Window.partitionBy(S.USER_ID).orderBy(S.TS, S.ITEM_ID))
    )
    a, b = seq.alias("a"), seq.alias("b")
    joined = a.join(
        b,
        (F.col("a." + S.USER_ID) == F.col("b." + S.USER_ID))
        & (F.col("b._pos") > F.col("a._pos"))
        & (F.col("b._pos") <= F.col("a._pos") + ft.window),
    )
    left, right = F.col("a." + S.ITEM_ID), F.col("b." + S.ITEM_ID)
    pairs = joined.select(
        F.col("a." + S.USER_ID).alias(S.USER_ID),
        F.least(left, right).alias("i"),
        F.greatest(left, right).alias("j"),
    )
    counted = pairs.groupBy("i", "j").agg(F.countDistinct(S.USER_ID).alias("n_ij"))
    users_per_item = first.groupBy(S.ITEM_ID).agg(F.count(F.lit(1)).alias("n"))
    weighted = (
        counted.join(users_per_item.select(F.col(S.ITEM_ID).alias("i"), F.col("n").alias("n_i")), "i")
        .join(users_per_item.select(F.col(S.ITEM_ID).alias("j"), F.col("n").alias("n_j")), "j")
        .withColumn("_w", F.col("n_ij") / F.pow(F.col("n_i") * F.col("n_j"), F.lit(ft.head_damping / 2.0)))
        .persist()
    )
    try:
        n_candidates = weighted.count()
        drawn = [  # weighted sampling without replacement (Efraimidis-Spirakis): the smallest -log(u) / w
            weighted.withColumn("_key", -F.log(_uniform(seed, "i", "j")) / F.col("_w"))
            .orderBy("_key", "i", "j")
            .limit(ft.max_pairs)
            .select("i", "j", "n_ij")
            .collect()
            for seed in seeds
        ]
        n_users = seq.where(F.col("_pos") == 2).count()
    finally:
        weighted.unpersist()
    ids = sorted({x for rows in drawn for r in rows for x in (r["i"], r["j"])})
    texts = {
        r[S.ITEM_ID]: encoder_text(r[S.TITLE], r[S.DESCRIPTION])
        for r in items.where(F.col(S.ITEM_ID).isin(ids)).select(S.ITEM_ID, S.TITLE, S.DESCRIPTION).collect()
    }
    samples = []
    for rows in drawn:
        chosen = [(r["i"], r["j"]) for r in rows]
        samples.append(
            Pairs(
                pairs=chosen,
                texts={x: texts[x] for pair in chosen for x in pair},
                candidates=n_candidates,
                users=n_users,
                stats={"pairs_seen_by_more_than_one_user": sum(1 for r in rows if r["n_ij"] > 1)},
            )
        )
    return samples


def batches(pairs: Sequence[tuple[str, str]], size: int, rng: random.Random) -> list[list[tuple[str, str]]]:
    """Shuffle ``pairs`` and cut them into batches of ``size`` in which no item appears twice; a pair
    that would repeat an item waits for a later batch. The last batches may be shorter."""
    pending = list(pairs)
    rng.shuffle(pending)
    out: list[list[tuple[str, str]]] = []
    while pending:
        batch: list[tuple[str, str]] = []
        used: set[str] = set()
        rest = []
        for pair in pending:
            if len(batch) < size and pair[0] not in used and pair[1] not in used:
                batch.append(pair)
                used.update(pair)
            else:
                rest.append(pair)
        out.append(batch)
        pending = rest
    return out


def ranking_loss(left: Any, right: Any, scale: float) -> Any:
    """The symmetric multiple-negatives ranking loss of ``[B, d]`` left and right vectors: each row
    of ``left`` must pick its own row of ``right`` among all B (and back); cosine similarity x scale."""
    import torch

    a = torch.nn.functional.normalize(left, dim=1)
    b = torch.nn.functional.normalize(right, dim=1)
    logits = scale * (a @ b.T)
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (
        torch.nn.functional.cross_entropy(logits, target)
        + torch.nn.functional.cross_entropy(logits.T, target)
    )


def _trainable(net: Any, ft: FinetuneConfig) -> Any:
    """``net`` with only the parameters of ``ft.method`` trainable (LoRA: wrapped by peft)."""
    if ft.method == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise FinetuneError(
                "finetune.method=lora needs the peft package (pip install peft, or the 'finetune' extra); "
                "or use finetune.method=top_layers"
            ) from exc
        names = {n.rsplit(".", 1)[-1] for n, _ in net.named_modules()}
        targets = [t for t in LORA_TARGETS if t in names]
        if not targets:
            raise FinetuneError(
                f"no module named {list(LORA_TARGETS)} in the model: use finetune.method=top_layers"
            )
        lora = LoraConfig(r=ft.lora_rank, lora_alpha=ft.lora_alpha, lora_dropout=0.1, target_modules=targets)
        return get_peft_model(net, lora)
    layers = getattr(getattr(net, "encoder", None), "layer", None)
    if layers is None:
        raise FinetuneError("finetune.method=top_layers needs a BERT-style model (model.encoder.layer)")
    for p in net.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[-ft.top_layers :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    return net


def planned_steps(n_pairs: int, ft: FinetuneConfig, device_type: str) -> int:
    """Training steps for ``n_pairs`` pairs: ``epochs`` passes of ``batch_size`` pairs, at most
    ``max_steps`` (0: no cap) on any device and at most ``cpu_max_steps`` on ``"cpu"``; at least 1."""
    steps = math.ceil(ft.epochs * math.ceil(n_pairs / ft.batch_size))
    if ft.max_steps:
        steps = min(steps, ft.max_steps)
    if device_type == "cpu":
        steps = min(steps, ft.cpu_max_steps)
    return max(1, steps)


def train(
    base_dir: Path, data: Pairs, ft: FinetuneConfig, *, pooling: str
) -> tuple[Any, Any, dict[str, Any]]:
    """Steps 2-3 of the module doc. Returns ``(model, tokenizer, info)``; the model is the peft
    wrapper for LoRA (unmerged) or the plain model for ``top_layers``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if len(data.pairs) < 2:
        raise FinetuneError(
            f"finetune: {len(data.pairs)} co-consumed item pair(s) in the interactions; at least 2 are "
            "needed (users with two or more items)"
        )
    device = torch.device(pick_device(ft.device))
    torch.manual_seed(ft.seed)
    rng = random.Random(ft.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), use_fast=True, trust_remote_code=False)
    net = AutoModel.from_pretrained(str(base_dir), use_safetensors=True, trust_remote_code=False)
    model = _trainable(net, ft).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    per_epoch = math.ceil(len(data.pairs) / ft.batch_size)
    steps = planned_steps(len(data.pairs), ft, device.type)
    optimizer = torch.optim.AdamW(params, lr=ft.learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )

    def embed(texts: list[str]) -> Any:
        tok = tokenizer(texts, padding=True, truncation=True, max_length=ft.max_length, return_tensors="pt")
        tok = {
            k: v.to(device) for k, v in tok.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        hidden = model(**tok).last_hidden_state
        return pool(hidden, tok["attention_mask"], pooling)

    losses: list[float] = []
    t0 = time.perf_counter()
    queue: list[list[tuple[str, str]]] = []
    for step in range(steps):
        if not queue:
            queue = [b for b in batches(data.pairs, ft.batch_size, rng) if len(b) >= 2]
        batch = queue.pop(0)
        left = embed([data.texts[i] for i, _ in batch])
        right = embed([data.texts[j] for _, j in batch])
        loss = ranking_loss(left, right, ft.scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step == 0 or (step + 1) % 25 == 0 or step + 1 == steps:
            log.info("finetune: step %d/%d, loss %.4f", step + 1, steps, losses[-1])
    model.eval()
    tail = max(1, min(10, len(losses) // 5))
    info = {
        "device": str(device),
        "steps": steps,
        "steps_per_epoch": per_epoch,
        "trainable_parameters": n_trainable,
        "loss_first": round(sum(losses[:tail]) / tail, 4),
        "loss_last": round(sum(losses[-tail:]) / tail, 4),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    return model, tokenizer, info


def _copy_pooling_files(base_dir: Path, out: Path) -> None:
    """The base's sentence-transformers files (modules.json and its module folders), so that the
    fine-tuned folder resolves the same pooling; never its weights."""
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out / name)
    modules = base_dir / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            sub = str(module.get("path") or "")
            if sub and (base_dir / sub).is_dir():
                shutil.copytree(base_dir / sub, out / sub, dirs_exist_ok=True)


def average(models: Sequence[Any]) -> Any:
    """The first of ``models`` with its floating-point weights replaced, in place, by the mean of all
    ``models``' (plain models of one architecture; a uniform model soup, Wortsman et al., ICML
    2022). For models fine-tuned from one base this is ``base + mean(tuned_k - base)``."""
    first = models[0]
    if len(models) == 1:
        return first
    import torch

    others = [m.state_dict() for m in models[1:]]
    with torch.no_grad():
        for name, tensor in first.state_dict().items():
            if not tensor.is_floating_point():  # integer buffers (ids) are the base's in every model
                continue
            for state in others:
                if name not in state or state[name].shape != tensor.shape:
                    raise FinetuneError(f"finetune: weight {name!r} differs between the averaged models")
                tensor.add_(state[name].to(tensor.device, tensor.dtype))
            tensor.div_(len(models))
    return first


def interpolate(model: Any, base_dir: Path, weight: float) -> Any:
    """``model``'s floating-point weights moved in place to ``base + weight x (model - base)``, the
    base being the model folder ``base_dir`` (weight-space interpolation, Wortsman et al., WiSE-FT,
    CVPR 2022; for merged LoRA weights it scales the adapter's update). ``weight`` 1: unchanged."""
    if weight == 1.0:
        return model
    import torch
    from transformers import AutoModel

    base = AutoModel.from_pretrained(
        str(base_dir), use_safetensors=True, trust_remote_code=False
    ).state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():  # integer buffers (ids) are the base's
                continue
            start = base.get(name)
            if start is None or start.shape != tensor.shape:
                raise FinetuneError(
                    f"finetune: weight {name!r} has no counterpart in the base model {base_dir}"
                )
            start = start.to(tensor.device, tensor.dtype)
            tensor.copy_(start + weight * (tensor - start))
    return model


def save(
    model: Any | Sequence[Any],
    tokenizer: Any,
    base_dir: Path,
    out: Path,
    card: dict[str, Any],
    *,
    merge_weight: float = 1.0,
    seeds: Sequence[int] = (),
) -> Path:
    """Step 4 of the module doc: write the model folder ``out`` (created; must not exist), the
    weights interpolated towards the base's by ``merge_weight`` (:func:`interpolate`; the adapter
    in ``adapter/`` is the trained one, unscaled). ``model`` may be a list of trainings of one base
    (a soup): their weights are averaged first (:func:`average`), each LoRA adapter kept as
    ``adapter-<seed>/`` (``seeds``: one per model)."""
    models: list[Any] = list(model) if isinstance(model, (list, tuple)) else [model]
    if len(models) > 1 and len(seeds) != len(models):
        raise ValueError(f"save: {len(models)} models need as many seeds, got {list(seeds)}")
    out.mkdir(parents=True)
    plain = []
    for n, one in enumerate(models):
        if hasattr(one, "merge_and_unload"):  # LoRA: the adapter on its own, then merged weights
            folder = ADAPTER_DIR if len(models) == 1 else f"{ADAPTER_DIR}-{seeds[n]}"
            one.save_pretrained(str(out / folder), safe_serialization=True)
            one = one.merge_and_unload()
        plain.append(one)
    merged = interpolate(average(plain), base_dir, merge_weight)
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    _copy_pooling_files(base_dir, out)
    (out / CARD).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return out


def finetune(
    interactions: DataFrame,
    items: DataFrame,
    encoder: EncoderConfig,
    ft: FinetuneConfig,
    out: Path,
    *,
    data_version: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Steps 1-4: sample pairs from ``interactions``, train on them, write the model folder ``out``.

    Returns the card (also ``out/finetune.json``).
    """
    t0 = time.perf_counter()
    base = inspect_model(encoder.model, pooling=encoder.pooling, max_length=encoder.max_length)
    seeds = [ft.seed + k for k in range(ft.soup)]
    t1 = time.perf_counter()
    samples = co_occurrence_samples(interactions, items, ft, seeds)
    pair_seconds = time.perf_counter() - t1
    log.info(
        "finetune: %d sample(s) of at most %d pairs drawn from %d (from %d users) in %.1f s",
        len(samples),
        ft.max_pairs,
        samples[0].candidates,
        samples[0].users,
        pair_seconds,
    )
    models, trainings = [], []
    for seed, data in zip(seeds, samples, strict=True):
        one = dataclasses.replace(ft, seed=seed)
        model, tokenizer, info = train(base.path, data, one, pooling=base.pooling)
        models.append(model)
        trainings.append({"seed": seed, "pairs": len(data.pairs), **info})
    first = trainings[0]
    card = {
        "base_model": base.name,
        "base_model_id": base.model_id,
        "method": ft.method,
        "settings": {k: getattr(ft, k) for k in ft.__dataclass_fields__ if k != "enabled"},
        "pair_candidates": data.candidates,
        "users_with_pairs": data.users,
        **data.stats,
        **first,
        # over the soup's trainings: pairs and steps summed, losses averaged, seconds summed
        "pairs": sum(t["pairs"] for t in trainings),
        "steps": sum(t["steps"] for t in trainings),
        "loss_first": round(sum(t["loss_first"] for t in trainings) / len(trainings), 4),
        "loss_last": round(sum(t["loss_last"] for t in trainings) / len(trainings), 4),
        "train_seconds": round(sum(t["train_seconds"] for t in trainings), 1),
        "soup": trainings if len(trainings) > 1 else None,
        "pair_seconds": round(pair_seconds, 1),
        "data_version": data_version or {},
        "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None,
    }
    card.pop("seed")
    save(models, tokenizer, base.path, out, card, merge_weight=ft.merge_weight, seeds=seeds)
    card["seconds"] = round(time.perf_counter() - t0, 1)
    return card
