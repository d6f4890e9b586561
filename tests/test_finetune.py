"""`finetune`: pair building, the loss, the adapter round-trip, the model id switch, the no-leak rule."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
from pathlib import Path

import numpy as np
import pytest
import synthetic
import torch
from helpers import make_tiny_bert
from pyspark.sql import functions as F

from longtail.core import schema as S
from longtail.core.config import FinetuneConfig
from longtail.core.errors import MissingInputError
from longtail.core.text import encoder_text
from longtail.lake import Lake
from longtail.ml import finetune as FT
from longtail.ml.encoder import TextEncoder, inspect_model, pool
from longtail.ml.model import encoder_settings, finetuned_pointer
from longtail.stages import encode, evaluate, finetune

T0 = dt.datetime(2024, 1, 1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny")))


def _items(spark, ids):
    return spark.createDataFrame(synthetic.item_rows(ids), S.ITEMS_SCHEMA)


def _events(spark, rows):
    return spark.createDataFrame(
        [(u, i, T0 + dt.timedelta(days=d), 1.0) for u, i, d in rows], S.INTERACTIONS_SCHEMA
    )


@pytest.mark.spark
def test_pairs_are_distinct_items_within_the_window_counted_per_user(spark):
    events = _events(
        spark,
        [
            # u1: a b c d in time order (b twice: its first interaction places it)
            ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "b", 4), ("u1", "d", 5),
            # u2: d then c (the same unordered pair as u1's c, d), and x: not in the catalogue
            ("u2", "d", 1), ("u2", "x", 2), ("u2", "c", 3),
            ("u3", "a", 1),  # one item: no pair
        ],
    )  # fmt: skip
    got = FT.co_occurrence_pairs(events, _items(spark, "abcd"), FinetuneConfig(window=2, max_pairs=100))
    assert sorted(got.pairs) == [("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "d")]
    assert got.candidates == 5 and got.users == 2
    assert got.stats["pairs_seen_by_more_than_one_user"] == 1  # (c, d): u1 and u2
    assert got.texts == {i: encoder_text(i.upper(), f"text of {i}") for i in "abcd"}


@pytest.mark.spark
def test_the_pair_sample_is_bounded_seeded_and_damps_head_pairs(spark):
    # one head pair (h1, h2) made by 40 users; 40 tail pairs made by one user each
    rows = [(f"h{u}", "h1", 1) for u in range(40)] + [(f"h{u}", "h2", 2) for u in range(40)]
    rows += [(f"t{u}", f"p{u}", 1) for u in range(40)] + [(f"t{u}", f"q{u}", 2) for u in range(40)]
    events = _events(spark, rows)
    ids = ["h1", "h2", *(f"p{u}" for u in range(40)), *(f"q{u}" for u in range(40))]
    items = _items(spark, ids)

    def head_share(damping: float) -> float:
        hits = 0
        for seed in range(10):
            cfg = FinetuneConfig(max_pairs=5, head_damping=damping, seed=seed)
            got = FT.co_occurrence_pairs(events, items, cfg)
            assert len(got.pairs) == 5
            hits += ("h1", "h2") in got.pairs
        return hits / 10

    # by count the head pair (weight 40 against 1) is nearly always drawn; damped (40 / 40 = 1) it
    # is one pair among 41 of equal weight (5 draws: ~12%)
    assert head_share(0.0) >= 0.9
    assert head_share(2.0) <= 0.4
    a = FT.co_occurrence_pairs(events, items, FinetuneConfig(max_pairs=5, seed=3)).pairs
    assert a == FT.co_occurrence_pairs(events, items, FinetuneConfig(max_pairs=5, seed=3)).pairs
    # the same rows laid out otherwise (a rebuilt lake) draw the same sample
    for layout in (events.repartition(7, "item_id"), events.coalesce(1), events.orderBy(F.desc("user_id"))):
        assert FT.co_occurrence_pairs(layout, items, FinetuneConfig(max_pairs=5, seed=3)).pairs == a
    before = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        for parts in ("1", "5"):  # another cluster's shuffle width: rows meet in other partitions
            spark.conf.set("spark.sql.shuffle.partitions", parts)
            assert FT.co_occurrence_pairs(events, items, FinetuneConfig(max_pairs=5, seed=3)).pairs == a
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
    assert FT.co_occurrence_pairs(events, items, FinetuneConfig(max_pairs=5, seed=4)).pairs != a


def test_batches_hold_each_pair_once_and_no_item_twice():
    rng = random.Random(0)
    pairs = [(f"i{rng.randrange(30)}", f"j{rng.randrange(30)}") for _ in range(200)]
    pairs = [p for p in dict.fromkeys(pairs)]
    out = FT.batches(pairs, 8, random.Random(1))
    assert sorted(p for b in out for p in b) == sorted(pairs)
    for b in out:
        assert len(b) <= 8
        items = [x for p in b for x in p]
        assert len(items) == len(set(items))


def test_ranking_loss_on_a_hand_checked_case():
    # two pairs whose vectors are orthonormal: logits are scale * I, so each row's softmax gives
    # its own column e^s / (e^s + 1) and the loss (both ways alike) is log(1 + e^-s)
    left = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # lengths do not matter: cosine
    right = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    assert float(FT.ranking_loss(left, right, 5.0)) == pytest.approx(math.log(1 + math.exp(-5.0)), rel=1e-6)
    # swapped partners: each row's own column has cosine 0 against the other's 1
    got = float(FT.ranking_loss(left, right.flip(0), 5.0))
    assert got == pytest.approx(math.log(1 + math.exp(5.0)), rel=1e-6)


def _pairs(n_items: int = 12) -> FT.Pairs:
    # distinct two-word texts of the tiny BERT's vocabulary; six disjoint pairs (2k, 2k + 1)
    words = [
        "heist",
        "cowboy",
        "space",
        "ranger",
        "toy",
        "city",
        "night",
        "love",
        "war",
        "man",
        "woman",
        "dark",
    ]
    ids = [f"i{k:02d}" for k in range(n_items)]
    texts = {i: f"{words[k]} {words[(k * 5 + 1) % len(words)]}" for k, i in enumerate(ids)}
    pairs = [(ids[k], ids[k + 1]) for k in range(0, n_items, 2)]
    return FT.Pairs(pairs=pairs, texts=texts, candidates=len(pairs), users=3)


@pytest.mark.parametrize("method", ["lora", "top_layers"])
def test_the_saved_folder_loads_as_an_encoder_with_its_own_id_and_the_adapter_round_trips(tmp_path, method):
    base = make_tiny_bert(tmp_path / "base", pooling="mean")
    before = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
    ft = FinetuneConfig(method=method, batch_size=4, cpu_max_steps=6, learning_rate=0.01, device="cpu")
    model, tok, info = FT.train(base, _pairs(), ft, pooling="mean")
    assert info["steps"] == 2  # ceil(6 pairs / 4) * 1 epoch, under cpu_max_steps
    out = FT.save(model, tok, base, tmp_path / "ft", {"base_model": "tiny"})

    assert {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()} == before  # untouched
    assert (out / "1_Pooling" / "config.json").is_file() and (out / FT.CARD).is_file()
    assert inspect_model(str(out)).model_id != inspect_model(str(base)).model_id
    assert inspect_model(str(out)).pooling == "mean"
    texts = ["war story love", "space city", ""]
    tuned = TextEncoder(str(out), device="cpu", cpu_linear="aten").encode(texts)
    frozen = TextEncoder(str(base), device="cpu", cpu_linear="aten").encode(texts)
    assert not np.allclose(tuned, frozen, atol=1e-4)  # training changed the vectors

    if method == "lora":  # the adapter alone, applied to the base, gives the merged model's vectors
        from peft import PeftModel
        from transformers import AutoModel, AutoTokenizer

        net = PeftModel.from_pretrained(
            AutoModel.from_pretrained(str(base)), str(out / FT.ADAPTER_DIR)
        ).eval()
        t = AutoTokenizer.from_pretrained(str(base))(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            v = pool(net(**t).last_hidden_state, t["attention_mask"], "mean")
        v = torch.nn.functional.normalize(v, dim=1).numpy()
        np.testing.assert_allclose(v, tuned, atol=1e-5)
    else:
        assert not (out / FT.ADAPTER_DIR).exists()


@pytest.mark.parametrize("method", ["lora", "top_layers"])
def test_merge_weight_saves_the_base_plus_that_share_of_the_trained_update(tmp_path, method):
    import copy

    from safetensors.torch import load_file

    base = make_tiny_bert(tmp_path / "base", pooling="mean")
    ft = FinetuneConfig(method=method, batch_size=4, cpu_max_steps=6, learning_rate=0.05, device="cpu")
    model, tok, _ = FT.train(base, _pairs(), ft, pooling="mean")
    full = FT.save(copy.deepcopy(model), tok, base, tmp_path / "w1", {})
    part = FT.save(model, tok, base, tmp_path / "w03", {}, merge_weight=0.3)

    b0, w1, w03 = (load_file(str(d / "model.safetensors")) for d in (base, full, part))
    moved = [n for n in b0 if b0[n].is_floating_point() and not torch.equal(b0[n], w1[n])]
    assert len(moved) > 0 and w03.keys() == w1.keys()
    for n in w1:  # every weight, moved or not, at base + 0.3 x (trained - base)
        want = b0[n] + 0.3 * (w1[n] - b0[n]) if b0[n].is_floating_point() else b0[n]
        torch.testing.assert_close(w03[n], want, atol=1e-6, rtol=1e-5)
    ids = {inspect_model(str(d)).model_id for d in (base, full, part)}
    assert len(ids) == 3  # each saved folder is its own model
    if method == "lora":  # the adapter folder keeps the trained, unscaled update
        assert (full / FT.ADAPTER_DIR / "adapter_model.safetensors").read_bytes() == (
            part / FT.ADAPTER_DIR / "adapter_model.safetensors"
        ).read_bytes()


@pytest.mark.parametrize("method", ["lora", "top_layers"])
def test_a_soup_saves_the_base_plus_merge_weight_times_the_mean_update_of_its_trainings(tmp_path, method):
    import copy

    from safetensors.torch import load_file

    base = make_tiny_bert(tmp_path / "base", pooling="mean")
    trained = []
    for seed in (3, 4):
        ft = FinetuneConfig(
            method=method, batch_size=4, cpu_max_steps=6, learning_rate=0.05, device="cpu", seed=seed
        )
        model, tok, _ = FT.train(base, _pairs(), ft, pooling="mean")
        trained.append(model)
    alone = [FT.save(copy.deepcopy(m), tok, base, tmp_path / f"s{n}", {}) for n, m in enumerate(trained)]
    soup = FT.save(copy.deepcopy(trained), tok, base, tmp_path / "soup", {}, merge_weight=0.5, seeds=[3, 4])

    b0, w3, w4, got = (load_file(str(d / "model.safetensors")) for d in (base, *alone, soup))
    assert any(not torch.equal(w3[n], w4[n]) for n in w3 if w3[n].is_floating_point())  # two draws
    for n in got:  # base + 0.5 x mean(tuned_k - base), integer buffers the base's
        want = b0[n] + 0.5 * ((w3[n] + w4[n]) / 2 - b0[n]) if b0[n].is_floating_point() else b0[n]
        torch.testing.assert_close(got[n], want, atol=1e-6, rtol=1e-5)
    assert inspect_model(str(soup)).model_id not in {inspect_model(str(d)).model_id for d in alone}
    adapters = sorted(p.name for p in soup.iterdir() if p.name.startswith(FT.ADAPTER_DIR))
    assert adapters == (["adapter-3", "adapter-4"] if method == "lora" else [])
    with pytest.raises(ValueError, match="2 models need as many seeds"):
        FT.save(trained, tok, base, tmp_path / "no-seeds", {})


def test_merge_weight_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="merge_weight"):
        FinetuneConfig(merge_weight=0)
    with pytest.raises(ValueError, match="merge_weight"):
        FinetuneConfig(merge_weight=1.5)


def test_training_lowers_the_loss_on_a_learnable_pairing(tmp_path):
    base = make_tiny_bert(tmp_path / "base")
    ft = FinetuneConfig(
        batch_size=6, epochs=60, max_steps=0, cpu_max_steps=60, learning_rate=0.01, device="cpu"
    )
    _, _, info = FT.train(base, _pairs(), ft, pooling="mean")
    assert info["steps"] == 60
    assert info["loss_last"] < 0.8 * info["loss_first"]


def test_the_step_budget_is_the_same_on_every_device_and_the_cpu_cap_only_lowers_it():
    # 20,000 pairs in batches of 32: 625 steps an epoch
    assert FT.planned_steps(20000, FinetuneConfig(), "cuda") == 10  # max_steps, not the whole epoch
    assert FT.planned_steps(20000, FinetuneConfig(), "cpu") == 10
    assert FT.planned_steps(20000, FinetuneConfig(max_steps=0), "cuda") == 625
    assert FT.planned_steps(20000, FinetuneConfig(max_steps=0, epochs=2.5), "cuda") == 1563
    assert FT.planned_steps(20000, FinetuneConfig(max_steps=0), "cpu") == 150  # cpu_max_steps
    assert FT.planned_steps(20000, FinetuneConfig(max_steps=400, cpu_max_steps=50), "cpu") == 50
    assert FT.planned_steps(100, FinetuneConfig(max_steps=10), "cpu") == 4  # one epoch is shorter
    assert FT.planned_steps(1, FinetuneConfig(epochs=0.01), "cpu") == 1
    with pytest.raises(ValueError, match=r"finetune\.max_steps"):
        FinetuneConfig(max_steps=-1)


def test_too_few_pairs_is_a_clear_error(tmp_path):
    base = make_tiny_bert(tmp_path / "base")
    one = FT.Pairs(pairs=[("a", "b")], texts={"a": "war", "b": "love"}, candidates=1, users=1)
    with pytest.raises(FT.FinetuneError, match="at least 2"):
        FT.train(base, one, FinetuneConfig(device="cpu"), pooling="mean")


@pytest.mark.spark
def test_finetune_with_a_soup_trains_one_model_per_seed_and_its_card_says_so(spark, tmp_path, model_dir):
    root = str(tmp_path / "lake")
    lake, _ = synthetic.build_lake(spark, root, model_dir)
    events, items = lake.read(S.INTERACTIONS), lake.read(S.ITEMS)
    cfg = synthetic.config(root, model_dir, "finetune.cpu_max_steps=3", "finetune.batch_size=8")
    soup = dataclasses.replace(cfg.finetune, soup=3, seed=11, max_pairs=12)
    card = FT.finetune(events, items, cfg.encoder, soup, tmp_path / "soup")
    assert [t["seed"] for t in card["soup"]] == [11, 12, 13]
    assert card["steps"] == 6 == sum(t["steps"] for t in card["soup"])  # 3 x ceil(12 pairs / 8)
    assert card["pairs"] == sum(t["pairs"] for t in card["soup"])
    # each training drew its own pair sample (the sample is keyed by the seed)
    samples = [FT.co_occurrence_pairs(events, items, dataclasses.replace(soup, seed=s)) for s in (11, 12)]
    assert samples[0].candidates > 12 and set(samples[0].pairs) != set(samples[1].pairs)
    # counted once for the soup, each seed draws what it draws alone
    assert FT.co_occurrence_samples(events, items, soup, [11, 12]) == samples
    kept = sorted(p.name for p in (tmp_path / "soup").iterdir() if p.name.startswith(FT.ADAPTER_DIR))
    assert kept == ["adapter-11", "adapter-12", "adapter-13"]
    with pytest.raises(ValueError, match=r"finetune\.soup"):
        FinetuneConfig(soup=0)


@pytest.mark.spark
def test_finetune_switches_the_encoder_once_and_never_switches_back_at_no_cost(spark, tmp_path, model_dir):
    root = str(tmp_path / "lake")
    lake, base_id = synthetic.build_lake(spark, root, model_dir)
    n_items = len(synthetic.item_ids())
    cfg = synthetic.config(
        root, model_dir, "finetune.cpu_max_steps=4", "finetune.batch_size=8", "finetune.soup=1"
    )
    assert finetuned_pointer(cfg, spark) is None
    assert encoder_settings(cfg, spark) == cfg.encoder
    with pytest.raises(MissingInputError, match="run finetune first"):
        encoder_settings(synthetic.config(root, model_dir, "encoder.use_finetuned=always"), spark)

    summary = finetune.run(spark, cfg, lake=lake, run_id="ft-1")
    assert summary["base_model_id"] == base_id and summary["model_id"] != base_id
    assert summary["pairs"] > 10 and summary["steps"] == 4
    assert Path(summary["path"]).parent == Path(root) / "models" / "encoder"
    pointer = finetuned_pointer(cfg, spark)
    assert pointer["model_id"] == summary["model_id"] and pointer["run_id"] == "ft-1"

    first = encode.run(spark, cfg, lake=Lake(spark, root), run_id="e-1")
    assert first["model_id"] == summary["model_id"] and first["encoded"] == n_items  # every item once
    assert encode.run(spark, cfg, lake=Lake(spark, root), run_id="e-2")["encoded"] == 0
    never = synthetic.config(root, model_dir, "encoder.use_finetuned=never")
    back = encode.run(spark, never, lake=Lake(spark, root), run_id="e-3")
    assert back["model_id"] == base_id and back["encoded"] == 0 and back["version"] is None
    ids = {r[0] for r in Lake(spark, root).read(S.ITEM_EMBEDDINGS).select(S.MODEL_ID).distinct().collect()}
    assert ids == {base_id, summary["model_id"]}


@pytest.mark.spark
def test_evaluate_fine_tunes_on_the_training_part_only_and_shows_both_encoders(
    spark, tmp_path, model_dir, monkeypatch
):
    root = str(tmp_path / "lake")
    lake, _ = synthetic.build_lake(spark, root, model_dir)
    extra = ["finetune.cpu_max_steps=3", "finetune.batch_size=8", "recommend.fusion=blend"]
    cfg = synthetic.config(
        root, model_dir, *extra, "evaluate.k=[5]", "evaluate.variants=[cf, content, fused]", "evaluate.bootstrap=0",
        "evaluate.report=false",
    )  # fmt: skip
    finetune.run(spark, cfg, lake=lake, run_id="ft-1")  # production: all interactions
    seen = []
    original = FT.co_occurrence_samples

    def spy(interactions, items, ft, seeds):
        seen.append(interactions)
        return original(interactions, items, ft, seeds)

    monkeypatch.setattr(FT, "co_occurrence_samples", spy)
    summary = evaluate.run(spark, cfg, lake=Lake(spark, root), run_id="ev-1")
    assert cfg.finetune.soup > 1 and len(seen) == 1  # evaluate fine-tuned once, on what it passed
    train_part, test_part = evaluate.split(lake.read(S.INTERACTIONS), cfg)
    keys = [S.USER_ID, S.ITEM_ID, S.TS]
    used = seen[0].select(*keys)
    assert used.join(test_part.select(*keys), keys).count() == 0  # no test interaction
    assert used.exceptAll(train_part.select(*keys)).count() == 0
    assert used.count() == train_part.count()
    variants = {r[0] for r in Lake(spark, root).read(S.METRICS).select(S.VARIANT).distinct().collect()}
    assert variants == {"cf", "content", "fused", "content_ft", "fused_ft"}
    assert summary["finetuned"]["model_id"] != summary["finetuned"]["base_model_id"]
