"""The constant sparse product (models/core/spmm.py): the CPU kernel against torch's product and a float64
reference, the same bits at every thread count, gradients through the kept transpose, the counting hook."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.core.graph import sparse_tensor
from models.core.spmm import layer_mean, matmul_into, observe_products, sparse_product, uses_kernel


def skewed_csr(rows: int, cols: int, seed: int) -> sp.csr_matrix:
    """A random matrix with empty rows and a few dense ones, as a popularity-skewed graph has."""
    rng = np.random.default_rng(seed)
    per_row = rng.zipf(1.6, rows).clip(0, cols)
    per_row[rng.random(rows) < 0.2] = 0
    r = np.repeat(np.arange(rows), per_row)
    c = rng.integers(0, cols, len(r))
    return sp.csr_matrix((rng.standard_normal(len(r)).astype(np.float32), (r, c)), shape=(rows, cols))


@pytest.mark.parametrize("width", [1, 3, 64])
def test_kernel_product_equals_torch_and_a_float64_reference(width):
    matrix = skewed_csr(500, 300, seed=width)
    adj = sparse_tensor(matrix)
    x = torch.randn(300, width, generator=torch.Generator().manual_seed(0))
    assert uses_kernel(adj, x)
    ours = matmul_into(adj, x)
    reference = torch.from_numpy(matrix.astype(np.float64) @ x.double().numpy())
    torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, adj @ x, rtol=1e-5, atol=1e-5)
    assert not ours[np.diff(sparse_tensor(matrix).crow_indices().numpy()) == 0].any()  # empty rows are zero


def test_kernel_writes_into_the_buffer_it_is_given_and_ignores_stale_values():
    adj = sparse_tensor(skewed_csr(200, 100, seed=1))
    x = torch.randn(100, 8)
    out = torch.full((200, 8), 123.0)
    assert matmul_into(adj, x, out) is out
    torch.testing.assert_close(out, adj @ x, rtol=1e-5, atol=1e-5)


def test_same_bits_at_every_thread_count_and_in_every_run():
    adj = sparse_tensor(skewed_csr(3000, 2000, seed=2))
    x = torch.randn(2000, 64, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            results.append(matmul_into(adj, x).clone())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_gradient_of_a_directed_graph_product_uses_its_transpose():
    matrix = skewed_csr(40, 40, seed=3)
    assert abs(matrix - matrix.T).max() > 0
    x = torch.randn(40, 5, requires_grad=True)
    weights = torch.randn(40, 5)
    (sparse_product(sparse_tensor(matrix), x, sparse_tensor(matrix.T)) * weights).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (torch.from_numpy(matrix.toarray()) @ x * weights).sum().backward()
    torch.testing.assert_close(ours, x.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_layers", [0, 1, 4])
def test_layer_mean_and_its_gradient_match_the_dense_formula(n_layers):
    matrix = skewed_csr(60, 60, seed=4)
    x = torch.randn(60, 6, requires_grad=True)
    weights = torch.randn(60, 6)
    out = layer_mean(sparse_tensor(matrix), x, n_layers, sparse_tensor(matrix.T))
    (out * weights).sum().backward()
    ours, grad = out.detach(), x.grad.clone()
    x.grad = None
    dense, layers = torch.from_numpy(matrix.toarray()), [x]
    for _ in range(n_layers):
        layers.append(dense @ layers[-1])
    reference = torch.stack(layers).mean(0)
    (reference * weights).sum().backward()
    torch.testing.assert_close(ours, reference.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, x.grad, rtol=1e-5, atol=1e-5)


def test_torch_runs_where_the_kernel_does_not_apply():
    matrix = skewed_csr(50, 30, seed=5)
    x64 = torch.randn(30, 4, dtype=torch.float64)
    adj64 = sparse_tensor(matrix).to(torch.float64)
    assert not uses_kernel(adj64, x64)
    torch.testing.assert_close(matmul_into(adj64, x64), torch.from_numpy(matrix.astype(np.float64) @ x64.numpy()))


def test_observers_see_every_kernel_product_and_only_inside_the_block():
    adj = sparse_tensor(skewed_csr(20, 20, seed=6))
    x = torch.randn(20, 3, requires_grad=True)
    seen = []
    with observe_products(lambda a, d, o: seen.append((a.shape, d.shape, o.shape))):
        layer_mean(adj, x, 2, adj).sum().backward()
    layer_mean(adj, x, 2, adj)
    assert seen == [((20, 20), (20, 3), (20, 3))] * 4  # two layers forward, two backward
