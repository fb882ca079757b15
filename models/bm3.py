"""BM3 (Zhou et al., WWW'23): bootstrap latent representations for multimodal recommendation.

Follows MMRec's BM3:
* LightGCN over the user-item graph (D^-1/2 A D^-1/2, no self loops), the mean of `n_layers` + 1
  layers; an item's representation adds its ID embedding to that mean (a residual);
* the item features of each modality (trainable, as MMRec's `from_pretrained(freeze=False)`) are
  projected to the embedding size by a linear layer;
* no negatives: an online network (a shared linear `predictor` over the graph outputs and the projected
  features) is pulled towards a target network that is the graph output itself under dropout, without
  gradient (the bootstrap); per training pair (u, i), with cos the cosine similarity and ' the dropped,
  detached target:
      L = (1 - cos(pred(u), i')) + (1 - cos(pred(i), u'))
          + cl_weight * sum_m [(1 - cos(pred(f_m(i)), i')) + (1 - cos(pred(f_m(i)), f_m(i)'))]
          + reg_weight * (||U|| + ||I||) / n_items   (MMRec's EmbLoss over all graph outputs);
* scores are pred(u) . pred(i).
The trainer's sampled negatives are not used. BM3 scores items through their ID embeddings, so it does
not rank cold items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmpipe.config import param
from models.core.base import HParams, Recommender, TrainData
from models.core.graph import bipartite_adjacency, sparse_tensor, sym_normalize
from models.core.layers import emb_loss
from models.core.spmm import layer_mean


class BM3(Recommender):
    name = "bm3"
    reads = "feat"
    end_to_end = True

    @dataclass(frozen=True)
    class HParams(HParams):
        embedding_size: int = param(64, ge=1)
        n_layers: int = param(1, ge=0, doc="LightGCN layers (MMRec's grid: 1, 2)")
        dropout: float = param(0.5, ge=0, lt=1, doc="dropout of the target network (MMRec's grid: 0.3, 0.5)")
        reg_weight: float = param(0.1, ge=0, doc="MMRec's grid: 0.1, 0.01")
        cl_weight: float = param(2.0, ge=0, doc="weight of the feature (multimodal) bootstrap terms")
        modalities: tuple[str, ...] | None = param(None, doc="null: all")

    def __init__(self, data: TrainData, hp: BM3.HParams) -> None:
        super().__init__(data, hp)
        dim = hp.embedding_size
        self.modalities = data.modalities(self.name, hp.modalities)
        self.user_emb = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, dim)))
        self.predictor = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.predictor.weight)
        self.features = nn.ParameterDict({m: nn.Parameter(data.features[m].clone()) for m in self.modalities})
        self.project = nn.ModuleDict({m: nn.Linear(data.features[m].shape[1], dim) for m in self.modalities})
        for layer in self.project.values():
            nn.init.xavier_normal_(layer.weight)
        self.ui_adj = sparse_tensor(sym_normalize(bipartite_adjacency(data.train)))

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = layer_mean(self.ui_adj, torch.cat([self.user_emb, self.item_emb]), self.hp.n_layers, self.ui_adj)
        return out[: self.n_users], out[self.n_users :] + self.item_emb

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.propagate()
        return self.predictor(users), self.predictor(items)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_all, item_all = self.propagate()
        projected = {m: self.project[m](self.features[m][pos]) for m in self.modalities}
        p = self.hp.dropout
        with torch.no_grad():
            u_target = F.dropout(user_all[users], p)
            i_target = F.dropout(item_all[pos], p)
            f_target = {m: F.dropout(projected[m], p) for m in self.modalities}
        u_online, i_online = self.predictor(user_all[users]), self.predictor(item_all[pos])
        loss = _distance(u_online, i_target) + _distance(i_online, u_target)
        for m in self.modalities:
            f_online = self.predictor(projected[m])
            loss = loss + self.hp.cl_weight * (_distance(f_online, i_target) + _distance(f_online, f_target[m]))
        return loss + self.hp.reg_weight * emb_loss(user_all, item_all)


def _distance(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity: BM3's bootstrap loss."""
    return 1 - F.cosine_similarity(online, target, dim=-1).mean()
