"""LightGCN (He et al., SIGIR'20): ID embeddings smoothed over the user-item graph.

As MMRec's LightGCN: the symmetric-normalised bipartite adjacency of the training interactions,
`n_layers` propagations without weights or non-linearities, the mean of all layers (including
layer 0) as the final embedding; loss = BPR on the final embeddings + reg_weight * EmbLoss on the
layer-0 (ego) embeddings of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmpipe.config import param
from models.core.base import HParams, Recommender, TrainData
from models.core.graph import bipartite_adjacency, sparse_tensor, sym_normalize
from models.core.layers import bpr_loss, emb_loss, id_embedding
from models.core.spmm import layer_mean


class LightGCN(Recommender):
    name = "lightgcn"
    reads = "id"

    @dataclass(frozen=True)
    class HParams(HParams):
        embedding_size: int = param(64, ge=1)
        n_layers: int = param(3, ge=0)
        reg_weight: float = param(1e-4, ge=0)

    def __init__(self, data: TrainData, hp: LightGCN.HParams) -> None:
        super().__init__(data, hp)
        self.user_emb = id_embedding(self.n_users, hp.embedding_size)
        self.item_emb = id_embedding(self.n_items, hp.embedding_size)
        self.adj = sparse_tensor(sym_normalize(bipartite_adjacency(data.train)))

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = layer_mean(self.adj, torch.cat([self.user_emb, self.item_emb]), self.hp.n_layers, self.adj)
        return out[: self.n_users], out[self.n_users :]

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate()

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_all, item_all = self.propagate()
        u, p, n = user_all[users], item_all[pos], item_all[neg]
        reg = emb_loss(self.user_emb[users], self.item_emb[pos], self.item_emb[neg])
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + self.hp.reg_weight * reg
