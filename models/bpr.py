"""BPR-MF (Rendle et al., UAI'09): user and item ID embeddings, dot-product score, BPR loss.

As MMRec's BPR: Xavier-initialised 64-d embeddings, loss = BPR + reg_weight * EmbLoss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.base import Recommender, TrainData, bpr_loss, emb_loss
from models.registry import register


@register("bpr")
class BPR(Recommender):
    group = "id"

    def __init__(self, data: TrainData, hp: dict[str, Any]) -> None:
        super().__init__(data, hp)
        dim = int(hp["embedding_size"])
        self.reg_weight = float(hp["reg_weight"])
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_emb

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        u, p, n = self.user_emb[users], self.item_emb[pos], self.item_emb[neg]
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + self.reg_weight * emb_loss(u, p, n)
