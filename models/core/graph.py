"""Graph preparation for the models: take a stored graph's top k, binarise, normalise, mix.

The graphs stage stores every graph once (top K per row, raw cosine values or counts); each model turns
it into the matrix its paper propagates with, using these functions. All work on scipy CSR matrices
and return CSR float32.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from mmpipe.sparse import topk_per_row

__all__ = [
    "bipartite_adjacency",
    "binarize",
    "coo_tensor",
    "knn_tensor",
    "sym_normalize_tensor",
    "row_normalize",
    "sparse_tensor",
    "self_loop_row_normalize",
    "sym_normalize",
    "top_k",
    "weighted_sum",
]


def top_k(graph: sp.spmatrix, k: int, name: str = "graph") -> sp.csr_matrix:
    """The first k neighbours of each row of a stored top-K graph.

    kNN graphs store exactly K entries per row, so asking for more is an error that says which
    graphs.* key to raise; co-occurrence rows may hold fewer than K and then keep what they have.
    """
    graph = sp.csr_matrix(graph, dtype=np.float32)
    lengths = np.diff(graph.indptr)
    if graph.nnz and lengths.min() == lengths.max() < min(k, graph.shape[1]):
        raise ValueError(
            f"{name}: the model asks for k={k} neighbours but the graphs stage stored {lengths.max()} per row; "
            f"raise the matching graphs.*_k in params.yaml"
        )
    return topk_per_row(graph, k)


def binarize(graph: sp.spmatrix) -> sp.csr_matrix:
    out = sp.csr_matrix(graph, dtype=np.float32, copy=True)
    out.data[:] = 1.0
    return out


def sym_normalize(adj: sp.spmatrix, eps: float = 1e-7) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 with D the row sums (LightGCN's adjacency; LATTICE/MICRO/FREEDOM's kNN graphs,
    which are directed, so both factors use row sums as those papers' code does)."""
    adj = sp.csr_matrix(adj, dtype=np.float32)
    deg = np.asarray(adj.sum(axis=1)).ravel() + eps
    d = sp.diags(np.power(deg, -0.5).astype(np.float32))
    return (d @ adj @ d).tocsr()


def row_normalize(adj: sp.spmatrix, eps: float = 1e-7) -> sp.csr_matrix:
    """D^-1 A: each row sums to one (mean aggregation)."""
    adj = sp.csr_matrix(adj, dtype=np.float32)
    deg = np.asarray(adj.sum(axis=1)).ravel() + eps
    return (sp.diags((1.0 / deg).astype(np.float32)) @ adj).tocsr()


def self_loop_row_normalize(adj: sp.spmatrix) -> sp.csr_matrix:
    """D^-1 (A + I): LATTICE's and MICRO's user-item propagation matrix."""
    adj = sp.csr_matrix(adj, dtype=np.float32)
    return row_normalize(adj + sp.identity(adj.shape[0], dtype=np.float32, format="csr"), eps=0.0)


def bipartite_adjacency(train: sp.spmatrix) -> sp.csr_matrix:
    """The (users + items) square adjacency of a users x items interaction matrix."""
    r = sp.csr_matrix(train, dtype=np.float32)
    r.data[:] = 1.0
    return sp.bmat([[None, r], [r.T, None]], format="csr")


def sparse_tensor(matrix: sp.spmatrix) -> torch.Tensor:
    """A scipy matrix as a torch sparse CSR tensor (float32)."""
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    csr.sum_duplicates()  # also sorts the column indices, which torch's CSR tensors require
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(csr.data),
            size=csr.shape,
            check_invariants=True,
        )


# --- torch: graphs the models learn while training (LATTICE, MICRO) ---------------------------------


def coo_tensor(matrix: sp.spmatrix) -> torch.Tensor:
    """A scipy matrix as a coalesced torch sparse COO tensor (float32)."""
    coo = sp.coo_matrix(matrix, dtype=np.float32)
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), coo.shape, check_invariants=False).coalesce()


def knn_tensor(features: torch.Tensor, k: int, block_mb: float = 64) -> torch.Tensor:
    """Top-k cosine graph of the rows of `features`, differentiable in the kept values.

    Computed a block of rows at a time (never N x N), self included, values = cosine, as the learned
    graphs of LATTICE and MICRO. Returns a coalesced sparse COO tensor.
    """
    n = features.shape[0]
    k = min(k, n)
    unit = torch.nn.functional.normalize(features, dim=1)
    block = max(1, int(block_mb * 2**20 / 4 / max(n, 1)))
    rows, cols, vals = [], [], []
    for start in range(0, n, block):
        top_vals, top_idx = torch.topk(unit[start : start + block] @ unit.T, k, dim=1)
        rows.append(torch.arange(start, start + len(top_idx), device=features.device).repeat_interleave(k))
        cols.append(top_idx.reshape(-1))
        vals.append(top_vals.reshape(-1))
    indices = torch.stack([torch.cat(rows), torch.cat(cols)])
    return torch.sparse_coo_tensor(indices, torch.cat(vals), (n, n), check_invariants=False).coalesce()


def sym_normalize_tensor(adj: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """D^-1/2 A D^-1/2 (row sums) of a sparse COO tensor, differentiable in its values."""
    adj = adj.coalesce()
    rows, cols = adj.indices()
    values = adj.values()
    deg = torch.zeros(adj.shape[0], dtype=values.dtype, device=values.device).index_add(0, rows, values) + eps
    scale = deg.pow(-0.5)
    return torch.sparse_coo_tensor(
        adj.indices(), values * scale[rows] * scale[cols], adj.shape, check_invariants=False
    ).coalesce()


def weighted_sum(graphs: list[torch.Tensor], weights) -> torch.Tensor:
    """sum_m w_m * G_m for sparse COO tensors (differentiable in the weights and values)."""
    total = None
    for graph, weight in zip(graphs, weights, strict=True):
        part = torch.sparse_coo_tensor(graph.indices(), graph.values() * weight, graph.shape, check_invariants=False)
        total = part if total is None else total + part
    return total.coalesce()
