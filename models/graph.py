"""Graph normalisations the models apply to the graphs stage's raw matrices."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def sym_normalize(adj: sp.spmatrix, eps: float = 1e-7) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 with D the row sums (LightGCN's and LATTICE's normalised adjacency)."""
    adj = sp.csr_matrix(adj, dtype=np.float32)
    deg = np.asarray(adj.sum(axis=1)).ravel() + eps
    d = sp.diags(np.power(deg, -0.5).astype(np.float32))
    return (d @ adj @ d).tocsr()


def row_normalize(adj: sp.spmatrix, eps: float = 1e-7) -> sp.csr_matrix:
    """D^-1 A: each row sums to one (mean aggregation)."""
    adj = sp.csr_matrix(adj, dtype=np.float32)
    deg = np.asarray(adj.sum(axis=1)).ravel() + eps
    return (sp.diags((1.0 / deg).astype(np.float32)) @ adj).tocsr()


def bipartite_adjacency(train: sp.spmatrix) -> sp.csr_matrix:
    """The (users + items) square adjacency of a users x items interaction matrix."""
    r = sp.csr_matrix(train, dtype=np.float32)
    r.data[:] = 1.0
    return sp.bmat([[None, r], [r.T, None]], format="csr")
