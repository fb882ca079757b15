"""Blockwise top-k cosine kNN (the graphs stage) against the dense N x N approach: time and peak memory.

    python -m bench.graphs_knn [--items 200000] [--dense-items 20000] [--dim 512] [--k 10]

Each measurement runs in a fresh subprocess so its peak RSS is its own. The dense reference (one N x N
similarity matrix, top-k per row, as MMRec's LATTICE/FREEDOM code does) runs at a size where it still
fits, and its graph is compared entry by entry with the blockwise one on the same features.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK_MB = float(os.environ.get("MMPIPE_BENCH_BLOCK_MB", "64"))  # the graphs stage's graphs.block_mb


def features(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clustered random features (items of a category are similar), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 500, 1), dim), dtype=np.float32)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= 0.5
    x += centres[rng.integers(0, len(centres), n)]
    return x


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(method: str, n: int, dim: int, k: int, out: str) -> None:
    """Runs in the subprocess: build the graph, save it, print time and peak memory as JSON."""
    import scipy.sparse as sp
    import torch

    from stages.graphs import knn_graph

    x = features(n, dim)
    base = peak_rss_mb()
    start = time.perf_counter()
    if method == "blockwise":
        graph = knn_graph(x, k, include_self=True, block_mb=BLOCK_MB)
    else:
        with torch.inference_mode():
            t = torch.from_numpy(x)
            unit = t / t.norm(dim=1, keepdim=True)
            sims = unit @ unit.T  # N x N
            vals, idx = torch.topk(sims, k, dim=1)
        rows = np.repeat(np.arange(n), k)
        graph = sp.csr_matrix((vals.numpy().ravel(), (rows, idx.numpy().ravel())), shape=(n, n))
    seconds = time.perf_counter() - start
    sp.save_npz(out, graph.tocsr())
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb(), "input_mb": base}))


def measure(method: str, n: int, dim: int, k: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "bench.graphs_knn", "--child", method, "--items", str(n), "--dim", str(dim),
           "--k", str(k), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MMPIPE_PROGRESS": "0"})
    if proc.returncode != 0:
        raise SystemExit(f"{method} n={n} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(a: Path, b: Path) -> tuple[int, int, float]:
    """(rows, rows whose neighbour sets differ, largest value difference on identical rows).

    A differing row is acceptable only where the two methods kept different items of exactly equal
    similarity at the k-th place (the graphs stage keeps the smaller index; torch.topk keeps either).
    """
    import scipy.sparse as sp

    ga, gb = sp.load_npz(a).tocsr(), sp.load_npz(b).tocsr()
    ga.sort_indices()
    gb.sort_indices()
    differ, max_diff = 0, 0.0
    for r in range(ga.shape[0]):
        ia, ib = ga.indices[ga.indptr[r] : ga.indptr[r + 1]], gb.indices[gb.indptr[r] : gb.indptr[r + 1]]
        va, vb = ga.data[ga.indptr[r] : ga.indptr[r + 1]], gb.data[gb.indptr[r] : gb.indptr[r + 1]]
        if np.array_equal(ia, ib):
            max_diff = max(max_diff, float(np.abs(va - vb).max()))
            continue
        differ += 1
        only_a, only_b = va[~np.isin(ia, ib)], vb[~np.isin(ib, ia)]
        if not np.allclose(np.sort(only_a), np.sort(only_b), atol=1e-6) or only_a.max() > va.min() + 1e-6:
            raise SystemExit(f"row {r}: neighbours differ beyond ties: {ia} vs {ib}")
    return ga.shape[0], differ, max_diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dense-items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--child", choices=["blockwise", "dense"])
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.items, args.dim, args.k, args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        small_block = measure("blockwise", args.dense_items, args.dim, args.k, d / "b_small.npz")
        small_dense = measure("dense", args.dense_items, args.dim, args.k, d / "d_small.npz")
        rows, tied_rows, max_diff = compare(d / "b_small.npz", d / "d_small.npz")
        large = measure("blockwise", args.items, args.dim, args.k, d / "b_large.npz")
    n, m = args.dense_items, args.items
    print(f"{'':34s} {'items':>8s} {'seconds':>8s} {'peak RSS MB':>12s} {'above input MB':>14s}")
    for label, size, r in (("dense N x N (torch)", n, small_dense), ("blockwise (graphs stage)", n, small_block),
                           ("blockwise (graphs stage)", m, large)):  # fmt: skip
        print(f"{label:34s} {size:8d} {r['seconds']:8.1f} {r['peak_mb']:12.0f} {r['peak_mb'] - r['input_mb']:14.0f}")
    print(f"same graph at {n} items: {rows - tied_rows} rows identical (max value difference {max_diff:.1e}); "
          f"{tied_rows} rows keep a different one of exactly tied items at the k-th place")  # fmt: skip
    dense_extra = small_dense["peak_mb"] - small_dense["input_mb"]
    block_extra = max(small_block["peak_mb"] - small_block["input_mb"], 1)
    print(f"memory above input at {n} items: dense / blockwise = {dense_extra / block_extra:.1f}x")
    print(
        f"dense at {m} items would need {m * m * 4 / 2**30:.0f} GiB for the similarity matrix alone; "
        f"blockwise used {large['peak_mb'] - large['input_mb']:.0f} MB above its input"
    )
    print(f"{args.dim}-d features, k={args.k}, block_mb={BLOCK_MB:g}, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
