"""The product of a constant sparse matrix with a dense one: every graph propagation of the models.

On the CPU (float32) a compiled CSR kernel (numba) computes it: each row's nonzeros are read once and
their dense rows summed straight into the output row, rows split over the threads in chunks of equal
nonzeros. Torch's own CSR product fills a zeroed buffer and copies it into its result. Timed on the
Baby adjacency by `python -m bench.models_speed --baby ... --spmm-only`, beside its physical bound.
Elsewhere (CUDA, where bfloat16 autocast applies; other dtypes) torch's product runs. Each output row is
summed by one thread in the order of its nonzeros, so a result has the same bits at every thread count
and in every run (not the same bits as torch's product, which sums in another order).

`layer_mean` (LightGCN's propagation) runs its layers through two buffers it reuses, and its backward is
the same products with the transpose in Horner form: the gradient autograd would compute for the mean of
the layers, without a tensor per layer and per addition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

_kernel = None  # compiled on first use: importing numba costs about 0.3 s, which ID-only stages never pay
# Called with (adj, x, out) after every product the kernel computes: torch's dispatch modes do not see it,
# so a tool that counts an epoch's work (bench/physical_bound.py) subscribes here.
_observers: list[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]] = []


@contextmanager
def observe_products(callback: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]) -> Iterator[None]:
    """Within the block, call `callback(adj, x, out)` after every product the kernel computes."""
    _observers.append(callback)
    try:
        yield
    finally:
        _observers.remove(callback)


def _compile():
    """The CSR kernel: out[i] = sum_k data[k] * x[indices[k]] over row i's nonzeros, in their order."""
    import numba

    @numba.njit(parallel=True, cache=True, boundscheck=False, nogil=True)
    def csr_matmul(indptr, indices, data, x, out, chunks):  # pragma: no cover - compiled
        width = x.shape[1]
        for c in numba.prange(len(chunks) - 1):
            for row in range(chunks[c], chunks[c + 1]):
                for j in range(width):
                    out[row, j] = 0.0
                for k in range(indptr[row], indptr[row + 1]):
                    value, col = data[k], indices[k]
                    for j in range(width):
                        out[row, j] += value * x[col, j]

    return numba, csr_matmul


def _row_chunks(indptr: np.ndarray, threads: int) -> np.ndarray:
    """Row boundaries of 4 chunks per thread holding about equal numbers of nonzeros (graphs are skewed:
    a few popular items hold many of the edges)."""
    n_rows = len(indptr) - 1
    targets = np.linspace(0, indptr[-1], 4 * threads + 1)
    bounds = np.searchsorted(indptr, targets, side="left").clip(0, n_rows)
    bounds[0], bounds[-1] = 0, n_rows
    return np.unique(bounds)


def uses_kernel(adj: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether `adj @ x` runs on the compiled kernel (CPU, CSR, float32) rather than torch's product."""
    return (
        adj.layout == torch.sparse_csr
        and adj.device.type == "cpu"
        and x.device.type == "cpu"
        and x.dim() == 2
        and adj.dtype == torch.float32
        and x.dtype == torch.float32
    )


def matmul_into(adj: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """adj @ x (no autograd), written into `out` when given and the kernel runs, else into a new tensor."""
    if not uses_kernel(adj, x):
        return adj @ x
    global _kernel
    if _kernel is None:
        _kernel = _compile()
    numba, kernel = _kernel
    x = x.contiguous()
    if out is None:
        out = torch.empty(adj.shape[0], x.shape[1], dtype=x.dtype)
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    indptr, indices, values = adj.crow_indices().numpy(), adj.col_indices().numpy(), adj.values().numpy()
    kernel(indptr, indices, values, x.numpy(), out.numpy(), _row_chunks(indptr, threads))
    for observe in _observers:
        observe(adj, x, out)
    return out


class SparseProduct(torch.autograd.Function):
    """adj @ x for a constant sparse matrix; the backward multiplies by `adj_t`, adj's transpose built
    once by the model (torch's own backward of a CSR product transposes the matrix on every call)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj_t = adj_t
        return matmul_into(adj, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, matmul_into(ctx.adj_t, grad)


def sparse_product(adj: torch.Tensor, x: torch.Tensor, adj_t: torch.Tensor) -> torch.Tensor:
    """adj @ x, differentiable in x; `adj_t` is adj's transpose (adj itself when it is symmetric)."""
    return SparseProduct.apply(adj, adj_t, x)


class LayerMean(torch.autograd.Function):
    """(x + A x + ... + A^L x) / (L + 1) and its gradient g + A^T (g + A^T (... g)) with g = grad / (L + 1)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, adj_t: torch.Tensor, x: torch.Tensor, n_layers: int) -> torch.Tensor:
        ctx.adj_t, ctx.n_layers = adj_t, n_layers
        if n_layers == 0:
            return x / 1
        layer = matmul_into(adj, x)
        total = x + layer
        spare = None  # two buffers take turns: a layer is read while the next one is written
        for _ in range(1, n_layers):
            layer, spare = matmul_into(adj, layer, spare), layer
            total += layer
        return total.div_(n_layers + 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None, torch.Tensor, None]:
        g = grad / (ctx.n_layers + 1)
        acc = g
        for _ in range(ctx.n_layers):
            acc = matmul_into(ctx.adj_t, acc)
            acc += g
        return None, None, acc, None


def layer_mean(adj: torch.Tensor, x: torch.Tensor, n_layers: int, adj_t: torch.Tensor) -> torch.Tensor:
    """LightGCN's propagation: the mean of x, Ax, ..., A^L x (layer 0 included). `adj_t` is A's transpose
    (A itself for a symmetric normalisation), kept by the model."""
    return LayerMean.apply(adj, adj_t, x, n_layers)
