"""FREEDOM (Zhou & Shen, MM'23): freezing and denoising graph structures for multimodal recommendation.

Follows MMRec's FREEDOM:
* a frozen item-item graph: per modality the top-k cosine kNN of the raw features, binarised (self
  included), D^-1/2 A D^-1/2 normalised (row degrees, so every value is 1/k), mixed with fixed weights
  `mm_image_weight` (image) and 1 - mm_image_weight (text);
* degree-sensitive edge pruning: before every epoch a share `dropout` of the user-item edges is removed,
  sampling the kept ones without replacement with probability proportional to 1/sqrt(d_u * d_i), and the
  kept graph is re-normalised with its own degrees; evaluation uses the full graph;
* item-graph convolution of the item ID embeddings (`n_mm_layers`), LightGCN on the user-item graph
  (`n_ui_layers`, mean of all layers); item = UI item embedding + item-graph embedding;
* loss = BPR + reg_weight * (BPR of users against projected text features + against projected image
  features); there is no L2 term (reg_weight weighs the modality BPR terms, as in MMRec).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmpipe.config import param
from models.core.base import IMAGE, HParams, Recommender, TrainData
from models.core.graph import binarize, bipartite_adjacency, sparse_tensor, sym_normalize
from models.core.layers import bpr_loss, id_embedding
from models.core.spmm import layer_mean, sparse_product


class FREEDOM(Recommender):
    name = "freedom"
    reads = "graph"
    scores_cold_items = True

    @dataclass(frozen=True)
    class HParams(HParams):
        embedding_size: int = param(64, ge=1)
        knn_k: int = param(10, ge=1)
        mm_image_weight: float = param(0.1, ge=0, le=1, doc="fixed image weight of the frozen item graph")
        n_mm_layers: int = param(1, ge=0)
        n_ui_layers: int = param(2, ge=0)
        dropout: float = param(0.8, ge=0, lt=1, doc="share of user-item edges pruned each epoch")
        reg_weight: float = param(1e-3, ge=0, doc="weight of the modality BPR terms")
        modalities: tuple[str, ...] | None = param(None, doc="null: all")

    def __init__(self, data: TrainData, hp: FREEDOM.HParams) -> None:
        super().__init__(data, hp)
        self.modalities = data.modalities(self.name, hp.modalities, graphs=True)
        self.user_emb = id_embedding(self.n_users, hp.embedding_size)
        self.item_emb = id_embedding(self.n_items, hp.embedding_size)
        self.features = nn.ParameterDict({m: nn.Parameter(data.features[m].clone()) for m in self.modalities})
        self.project = nn.ModuleDict(
            {m: nn.Linear(data.features[m].shape[1], hp.embedding_size) for m in self.modalities}
        )

        image_weight = hp.mm_image_weight
        weights = {m: image_weight if m == IMAGE else 1.0 - image_weight for m in self.modalities}
        if len(self.modalities) == 1:  # one modality: its graph alone
            weights = {self.modalities[0]: 1.0}
        mm_adj = sum(weights[m] * sym_normalize(binarize(data.item_knn(m, hp.knn_k))) for m in self.modalities)
        self.mm_adj, self.mm_adj_t = sparse_tensor(mm_adj), sparse_tensor(mm_adj.T)  # kNN graphs are directed

        self.full_adj = sparse_tensor(sym_normalize(bipartite_adjacency(data.train)))
        coo = sp.coo_matrix(data.train)
        deg_u = np.asarray(data.train.sum(axis=1)).ravel()
        deg_i = np.asarray(data.train.sum(axis=0)).ravel()
        self.edges = (coo.row.astype(np.int64), coo.col.astype(np.int64))
        # a numpy array: the pruning draws on the CPU whatever the device, so it is the same everywhere
        self.edge_weights = 1.0 / np.sqrt((deg_u[coo.row] + 1e-7) * (deg_i[coo.col] + 1e-7))
        self.train_adj = self.full_adj

    def on_epoch_start(self, epoch: int, rng: np.random.Generator) -> None:
        """Degree-sensitive edge pruning: keep (1 - dropout) of the edges, favouring low-degree ones."""
        if self.hp.dropout <= 0:
            return
        n_keep = int(len(self.edge_weights) * (1.0 - self.hp.dropout))
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        weights = torch.from_numpy(self.edge_weights)
        keep = torch.multinomial(weights, n_keep, replacement=False, generator=generator).numpy()
        kept = sp.csr_matrix(
            (np.ones(n_keep, np.float32), (self.edges[0][keep], self.edges[1][keep])),
            shape=(self.n_users, self.n_items),
        )
        self.train_adj = sparse_tensor(sym_normalize(bipartite_adjacency(kept))).to(self.device)

    def propagate(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.item_emb
        for _ in range(self.hp.n_mm_layers):
            h = sparse_product(self.mm_adj, h, self.mm_adj_t)
        out = layer_mean(adj, torch.cat([self.user_emb, self.item_emb]), self.hp.n_ui_layers, adj)
        return out[: self.n_users], out[self.n_users :] + h

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.full_adj)  # scoring uses the unpruned graph

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_all, item_all = self.propagate(self.train_adj if self.training else self.full_adj)
        u = user_all[users]
        loss = bpr_loss((u * item_all[pos]).sum(-1), (u * item_all[neg]).sum(-1))
        for m in self.modalities:
            p, n = self.project[m](self.features[m][pos]), self.project[m](self.features[m][neg])
            loss = loss + self.hp.reg_weight * bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        return loss
