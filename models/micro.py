"""MICRO (Zhang et al., TKDE'22): latent structure mining with contrastive modality fusion.

Follows the official CRIPAC-DIG/MICRO code:
* per modality, an item graph A_m = (1 - lambda) * learned_m + lambda * original_m, where original_m
  is the top-k cosine kNN of the raw features and learned_m the top-k cosine kNN of the projected
  (trainable) features, each D^-1/2 S D^-1/2 normalised (row sums, values kept, self included); the
  learned graph is rebuilt on the first batch of each epoch and reused detached for the rest, and
  rebuilt for evaluation;
* per modality, `n_layers` item-item convolutions of the item ID embeddings: h_m = A_m^L E_i;
* attention fusion: s_m = w2^T tanh(W1 h_m + b1), alpha = softmax_m(s_m), h = sum_m alpha_m h_m;
* user-item propagation on D^-1 (A + I) (row-normalised, self loops), `n_ui_layers`, mean of layers;
  item = UI item embedding + L2-normalised h; users get no multimodal part;
* loss = BPR + reg_weight * (||u||^2 + ||p||^2 + ||n||^2) / (2 * batch) + cl_weight * sum_m InfoNCE(h_m, h)
  over all items (anchor h_m, positive the same item's h, negatives all other items in both views,
  temperature tau).
The cold-start setting changes only the data (as in MICRO's `--core 0`); here negatives are never cold
items (the shared trainer's rule), and cold items are reached through the item graphs.
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


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float, chunk: int = 4096) -> torch.Tensor:
    """MICRO's one-directional InfoNCE over all rows: z1_i against z2_i, negatives in both views."""
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    losses = []
    for start in range(0, len(a), chunk):
        anchor = a[start : start + chunk]
        intra = torch.exp(anchor @ a.T / tau)
        inter = torch.exp(anchor @ b.T / tau)
        rows = torch.arange(len(anchor))
        positive = inter[rows, rows + start]
        denominator = intra.sum(1) + inter.sum(1) - intra[rows, rows + start]
        losses.append(-torch.log(positive / denominator))
    return torch.cat(losses).mean()


@register("micro")
class MICRO(Recommender):
    group = "graph"
    scores_cold_items = True

    def __init__(self, data: TrainData, hp: dict[str, Any]) -> None:
        super().__init__(data, hp)
        dim = int(hp["embedding_size"])
        self.k, self.lam = int(hp["knn_k"]), float(hp["lambda_coeff"])
        self.n_layers, self.n_ui_layers = int(hp["n_layers"]), int(hp["n_ui_layers"])
        self.reg_weight, self.cl_weight, self.tau = float(hp["reg_weight"]), float(hp["cl_weight"]), float(hp["tau"])
        self.modalities = list(hp.get("modalities") or sorted(data.features))
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        self.features = nn.ParameterDict({m: nn.Parameter(data.features[m].clone()) for m in self.modalities})
        self.project = nn.ModuleDict({m: nn.Linear(data.features[m].shape[1], dim) for m in self.modalities})
        self.query = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))
        self.original = {
            m: coo_tensor(sym_normalize(top_k(data.knn[m], self.k, f"graphs/knn/{m}.npz"))) for m in self.modalities
        }
        self.ui_adj = sparse_tensor(self_loop_row_normalize(bipartite_adjacency(data.train)))
        self.rebuild = True
        self.item_graphs: dict[str, torch.Tensor] = {}

    def on_epoch_start(self, epoch: int, rng) -> None:
        self.rebuild = True

    def build_item_graphs(self) -> dict[str, torch.Tensor]:
        graphs = {}
        for m in self.modalities:
            learned = sym_normalize_tensor(knn_tensor(self.project[m](self.features[m]), self.k))
            graphs[m] = weighted_sum([learned, self.original[m]], [1 - self.lam, self.lam])
        return graphs

    def current_item_graphs(self) -> dict[str, torch.Tensor]:
        if not self.training or not torch.is_grad_enabled():  # scoring: fresh graph, cache untouched
            return self.build_item_graphs()
        if self.rebuild or not self.item_graphs:
            self.rebuild = False
            graphs = self.build_item_graphs()
            self.item_graphs = {m: g.detach() for m, g in graphs.items()}
            return graphs
        return self.item_graphs

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(users, items, per-modality item-graph embeddings, fused item-graph embedding)."""
        per_modality = {}
        for m, graph in self.current_item_graphs().items():
            h = self.item_emb
            for _ in range(self.n_layers):
                h = torch.sparse.mm(graph, h)
            per_modality[m] = h
        stacked = torch.stack([per_modality[m] for m in self.modalities], dim=1)  # [items, modalities, dim]
        attention = F.softmax(self.query(stacked), dim=1)
        fused = (attention * stacked).sum(dim=1)
        x = torch.cat([self.user_emb, self.item_emb])
        layers = [x]
        for _ in range(self.n_ui_layers):
            x = self.ui_adj @ x
            layers.append(x)
        out = torch.stack(layers).mean(dim=0)
        return out[: self.n_users], out[self.n_users :] + F.normalize(fused, dim=1), per_modality, fused

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items, _, _ = self.propagate()
        return users, items

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_all, item_all, per_modality, fused = self.propagate()
        u, p, n = user_all[users], item_all[pos], item_all[neg]
        reg = (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / (2 * len(users))
        contrastive = sum(info_nce(h, fused, self.tau) for h in per_modality.values())
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + self.reg_weight * reg + self.cl_weight * contrastive
