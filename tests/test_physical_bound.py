"""bench/physical_bound.py counts what an epoch must move and compute: checked on a hand-sized example."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from bench.physical_bound import ADAM_BYTES_PER_PARAM, Machine, epoch_work
from models.core.graph import sparse_tensor
from models.core.spmm import layer_mean


def test_sparse_products_dense_flops_gathers_and_adam_are_counted_by_hand():
    adj = sparse_tensor(sp.random(100, 100, density=0.05, format="csr", random_state=0, dtype=np.float32))
    x = torch.randn(100, 8, requires_grad=True)
    w = torch.randn(8, 4, requires_grad=True)

    def one_step() -> int:
        y = layer_mean(adj, x, 2, adj) @ w  # 2 sparse products forward, 2 backward; one [100, 8] x [8, 4]
        rows = torch.nn.functional.embedding(torch.tensor([1, 2, 3]), x)
        (y.sum() + rows.sum()).backward()
        return 1

    work = epoch_work(one_step, 100 * 8 + 8 * 4)
    per_product = adj._nnz() * (8 + 4 + 8 * 4) + 100 * 8 * 4  # column index, value, one 8-float row; output
    assert work.sparse_bytes == 4 * per_product
    assert work.flops == 3 * 2 * 100 * 8 * 4  # forward, and the two gradient products of the backward
    assert work.gather_bytes == 2 * 3 * 8 * 4 + 3 * 3 * 8 * 4  # 3 rows read+written; their gradient scattered
    assert work.optimizer_bytes == ADAM_BYTES_PER_PARAM * (100 * 8 + 8 * 4)
    machine = Machine(gather_gbps=1.0, copy_gbps=2.0, matmul_gflops=4.0, threads=1)
    expected = (work.sparse_bytes + work.gather_bytes) / 1e9 + work.flops / 4e9 + work.optimizer_bytes / 2e9
    assert abs(work.seconds(machine) - expected) < 1e-15
