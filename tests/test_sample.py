"""generate-sample: deterministic, long-tailed, topical (no Spark for the frames)."""

import numpy as np

from longtail.core.config import load_config
from longtail.stages.generate_sample import generate_frames


def _cfg(**kw):
    return load_config(overrides=[f"sample.{k}={v}" for k, v in kw.items()])


def test_deterministic_and_sized():
    cfg = _cfg(n_items=200, n_users=50, seed=3)
    items1, inter1 = generate_frames(cfg)
    items2, inter2 = generate_frames(cfg)
    assert items1.equals(items2) and inter1.equals(inter2)
    assert len(items1) == 200 + 2  # two deliberately bad item rows
    assert items1["item_id"].iloc[:200].is_unique
    other, _ = generate_frames(_cfg(n_items=200, n_users=50, seed=4))
    assert not other["description"].equals(items1["description"])


def test_long_tail_and_multi_sentence():
    items, inter = generate_frames(_cfg(n_items=600, n_users=300))
    good = inter[inter["item_id"].str.match(r"^i\d{6}$") & inter["timestamp"].str.isdigit()]
    counts = good["item_id"].value_counts().reindex(items["item_id"].iloc[:600], fill_value=0).to_numpy()
    top = np.sort(counts)[::-1]
    head_share = top[: len(top) // 5].sum() / top.sum()
    assert head_share > 0.5  # the top 20% of items hold most interactions
    assert (counts == 0).sum() > 0  # some items are never seen: cold items exist
    n_sentences = items["description"].iloc[:600].str.count(r"\.")
    assert n_sentences.min() >= 2
    ts = good["timestamp"].astype(int)
    assert (ts.max() - ts.min()) > 6 * 30 * 86400  # spread over months


def test_users_stay_on_their_topics():
    items, inter = generate_frames(_cfg(n_items=600, n_users=100))
    topic = dict(zip(items["item_id"], items["category"].fillna("").str.split("|").str[0], strict=True))
    per_user = inter.assign(topic=inter["item_id"].map(topic)).groupby("user_id")["topic"]
    # Each user draws 90% from 1-3 preferred topics among 12: the top 3 topics hold most of a user's items.
    top3_share = per_user.apply(lambda t: t.value_counts().iloc[:3].sum() / len(t)).mean()
    assert top3_share > 0.8


def _good(inter):
    return inter[inter["item_id"].str.match(r"^i\d{6}$") & inter["timestamp"].str.isdigit()]


def test_dense_preset_is_the_default_and_unchanged():
    items, inter = generate_frames(_cfg(n_items=200, n_users=50, seed=3))
    items_d, inter_d = generate_frames(_cfg(n_items=200, n_users=50, seed=3, preset="dense"))
    assert items.equals(items_d) and inter.equals(inter_d)


def test_sparse_preset_many_light_users_over_days_most_items_never_bought():
    import time

    cfg = _cfg(preset="sparse", n_items=2000, n_users=20000, sparse_days=3, seed=5)
    t0 = time.perf_counter()
    items, inter = generate_frames(cfg)
    assert time.perf_counter() - t0 < 30  # seconds, not minutes (about 2 s on a 2-core VM)
    again = generate_frames(cfg)
    assert items.equals(again[0]) and inter.equals(again[1])  # deterministic
    good = _good(inter)
    per_user = good.groupby("user_id").size()
    assert per_user.min() >= 1 and per_user.max() <= 3
    assert good["user_id"].nunique() > 19000  # nearly every user has an interaction
    ts = good["timestamp"].astype(int)
    assert ts.max() - ts.min() <= 3 * 86400
    bought = good["item_id"].nunique()
    assert bought <= 0.25 * 2000 + 1 and bought / 2000 < 0.3  # most of the catalogue never sells
    # descriptions carry the topic: a user's items share their main topic far more than chance (1/12)
    topic = dict(zip(items["item_id"], items["category"].fillna("").str.split("|").str[0], strict=True))
    multi = good.assign(topic=good["item_id"].map(topic)).groupby("user_id")["topic"]
    same = multi.agg(lambda t: t.value_counts().iloc[0] / len(t))[per_user > 1]
    assert same.mean() > 0.8
    space = items[items["category"].fillna("").str.startswith("space|")]["description"]
    assert space.str.contains("astronaut|starship|colony|nebula|android|orbit station").all()
