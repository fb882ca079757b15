"""LightGCN (He et al., SIGIR'20): ID embeddings smoothed over the user-item graph.

As MMRec's LightGCN: the symmetric-normalised bipartite adjacency of the training interactions,
`n_layers` propagations without weights or non-linearities, the mean of all layers (including
layer 0) as the final embedding; loss = BPR on the final embeddings + reg_weight * EmbLoss on the
layer-0 (ego) embeddings of the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.base import Recommender, TrainData, bpr_loss, emb_loss, sparse_tensor
from models.graph import bipartite_adjacency, sym_normalize
from models.registry import register


@register("lightgcn")
class LightGCN(Recommender):
    group = "id"

    def __init__(self, data: TrainData, hp: dict[str, Any]) -> None:
        super().__init__(data, hp)
        dim = int(hp["embedding_size"])
        self.n_layers = int(hp["n_layers"])
        self.reg_weight = float(hp["reg_weight"])
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        self.adj = sparse_tensor(sym_normalize(bipartite_adjacency(data.train)))

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.user_emb, self.item_emb])
        layers = [x]
        for _ in range(self.n_layers):
            x = self.adj @ x
            layers.append(x)
        out = torch.stack(layers).mean(dim=0)
        return out[: self.n_users], out[self.n_users :]

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate()

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_all, item_all = self.propagate()
        u, p, n = user_all[users], item_all[pos], item_all[neg]
        reg = emb_loss(self.user_emb[users], self.item_emb[pos], self.item_emb[neg])
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + self.reg_weight * reg
