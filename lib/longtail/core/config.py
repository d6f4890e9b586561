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
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from longtail.core.uris import join_uri

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
BASE_CONF = CONF_DIR / "base.yaml"

VARIANTS = ("popular", "cf", "content", "fused", "fused_rerank")


class ConfigError(ValueError):
    """A configuration key is unknown or its value is not allowed."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


# --- sections ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LakeConfig:
    root: str = "lake"
    engine: Literal["auto", "delta-rs", "delta-spark"] = "auto"

    def __post_init__(self) -> None:
        _check(bool(self.root), "lake.root", "must be a non-empty path or URI")


@dataclass(frozen=True)
class InputConfig:
    items: str | None = None
    interactions: str | None = None
    format: Literal["auto", "csv", "json", "parquet", "delta"] = "auto"

    def __post_init__(self) -> None:
        _check(
            (self.items is None) == (self.interactions is None),
            "input.items",
            "set input.items and input.interactions together (or neither, for the generated sample)",
        )


@dataclass(frozen=True)
class SampleConfig:
    path: str | None = None  # None: <lake.root>/sample_input
    n_items: int = 1500
    n_users: int = 300
    n_topics: int = 12
    interactions_per_user: int = 30
    months: int = 12
    popularity_exponent: float = 1.1
    seed: int = 42
    preset: Literal["dense", "sparse"] = "dense"  # sparse: 1-3 interactions per user over a few days
    sparse_days: int = 4  # sparse preset: the days the log spans
    sparse_active_share: float = 0.25  # sparse preset: share of the catalogue that is ever bought

    def __post_init__(self) -> None:
        for name in ("n_items", "n_users", "n_topics", "interactions_per_user", "months", "sparse_days"):
            _check(getattr(self, name) >= 1, f"sample.{name}", "must be >= 1")
        _check(self.popularity_exponent > 0, "sample.popularity_exponent", "must be > 0")
        _check(0 < self.sparse_active_share <= 1, "sample.sparse_active_share", "must be in (0, 1]")


@dataclass(frozen=True)
class IngestConfig:
    max_bad_fraction: float = 0.05
    ts_column: str = "auto"  # auto: 'ts', else 'timestamp'
    ts_unit: Literal["auto", "s", "ms"] = "auto"  # numeric timestamps; strings are parsed as ISO-8601
    weight_column: str = "auto"  # auto: 'weight', else 'rating', else 1.0 for every row

    def __post_init__(self) -> None:
        _check(0.0 <= self.max_bad_fraction <= 1.0, "ingest.max_bad_fraction", "must be in [0, 1]")


@dataclass(frozen=True)
class EncoderConfig:
    model: str = "default"  # 'default' = packaged all-MiniLM-L6-v2; or a directory or hub id
    max_length: int = 256
    batch_tokens: int = 16384
    pooling: Literal["auto", "mean", "cls"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    arrow_batch_rows: int = 2048
    torch_threads: int = 0  # 0: Spark task CPUs (spark.task.cpus)
    cpu_linear: Literal["auto", "onednn", "aten"] = "auto"  # fp32 linear layers on CPU

    def __post_init__(self) -> None:
        _check(bool(self.model), "encoder.model", "must name 'default', a directory or a hub id")
        _check(8 <= self.max_length <= 8192, "encoder.max_length", "must be in [8, 8192]")
        _check(self.batch_tokens >= self.max_length, "encoder.batch_tokens", "must be >= encoder.max_length")
        _check(self.arrow_batch_rows >= 1, "encoder.arrow_batch_rows", "must be >= 1")
        _check(self.torch_threads >= 0, "encoder.torch_threads", "must be >= 0")


@dataclass(frozen=True)
class AlsConfig:
    rank: int = 32
    reg: float = 0.1
    alpha: float = 1.0
    max_iter: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "train.als.rank", "must be >= 1")
        _check(self.reg >= 0, "train.als.reg", "must be >= 0")
        _check(self.alpha >= 0, "train.als.alpha", "must be >= 0")
        _check(self.max_iter >= 1, "train.als.max_iter", "must be >= 1")


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 0  # 0: linear head; > 0: 2-layer MLP with this many hidden units
    epochs: int = 300
    lr: float = 0.01
    weight_decay: float = 1e-4
    l2: float = 10.0  # ridge penalty of the linear head (sum-of-squares loss scale)
    min_count: int = 5  # items with at least this many interactions train the head
    max_items: int = 500_000  # training rows collected to the driver at most (sampled beyond)
    seed: int = 42

    def __post_init__(self) -> None:
        _check(self.hidden >= 0, "train.head.hidden", "must be >= 0")
        _check(self.epochs >= 1, "train.head.epochs", "must be >= 1")
        _check(self.lr > 0, "train.head.lr", "must be > 0")
        _check(self.l2 >= 0, "train.head.l2", "must be >= 0")
        _check(self.min_count >= 1, "train.head.min_count", "must be >= 1")
        _check(self.max_items >= 1, "train.head.max_items", "must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    als: AlsConfig = field(default_factory=AlsConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    checkpoint_dir: str | None = None  # None: <lake.root>/_checkpoints


@dataclass(frozen=True)
class RecommendConfig:
    k: int = 10
    variant: Literal["popular", "cf", "content", "fused", "fused_rerank"] = "fused_rerank"
    candidates: int = 100  # CF top-N and content top-N per user
    centre: bool = True  # subtract the catalogue's mean vector before cosine
    half_life_days: float | None = 180.0  # recency decay of the user profile; None: no decay
    profile_weights: Literal["weight", "uniform"] = "weight"  # interaction weights in the profile mean
    head_prior: float = 0.0  # CF factors (n*als + c*head)/(n + c); 0: the head only where ALS has none
    fusion_k: float = 50.0  # evidence weight w_i = n_i / (n_i + fusion_k)
    normalise: Literal["zscore", "rank"] = "zscore"
    popularity_penalty: float = 0.0  # subtracted: popularity_penalty * log(1 + n_i)
    rerank_rounds: int = 3
    rerank_strength: float = 0.2  # subtracted: rerank_strength * log(1 + exposure)
    min_tail_share: float = 0.0
    min_cold_share: float = 0.0  # fused_rerank: share of each list reserved for items with no interactions
    head_rule: Literal["mass", "items"] = "mass"  # how the head is cut (ml/segments.py)
    head_share: float = 0.8  # mass rule: head = top items holding at most this share of interactions
    head_fraction: float = 0.2  # items rule: head = at most this share of the interacted items
    block_users: int = 8192
    block_items: int = 16384

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
    k: tuple[int, ...] = (10, 20)
    test_fraction: float = 0.2
    cutoff: str | None = None  # ISO-8601 time: a global cut-off instead of the per-user fraction
    variants: tuple[str, ...] = VARIANTS
    # test: train on the training part, measure on the test part. validation: set the test part
    # aside untouched, split the training part again the same way and measure on that (for tuning).
    holdout: Literal["test", "validation"] = "test"
    sweep: tuple[float, ...] = ()  # fusion_k values: a trade-off curve of `fused`; empty: none
    sweep_rerank: tuple[float, ...] = ()  # rerank_strength values: a curve of `fused_rerank`
    report: bool = True  # write the HTML + Markdown report
    report_dir: str | None = None  # None: <lake.root>/reports
    bootstrap: int = 1000  # paired bootstrap resamples of users (intervals of differences to cf); 0: none
    bootstrap_seed: int = 42

    def __post_init__(self) -> None:
        _check(self.bootstrap >= 0, "evaluate.bootstrap", "must be >= 0 (0: no intervals)")
        _check(
            len(self.k) >= 1 and all(k >= 1 for k in self.k), "evaluate.k", "must be a list of integers >= 1"
        )
        _check(0 < self.test_fraction < 1, "evaluate.test_fraction", "must be in (0, 1)")
        _check(all(v > 0 for v in self.sweep), "evaluate.sweep", "fusion_k values must be > 0")
        _check(all(v >= 0 for v in self.sweep_rerank), "evaluate.sweep_rerank", "values must be >= 0")
        if self.cutoff is not None:
            try:
                dt.datetime.fromisoformat(self.cutoff.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError("evaluate.cutoff", f"{self.cutoff!r} is not an ISO-8601 time") from None
        bad = [v for v in self.variants if v not in VARIANTS]
        _check(
            not bad and len(self.variants) >= 1, "evaluate.variants", f"allowed: {list(VARIANTS)}; got {bad}"
        )


@dataclass(frozen=True)
class RunConfig:
    id: str | None = None  # None: generated per invocation


@dataclass(frozen=True)
class Config:
    lake: LakeConfig = field(default_factory=LakeConfig)
    input: InputConfig = field(default_factory=InputConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    run: RunConfig = field(default_factory=RunConfig)

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
    paths = ([BASE_CONF] if base and BASE_CONF.exists() else []) + [Path(f) for f in files]
    for path in paths:
        if not path.exists():
            raise ConfigError("--conf", f"file not found: {path}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                "--conf", f"{path} must hold a mapping of sections, got {type(loaded).__name__}"
            )
        _deep_merge(tree, loaded)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, "an override is written key=value, e.g. recommend.k=20")
        _deep_merge(tree, _nest(key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return build(Config, tree, "")


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
