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
items (the shared trainer's rule), and cold items are reached through the item graphs. The official
cold-start runs train at lr 1e-5: `train.micro.cold: {lr: 1.0e-5}` (params.yaml keeps the warm lr, which
suits the demo's short budgets).
Documented differences, both the shared trainer's: an epoch is a shuffled pass over the training
interactions in batches of `train.common.batch_size` (the official code draws a batch of distinct users,
1024 by default, and one positive and one negative item for each), and early stopping is MMRec's rule
(`models.core.trainer.EarlyStopping`, which the official code also follows).
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


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float, chunk: int = 4096) -> torch.Tensor:
    """MICRO's one-directional InfoNCE over all rows: z1_i against z2_i, negatives in both views."""
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    losses = []
    for start in range(0, len(a), chunk):
        anchor = a[start : start + chunk]
        intra = torch.exp(anchor @ a.T / tau)
        inter = torch.exp(anchor @ b.T / tau)
        rows = torch.arange(len(anchor), device=anchor.device)
        positive = inter[rows, rows + start]
        denominator = intra.sum(1) + inter.sum(1) - intra[rows, rows + start]
        losses.append(-torch.log(positive / denominator))
    return torch.cat(losses).mean()


class MICRO(Recommender):
    name = "micro"
    reads = "graph"
    scores_cold_items = True

    @dataclass(frozen=True)
    class HParams(HParams):
        embedding_size: int = param(64, ge=1)
        knn_k: int = param(10, ge=1)
        lambda_coeff: float = param(0.9, ge=0, le=1)
        n_layers: int = param(1, ge=0)
        n_ui_layers: int = param(2, ge=0)
        reg_weight: float = param(1e-5, ge=0)
        cl_weight: float = param(0.03, ge=0, doc="loss_ratio of the official code")
        tau: float = param(0.5, gt=0)
        lr: float | None = param(5e-4, gt=0)
        lr_decay: float = param(0.96, gt=0)
        modalities: tuple[str, ...] | None = param(None, doc="null: all")

    def __init__(self, data: TrainData, hp: MICRO.HParams) -> None:
        super().__init__(data, hp)
        dim = hp.embedding_size
        self.modalities = data.modalities(self.name, hp.modalities, graphs=True)
        self.user_emb = id_embedding(self.n_users, dim)
        self.item_emb = id_embedding(self.n_items, dim)
        self.features = nn.ParameterDict({m: nn.Parameter(data.features[m].clone()) for m in self.modalities})
        self.project = nn.ModuleDict({m: nn.Linear(data.features[m].shape[1], dim) for m in self.modalities})
        self.query = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))
        self.original = {m: coo_tensor(sym_normalize(data.item_knn(m, hp.knn_k))) for m in self.modalities}
        ui_adj = self_loop_row_normalize(bipartite_adjacency(data.train))
        self.ui_adj, self.ui_adj_t = sparse_tensor(ui_adj), sparse_tensor(ui_adj.T)  # row-normalised: not symmetric
        self.item_graphs = EpochCache(self.build_item_graphs)

    def on_epoch_start(self, epoch: int, rng) -> None:
        self.item_graphs.invalidate()

    def build_item_graphs(self) -> dict[str, torch.Tensor]:
        graphs = {}
        lam = self.hp.lambda_coeff
        for m in self.modalities:
            learned = sym_normalize_tensor(knn_tensor(self.project[m](self.features[m]), self.hp.knn_k))
            graphs[m] = weighted_sum([learned, self.original[m]], [1 - lam, lam])
        return graphs

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(users, items, per-modality item-graph embeddings, fused item-graph embedding)."""
        per_modality = {}
        for m, graph in self.item_graphs.get(self.training).items():
            h = self.item_emb
            for _ in range(self.hp.n_layers):
                h = torch.sparse.mm(graph, h)
            per_modality[m] = h
        stacked = torch.stack([per_modality[m] for m in self.modalities], dim=1)  # [items, modalities, dim]
        attention = F.softmax(self.query(stacked), dim=1)
        fused = (attention * stacked).sum(dim=1)
        out = layer_mean(self.ui_adj, torch.cat([self.user_emb, self.item_emb]), self.hp.n_ui_layers, self.ui_adj_t)
        return out[: self.n_users], out[self.n_users :] + F.normalize(fused, dim=1), per_modality, fused

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items, _, _ = self.propagate()
        return users, items

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_all, item_all, per_modality, fused = self.propagate()
        u, p, n = user_all[users], item_all[pos], item_all[neg]
        reg = squared_l2(u, p, n)  # before the BPR term: autograd sums gradients in the order ops were made
        contrastive = sum(info_nce(h, fused, self.hp.tau) for h in per_modality.values())
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + self.hp.reg_weight * reg + self.hp.cl_weight * contrastive
