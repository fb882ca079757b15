"""LATTICE / MICRO processed datasets: `5-core/{train,val,test}.json` (user index -> item indices) + id maps.

The split and the indices are kept as published. Exact repeats inside one split count once; a pair
in several splits keeps the earliest split (train, then valid, then test).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpipe.io import read_json
from mmpipe.paths import MANIFEST
from stages.sources.indexed import Read, _index, _path, feature_files
from stages.sources.malformed import Malformed
from stages.sources.source import FILE_KEYS, FileSpec, Source

SPLIT_ROLES = ("train", "valid", "test")  # lattice roles, in the order that wins for an item in several splits


def read_lattice_split(path: Path, split: int) -> tuple[pd.DataFrame, list[str]]:
    """One LATTICE split file: {user index: [item indices]} -> rows; any bad entry stops, naming its key."""
    data = read_json(path)
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ValueError(f"{path}: expected a JSON object (user index -> list of item indices), got {kind}")
    users: list[int] = []
    items: list[int] = []
    where: list[str] = []
    for key, value in data.items():
        u = _index(key, path, f"key {key!r}", "user")
        if not isinstance(value, list):
            raise ValueError(f"{path}: key {key!r}: expected a list of item indices, got {type(value).__name__}")
        for item in value:
            items.append(_index(item, path, f"key {key!r}", "item"))
            users.append(u)
            where.append(f"{path}: key {key!r}")
    frame = pd.DataFrame(
        {
            "user_idx": np.asarray(users, dtype=np.int64),
            "item_idx": np.asarray(items, dtype=np.int64),
            "rating": np.ones(len(users), dtype=np.float32),
            "timestamp": np.zeros(len(users), dtype=np.int64),
            "split": np.full(len(users), split, dtype=np.int8),
        }
    )
    return frame, where


def read(manifest: dict[str, Any], raw_dir: Path) -> Read:
    parts, wheres = [], []
    rows_read, malformed = {}, {}
    for code, role in enumerate(SPLIT_ROLES):
        path, fmt = _path(manifest, role, raw_dir, required=True)  # type: ignore[misc]
        if fmt not in ("", "lattice-split"):
            raise ValueError(f"{raw_dir / MANIFEST}: {role} format {fmt!r} is not 'lattice-split'")
        part, where_part = read_lattice_split(path, code)
        parts.append(part)
        wheres.extend(where_part)
        rows_read[role] = {"users": int(part["user_idx"].nunique()), "pairs": len(part)}
        malformed[role] = Malformed(path.name).as_dict()  # JSON: a bad entry stops, naming its key
    frame = pd.concat(parts, ignore_index=True)
    where = wheres
    n0 = len(frame)
    keep = ~frame.duplicated(["user_idx", "item_idx", "split"], keep="first")
    frame = frame[keep.to_numpy()]
    where = [w for w, k in zip(where, keep.to_numpy(), strict=True) if k]
    n1 = len(frame)
    order = np.lexsort((frame["split"].to_numpy(), frame["item_idx"].to_numpy(), frame["user_idx"].to_numpy()))
    frame = frame.iloc[order]
    where = [where[i] for i in order]
    keep = ~frame.duplicated(["user_idx", "item_idx"], keep="first")
    frame = frame[keep.to_numpy()]
    where = [w for w, k in zip(where, keep.to_numpy(), strict=True) if k]
    return Read(
        frame=frame,
        where=where,
        rows_read=rows_read,
        malformed=malformed,
        duplicates={"repeated_in_split": int(n0 - n1), "in_several_splits_kept_earliest": int(n1 - len(frame))},
        notes=["LATTICE split files have no timestamps or ratings: timestamp = 0, rating = 1.0"],
    )


def lattice_files(cfg: Mapping[str, Any]) -> list[FileSpec]:
    """LATTICE's and MICRO's layout: the 5-core split as JSON, id maps and feature matrices."""
    return [
        FileSpec("train", "5-core/train.json", "lattice-split", None),
        FileSpec("valid", "5-core/val.json", "lattice-split", None),
        FileSpec("test", "5-core/test.json", "lattice-split", None),
        FileSpec("user_map", "user2id.json", "lattice-map", None, optional=True),
        FileSpec("item_map", "item2id.json", "lattice-map", None, optional=True),
        *feature_files(),
    ]


LATTICE = Source(
    "lattice",
    keys=(*FILE_KEYS, "name"),
    files=lattice_files,
    presplit=read,
    no_direct_link="LATTICE/MICRO processed datasets are made by their build scripts or shared through cloud drives",
)
