"""A training epoch's physical bound: the bytes and FLOPs its essential operations must move and do,
over the rates this machine measures for them.

An epoch is run once under a dispatch mode that sees every aten operation (forward, backward and the
optimiser step) with its real tensors, and counts:

- sparse products (a sparse matrix times a dense one: the graph propagations): the nonzeros' indices
  and values read, one dense row gathered per nonzero, the output written -> at the gather bandwidth;
- row gathers and scatters (embedding lookups, index_select, their index_add backward): rows read and
  written -> at the gather bandwidth;
- dense matrix products (mm, addmm, bmm, baddbmm, the attention products): 2 m k n FLOPs -> at the
  measured float32 matmul throughput;
- the optimiser: Adam reads parameter, gradient and two moments and writes three, 28 bytes per
  parameter and step -> at the streaming copy bandwidth.

Element-wise work (activations, dropout masks, softmax, the loss) is left out, so the bound is a lower
bound of the time the epoch's arithmetic needs on this machine, not a target the code could reach.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.core.spmm import observe_products

aten = torch.ops.aten
DENSE_PRODUCTS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
GATHERS = {aten.embedding.default, aten.index_select.default, aten.index.Tensor}
SCATTERS = {aten.embedding_dense_backward.default, aten.index_add.default, aten.index_add_.default,
            aten.index_put.default, aten.index_put_.default}  # fmt: skip
ADAM_BYTES_PER_PARAM = 28  # read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq (float32)


@dataclass
class Machine:
    """This machine's rates, measured with the shapes the models use."""

    gather_gbps: float  # random rows of a [rows, dim] float32 table, cache-resident like the models' tables
    copy_gbps: float  # a streaming copy of 64 MB
    matmul_gflops: float  # float32 dense products of the models' sizes
    threads: int

    def describe(self) -> str:
        return (
            f"{self.threads} thread(s): gather {self.gather_gbps:.1f} GB/s, copy {self.copy_gbps:.1f} GB/s, "
            f"matmul {self.matmul_gflops:.0f} GFLOP/s"
        )


def _best_of(fn: Callable[[], Any], repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_machine(rows: int, dim: int, nnz: int) -> Machine:
    """The three rates at the current torch thread count: a gather of `nnz` random rows of a [rows, dim]
    table into a buffer (index read, row read, row written), a 64 MB copy, a 1024 x 256 x 1024 product."""
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(rows, dim, generator=gen)
    idx = torch.randint(0, rows, (nnz,), generator=gen)
    out = torch.empty(nnz, dim)
    gather_s = _best_of(lambda: torch.index_select(table, 0, idx, out=out))
    src, dst = torch.randn(16 * 2**20), torch.empty(16 * 2**20)
    copy_s = _best_of(lambda: dst.copy_(src))
    a, b = torch.randn(1024, 256, generator=gen), torch.randn(256, 1024, generator=gen)
    mm_s = _best_of(lambda: a @ b)
    return Machine(
        gather_gbps=nnz * (8 + 2 * 4 * dim) / gather_s / 1e9,
        copy_gbps=2 * src.numel() * 4 / copy_s / 1e9,
        matmul_gflops=2 * 1024 * 256 * 1024 / mm_s / 1e9,
        threads=torch.get_num_threads(),
    )


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) and t.layout == torch.strided else 0


def _sparse_product_bytes(sparse: torch.Tensor, dense: torch.Tensor, out: torch.Tensor) -> int:
    """Indices and values of every nonzero, one dense row per nonzero, the output."""
    nnz = sparse._nnz()
    index_bytes = 8 if sparse.layout == torch.sparse_csr else 16  # CSR: column index; COO: row and column
    row = dense.shape[-1] * dense.element_size() if dense.dim() > 1 else dense.element_size()
    return nnz * (index_bytes + sparse.element_size() + row) + _nbytes(out)


@dataclass
class Work:
    """What one epoch must move and compute."""

    sparse_bytes: int = 0
    gather_bytes: int = 0
    flops: int = 0
    optimizer_bytes: int = 0
    ops: dict[str, int] = field(default_factory=dict)

    def seconds(self, machine: Machine) -> float:
        return (
            (self.sparse_bytes + self.gather_bytes) / (machine.gather_gbps * 1e9)
            + self.flops / (machine.matmul_gflops * 1e9)
            + self.optimizer_bytes / (machine.copy_gbps * 1e9)
        )


class _Counter(TorchDispatchMode):
    def __init__(self, work: Work) -> None:
        super().__init__()
        self.work = work

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        sparse = [t for t in tensors if t.layout != torch.strided]
        name = str(func.overloadpacket.__name__)
        if sparse and func not in (aten._to_copy.default, aten.clone.default, aten.detach.default):
            dense = [t for t in tensors if t.layout == torch.strided]
            if dense and isinstance(out, torch.Tensor) and out.layout == torch.strided:
                self.work.sparse_bytes += _sparse_product_bytes(sparse[0], dense[-1], out)
                self.work.ops[name] = self.work.ops.get(name, 0) + 1
        elif func in DENSE_PRODUCTS:
            a, b = (args[0], args[1]) if func in (aten.mm.default, aten.bmm.default) else (args[1], args[2])
            batch = a.shape[0] if a.dim() == 3 else 1
            m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
            self.work.flops += 2 * batch * m * k * n
        elif func in GATHERS and isinstance(out, torch.Tensor):
            self.work.gather_bytes += 2 * _nbytes(out)  # rows read and written (indices are small)
        elif func in SCATTERS and isinstance(out, torch.Tensor):
            values = args[3] if func in (aten.index_add.default, aten.index_add_.default) else args[0]
            self.work.gather_bytes += 3 * _nbytes(values)  # values read, target rows read and written
        return out


def epoch_work(run_epoch: Callable[[], int], n_params: int) -> Work:
    """Count one epoch: `run_epoch` trains it and returns its number of optimiser steps."""
    work = Work()

    def kernel_product(adj: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        work.sparse_bytes += _sparse_product_bytes(adj, x, out)
        work.ops["csr_kernel"] = work.ops.get("csr_kernel", 0) + 1

    with _Counter(work), observe_products(kernel_product):
        steps = run_epoch()
    work.optimizer_bytes = ADAM_BYTES_PER_PARAM * n_params * steps
    return work
