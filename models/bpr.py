"""BPR-MF (Rendle et al., UAI'09): user and item ID embeddings, dot-product score, BPR loss.

As MMRec's BPR: Xavier-initialised 64-d embeddings, loss = BPR + reg_weight * EmbLoss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmpipe.config import param
from models.core.base import HParams, Recommender, TrainData
from models.core.layers import bpr_loss, emb_loss, id_embedding


class BPR(Recommender):
    name = "bpr"
    reads = "id"

    @dataclass(frozen=True)
    class HParams(HParams):
        embedding_size: int = param(64, ge=1)
        reg_weight: float = param(1e-4, ge=0)

    def __init__(self, data: TrainData, hp: BPR.HParams) -> None:
        super().__init__(data, hp)
        self.user_emb = id_embedding(self.n_users, hp.embedding_size)
        self.item_emb = id_embedding(self.n_items, hp.embedding_size)

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_emb

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        u, p, n = self.user_emb[users], self.item_emb[pos], self.item_emb[neg]
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + self.hp.reg_weight * emb_loss(u, p, n)
