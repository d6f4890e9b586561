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
