"""VBPR (He & McAuley, AAAI'16): BPR-MF plus a learned projection of the items' content features.

As MMRec's VBPR: the item representation is [ID embedding ; Linear(concat(text, image features))],
the user embedding has twice the size; loss = BPR + reg_weight * EmbLoss. One addition for the
cold-start setting: an item without training interactions has an untrained ID embedding, so its ID
half is zeroed when scoring and it is ranked from its content alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.base import Recommender, TrainData, bpr_loss, emb_loss
from models.registry import register


@register("vbpr")
class VBPR(Recommender):
    group = "feat"
    scores_cold_items = True

    def __init__(self, data: TrainData, hp: dict[str, Any]) -> None:
        super().__init__(data, hp)
        dim = int(hp["embedding_size"])
        self.reg_weight = float(hp["reg_weight"])
        modalities = list(hp.get("modalities") or sorted(data.features))
        missing = [m for m in modalities if m not in data.features]
        if missing:
            raise ValueError(f"vbpr: modalities {missing} have no features (have {sorted(data.features)})")
        self.register_buffer("content", torch.cat([data.features[m] for m in modalities], dim=1), persistent=False)
        self.register_buffer("seen", torch.from_numpy(data.seen_items).float().unsqueeze(1), persistent=False)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        self.project = nn.Linear(self.content.shape[1], dim)
        nn.init.xavier_normal_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def item_representation(self) -> torch.Tensor:
        return torch.cat([self.item_emb * self.seen, self.project(self.content)], dim=1)

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_representation()

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        items = self.item_representation()
        u, p, n = self.user_emb[users], items[pos], items[neg]
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + self.reg_weight * emb_loss(u, p, n)
