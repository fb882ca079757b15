"""Sparse-matrix helpers shared by the graphs stage and the models."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def topk_per_row(matrix: sp.spmatrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each row; equal values keep the smaller column index.

    The graphs stage stores each graph's top K this way; a model that wants k <= K neighbours calls it
    again with its k and gets exactly the graph it would have got from a top-k computation.
    """
    matrix = sp.csr_matrix(matrix)
    matrix.eliminate_zeros()
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    order = np.lexsort((matrix.indices, -matrix.data, rows))
    rank = np.arange(len(order)) - matrix.indptr[rows[order]]
    keep = order[rank < k]
    return sp.csr_matrix(
        (matrix.data[keep], (rows[keep], matrix.indices[keep])), shape=matrix.shape, dtype=matrix.dtype
    )
