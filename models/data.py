"""Load what models read from `processed/<ds>/`: the split, features per modality, graphs.

Models never parse raw data; this module turns the stage outputs (Parquet, NPZ) into a TrainData
plus the valid/test relevance matrices of one setting (warm = interactions.parquet, cold =
coldstart.parquet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch

from models.base import TrainData
from stages.common.io import check_columns, read_csr, read_features, read_parquet

SETTINGS = {"warm": "interactions.parquet", "cold": "coldstart.parquet"}
SPLIT_COLUMNS = {"user_idx": pa.int32(), "item_idx": pa.int32(), "split": pa.int8()}


@dataclass
class Split:
    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix


def split_path(dataset_dir: Path, setting: str) -> Path:
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; settings: {sorted(SETTINGS)}")
    return dataset_dir / SETTINGS[setting]


def load_split(dataset_dir: Path, setting: str) -> Split:
    path = split_path(dataset_dir, setting)
    table = read_parquet(path, columns=list(SPLIT_COLUMNS))
    check_columns(table, SPLIT_COLUMNS, path)
    n_users = len(read_parquet(dataset_dir / "users.parquet", columns=["user_idx"]))
    n_items = len(read_parquet(dataset_dir / "items.parquet", columns=["item_idx"]))
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


def load_train_data(dataset_dir: Path, setting: str, group: str, modalities: dict[str, str]) -> tuple[TrainData, Split]:
    """TrainData for a model of `group` ('id', 'feat', 'graph'); features/graphs only when needed."""
    split = load_split(dataset_dir, setting)
    data = TrainData(n_users=split.n_users, n_items=split.n_items, train=split.train)
    if group in ("feat", "graph"):
        for modality, encoder in sorted(modalities.items()):
            matrix, _ = read_features(dataset_dir / "features" / f"{encoder}.parquet")
            if matrix.shape[0] != split.n_items:
                raise ValueError(
                    f"{dataset_dir}/features/{encoder}.parquet: {matrix.shape[0]} rows for {split.n_items} items"
                )
            data.features[modality] = torch.from_numpy(matrix)
    if group == "graph":
        for modality in sorted(modalities):
            data.knn[modality] = read_csr(dataset_dir / "graphs" / "knn" / f"{modality}.npz")
        data.user_co = read_csr(dataset_dir / "graphs" / setting / "user_co.npz")
        data.item_co = read_csr(dataset_dir / "graphs" / setting / "item_co.npz")
        for modality in sorted(modalities):
            data.user_knn[modality] = read_csr(dataset_dir / "graphs" / setting / f"user_knn_{modality}.npz")
    return data, split
