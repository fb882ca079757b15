"""A dual image-text encoder (CLIP, SigLIP) trained in place: LMM4Rec's second and third paradigms.

Used by the `finetune_encoder` stage (the encoder fine-tuned on a dataset's own item image/text pairs,
then frozen for the features stage) and by the end-to-end models (`models/core/end_to_end.py`: the
encoder trained by the recommendation loss). Both need the same four things, written once here:

* `load_dual_encoder`: `AutoModel` / `AutoTokenizer` / `AutoImageProcessor.from_pretrained` of a hub name
  or a local directory (the demo's seeded random CLIP, a downloaded `openai/clip-vit-base-patch32`, a
  SigLIP, or a fine-tuned output of `finetune_encoder`);
* freezing: `mmpipe.hf.freeze_below_top(model, n, towers=TOWERS, heads=True)`, every parameter frozen
  except the top `n` transformer blocks of each tower and what comes after them (final layer norms,
  pooling heads, projections, logit scale); 0 freezes everything;
* `ItemInputs`: each item's text tokenised and its image decoded, resized and cropped once (uint8, in
  worker threads), so a training step only normalises a batch of pixels and runs the model;
* `contrastive_loss`: CLIP's symmetric image-text InfoNCE.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mmpipe import lmdb_store
from mmpipe.hf import hub_errors, pick_output, resolve_model
from mmpipe.io import read_parquet
from mmpipe.schemas import ITEM_FIELDS, decode_image, item_text

TOWERS = ("text_model", "vision_model")


def load_dual_encoder(ref: str, allow_download: bool = False, key: str = "model") -> tuple[nn.Module, Any, Any]:
    """(model, tokenizer, image processor) of a CLIP-like dual encoder, by hub name or local directory."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    path, local = resolve_model(ref)
    local_only = local or not allow_download
    with hub_errors(key, ref, local):
        model = AutoModel.from_pretrained(path, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=local_only)
    for tower in TOWERS:
        if not hasattr(model, tower):
            raise ValueError(f"{key} = '{ref}': {type(model).__name__} is not a dual image-text encoder (no {tower})")
    # transformers 5 loads a checkpoint in its stored dtype; training (and autocast) wants float32 weights
    return model.float(), tokenizer, processor


def pads_to_max_length(model: nn.Module) -> bool:
    """SigLIP was trained on texts padded to full length and pools the last position: keep the padding.
    CLIP pools its end-of-text token, so a batch can be cut to its longest text."""
    return str(getattr(model.config, "model_type", "")).startswith("siglip")


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Recompute block activations in the backward pass instead of keeping them (less memory, ~30% slower)."""
    if enabled:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def image_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    return pick_output(model.get_image_features(pixel_values=pixel_values), "image_embeds", "pooler_output")


def text_features(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return pick_output(out, "text_embeds", "pooler_output")


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss: cosine logits scaled by exp(logit_scale); the mean of the image->text and text->image
    cross-entropies, the i-th image and i-th text being the only positive pair of row/column i."""
    image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    logits = logit_scale.float().exp() * image @ text.T
    labels = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@dataclass
class ItemInputs:
    """Every item's model inputs, prepared once: token ids and masks, uint8 pixels, and which exist."""

    input_ids: torch.Tensor  # [n_items, max_tokens], padded
    attention_mask: torch.Tensor  # [n_items, max_tokens]
    pixels: torch.Tensor  # [n_items, 3, H, W] uint8, resized and cropped; black where no image
    has_text: np.ndarray  # bool [n_items]
    has_image: np.ndarray  # bool [n_items]
    mean: torch.Tensor  # [3, 1, 1] the processor's normalisation
    std: torch.Tensor
    full_padding: bool = False  # keep every text at max_tokens (SigLIP), else cut a batch to its longest

    @property
    def n_items(self) -> int:
        return len(self.pixels)

    def pixel_values(self, items: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
        """Normalised float pixels of `items` on `device` (the processor's rescale and normalise)."""
        idx = torch.as_tensor(items, dtype=torch.long)
        x = self.pixels[idx].to(device).float() / 255.0
        return (x - self.mean.to(device)) / self.std.to(device)

    def text(self, items: torch.Tensor | np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask of `items`, cut to the longest text among them."""
        idx = torch.as_tensor(items, dtype=torch.long)
        mask = self.attention_mask[idx]
        if self.full_padding:
            return self.input_ids[idx].to(device), mask.to(device)
        width = max(int(mask.sum(dim=1).max()), 1) if len(idx) else 1
        return self.input_ids[idx, :width].to(device), mask[:, :width].to(device)


def prepare_items(
    items_parquet: Path,
    images_lmdb: Path,
    tokenizer: Any,
    processor: Any,
    template: str,
    max_tokens: int,
    workers: int = 2,
    progress: bool = True,
    full_padding: bool = False,
) -> ItemInputs:
    """Tokenise every item's text (the `template` of its fields) and decode every item's image.

    Images are decoded, resized and cropped by the processor (without its rescale and normalise, so the
    pixels stay uint8: 150 KB an item at 224 px) in `workers` threads, chunk by chunk.
    """

    rows = read_parquet(items_parquet).to_pylist()
    texts = [item_text({k: row.get(k) for k in ITEM_FIELDS}, template) for row in rows]
    has_text = np.array([bool(t) for t in texts])
    limit = int(getattr(tokenizer, "model_max_length", max_tokens) or max_tokens)
    encoded = tokenizer(
        [t or "" for t in texts], truncation=True, max_length=min(max_tokens, limit), padding="max_length",
        return_tensors="pt",
    )  # fmt: skip
    size = _crop_size(processor)
    with lmdb_store.reading(images_lmdb) as txn:
        jpegs = [txn.get(str(row["item_id"]).encode("utf-8")) for row in rows]
    has_image = np.array([j is not None for j in jpegs])

    def decode(chunk: list[bytes | None]) -> np.ndarray:
        out = np.zeros((len(chunk), 3, *size), dtype=np.uint8)
        present = [i for i, j in enumerate(chunk) if j is not None]
        if present:
            images = [decode_image(chunk[i], f"{images_lmdb}: an item's image") for i in present]
            arr = processor(images=images, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]
            out[present] = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return out

    chunks = [jpegs[s : s + 64] for s in range(0, len(jpegs), 64)]
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        decoded = list(tqdm(pool.map(decode, chunks), total=len(chunks), desc="images", disable=not progress))
    pixels = torch.from_numpy(np.concatenate(decoded) if decoded else np.zeros((0, 3, *size), dtype=np.uint8))
    mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(processor.image_std, dtype=torch.float32).view(3, 1, 1)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    return ItemInputs(ids, mask, pixels, has_text, has_image, mean, std, full_padding)


def _crop_size(processor: Any) -> tuple[int, int]:
    """(H, W) of the processor's output: CLIP's crop_size, SigLIP's size."""
    attrs = ("crop_size", "size") if getattr(processor, "do_center_crop", False) else ("size",)
    for attr in attrs:
        value = getattr(processor, attr, None)
        height = value.get("height") if isinstance(value, dict) else getattr(value, "height", None)
        width = value.get("width") if isinstance(value, dict) else getattr(value, "width", None)
        if height and width:
            return int(height), int(width)
    raise ValueError(f"{type(processor).__name__}: cannot tell its output image size")
