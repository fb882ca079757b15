"""VBPR (He & McAuley, AAAI'16): BPR-MF plus a learned projection of the items' content features.

As MMRec's VBPR: the item representation is [ID embedding ; Linear(concat(features of each
modality))], the user embedding has twice the size; loss = BPR + reg_weight * EmbLoss. One addition
for the cold-start setting: an item without training interactions has an untrained ID embedding, so
its ID half is zeroed when scoring and it is ranked from its content alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmpipe.config import param
from models.core.base import HParams, Recommender, TrainData
from models.core.layers import bpr_loss, emb_loss, id_embedding


class VBPR(Recommender):
    name = "vbpr"
    reads = "feat"
    scores_cold_items = True
    end_to_end = True

    @dataclass(frozen=True)
    class HParams(HParams):
        embedding_size: int = param(64, ge=1)
        reg_weight: float = param(1e-4, ge=0)
        modalities: tuple[str, ...] | None = param(None, doc="modalities whose features are concatenated; null: all")

    def __init__(self, data: TrainData, hp: VBPR.HParams) -> None:
        super().__init__(data, hp)
        dim = hp.embedding_size
        self.modalities = data.modalities(self.name, hp.modalities)
        self.features = {m: data.features[m] for m in self.modalities}  # fixed (VBPR does not train them)
        self.register_buffer("seen", torch.from_numpy(data.seen_items).float().unsqueeze(1), persistent=False)
        self.user_emb = id_embedding(self.n_users, 2 * dim)
        self.item_emb = id_embedding(self.n_items, dim)
        self.project = nn.Linear(sum(data.features[m].shape[1] for m in self.modalities), dim)
        nn.init.xavier_normal_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def item_representation(self) -> torch.Tensor:
        content = torch.cat([self.features[m] for m in self.modalities], dim=1)
        return torch.cat([self.item_emb * self.seen, self.project(content)], dim=1)

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_representation()

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        items = self.item_representation()
        u, p, n = self.user_emb[users], items[pos], items[neg]
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + self.hp.reg_weight * emb_loss(u, p, n)
