"""Seeded random-weight CLIP and RoBERTa models, saved as ordinary `transformers` model directories.

No pretrained weights can be downloaded here. These builders make models of any size from a config and
a seed, with a BPE tokenizer trained on given texts, and `save_pretrained` them, so the feature code
loads them through the same `from_pretrained` calls that load real weights. Used by the `demo_encoder`
stage (the offline demo's image/text CLIP), by the tests (tiny models) and by the benchmarks
(real-size configs: speed does not depend on the weights' values).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-character table: each of the 256 bytes as one printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def train_bpe(texts: Iterable[str], vocab_size: int, clip_style: bool) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merges learned from `texts`, deterministically.

    (The `tokenizers` trainer breaks ties between equally frequent pairs in hash order, so two runs give
    different merges; here ties go to the lexicographically smallest pair.) clip_style: lower-cased
    words with a `</w>` end-of-word suffix, as CLIP's tokenizer expects; otherwise RoBERTa's style, where
    a word after a space starts with the byte-level space character.
    """
    table = byte_alphabet()
    specials = CLIP_SPECIALS if clip_style else ROBERTA_SPECIALS
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for n, word in enumerate((text.lower() if clip_style else text).split()):
            raw = word.encode("utf-8") if clip_style or n == 0 else (" " + word).encode("utf-8")
            symbols = [table[b] for b in raw]
            if clip_style:
                symbols[-1] += "</w>"
            words[tuple(symbols)] += 1
    vocab: dict[str, int] = {}
    for token in [*specials, *table, *([c + "</w>" for c in table] if clip_style else [])]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merged = best[0] + best[1]
        merges.append(best)
        vocab.setdefault(merged, len(vocab))
        words = Counter({_merge(word, best, merged): count for word, count in words.items()})
    return vocab, merges


def _merge(word: tuple[str, ...], pair: tuple[str, str], merged: str) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def build_clip(out_dir: Path, cfg: dict[str, Any], texts: Iterable[str]) -> Path:
    """A CLIP (text + vision towers) with seeded random weights, its image processor and tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

    vocab, merges = train_bpe(texts, int(cfg.get("vocab_size", 2000)), clip_style=True)
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
