"""LATTICE (Zhang et al., MM'21): mining latent item-item structure from multimodal features.

Follows MMRec's LATTICE:
* the original item graph per modality is the top-k cosine kNN of the raw features (values kept,
  self included) with D^-1/2 S D^-1/2 normalisation (row sums), mixed by softmax(modal weights);
* the learned graph is the top-k cosine kNN of the projected (trainable) features, mixed by the same
  weights and then normalised; item graph = (1 - lambda) * learned + lambda * original;
* the learned graph is rebuilt on the first batch of every epoch (gradients reach the projections,
  modal weights and raw features there) and reused, detached, for the rest of the epoch; evaluation
  rebuilds it from the current parameters;
* one item-item convolution of the item ID embeddings; LightGCN-style propagation on D^-1 (A + I)
  (row-normalised, with self loops) over `n_ui_layers`, the mean of all layers;
  item = UI item embedding + L2-normalised item-graph embedding;
* loss = BPR + reg_weight * (||u||^2 + ||p||^2 + ||n||^2) / (2 * batch) on the final embeddings.
Differences: graphs are sparse and computed blockwise (MMRec builds dense N x N matrices), which
changes nothing in the values; the fixed graphs come from the graphs stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmpipe.config import param
from models.core.base import HParams, Recommender, TrainData
from models.core.graph import (
    bipartite_adjacency,
    coo_tensor,
    knn_tensor,
    self_loop_row_normalize,
    sparse_tensor,
    sym_normalize,
    sym_normalize_tensor,
    weighted_sum,
)
from models.core.layers import EpochCache, bpr_loss, id_embedding, squared_l2
from models.core.spmm import layer_mean


class LATTICE(Recommender):
    name = "lattice"
    reads = "graph"
    scores_cold_items = True
    end_to_end = True

    @dataclass(frozen=True)
    class HParams(HParams):
        embedding_size: int = param(64, ge=1)
        feat_embed_dim: int = param(64, ge=1)
        knn_k: int = param(10, ge=1)
        lambda_coeff: float = param(0.9, ge=0, le=1, doc="weight of the original (feature) graph")
        n_layers: int = param(1, ge=0, doc="item-item convolutions")
        n_ui_layers: int = param(2, ge=0)
        reg_weight: float = param(1e-4, ge=0)
        lr: float | None = param(1e-3, gt=0)
        lr_decay: float = param(0.96, gt=0, doc="lr * lr_decay^(epoch / 50), as MMRec's LATTICE")
        modalities: tuple[str, ...] | None = param(None, doc="null: all")

    def __init__(self, data: TrainData, hp: LATTICE.HParams) -> None:
        super().__init__(data, hp)
        self.modalities = data.modalities(self.name, hp.modalities, graphs=True)
        self.user_emb = id_embedding(self.n_users, hp.embedding_size)
        self.item_emb = id_embedding(self.n_items, hp.embedding_size)
        # MMRec keeps the raw features trainable (nn.Embedding.from_pretrained(freeze=False)).
        self.features = nn.ParameterDict({m: nn.Parameter(data.features[m].clone()) for m in self.modalities})
        self.project = nn.ModuleDict(
            {m: nn.Linear(data.features[m].shape[1], hp.feat_embed_dim) for m in self.modalities}
        )
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 1.0 / len(self.modalities)))
        self.original = [coo_tensor(sym_normalize(data.item_knn(m, hp.knn_k))) for m in self.modalities]
        ui_adj = self_loop_row_normalize(bipartite_adjacency(data.train))
        self.ui_adj, self.ui_adj_t = sparse_tensor(ui_adj), sparse_tensor(ui_adj.T)  # row-normalised: not symmetric
        self.item_graph = EpochCache(self.build_item_graph)

    def on_epoch_start(self, epoch: int, rng) -> None:
        self.item_graph.invalidate()

    def build_item_graph(self) -> torch.Tensor:
        weights = F.softmax(self.modal_weight, dim=0)
        learned = [knn_tensor(self.project[m](self.features[m]), self.hp.knn_k) for m in self.modalities]
        learned_mix = sym_normalize_tensor(weighted_sum(learned, weights))
        original_mix = weighted_sum(self.original, weights)
        lam = self.hp.lambda_coeff
        return weighted_sum([learned_mix, original_mix], [1 - lam, lam])

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        item_graph = self.item_graph.get(self.training)
        h = self.item_emb
        for _ in range(self.hp.n_layers):
            h = torch.sparse.mm(item_graph, h)
        out = layer_mean(self.ui_adj, torch.cat([self.user_emb, self.item_emb]), self.hp.n_ui_layers, self.ui_adj_t)
        return out[: self.n_users], out[self.n_users :] + F.normalize(h, dim=1)

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate()

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_all, item_all = self.propagate()
        u, p, n = user_all[users], item_all[pos], item_all[neg]
        reg = squared_l2(u, p, n)  # before the BPR term: autograd sums gradients in the order ops were made
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + self.hp.reg_weight * reg
