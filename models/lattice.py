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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Recommender, TrainData, bpr_loss, sparse_tensor
from models.graph import (
    bipartite_adjacency,
    coo_tensor,
    knn_tensor,
    self_loop_row_normalize,
    sym_normalize,
    sym_normalize_tensor,
    top_k,
    weighted_sum,
)
from models.registry import register


@register("lattice")
class LATTICE(Recommender):
    group = "graph"
    scores_cold_items = True

    def __init__(self, data: TrainData, hp: dict[str, Any]) -> None:
        super().__init__(data, hp)
        dim, feat_dim = int(hp["embedding_size"]), int(hp["feat_embed_dim"])
        self.k, self.lam = int(hp["knn_k"]), float(hp["lambda_coeff"])
        self.n_layers, self.n_ui_layers = int(hp["n_layers"]), int(hp["n_ui_layers"])
        self.reg_weight = float(hp["reg_weight"])
        self.modalities = list(hp.get("modalities") or sorted(data.features))
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        # MMRec keeps the raw features trainable (nn.Embedding.from_pretrained(freeze=False)).
        self.features = nn.ParameterDict({m: nn.Parameter(data.features[m].clone()) for m in self.modalities})
        self.project = nn.ModuleDict({m: nn.Linear(data.features[m].shape[1], feat_dim) for m in self.modalities})
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 1.0 / len(self.modalities)))
        self.original = [
            coo_tensor(sym_normalize(top_k(data.knn[m], self.k, f"graphs/knn/{m}.npz"))) for m in self.modalities
        ]
        self.ui_adj = sparse_tensor(self_loop_row_normalize(bipartite_adjacency(data.train)))
        self.rebuild = True
        self.item_adj: torch.Tensor | None = None

    def on_epoch_start(self, epoch: int, rng) -> None:
        self.rebuild = True

    def build_item_graph(self) -> torch.Tensor:
        weights = F.softmax(self.modal_weight, dim=0)
        learned = [knn_tensor(self.project[m](self.features[m]), self.k) for m in self.modalities]
        learned_mix = sym_normalize_tensor(weighted_sum(learned, weights))
        original_mix = weighted_sum(self.original, weights)
        return weighted_sum([learned_mix, original_mix], [1 - self.lam, self.lam])

    def current_item_graph(self) -> torch.Tensor:
        if not self.training or not torch.is_grad_enabled():  # scoring: fresh graph, cache untouched
            return self.build_item_graph()
        if self.rebuild or self.item_adj is None:
            self.rebuild = False
            graph = self.build_item_graph()
            self.item_adj = graph.detach()
            return graph
        return self.item_adj

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        item_graph = self.current_item_graph()
        h = self.item_emb
        for _ in range(self.n_layers):
            h = torch.sparse.mm(item_graph, h)
        x = torch.cat([self.user_emb, self.item_emb])
        layers = [x]
        for _ in range(self.n_ui_layers):
            x = self.ui_adj @ x
            layers.append(x)
        out = torch.stack(layers).mean(dim=0)
        return out[: self.n_users], out[self.n_users :] + F.normalize(h, dim=1)

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate()

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_all, item_all = self.propagate()
        u, p, n = user_all[users], item_all[pos], item_all[neg]
        reg = (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / (2 * len(users))
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + self.reg_weight * reg
