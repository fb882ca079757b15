"""Stage `graphs`: the item and user graphs the models read, as sparse CSR `.npz` files, per feature set.

Every graph keeps, per row, the top K entries sorted by value (ties: smaller index first); a model that
wants fewer neighbours keeps the first k <= K of each row (`models/core/graph.py`), and normalises the values
as its paper does. So one stage serves every model, and no model builds a graph.

Everything is written under `processed/<ds>/graphs/<set>/` for the feature set `<set>`:

* `knn/<modality>.npz`: item-item, the `graphs.item_knn_k` most cosine-similar items of each item
  (values = cosine; the item itself included when `knn_include_self`, as LATTICE/FREEDOM/MICRO do).
* `<setting>/user_co.npz`, `item_co.npz`: co-occurrence counts (users sharing items, items sharing
  users), top `graphs.user_co_k` / `graphs.item_co_k`, no self loops, from that setting's training
  interactions only (warm = interactions.parquet, cold = coldstart.parquet), as DualGNN and REARM use.
* `<setting>/user_knn_<modality>.npz`: user-user, top `graphs.user_knn_k` cosine neighbours of the users'
  interest vectors (the mean of their training items' features), as REARM uses.

Similarities are computed a block of rows against all rows at a time (`graphs.block_mb` of scores per
block), so memory is O(N*K) plus one block, never N x N.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from mmpipe.config import Config, param
from mmpipe.io import read_parquet, write_csr, write_json
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import PROCESSED, SETTING_FILES, DatasetDir
from mmpipe.schemas import check_same_ingest, read_features
from mmpipe.sparse import topk_per_row
from mmpipe.threads import use_threads
from stages.common import pipeline
from stages.common.params import declared, run_stage

log = get_logger("graphs")


def param_keys(dataset: str, feature_set: str) -> list[str]:
    return ["graphs", "pipeline.modalities"]


@dataclass(frozen=True)
class GraphsConfig(Config):
    """`graphs`: how many neighbours each stored graph keeps (models keep their own top k <= these)."""

    item_knn_k: int = param(10, ge=1, doc="item-item cosine kNN per modality")
    knn_include_self: bool = param(True, doc="keep each node among its own neighbours")
    user_knn_k: int = param(50, ge=1, doc="user-user cosine kNN of interest vectors")
    user_co_k: int = param(50, ge=1, doc="user-user co-occurrence")
    item_co_k: int = param(10, ge=1, doc="item-item co-occurrence")
    block_mb: float = param(64, gt=0, doc="similarity scores per block")
    num_threads: int = param(2, ge=0, doc="torch threads; 0: a fair share of the cores (bytes then may vary)")


def rows_per_block(n_cols: int, block_mb: float) -> int:
    return max(1, int(block_mb * 2**20 / 4 / max(n_cols, 1)))


def knn_graph(features: np.ndarray, k: int, include_self: bool, block_mb: float = 64) -> sp.csr_matrix:
    """Top-k cosine neighbours of every row, computed block by block; exact ties by smaller index."""
    n = features.shape[0]
    k = min(k, n if include_self else n - 1)
    if k <= 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cols = np.empty((n, k), dtype=np.int64)
    vals = np.empty((n, k), dtype=np.float32)
    block = rows_per_block(n, block_mb)
    with torch.inference_mode():
        for start in tqdm(range(0, n, block), desc="knn", disable=progress_disabled()):
            sims = unit[start : start + block] @ unit.T
            rows = torch.arange(sims.shape[0])
            if not include_self:
                sims[rows, rows + start] = -torch.inf
            # One more than k: where the (k+1)-th score equals the k-th, ties cross the cut.
            more_vals, more_idx = torch.topk(sims, min(k + 1, n), dim=1)
            top_vals, top_idx = more_vals[:, :k], more_idx[:, :k]
            tv, ti = top_vals.numpy(), top_idx.numpy()
            order = np.lexsort((ti, -tv), axis=1)  # by value, then index, within the top k
            cols[start : start + len(rows)] = np.take_along_axis(ti, order, axis=1)
            vals[start : start + len(rows)] = np.take_along_axis(tv, order, axis=1)
            if more_vals.shape[1] > k:
                # Rows where more items tie with the k-th value than fit: pick the smallest indices exactly.
                for r in torch.nonzero(more_vals[:, k] == more_vals[:, k - 1]).flatten().tolist():
                    row = sims[r].numpy()
                    cand = np.flatnonzero(row >= row[ti[r]].min())
                    best = cand[np.lexsort((cand, -row[cand]))[:k]]
                    cols[start + r], vals[start + r] = best, row[best]
    graph = sp.csr_matrix((vals.reshape(-1), cols.reshape(-1), np.arange(0, n * k + 1, k)), shape=(n, n))
    graph.sort_indices()
    return graph


def cooccurrence(train: sp.csr_matrix, k: int, block_mb: float = 64) -> sp.csr_matrix:
    """Rows of `train` sharing columns: counts of shared columns, top-k per row, no self loops."""
    train = sp.csr_matrix(train, dtype=np.float32)
    n = train.shape[0]
    block = rows_per_block(n, block_mb)
    parts = []
    for start in range(0, n, block):
        counts = (train[start : start + block] @ train.T).tocoo()
        keep = counts.col != counts.row + start
        counts = sp.csr_matrix((counts.data[keep], (counts.row[keep], counts.col[keep])), shape=counts.shape)
        parts.append(topk_per_row(counts, k))
    return sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, n), dtype=np.float32)


def train_matrix(path: Path, n_users: int, n_items: int) -> sp.csr_matrix:
    table = read_parquet(path, columns=["user_idx", "item_idx", "split"])
    train = table["split"].to_numpy() == 0
    users, items = table["user_idx"].to_numpy()[train], table["item_idx"].to_numpy()[train]
    return sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))


def user_interests(train: sp.csr_matrix, features: np.ndarray) -> np.ndarray:
    """Each user's mean training-item feature vector (zeros for a user without training items)."""
    degree = np.asarray(train.sum(axis=1)).ravel()
    inverse = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    return (sp.diags(inverse) @ train @ features).astype(np.float32)


def run(dataset: str, feature_set: str, params: dict[str, Any], processed: Path = PROCESSED) -> dict[str, Any]:
    start = time.perf_counter()
    params = declared(params, param_keys(dataset, feature_set))
    cfg = GraphsConfig.parse(params.get("graphs"), "graphs")
    modalities = pipeline.modalities(params)
    use_threads(cfg.num_threads)
    ds = DatasetDir.of(dataset, processed)
    check_same_ingest(ds.interactions, ds.coldstart, ds.users, ds.items)
    n_users = len(read_parquet(ds.users, columns=["user_idx"]))
    n_items = len(read_parquet(ds.items, columns=["item_idx"]))
    stats: dict[str, Any] = {"feature_set": feature_set, "knn": {}, "warm": {}, "cold": {}}

    features: dict[str, np.ndarray] = {}
    for modality in sorted(modalities):
        path = ds.features(feature_set, modality)
        features[modality], _ = read_features(path)
        if features[modality].shape[0] != n_items:
            raise ValueError(f"{path}: {features[modality].shape[0]} rows, but items.parquet has {n_items} items")
        graph = knn_graph(features[modality], cfg.item_knn_k, cfg.knn_include_self, cfg.block_mb)
        write_csr(ds.knn_graph(feature_set, modality), graph)
        stats["knn"][modality] = {"k": cfg.item_knn_k, "nnz": int(graph.nnz)}

    for setting in SETTING_FILES:
        train = train_matrix(ds.split(setting), n_users, n_items)
        user_co = cooccurrence(train, cfg.user_co_k, cfg.block_mb)
        item_co = cooccurrence(train.T.tocsr(), cfg.item_co_k, cfg.block_mb)
        write_csr(ds.setting_graph(feature_set, setting, "user_co"), user_co)
        write_csr(ds.setting_graph(feature_set, setting, "item_co"), item_co)
        stats[setting] = {"user_co_nnz": int(user_co.nnz), "item_co_nnz": int(item_co.nnz)}
        for modality, feats in features.items():
            user_knn = knn_graph(user_interests(train, feats), cfg.user_knn_k, cfg.knn_include_self, cfg.block_mb)
            write_csr(ds.setting_graph(feature_set, setting, f"user_knn_{modality}"), user_knn)
            stats[setting][f"user_knn_{modality}_nnz"] = int(user_knn.nnz)

    write_json(ds.graph_stats(feature_set), stats)
    log.info("%s/%s: graphs %s in %.1f s", dataset, feature_set, stats, time.perf_counter() - start)
    return stats


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("dataset", "feature_set"), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
