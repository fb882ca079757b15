"""Seeded random-weight CLIP and RoBERTa models, saved as ordinary `transformers` model directories.

No pretrained weights can be downloaded here. These builders make models of any size from a config and
a seed, with a BPE tokenizer trained on given texts, and `save_pretrained` them, so the feature code
loads them through the same `from_pretrained` calls that load real weights. Used by the `demo_clip`
stage (the offline demo's image/text CLIP), by the tests (tiny models) and by the benchmarks
(real-size configs: speed does not depend on the weights' values).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_bpe(texts: Iterable[str], vocab_size: int, clip_style: bool) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merges trained on `texts` (deterministic for the same texts).

    clip_style: lower-cased words with a `</w>` end-of-word suffix, as CLIP's tokenizer expects;
    otherwise RoBERTa's byte-level BPE with its special tokens first.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if clip_style:  # words without spaces, lower-cased, `</w>` on the last piece
        tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), byte_level])
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=CLIP_SPECIALS, initial_alphabet=alphabet,
            end_of_word_suffix="</w>", show_progress=False,
        )  # fmt: skip
    else:  # RoBERTa: spaces kept as the byte-level 'Ġ' prefix
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = byte_level
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS, initial_alphabet=alphabet, show_progress=False
        )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    model = tokenizer.get_vocab()
    if clip_style:  # every single byte may also end a word
        for char in sorted(alphabet):
            model.setdefault(char + "</w>", len(model))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in _state(tokenizer)["merges"]]
    return dict(sorted(model.items(), key=lambda kv: kv[1])), merges


def _state(tokenizer: Any) -> dict[str, Any]:
    return json.loads(tokenizer.model.__getstate__())


def _reindex(vocab: dict[str, int]) -> dict[str, int]:
    return {token: i for i, token in enumerate(sorted(vocab, key=vocab.get))}


def build_clip(out_dir: Path, cfg: dict[str, Any], texts: Iterable[str]) -> Path:
    """A CLIP (text + vision towers) with seeded random weights, its image processor and tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

    vocab, merges = train_bpe(texts, int(cfg.get("vocab_size", 2000)), clip_style=True)
    vocab = _reindex(vocab)
    tokenizer = CLIPTokenizerFast(vocab=vocab, merges=merges)
    tokenizer.model_max_length = int(cfg.get("max_positions", 77))
    hidden, layers, heads = int(cfg["hidden_size"]), int(cfg["layers"]), int(cfg["heads"])
    text_hidden = int(cfg.get("text_hidden_size", hidden))  # real CLIPs have a narrower text tower
    image_size = int(cfg["image_size"])
    config = CLIPConfig(
        text_config={
            "hidden_size": text_hidden,
            "intermediate_size": 4 * text_hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": int(cfg.get("text_heads", heads)),
            "vocab_size": len(vocab),
            "max_position_embeddings": int(cfg.get("max_positions", 77)),
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": int(cfg.get("intermediate_size", 4 * hidden)),
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": int(cfg["patch_size"]),
        },
        projection_dim=int(cfg["projection_dim"]),
    )
    torch.manual_seed(int(cfg["seed"]))
    CLIPModel(config).eval().save_pretrained(out_dir)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_roberta(out_dir: Path, cfg: dict[str, Any], texts: Iterable[str], xlm: bool = False) -> Path:
    """A RoBERTa (or XLM-RoBERTa) encoder with seeded random weights and a byte-level BPE tokenizer."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    vocab, merges = train_bpe(texts, int(cfg.get("vocab_size", 2000)), clip_style=False)
    vocab = _reindex(vocab)
    tokenizer = RobertaTokenizerFast(vocab=vocab, merges=merges)
    tokenizer.model_max_length = int(cfg.get("max_positions", 514)) - 2
    config_cls, model_cls = (XLMRobertaConfig, XLMRobertaModel) if xlm else (RobertaConfig, RobertaModel)
    hidden = int(cfg["hidden_size"])
    config = config_cls(
        vocab_size=max(len(vocab), int(cfg.get("model_vocab_size", 0))),
        hidden_size=hidden,
        num_hidden_layers=int(cfg["layers"]),
        num_attention_heads=int(cfg["heads"]),
        intermediate_size=int(cfg.get("intermediate_size", 4 * hidden)),
        max_position_embeddings=int(cfg.get("max_positions", 514)),
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    torch.manual_seed(int(cfg["seed"]))
    model_cls(config).eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
