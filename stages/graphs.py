"""Stage `graphs`: item-item kNN per modality and co-occurrence graphs, as sparse CSR `.npz` files.

* `graphs/knn/<modality>.npz`: for each item, its `graphs.item_knn_k` most cosine-similar items
  (values = cosine), computed a block of rows at a time so memory stays O(N*k), not O(N^2). Ties are
  broken by the smaller item index. The raw top-k is stored; each model normalises it as it expects
  (see `models/graph.py`).
* `graphs/<setting>/user_co.npz`, `item_co.npz`: users sharing items / items sharing users, counted
  on that setting's training interactions only (warm = interactions.parquet, cold = coldstart.parquet),
  top `graphs.user_knn_k` / `graphs.item_co_k` by count, ties by index.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from stages.common.io import read_features, read_parquet, write_csr, write_json
from stages.common.log import get_logger, progress_disabled
from stages.common.params import ParamsError, get, load_params, stage_args

log = get_logger("graphs")

SETTING_FILES = {"warm": "interactions.parquet", "cold": "coldstart.parquet"}


def topk_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each row; equal values keep the smaller column index."""
    matrix = sp.csr_matrix(matrix)
    matrix.eliminate_zeros()
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    order = np.lexsort((matrix.indices, -matrix.data, rows))
    rank = np.arange(len(order)) - matrix.indptr[rows[order]]
    keep = order[rank < k]
    return sp.csr_matrix(
        (matrix.data[keep], (rows[keep], matrix.indices[keep])), shape=matrix.shape, dtype=matrix.dtype
    )


def knn_graph(features: np.ndarray, k: int, include_self: bool, block: int = 2048) -> sp.csr_matrix:
    """Top-k cosine neighbours of every row, one block of rows against all rows at a time."""
    n = features.shape[0]
    k = min(k, n if include_self else n - 1)
    if k <= 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = (features / np.maximum(norms, 1e-12)).astype(np.float32)
    cols = np.empty((n, k), dtype=np.int64)
    vals = np.empty((n, k), dtype=np.float32)
    for start in tqdm(range(0, n, block), desc="knn", disable=progress_disabled()):
        sims = unit[start : start + block] @ unit.T
        rows = np.arange(sims.shape[0])
        if not include_self:
            sims[rows, rows + start] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part_vals = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_vals), axis=1)
        cols[start : start + len(rows)] = np.take_along_axis(part, order, axis=1)
        vals[start : start + len(rows)] = np.take_along_axis(part_vals, order, axis=1)
        # Rows where more than k items tie with the k-th value: pick the smallest indices exactly.
        kth = part_vals.min(axis=1, keepdims=True)
        for r in np.flatnonzero((sims >= kth).sum(axis=1) > k):
            cand = np.flatnonzero(sims[r] >= kth[r])
            best = cand[np.lexsort((cand, -sims[r, cand]))[:k]]
            cols[start + r], vals[start + r] = best, sims[r, best]
    indptr = np.arange(0, n * k + 1, k)
    graph = sp.csr_matrix((vals.reshape(-1), cols.reshape(-1), indptr), shape=(n, n))
    graph.sort_indices()
    return graph


def cooccurrence(train: sp.csr_matrix, k: int, block: int = 4096) -> sp.csr_matrix:
    """Rows of `train` sharing columns: counts of shared columns, top-k per row, no self loops."""
    train = sp.csr_matrix(train, dtype=np.float32)
    parts = []
    for start in range(0, train.shape[0], block):
        counts = (train[start : start + block] @ train.T).tocoo()
        keep = counts.col != counts.row + start
        counts = sp.csr_matrix((counts.data[keep], (counts.row[keep], counts.col[keep])), shape=counts.shape)
        parts.append(topk_per_row(counts, k))
    return sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, train.shape[0]), dtype=np.float32)


def train_matrix(path: Path, n_users: int, n_items: int) -> sp.csr_matrix:
    table = read_parquet(path, columns=["user_idx", "item_idx", "split"])
    train = table["split"].to_numpy() == 0
    users, items = table["user_idx"].to_numpy()[train], table["item_idx"].to_numpy()[train]
    return sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))


def run(dataset: str, params: dict[str, Any], out_root: Path = Path("processed")) -> dict[str, Any]:
    start = time.perf_counter()
    cfg = get(params, "graphs")
    modalities: dict[str, str] = get(params, "features.modalities")
    if not modalities:
        raise ParamsError("params.yaml: features.modalities is empty; name at least one encoder per modality")
    dataset_dir = out_root / dataset
    n_users = len(read_parquet(dataset_dir / "users.parquet", columns=["user_idx"]))
    n_items = len(read_parquet(dataset_dir / "items.parquet", columns=["item_idx"]))
    out_dir = dataset_dir / "graphs"
    stats: dict[str, Any] = {"knn": {}, "warm": {}, "cold": {}}

    for modality, encoder in sorted(modalities.items()):
        features, _ = read_features(dataset_dir / "features" / f"{encoder}.parquet")
        if features.shape[0] != n_items:
            raise ValueError(
                f"{dataset_dir / 'features' / (encoder + '.parquet')}: {features.shape[0]} rows, "
                f"but items.parquet has {n_items} items"
            )
        graph = knn_graph(features, int(cfg["item_knn_k"]), bool(cfg["knn_include_self"]), int(cfg["block_size"]))
        write_csr(out_dir / "knn" / f"{modality}.npz", graph)
        stats["knn"][modality] = {"encoder": encoder, "k": int(cfg["item_knn_k"]), "nnz": int(graph.nnz)}

    for setting, filename in SETTING_FILES.items():
        train = train_matrix(dataset_dir / filename, n_users, n_items)
        user_co = cooccurrence(train, int(cfg["user_knn_k"]), int(cfg["block_size"]))
        item_co = cooccurrence(train.T.tocsr(), int(cfg["item_co_k"]), int(cfg["block_size"]))
        write_csr(out_dir / setting / "user_co.npz", user_co)
        write_csr(out_dir / setting / "item_co.npz", item_co)
        stats[setting] = {"user_co_nnz": int(user_co.nnz), "item_co_nnz": int(item_co.nnz)}

    write_json(out_dir / "stats.json", stats)
    log.info("%s: graphs %s in %.1f s", dataset, stats, time.perf_counter() - start)
    return stats


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__.splitlines()[0]).parse_args(argv)
    run(args.dataset, load_params(args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
