"""Load what models read from `processed/<ds>/`: the split, features per modality, graphs.

Models never parse raw data; this module turns the stage outputs (Parquet, NPZ) into a TrainData
plus the valid/test relevance matrices of one setting (warm = interactions.parquet, cold =
coldstart.parquet), reading only what the model's `reads` declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch

from mmpipe.io import read_csr, read_parquet
from mmpipe.paths import DatasetDir
from mmpipe.schemas import check_columns, check_same_ingest, read_features
from models.core.base import TrainData

SPLIT_COLUMNS = {"user_idx": pa.int32(), "item_idx": pa.int32(), "split": pa.int8()}


@dataclass
class Split:
    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix


def load_split(dataset_dir: Path | DatasetDir, setting: str) -> Split:
    ds = dataset_dir if isinstance(dataset_dir, DatasetDir) else DatasetDir(Path(dataset_dir))
    path = ds.split(setting)
    check_same_ingest(path, ds.users, ds.items)
    table = read_parquet(path, columns=list(SPLIT_COLUMNS))
    check_columns(table, SPLIT_COLUMNS, path)
    n_users = len(read_parquet(ds.users, columns=["user_idx"]))
    n_items = len(read_parquet(ds.items, columns=["item_idx"]))
    users, items = table["user_idx"].to_numpy(), table["item_idx"].to_numpy()
    split = table["split"].to_numpy()
    if len(users) and (users.max() >= n_users or items.max() >= n_items):
        raise ValueError(
            f"{path}: user/item index beyond users.parquet/items.parquet ({n_users} users, {n_items} items)"
        )

    def matrix(code: int) -> sp.csr_matrix:
        sel = split == code
        return sp.csr_matrix((np.ones(int(sel.sum()), np.float32), (users[sel], items[sel])), shape=(n_users, n_items))

    return Split(n_users, n_items, matrix(0), matrix(1), matrix(2))


def load_train_data(
    dataset_dir: Path | DatasetDir,
    setting: str,
    reads: str,
    modalities: list[str] | tuple[str, ...] = (),
    feature_set: str = "default",
) -> tuple[TrainData, Split]:
    """TrainData for a model that `reads` 'id', 'feat' or 'graph'; features/graphs only when needed."""
    ds = dataset_dir if isinstance(dataset_dir, DatasetDir) else DatasetDir(Path(dataset_dir))
    split = load_split(ds, setting)
    data = TrainData(n_users=split.n_users, n_items=split.n_items, train=split.train)
    if reads in ("feat", "graph"):
        for modality in sorted(modalities):
            path = ds.features(feature_set, modality)
            matrix, _ = read_features(path)
            if matrix.shape[0] != split.n_items:
                raise ValueError(f"{path}: {matrix.shape[0]} rows for {split.n_items} items")
            data.features[modality] = torch.from_numpy(matrix)
    if reads == "graph":
        files = {"user_co": ds.setting_graph(feature_set, setting, "user_co")}
        files["item_co"] = ds.setting_graph(feature_set, setting, "item_co")
        for modality in sorted(modalities):
            files[f"knn/{modality}"] = ds.knn_graph(feature_set, modality)
            files[f"user_knn/{modality}"] = ds.setting_graph(feature_set, setting, f"user_knn_{modality}")
            data.knn[modality] = read_csr(files[f"knn/{modality}"])
            data.user_knn[modality] = read_csr(files[f"user_knn/{modality}"])
        data.user_co, data.item_co = read_csr(files["user_co"]), read_csr(files["item_co"])
        data.paths = {name: str(path) for name, path in files.items()}
    return data, split
