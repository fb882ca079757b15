"""LMM4Rec's third paradigm: a recommender trained end to end with the dual encoder of its item features.

One mechanism for every model that reads its item features as `self.features[modality]` (`end_to_end
= True`: VBPR, LATTICE, BM3), so there is no end-to-end copy of any model:

* `EncoderTowers` holds the dual encoder (CLIP, SigLIP; all but the top `n_trainable_layers` blocks
  frozen) and every item's prepared inputs (`models.core.dual_encoder.ItemInputs`);
* `EndToEnd` wraps the recommender. A feature table of all items is encoded without gradients at the
  start of every epoch. Each training step re-encodes the step's items (its positives and negatives, at
  most `encoder_batch_size` of them, drawn at random when there are more) with gradients, writes them
  into a copy of the table (`index_put`, differentiable in the new rows) and hands that to the model:
  the recommendation loss reaches the encoder through exactly those rows. The public LMM4Rec code
  detaches the encoder output, so its encoder never learns from the recommender; here it does.
* Scoring (validation, test) re-encodes every item without gradients.
* The optimiser has two groups: the recommender's parameters at its learning rate, the encoder's
  trainable ones at `encoder_lr`. Checkpoints hold the recommender and the trainable encoder weights;
  the frozen ones are re-read from the encoder's `from_pretrained` source.

A model whose features shape a graph (LATTICE's learned item graph, rebuilt on the first step of an
epoch) passes gradients to the encoder only where the features enter its loss; that is the model's own
design, not a limitation of this wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from mmpipe.config import Config, param
from models.core.base import HParams, Recommender
from models.core.dual_encoder import ItemInputs, image_features, text_features
from models.core.graph import knn_tensor
from models.core.optim import adam

MMREC_TEMPLATE = "{title} {brand} {categories} {description}"
# The modalities an end-to-end encoder produces (its `normalize` may name only these).
Modality = Literal["text", "image"]


@dataclass(frozen=True)
class EndToEndConfig(Config):
    """`train.e2e`: the encoder the end-to-end models train, and how."""

    model: str = param("raw/encoders/demo-clip", doc="dual encoder: local directory or hub name")
    n_trainable_layers: int = param(1, ge=0, doc="top blocks of each tower trained (0: the encoder stays frozen)")
    encoder_lr: float = param(1e-5, gt=0, doc="learning rate of the encoder (the recommender keeps its own)")
    encoder_batch_size: int = param(512, ge=1, doc="items encoded with gradients per step, at most")
    gradient_checkpointing: bool = param(False, doc="recompute block activations in backward: less memory")
    normalize: tuple[Modality, ...] = param([], doc="modalities whose features are L2-normalised")
    max_tokens: int = param(77, ge=1)
    template: str = param(MMREC_TEMPLATE, doc="item fields in braces, as the features stage")
    workers: int = param(2, ge=1, doc="threads decoding item images (once, before training)")


class EncoderTowers(nn.Module):
    """The dual encoder and every item's inputs: item indices in, item features per modality out."""

    def __init__(
        self, model: nn.Module, inputs: ItemInputs, modalities: tuple[str, ...], normalize: tuple[str, ...] = ()
    ) -> None:
        super().__init__()
        unknown = [m for m in modalities if m not in ("text", "image")]
        if unknown:
            raise ValueError(f"end-to-end encoder: modalities {unknown} are not text or image")
        self.model = model
        self._inputs = inputs  # underscore: stays on the CPU when the module moves to a GPU
        self.modalities = tuple(modalities)
        self.normalize = set(normalize)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, items: torch.Tensor, modality: str) -> torch.Tensor:
        """Features of `items` (with gradients where grad mode is on), float32."""
        device = self.device
        if modality == "image":
            out = image_features(self.model, self._inputs.pixel_values(items.cpu(), device))
        else:
            ids, mask = self._inputs.text(items.cpu(), device)
            out = text_features(self.model, ids, mask)
        out = out.float()
        return F.normalize(out, dim=-1) if modality in self.normalize else out

    @torch.no_grad()
    def encode_all(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Every item's features per modality, without gradients, in eval mode."""
        was_training = self.training
        self.eval()
        n = self._inputs.n_items
        out = {}
        for m in self.modalities:
            parts = [self.encode(torch.arange(s, min(s + batch_size, n)), m) for s in range(0, n, batch_size)]
            out[m] = torch.cat(parts)
        self.train(was_training)
        return out


def knn_graph(features: torch.Tensor, k: int) -> sp.csr_matrix:
    """The top-k cosine item graph (self included) of features, as the graphs stage stores it: for the
    kNN-based models trained end to end, built from the encoder's initial features."""
    graph = knn_tensor(features.detach().float().cpu(), k)
    idx, val = graph.indices().numpy(), graph.values().numpy()
    return sp.csr_matrix((val, (idx[0], idx[1])), shape=graph.shape, dtype=np.float32)


class EndToEnd(Recommender):
    """A recommender (`inner`) and the encoder towers of its item features, trained together."""

    HParams = HParams

    def __init__(self, inner: Recommender, towers: EncoderTowers, cfg: EndToEndConfig) -> None:
        nn.Module.__init__(self)
        if not inner.end_to_end:
            raise TypeError(f"model {inner.name!r} has no end-to-end variant")
        self.name = inner.name
        self.n_users, self.n_items, self.hp = inner.n_users, inner.n_items, inner.hp
        self.device = inner.device
        self.inner, self.towers, self.cfg = inner, towers, cfg
        self.frozen_keys = {f"towers.model.{k}" for k, p in towers.model.named_parameters() if not p.requires_grad}
        self.table = towers.encode_all(cfg.encoder_batch_size)
        inner.set_item_features(self.table)

    @property
    def lr(self) -> float | None:
        return self.inner.lr

    @property
    def lr_decay(self) -> float:
        return self.inner.lr_decay

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.towers.parameters() if p.requires_grad]

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        groups = [{"params": [p for p in self.inner.parameters() if p.requires_grad], "lr": lr}]
        encoder = self.encoder_parameters()
        if encoder:
            groups.append({"params": encoder, "lr": self.cfg.encoder_lr})
        return adam(groups)

    def on_epoch_start(self, epoch: int, rng: np.random.Generator) -> None:
        self.table = self.towers.encode_all(self.cfg.encoder_batch_size)
        self.inner.set_item_features(self.table)
        self.inner.on_epoch_start(epoch, rng)

    def step_items(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """The items re-encoded with gradients in this step: the batch's, at most encoder_batch_size."""
        items = torch.unique(torch.cat([pos, neg]))
        if len(items) > self.cfg.encoder_batch_size:
            keep = torch.randperm(len(items))[: self.cfg.encoder_batch_size].to(items.device)
            items = torch.sort(items[keep]).values
        return items

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        items = self.step_items(pos, neg)
        features = {m: table.index_put((items,), self.towers.encode(items, m)) for m, table in self.table.items()}
        self.inner.set_item_features(features)
        return self.inner.loss(users, pos, neg)

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            self.inner.set_item_features(self.towers.encode_all(self.cfg.encoder_batch_size))
            return self.inner.final_embeddings()

    @torch.no_grad()
    def scorer(self):
        self.inner.set_item_features(self.towers.encode_all(self.cfg.encoder_batch_size))
        return self.inner.scorer()

    def state_dict(self, *args, **kwargs):
        """The recommender's and the encoder's trainable weights; frozen encoder weights come from its source."""
        state = super().state_dict(*args, **kwargs)
        for key in self.frozen_keys:
            state.pop(key, None)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = set(result.missing_keys) - self.frozen_keys
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"end-to-end checkpoint does not match the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(result.unexpected_keys)[:5]}"
            )
        return result

    def trained_encoder_params(self) -> int:
        return sum(p.numel() for p in self.encoder_parameters())
