"""REARM (Ma et al., MM'25): refining contrastive learning and homography relations for multimodal recs.

Follows the official MrShouxingMa/REARM code; the 16 flags of its command line are this model's
hyperparameters (the official per-dataset settings are PRESETS below, chosen with train.rearm.preset):
* homogeneous graphs: G_ii = ii_co_weight * C_i + (1 - ii_co_weight) * S_i, where C_i is the item
  co-occurrence top-`item_knn_k` with softmax(counts) row weights and S_i mixes the per-modality item
  kNN graphs (cosine top-`item_knn_k`, self included, divided by k) with i_mm_image_weight on image;
  the user graph G_uu likewise from user co-occurrence and the kNN of user interest vectors (mean of
  their training items' features), with uu_co_weight, u_mm_image_weight, user_knn_k;
* [ID | projected image | projected text] of items (users: of their trainable interest vectors) is
  propagated `n_ii_layers` (`n_uu_layers`) times on G_ii (G_uu), row-L2-normalised over all 192 dims;
* items: self-attention per modality over the 64 feature positions (one head, 1-d tokens, dropout
  s_drop on the attention weights) and text->image / image->text cross-attention (dropout m_drop), each
  with residual, one shared LayerNorm and one shared PReLU; users: PReLU only;
* the 128-d modality channel and the 64-d ID channel are propagated `num_layer` times on the symmetric
  user-item graph (mean of layers); a rank-`rank` meta network turns the ID channel into a
  modal-shared vector; representation = [PReLU(image) + id, PReLU(text) + id, PReLU(shared) + id];
* loss = BPR + cl_loss_weight * InfoNCE(image vs text channel; batch items and users, cl_tmp)
  + diff_loss_weight * orthogonality(image vs text channel); AdamW with weight_decay = reg_weight.
Documented differences: co-occurrence rows with fewer than k neighbours keep what they have (the
official code pads them with random repeats); negatives exclude the user's training items only (the
official code also excludes validation and test items, which uses held-out data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from mmpipe.config import ParamsError, param
from models.core.base import IMAGE, HParams, Recommender, TrainData
from models.core.graph import bipartite_adjacency, sparse_tensor, sym_normalize, top_k
from models.core.layers import bpr_loss
from models.core.optim import adam
from models.core.spmm import layer_mean, sparse_product

FLAG = "one of REARM's 16 flags: set train.rearm.preset, or give it"
# The official per-dataset commands (README of MrShouxingMa/REARM); `train.rearm.preset` picks one.
PRESETS = {
    "baby": {
        "num_layer": 4, "reg_weight": 0.0005, "rank": 3, "s_drop": 0.4, "m_drop": 0.6, "u_mm_image_weight": 0.2,
        "i_mm_image_weight": 0.0, "uu_co_weight": 0.4, "ii_co_weight": 0.2, "user_knn_k": 40, "item_knn_k": 10,
        "n_ii_layers": 1, "n_uu_layers": 1, "cl_tmp": 0.6, "cl_loss_weight": 5.0e-6, "diff_loss_weight": 5.0e-5,
        "lr": 5.0e-5,
    },
    "sports": {
        "num_layer": 5, "reg_weight": 0.05, "rank": 7, "s_drop": 1.0, "m_drop": 0.2, "u_mm_image_weight": 0.0,
        "i_mm_image_weight": 0.2, "uu_co_weight": 0.9, "ii_co_weight": 0.2, "user_knn_k": 25, "item_knn_k": 5,
        "n_ii_layers": 2, "n_uu_layers": 2, "cl_tmp": 1.5, "cl_loss_weight": 1.0e-3, "diff_loss_weight": 5.0e-4,
        "lr": 5.0e-5,
    },
    "clothing": {
        "num_layer": 4, "reg_weight": 0.00001, "rank": 3, "s_drop": 0.4, "m_drop": 0.1, "u_mm_image_weight": 0.1,
        "i_mm_image_weight": 0.1, "uu_co_weight": 0.7, "ii_co_weight": 0.1, "user_knn_k": 45, "item_knn_k": 10,
        "n_ii_layers": 1, "n_uu_layers": 1, "cl_tmp": 0.03, "cl_loss_weight": 1.0e-6, "diff_loss_weight": 1.0e-5,
        "lr": 5.0e-5,
    },
}  # fmt: skip


def softmax_rows(counts: sp.csr_matrix, popularity: np.ndarray, k: int) -> sp.csr_matrix:
    """Row weights softmax(counts); a row without neighbours links to the k most popular nodes with
    weights softmax(their share of those k nodes' popularity), as the official code (which applies its
    softmax to every row, the fallback's popularity shares included)."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    data = counts.data.copy()
    for r in range(counts.shape[0]):
        lo, hi = counts.indptr[r], counts.indptr[r + 1]
        if hi > lo:
            e = np.exp(data[lo:hi] - data[lo:hi].max())
            data[lo:hi] = e / e.sum()
    out = sp.csr_matrix((data, counts.indices, counts.indptr), shape=counts.shape)
    empty = np.flatnonzero(np.diff(counts.indptr) == 0)
    if len(empty):
        popular = np.argsort(-popularity, kind="stable")[:k]
        popular = popular[popularity[popular] > 0]
        share = popularity[popular] / popularity[popular].sum()
        weights = np.exp(share - share.max()) / np.exp(share - share.max()).sum()
        fallback = sp.csr_matrix(
            (np.tile(weights, len(empty)), (np.repeat(empty, len(popular)), np.tile(popular, len(empty)))),
            shape=counts.shape,
        )
        out = out + fallback
    return out.astype(np.float32).tocsr()


def knn_mix(graphs: dict[str, sp.csr_matrix], k: int, image_weight: float, name: str) -> sp.csr_matrix:
    """image_weight * kNN_image + (1 - image_weight) * kNN_text, each top-k cosine divided by k."""
    weights = {m: image_weight if m == IMAGE else 1.0 - image_weight for m in graphs}
    if len(graphs) == 1:
        weights = dict.fromkeys(graphs, 1.0)
    return sum(weights[m] * top_k(g, k, f"{name} {m}") / k for m, g in graphs.items())


class PositionAttention(nn.Module):
    """One-head attention over the 64 positions of a vector, each position a 1-d token (REARM's
    nn.MultiheadAttention(embed_dim=1)); dropout on the attention weights, written out so p = 1 gives
    zeros as REARM's sports setting expects."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.qkv = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3, 1)).squeeze(1))
        self.qkv_bias = nn.Parameter(torch.zeros(3))
        self.out = nn.Linear(1, 1)
        nn.init.zeros_(self.out.bias)
        self.dropout = dropout

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        q = query * self.qkv[0] + self.qkv_bias[0]
        k = key_value * self.qkv[1] + self.qkv_bias[1]
        v = key_value * self.qkv[2] + self.qkv_bias[2]
        weights = torch.softmax(q.unsqueeze(2) * k.unsqueeze(1), dim=2)  # [n, 64, 64]
        if self.training and self.dropout >= 1:
            weights = torch.zeros_like(weights)
        elif self.training and self.dropout > 0:  # inverted dropout; uniform draws are faster than bernoulli_
            keep = torch.rand(weights.shape, device=weights.device) >= self.dropout
            weights = weights * keep / (1.0 - self.dropout)
        return self.out(weights @ v.unsqueeze(2)).squeeze(2)


class MetaShared(nn.Module):
    """REARM's low-rank meta network: the ID channel z mapped through softmax-normalised rank-k factors
    generated from the (detached) modality channel."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.dim, self.rank = dim, rank
        self.compress = nn.Linear(2 * dim, dim)  # its output is detached, as in REARM: never trained
        self.gen1 = nn.Sequential(nn.Linear(dim, dim * rank), nn.PReLU(), nn.Linear(dim * rank, dim * rank))
        self.gen2 = nn.Sequential(nn.Linear(dim, dim * rank), nn.PReLU(), nn.Linear(dim * rank, dim * rank))

    def forward(self, z: torch.Tensor, modal: torch.Tensor) -> torch.Tensor:
        key = self.compress(modal).detach()
        q1 = F.normalize(self.gen1(key), dim=1).view(-1, self.dim, self.rank)
        q2 = F.normalize(self.gen2(key), dim=1).view(-1, self.rank, self.dim)
        w1 = torch.softmax(q1 + q1.mean(dim=0, keepdim=True), dim=1)
        w2 = torch.softmax(q2 + q2.mean(dim=0, keepdim=True), dim=1)
        return torch.bmm(torch.bmm(z.unsqueeze(1), w1), w2).squeeze(1)


def info_nce(view_a: torch.Tensor, view_b: torch.Tensor, tau: float) -> torch.Tensor:
    a, b = F.normalize(view_a, dim=1), F.normalize(view_b, dim=1)
    return F.cross_entropy(a @ b.T / tau, torch.arange(len(a), device=a.device))


def orthogonality(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Mean squared cross-correlation of the column-centred, row-normalised (detached norms) channels."""
    x1, x2 = x1 - x1.mean(dim=0), x2 - x2.mean(dim=0)
    x1 = x1 / (x1.norm(dim=1, keepdim=True).detach() + 1e-6)
    x2 = x2 / (x2.norm(dim=1, keepdim=True).detach() + 1e-6)
    return (x1.T @ x2).pow(2).mean()


class REARM(Recommender):
    name = "rearm"
    reads = "graph"
    scores_cold_items = True
    PRESETS = PRESETS

    @dataclass(frozen=True)
    class HParams(HParams):
        num_layer: int = param(ge=0, doc=FLAG)
        reg_weight: float = param(ge=0, doc=FLAG + " (AdamW's weight decay)")
        rank: int = param(ge=1, doc=FLAG)
        s_drop: float = param(ge=0, le=1, doc=FLAG)
        m_drop: float = param(ge=0, le=1, doc=FLAG)
        u_mm_image_weight: float = param(ge=0, le=1, doc=FLAG)
        i_mm_image_weight: float = param(ge=0, le=1, doc=FLAG)
        uu_co_weight: float = param(ge=0, le=1, doc=FLAG)
        ii_co_weight: float = param(ge=0, le=1, doc=FLAG)
        user_knn_k: int = param(ge=1, doc=FLAG)
        item_knn_k: int = param(ge=1, doc=FLAG)
        n_ii_layers: int = param(ge=0, doc=FLAG)
        n_uu_layers: int = param(ge=0, doc=FLAG)
        cl_tmp: float = param(gt=0, doc=FLAG)
        cl_loss_weight: float = param(ge=0, doc=FLAG)
        diff_loss_weight: float = param(ge=0, doc=FLAG)
        embedding_size: int = param(64, ge=1)
        lr: float | None = param(None, gt=0)

    def __init__(self, data: TrainData, hp: REARM.HParams) -> None:
        super().__init__(data, hp)
        self.dim = dim = hp.embedding_size
        self.num_layer, self.rank = hp.num_layer, hp.rank
        self.n_ii, self.n_uu = hp.n_ii_layers, hp.n_uu_layers
        self.cl_tmp, self.cl_w, self.diff_w = hp.cl_tmp, hp.cl_loss_weight, hp.diff_loss_weight
        self.weight_decay = hp.reg_weight
        self.modalities = [m for m in ("image", "text") if m in data.features]
        if len(self.modalities) != 2:
            missing = [m for m in ("image", "text") if m not in data.features]
            raise ParamsError(
                f"model 'rearm' needs image and text features; the dataset has no {missing} (pipeline.modalities)"
            )
        k_u, k_i = hp.user_knn_k, hp.item_knn_k

        item_pop = np.asarray(data.train.sum(axis=0)).ravel()
        user_pop = np.asarray(data.train.sum(axis=1)).ravel()
        co_i = softmax_rows(top_k(data.item_co, k_i, data.graph_path("item_co")), item_pop, k_i)
        co_u = softmax_rows(top_k(data.user_co, k_u, data.graph_path("user_co")), user_pop, k_u)
        sim_i = knn_mix({m: data.knn[m] for m in self.modalities}, k_i, hp.i_mm_image_weight, "item kNN")
        sim_u = knn_mix({m: data.user_knn[m] for m in self.modalities}, k_u, hp.u_mm_image_weight, "user kNN")
        ii_w, uu_w = hp.ii_co_weight, hp.uu_co_weight
        item_graph, user_graph = ii_w * co_i + (1 - ii_w) * sim_i, uu_w * co_u + (1 - uu_w) * sim_u
        self.item_graph, self.user_graph = sparse_tensor(item_graph), sparse_tensor(user_graph)
        # their transposes, for the products' backward (top-k graphs are directed)
        self.item_graph_t, self.user_graph_t = sparse_tensor(item_graph.T), sparse_tensor(user_graph.T)
        self.ui_adj = sparse_tensor(sym_normalize(bipartite_adjacency(data.train)))

        self.user_emb = nn.Parameter(torch.randn(self.n_users, dim) * 0.1)
        self.item_emb = nn.Parameter(torch.randn(self.n_items, dim) * 0.1)
        inverse_degree = sp.diags(1.0 / np.maximum(user_pop, 1)).astype(np.float32)
        interest = {
            m: torch.from_numpy(inverse_degree @ data.train @ data.features[m].numpy()) for m in self.modalities
        }
        self.item_features = nn.ParameterDict({m: nn.Parameter(data.features[m].clone()) for m in self.modalities})
        self.user_features = nn.ParameterDict({m: nn.Parameter(interest[m].float()) for m in self.modalities})
        self.item_project = nn.ModuleDict({m: self._linear(data.features[m].shape[1], dim) for m in self.modalities})
        self.user_project = nn.ModuleDict({m: self._linear(data.features[m].shape[1], dim) for m in self.modalities})
        self.self_attention = nn.ModuleDict({m: PositionAttention(hp.s_drop) for m in self.modalities})
        self.text_to_image = PositionAttention(hp.m_drop)
        self.image_to_text = PositionAttention(hp.m_drop)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.PReLU()
        self.user_meta, self.item_meta = MetaShared(dim, self.rank), MetaShared(dim, self.rank)

    @staticmethod
    def _linear(n_in: int, n_out: int) -> nn.Linear:
        layer = nn.Linear(n_in, n_out)
        nn.init.xavier_normal_(layer.weight)
        return layer

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        return adam(self.parameters(), lr=lr, weight_decay=self.weight_decay, decoupled=True)

    def homogeneous(
        self, graph: torch.Tensor, graph_t: torch.Tensor, parts: list[torch.Tensor], layers: int
    ) -> list[torch.Tensor]:
        x = torch.cat(parts, dim=1)
        for _ in range(layers):
            x = sparse_product(graph, x, graph_t)
        return list(F.normalize(x, dim=1).split(self.dim, dim=1))

    def mean_propagate(self, x: torch.Tensor) -> torch.Tensor:
        return layer_mean(self.ui_adj, x, self.num_layer, self.ui_adj)

    def forward_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(representations of users then items [N, 3 * dim], modality channel M [N, 2 * dim])."""
        img, txt = self.modalities
        i_id, i_img, i_txt = self.homogeneous(
            self.item_graph,
            self.item_graph_t,
            [
                self.item_emb,
                self.item_project[img](self.item_features[img]),
                self.item_project[txt](self.item_features[txt]),
            ],
            self.n_ii,
        )
        u_id, u_img, u_txt = self.homogeneous(
            self.user_graph,
            self.user_graph_t,
            [
                self.user_emb,
                self.user_project[img](self.user_features[img]),
                self.user_project[txt](self.user_features[txt]),
            ],
            self.n_uu,
        )
        h_img = self.act(self.norm(i_img + self.self_attention[img](i_img, i_img)))
        h_txt = self.act(self.norm(i_txt + self.self_attention[txt](i_txt, i_txt)))
        item_img = self.act(self.norm(h_img + self.text_to_image(h_txt, h_img)))
        item_txt = self.act(self.norm(h_txt + self.image_to_text(h_img, h_txt)))
        modal = self.mean_propagate(
            torch.cat([torch.cat([self.act(u_img), self.act(u_txt)], dim=1), torch.cat([item_img, item_txt], dim=1)])
        )
        ids = self.mean_propagate(torch.cat([u_id, i_id]))
        shared = torch.cat(
            [
                self.user_meta(ids[: self.n_users], modal[: self.n_users]),
                self.item_meta(ids[self.n_users :], modal[self.n_users :]),
            ]
        )
        rep = torch.cat(
            [self.act(modal[:, : self.dim]) + ids, self.act(modal[:, self.dim :]) + ids, self.act(shared) + ids], dim=1
        )
        return rep, modal

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        rep, _ = self.forward_all()
        return rep[: self.n_users], rep[self.n_users :]

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        rep, modal = self.forward_all()
        u, p, n = rep[users], rep[self.n_users + pos], rep[self.n_users + neg]
        loss = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        batch_items = self.n_users + torch.unique(torch.cat([pos, neg]))
        batch_users = torch.unique(users)
        d = self.dim
        cl = sum(info_nce(modal[s, :d], modal[s, d:], self.cl_tmp) for s in (batch_items, batch_users))
        diff = sum(orthogonality(modal[s, :d], modal[s, d:]) for s in (self.n_users + pos, users))
        return loss + self.cl_w * cl + self.diff_w * diff
