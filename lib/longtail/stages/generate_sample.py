"""`generate-sample`: a deterministic synthetic catalogue in which text really predicts taste.

Items belong to topics; each description is a few sentences drawn from its topic's vocabulary
(with some shared filler and a secondary-topic sentence now and then), so a text encoder can tell
topics apart. Users prefer one to three topics; item popularity within a topic follows a power
law, so the log has a head and a long tail; user activity is skewed too; timestamps spread over
``sample.months`` months. A handful of deliberately bad rows (empty description, unknown item,
unparseable timestamp, non-positive weight) let the quickstart show the quarantine at work.

``sample.preset: sparse`` draws a different log over the same kind of catalogue: many users
(``sample.n_users``, e.g. 30,000) with 1-3 interactions each within ``sample.sparse_days`` days, all
on the ``sample.sparse_active_share`` of the catalogue that sells (a power law within it); the rest
of the catalogue is never bought, so most items are cold and content is the only evidence for
them. Each user has one topic (90% of their picks), so a description still predicts taste.

The sample is a demo input, bounded by config (``sample.n_items`` x ``sample.n_users``): it is
generated with numpy on the driver and written with Spark as CSV, so it works for any lake URI.
The same seed and sizes always give byte-identical files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from longtail.core.config import Config, SampleConfig

log = logging.getLogger(__name__)

_T0 = 1_640_995_200  # 2022-01-01T00:00:00Z, the start of the sample's time line
_MONTH = 30 * 86_400


@dataclass(frozen=True)
class Topic:
    name: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    verbs: tuple[str, ...]
    settings: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic(
        "space",
        ("astronaut", "starship", "colony", "nebula", "android", "orbit station"),
        ("interstellar", "distant", "alien", "zero-gravity", "galactic"),
        ("drifts toward", "lands on", "signals", "explores", "escapes"),
        (
            "beyond the rings of Saturn",
            "on a frozen moon",
            "aboard a failing space station",
            "across the galaxy",
        ),
    ),
    Topic(
        "crime",
        ("detective", "gangster", "heist crew", "informant", "prosecutor", "smuggler"),
        ("corrupt", "hard-boiled", "ruthless", "undercover", "notorious"),
        ("investigates", "double-crosses", "hunts", "robs", "blackmails"),
        (
            "in the rain-soaked city",
            "inside a mob-run casino",
            "on the docks at night",
            "in a precinct full of secrets",
        ),
    ),
    Topic(
        "romance",
        ("couple", "bride", "former lover", "pen pal", "widower", "matchmaker"),
        ("tender", "unlikely", "bittersweet", "star-crossed", "shy"),
        ("falls for", "writes letters to", "reunites with", "proposes to", "dances with"),
        (
            "in a small seaside town",
            "during one Paris summer",
            "at a wedding in Tuscany",
            "over a long winter",
        ),
    ),
    Topic(
        "cooking",
        ("chef", "baker", "food critic", "restaurant", "family recipe", "street vendor"),
        ("spicy", "rustic", "Michelin-starred", "homemade", "fermented"),
        ("cooks for", "competes against", "reinvents", "serves", "tastes"),
        ("in a busy kitchen", "at a night market", "in grandmother's farmhouse", "on a televised cook-off"),
    ),
    Topic(
        "war",
        ("soldier", "platoon", "general", "resistance fighter", "medic", "fighter pilot"),
        ("battle-scarred", "outnumbered", "heroic", "wounded", "loyal"),
        ("defends", "storms", "retreats from", "sabotages", "liberates"),
        ("behind enemy lines", "on the beaches of Normandy", "in the trenches", "during the long siege"),
    ),
    Topic(
        "sports",
        ("coach", "rookie", "boxer", "underdog team", "sprinter", "goalkeeper"),
        ("determined", "injured", "championship", "scrappy", "veteran"),
        ("trains for", "competes in", "defeats", "comes back to", "leads"),
        (
            "in the final season",
            "at the national championship",
            "in a small-town stadium",
            "before the big match",
        ),
    ),
    Topic(
        "horror",
        ("ghost", "cursed doll", "haunted house", "possessed child", "vampire", "creature"),
        ("sinister", "bloodthirsty", "ancient", "whispering", "undead"),
        ("haunts", "stalks", "terrorises", "awakens", "devours"),
        (
            "in an abandoned asylum",
            "deep in the cursed woods",
            "after midnight",
            "in the basement of an old manor",
        ),
    ),
    Topic(
        "fantasy",
        ("wizard", "dragon", "elf princess", "sword", "kingdom", "sorceress"),
        ("enchanted", "legendary", "mythical", "magical", "forgotten"),
        ("quests for", "casts a spell on", "battles", "summons", "rules"),
        (
            "in a realm of ancient magic",
            "beyond the misty mountains",
            "in the dwarven halls",
            "under a blood moon",
        ),
    ),
    Topic(
        "music",
        ("band", "singer", "jazz pianist", "orchestra", "rapper", "songwriter"),
        ("soulful", "rebellious", "up-and-coming", "legendary", "acoustic"),
        ("records with", "tours with", "composes for", "performs for", "auditions for"),
        ("on a cross-country tour", "in a smoky jazz club", "at a sold-out stadium", "in a garage studio"),
    ),
    Topic(
        "nature",
        ("wildlife", "whale", "wolf pack", "rainforest", "glacier", "coral reef"),
        ("wild", "endangered", "majestic", "untamed", "remote"),
        ("migrates across", "survives in", "follows", "documents", "protects"),
        (
            "across the African savanna",
            "in the Arctic tundra",
            "beneath the ocean",
            "through the changing seasons",
        ),
    ),
    Topic(
        "business",
        ("entrepreneur", "hedge fund", "start-up", "trader", "tech company", "CEO"),
        ("ambitious", "billion-dollar", "cut-throat", "visionary", "bankrupt"),
        ("takes over", "invests in", "bankrupts", "builds", "sells"),
        ("on Wall Street", "in Silicon Valley", "during the market crash", "in a boardroom battle"),
    ),
    Topic(
        "family",
        ("family", "grandfather", "talking dog", "twins", "summer camp", "stepmother"),
        ("heartwarming", "quirky", "hilarious", "mischievous", "lovable"),
        ("adopts", "road-trips with", "looks after", "surprises", "reunites"),
        ("over the holidays", "in a chaotic suburban home", "on a camping trip", "at the county fair"),
    ),
)

_FILLER = (
    "It is a story about choices and what they cost.",
    "Nothing will ever be the same again.",
    "Based on an original idea.",
    "A tale told with warmth and surprise.",
)
_TEMPLATES = (
    "A {adj} {noun} {verb} a {adj2} {noun2} {setting}.",
    "When a {noun} {verb} the {noun2}, everything changes {setting}.",
    "The {adj} {noun} must face a {adj2} {noun2} {setting}.",
    "{Noun} and {noun2} {verb} their past {setting}.",
)


def _sentence(rng: np.random.Generator, topic: Topic) -> str:
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    noun, noun2 = rng.choice(topic.nouns, size=2, replace=False)
    adj, adj2 = rng.choice(topic.adjectives, size=2, replace=False)
    return template.format(
        adj=adj,
        adj2=adj2,
        noun=noun,
        noun2=noun2,
        Noun=noun.capitalize(),
        verb=topic.verbs[rng.integers(len(topic.verbs))],
        setting=topic.settings[rng.integers(len(topic.settings))],
    )


def generate_frames(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate the raw items and interactions as pandas frames (deterministic in ``cfg.sample``).

    Returns:
        ``items`` (item_id, title, description, category) and ``interactions``
        (user_id, item_id, timestamp in Unix seconds, rating), both with a few bad rows.
    """
    s = cfg.sample
    rng = np.random.default_rng(s.seed)
    topics = [TOPICS[i % len(TOPICS)] for i in range(s.n_topics)]
    n_topics = len(topics)
    items, item_topic = _items(s, rng, topics)
    if s.preset == "sparse":
        interactions = _sparse_interactions(s, rng, item_topic, n_topics)
    else:
        interactions = _dense_interactions(s, rng, item_topic, n_topics)
    return _with_bad_rows(items, interactions)


def _items(s: SampleConfig, rng: np.random.Generator, topics: list[Topic]) -> tuple[pd.DataFrame, np.ndarray]:
    """The catalogue: ``(items, item_topic)``."""
    n_topics = len(topics)

    # Items: a main topic each, 2-4 sentences, sometimes a sentence from a second topic.
    item_topic = rng.integers(n_topics, size=s.n_items)
    rows: list[dict[str, Any]] = []
    for i in range(s.n_items):
        topic = topics[item_topic[i]]
        sentences = [_sentence(rng, topic) for _ in range(rng.integers(2, 5))]
        if rng.random() < 0.2:
            sentences.insert(
                int(rng.integers(len(sentences) + 1)), _sentence(rng, topics[rng.integers(n_topics)])
            )
        if rng.random() < 0.3:
            sentences.append(_FILLER[rng.integers(len(_FILLER))])
        title = f"The {rng.choice(topic.adjectives).title()} {rng.choice(topic.nouns).title()} {i + 1}"
        rows.append(
            {
                "item_id": f"i{i:06d}",
                "title": title,
                "description": " ".join(sentences),
                "category": f"{topic.name}|{topics[rng.integers(n_topics)].name}",
            }
        )
    return pd.DataFrame(rows), item_topic


def _dense_interactions(
    s: SampleConfig, rng: np.random.Generator, item_topic: np.ndarray, n_topics: int
) -> pd.DataFrame:
    """The dense log: skewed activity around ``interactions_per_user``, over ``months`` months."""
    # Popularity: a power law over a random permutation of ranks, normalised within each topic.
    ranks = rng.permutation(s.n_items) + 1
    pop = ranks.astype(np.float64) ** -s.popularity_exponent
    by_topic = [np.flatnonzero(item_topic == t) for t in range(n_topics)]

    # Users: 1-3 preferred topics (Dirichlet weights); skewed activity (log-normal around the mean).
    inter_rows: list[tuple[str, str, int, float]] = []
    span = s.months * _MONTH
    for u in range(s.n_users):
        k = int(rng.integers(1, 4))
        prefs = rng.choice(n_topics, size=k, replace=False)
        weights = rng.dirichlet(np.ones(k))
        n = max(2, int(rng.lognormal(np.log(s.interactions_per_user), 0.6)))
        start = int(rng.integers(0, span // 2))
        chosen: list[int] = []
        for _ in range(4 * n):  # distinct items; popular ones are often drawn twice
            if len(chosen) == n:
                break
            topic_idx = prefs[rng.choice(k, p=weights)] if rng.random() < 0.9 else rng.integers(n_topics)
            pool = by_topic[topic_idx]
            if len(pool) == 0:
                continue
            item = int(pool[rng.choice(len(pool), p=pop[pool] / pop[pool].sum())])
            if item not in chosen:
                chosen.append(item)
        times = np.sort(rng.integers(start, span, size=len(chosen)))
        for item, t in zip(chosen, times, strict=True):
            rating = float(np.clip(np.round(rng.normal(3.8, 0.9) * 2) / 2, 0.5, 5.0))
            inter_rows.append((f"u{u:05d}", f"i{item:06d}", _T0 + int(t), rating))
    interactions = pd.DataFrame(inter_rows, columns=["user_id", "item_id", "timestamp", "rating"])
    interactions["timestamp"] = interactions["timestamp"].astype(str)
    interactions["rating"] = interactions["rating"].map(lambda r: f"{r:g}")
    return interactions


def _sparse_interactions(
    s: SampleConfig, rng: np.random.Generator, item_topic: np.ndarray, n_topics: int
) -> pd.DataFrame:
    """The sparse log, vectorised (30,000 users in well under a second): 1-3 distinct items per
    user within ``sparse_days`` days, drawn from the active share of the catalogue only."""
    n_active = max(1, round(s.sparse_active_share * s.n_items))
    active = np.sort(rng.choice(s.n_items, size=n_active, replace=False))
    weight = (rng.permutation(n_active) + 1.0) ** -s.popularity_exponent
    by_topic = [active[item_topic[active] == t] for t in range(n_topics)]
    w_topic = [weight[item_topic[active] == t] for t in range(n_topics)]
    cum = [np.cumsum(w) / w.sum() if len(w) else w for w in w_topic]

    n = rng.integers(1, 4, size=s.n_users)  # 1-3 interactions
    user = np.repeat(np.arange(s.n_users), n)
    home = rng.integers(n_topics, size=s.n_users)[user]  # one topic per user
    topic = np.where(rng.random(len(user)) < 0.9, home, rng.integers(n_topics, size=len(user)))
    item = np.full(len(user), -1)
    u01 = rng.random(len(user))
    for t in range(n_topics):
        rows = np.flatnonzero(topic == t)
        if len(by_topic[t]) and len(rows):
            item[rows] = by_topic[t][np.minimum(np.searchsorted(cum[t], u01[rows]), len(cum[t]) - 1)]
    span = s.sparse_days * 86_400
    ts = rng.integers(0, span, size=len(user))
    rating = np.clip(np.round(rng.normal(3.8, 0.9, size=len(user)) * 2) / 2, 0.5, 5.0)
    frame = pd.DataFrame({"u": user, "i": item, "t": ts, "r": rating})
    frame = frame[frame["i"] >= 0].drop_duplicates(["u", "i"]).sort_values(["u", "t", "i"], kind="stable")
    return pd.DataFrame(
        {
            "user_id": [f"u{u:05d}" for u in frame["u"]],
            "item_id": [f"i{i:06d}" for i in frame["i"]],
            "timestamp": (frame["t"] + _T0).astype(str).to_numpy(),
            "rating": [f"{r:g}" for r in frame["r"]],
        }
    )


def _with_bad_rows(items: pd.DataFrame, interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The catalogue and log with a few bad rows appended."""
    # A few bad rows, as real feeds have; ingest quarantines each with its reason.
    items = pd.concat(
        [
            items,
            pd.DataFrame(
                [
                    {"item_id": "i_bad_empty", "title": "Untitled", "description": "   ", "category": None},
                    {
                        "item_id": "",
                        "title": "No id",
                        "description": "A film without an identifier.",
                        "category": None,
                    },
                ]
            ),
        ],
        ignore_index=True,
    )
    interactions = pd.concat(
        [
            interactions,
            pd.DataFrame(
                [
                    ("u00000", "i_does_not_exist", str(_T0 + 100), "4"),
                    ("u00001", "i000001", "not-a-time", "3"),
                    ("u00002", "i000002", str(_T0 + 200), "-1"),
                ],
                columns=interactions.columns,
            ),
        ],
        ignore_index=True,
    )
    return items, interactions


def run(spark: SparkSession, cfg: Config, **_: Any) -> dict[str, Any]:
    """Write ``items.csv`` and ``interactions.csv`` folders under ``cfg.sample_path``.

    Returns the paths and row counts; ``input.items`` / ``input.interactions`` can point at them.
    """
    items, interactions = generate_frames(cfg)
    out = {}
    for name, frame in (("items", items), ("interactions", interactions)):
        path = dict(zip(("items", "interactions"), cfg.sample_inputs, strict=True))[name]
        # One file per table; overwrite: the same seed gives the same content, so this is idempotent.
        spark.createDataFrame(frame.astype(object).where(frame.notna(), None)).coalesce(1).write.mode(
            "overwrite"
        ).option("header", True).option("escape", '"').csv(path)
        out[name] = {"path": path, "rows": len(frame)}
        log.info("generate-sample: wrote %d %s rows to %s", len(frame), name, path)
    return out
