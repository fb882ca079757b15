"""Already-processed datasets whose split is kept as published: MMRec `.inter` files and LATTICE/MICRO JSON splits.

These datasets come filtered, reindexed and split by their authors; re-filtering or re-splitting them would
break comparability with the published numbers and with the feature matrices shipped beside them (MMRec's
`image_feat.npy` row i is item i). So `load` keeps the given user/item indices and split labels as they are,
and only validates them.

Manifest (`raw/<ds>/MANIFEST.json`), `source` and `files` entries (`path` relative to `raw/<ds>/`):

* `source: mmrec`
    - role `interactions`, format `mmrec-inter`: MMRec's `<ds>.inter`, tab-separated, a header naming at least
      `userID`, `itemID`, `x_label` (0 train, 1 valid, 2 test); `rating` and `timestamp` columns are used
      when present. Malformed rows are skipped and counted with their line numbers.
    - optional roles `user_map` / `item_map`: format `mmrec-map` (MMRec's `u_id_mapping.csv` /
      `i_id_mapping.csv`: tab-separated, header `user_id<TAB>userID` / `asin<TAB>itemID`) or `lattice-map`.
* `source: lattice`
    - roles `train`, `valid`, `test`, format `lattice-split`: a JSON object, user index (string) -> list of
      item indices (LATTICE/MICRO `build_data.py` output: `5-core/train.json`, `val.json`, `test.json`).
    - optional roles `user_map` / `item_map`, format `lattice-map`: `user2id.json` / `item2id.json`,
      a JSON object source id -> index.
* a map listed without a `format` is read as `lattice-map` when its name ends in `.json`, else `mmrec-map`.
* optional roles `image_feat` / `text_feat`, format `npy`: an (n_items, d) float array, row = item index;
  `load` does not read them, `precomputed_features` does.

Neither format has timestamps (unless an `.inter` has a `timestamp` column): `timestamp` is 0 and the
stats say so. Ratings are 1.0 unless an `.inter` has a `rating` column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mmpipe import schemas
from mmpipe.log import get_logger
from mmpipe.paths import MANIFEST
from stages.sources.catalog import SOURCES
from stages.sources.indexed import MAX_LISTED, Read, _check_range, _maps, _path

log = get_logger("ingest")

__all__ = ["is_presplit", "Read", "load", "precomputed_features"]


def readers() -> dict[str, Any]:
    """Source -> the reader of a dataset published with its split (its declaration's `presplit`)."""
    return {name: source.presplit for name, source in SOURCES.items() if source.presplit is not None}


def is_presplit(source: str | None) -> bool:
    return source in readers()


def _unused(n: int, used: np.ndarray) -> list[int]:
    present = np.zeros(n, dtype=bool)
    present[used] = True
    return np.flatnonzero(~present).tolist()


def load(manifest: dict[str, Any], raw_dir: Path) -> tuple[pd.DataFrame, pa.Table, pa.Table, dict[str, Any]]:
    """Read a presplit dataset: (interactions, items table, users table, stats), indices and split as given."""
    source = manifest.get("source")
    if not is_presplit(source):
        raise ValueError(f"{raw_dir / MANIFEST}: source {source!r} is not a presplit source {tuple(readers())}")
    user_map, item_map = _maps(manifest, raw_dir)
    malformed: dict[str, Any] = {}
    notes: list[str] = [
        "indices and split kept as published (no k-core filtering, no reindexing, no re-splitting)",
    ]

    read = readers()[source](manifest, raw_dir)
    frame, where, rows_read, malformed, duplicates = (
        read.frame,
        read.where,
        read.rows_read,
        read.malformed,
        read.duplicates,
    )
    notes += read.notes
    if frame.empty:
        raise ValueError(f"{raw_dir}: no valid interactions were read ({source} source)")
    users_arr = frame["user_idx"].to_numpy()
    items_arr = frame["item_idx"].to_numpy()
    _check_range(users_arr, where, user_map, "user")
    _check_range(items_arr, where, item_map, "item")
    n_users = len(user_map[1]) if user_map else int(users_arr.max()) + 1
    n_items = len(item_map[1]) if item_map else int(items_arr.max()) + 1
    if n_users > np.iinfo(np.int32).max or n_items > np.iinfo(np.int32).max:
        raise ValueError(f"{raw_dir}: {n_users} users / {n_items} items do not fit int32 indices")

    frame = frame.astype({"user_idx": np.int32, "item_idx": np.int32})
    frame = frame.sort_values(["user_idx", "split", "item_idx"], kind="stable").reset_index(drop=True)

    users_idle = _unused(n_users, users_arr)
    items_idle = _unused(n_items, items_arr)
    if users_idle:
        notes.append(
            f"{len(users_idle)} user indices in 0..{n_users - 1} have no interaction; they are kept (indices "
            "are not renumbered) and counted in users"
        )
    if items_idle:
        notes.append(
            f"{len(items_idle)} item indices in 0..{n_items - 1} have no interaction; they are kept (feature "
            "row i is item i) and counted in items"
        )
    split_codes = frame["split"].to_numpy()
    split_counts = np.bincount(split_codes, minlength=3)
    train_users = np.unique(frame["user_idx"].to_numpy()[split_codes == 0])
    users_without_train = int(n_users - len(users_idle) - len(train_users))
    if users_without_train:
        notes.append(f"{users_without_train} users have valid/test interactions but none in train")

    user_ids = user_map[1] if user_map else [str(i) for i in range(n_users)]
    item_ids = item_map[1] if item_map else [str(i) for i in range(n_items)]
    nulls = pa.nulls(n_items)
    items_table = pa.table(
        {
            "item_idx": pa.array(np.arange(n_items, dtype=np.int32)),
            "item_id": pa.array(item_ids, type=pa.string()),
            "title": nulls.cast(pa.string()),
            "description": nulls.cast(pa.string()),
            "brand": nulls.cast(pa.string()),
            "categories": nulls.cast(pa.list_(pa.string())),
            "image_url": nulls.cast(pa.string()),
        },
        schema=schemas.ITEMS,
    )
    users_table = pa.table(
        {"user_idx": pa.array(np.arange(n_users, dtype=np.int32)), "user_id": pa.array(user_ids, type=pa.string())},
        schema=schemas.USERS,
    )
    stats: dict[str, Any] = {
        "source": source,
        "source_split_kept": True,
        "rows_read": rows_read,
        "malformed": malformed,
        "duplicates": duplicates,
        "users": n_users,
        "items": n_items,
        "interactions": len(frame),
        "sparsity": round(1.0 - len(frame) / (n_users * n_items), 6),
        "split": {name: int(split_counts[code]) for name, code in schemas.SPLIT_CODES.items()},
        "users_without_interactions": {"count": len(users_idle), "first": users_idle[:MAX_LISTED]},
        "items_without_interactions": {"count": len(items_idle), "first": items_idle[:MAX_LISTED]},
        "users_without_train": users_without_train,
        "id_maps": {"user": user_map[0].name if user_map else None, "item": item_map[0].name if item_map else None},
        # These formats carry no item text or image URLs (features may come as `<modality>_feat` files).
        "items_missing": {key: n_items for key in ("meta", "title", "description", "image_url", "any_text")},
        "notes": notes,
    }
    log.info(
        "%s (%s, split kept): %d users, %d items, %d interactions (train/valid/test %d/%d/%d), %d malformed, "
        "duplicates %s",
        raw_dir.name, source, n_users, n_items, len(frame), *split_counts,
        sum(m["count"] for m in malformed.values()), duplicates,
    )  # fmt: skip
    return frame, items_table, users_table, stats


# -------------------------------------------------------------------------------------------------- features


def precomputed_features(
    manifest: dict[str, Any], raw_dir: Path, modality: str, *, n_items: int | None = None
) -> np.ndarray | None:
    """The published feature matrix of `modality` (role `<modality>_feat`), float32 [n_items, d], or None.

    `n_items` defaults to the item count `load` finds; the file must be a 2-D numeric `.npy` with exactly
    that many rows and finite values, else a stop error names the file and the shapes.
    """
    found = _path(manifest, f"{modality}_feat", raw_dir, required=False)
    if found is None:
        return None
    path, fmt = found
    if fmt not in ("", "npy"):
        raise ValueError(f"{raw_dir / MANIFEST}: {modality}_feat format {fmt!r} is not 'npy'")
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2:
        shape = getattr(matrix, "shape", None)
        raise ValueError(f"{path}: expected a 2-D array (n_items, d), got shape {shape}")
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise ValueError(f"{path}: expected a numeric array, got dtype {matrix.dtype}")
    if n_items is None:
        n_items = load(manifest, raw_dir)[1].num_rows
    if matrix.shape[0] != n_items:
        raise ValueError(
            f"{path}: shape {matrix.shape} has {matrix.shape[0]} rows, but the dataset has {n_items} items "
            f"(row i must be item i)"
        )
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(f"{path}: {len(rows)} rows have NaN/inf values (first: {rows[:5].tolist()})")
    return matrix
