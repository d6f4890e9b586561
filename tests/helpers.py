"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = (
    "the a of and in to is heist cowboy space ranger toy city night love war story man woman "
    "film old new life dark ##s ##ing ##ed"
).split()


def make_tiny_bert(root: Path, *, seed: int = 0, pooling: str | None = None) -> Path:
    """A 2-layer BERT (hidden 32) with random weights and a 40-token WordPiece vocab, saved as
    safetensors + a fast tokenizer: stands in for a real model where the model is not the point."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + list(WORDS) + list("abcdefghijklmnopqrstuvwxyz"))}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(str(root))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(str(root), safe_serialization=True)
    if pooling:
        (root / "1_Pooling").mkdir(exist_ok=True)
        modes = {"pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_cls_token": pooling == "cls"}
        (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        (root / "modules.json").write_text(json.dumps(modules))
    return root


def small_pipeline_settings(model: Path) -> list[str]:
    """The config overrides of the whole-pipeline tests (three nights, the lake on S3): a 120-item,
    40-user sample, the tiny BERT at ``model``, the cheapest ALS, a small Mult-VAE and the learned
    fusion with its cheapest ranker (model, penalty and boost fixed: nothing held out to choose
    them); the caller adds ``lake.root`` and what its test is about."""
    return [
        f"encoder.model={model}",
        "sample.n_items=120",
        "sample.n_users=40",
        "sample.interactions_per_user=12",
        "train.als.rank=4",
        "train.als.max_iter=5",
        "train.head.min_count=2",
        "train.vae.hidden=32",
        "train.vae.latent=8",
        "train.vae.epochs=50",
        "recommend.candidates=20",
        "recommend.ranker.model=logistic",
        "recommend.ranker.pop_penalty=0.1",
        "recommend.ranker.tail_boost=0",
    ]
