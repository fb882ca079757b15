"""The sequential family's contract (`reads = "seq"`): what the pretrain and transfer stages and the
sequential trainer call on any of its models, so that a second sequential model is one file.

A model of the family subclasses `SequentialRecommender`, declares `name` and `HParams` as every model
does, and implements `forward` (its training losses on a batch of sequences), `all_item_embeddings`
and `scores` (ranking), and `parts` (what a transfer may load: an item and a user encoder). It declares
the pre-trained encoders its item tower loads (`item_encoders`, by its hyperparameters) so the stages
prepare the item texts and images it reads, once, and hand them in `SeqData`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from mmpipe.config import ParamsError
from models.core.base import HParams, Recommender

PARTS = ("item_encoder", "user_encoder")  # what a transfer may load of a pre-trained model; "full": both


@dataclass
class SeqData:
    """What a sequential model reads: the catalogue's content, prepared once, and the items' training popularity."""

    n_users: int
    n_items: int
    popularity: np.ndarray  # occurrences of each item (item_idx) in the training windows
    text_ids: torch.Tensor | None = None  # [n_items, T]
    text_mask: torch.Tensor | None = None
    pixels: torch.Tensor | None = None  # [n_items, 3, S, S] uint8
    text_encoder: nn.Module | None = None  # loaded by the stage (from_pretrained), frozen below the top
    image_encoder: nn.Module | None = None


@dataclass(frozen=True)
class ItemEncoder:
    """A pre-trained encoder an item tower loads: the stages load it and prepare its modality's inputs."""

    modality: Literal["text", "image"]
    key: str  # the HParams field naming the encoder (errors name train.<model>.<key>)
    ref: str  # a hub name or a local directory (from_pretrained)
    layers_key: str  # the HParams field of its trainable top blocks
    trainable_layers: int  # top transformer blocks that train
    max_tokens: int = 0  # text: tokens per item
    template: str = ""  # text: the item fields in braces


class SequentialRecommender(Recommender):
    """Base of the sequential family: next-item prediction over users' item sequences (item_idx + 1, 0 pads)."""

    reads = "seq"
    PRETRAIN_PARTS: ClassVar[tuple[str, ...]] = ("full", *PARTS)

    def __init__(self, data: SeqData, hp: HParams, max_seq_len: int) -> None:
        super().__init__(data, hp)  # type: ignore[arg-type]
        self.max_seq_len = max_seq_len

    @classmethod
    def item_tower(cls, hp: Any) -> str:
        """What represents an item, for the report: `id` (a learned embedding) unless the model says more."""
        return "id"

    @classmethod
    def item_encoders(cls, hp: Any) -> list[ItemEncoder]:
        """The pre-trained encoders the item tower `hp` builds loads (none: it reads no item content)."""
        return []

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """The training losses of a batch ({"loss": total, ...}); a forward, so DistributedDataParallel syncs."""
        raise NotImplementedError

    def all_item_embeddings(self) -> torch.Tensor:
        """[n_items + 1, d] (row 0: padding) for ranking, without gradients."""
        raise NotImplementedError

    def scores(self, histories: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items] of every item for the position after each left-padded history."""
        raise NotImplementedError

    def parts(self) -> dict[str, list[nn.Module]]:
        """The modules of each transferable part (`PARTS`)."""
        raise NotImplementedError

    def pretrained_encoders(self) -> list[nn.Module]:
        """The loaded pre-trained encoders (their trainable blocks get the encoder learning rate)."""
        return []

    def encoder_params(self) -> dict[str, int]:
        """Parameters of the pre-trained encoders that train and that stay frozen."""
        trained = sum(p.numel() for m in self.pretrained_encoders() for p in m.parameters() if p.requires_grad)
        frozen = sum(p.numel() for m in self.pretrained_encoders() for p in m.parameters() if not p.requires_grad)
        return {"encoder_params_trained": trained, "encoder_params_frozen": frozen}

    def load_pretrained(self, state: dict[str, torch.Tensor], part: str) -> list[str]:
        """Copy a pre-trained model's weights: all (`full`), the item encoder or the user encoder only.

        Only tensors whose name and shape match are copied (a different item tower or catalogue keeps
        its own); returns the names copied. Buffers of the catalogue (its texts, images, popularity) are
        never transferred: they belong to the target.
        """
        if part not in self.PRETRAIN_PARTS:
            raise ParamsError(f"pretrain_part {part!r}: expected one of {', '.join(self.PRETRAIN_PARTS)}")
        wanted = PARTS if part == "full" else (part,)
        names = {
            f"{prefix}{name}"
            for p in wanted
            for module in self.parts()[p]
            for prefix in [_prefix_of(self, module)]
            for name in module.state_dict()
        }
        own = self.state_dict()
        copied = [k for k, v in state.items() if k in names and k in own and own[k].shape == v.shape]
        own.update({k: state[k] for k in copied})
        self.load_state_dict(own)
        return sorted(copied)


def _prefix_of(root: nn.Module, module: nn.Module) -> str:
    for name, candidate in root.named_modules():
        if candidate is module:
            return f"{name}." if name else ""
    raise KeyError("module not in model")
