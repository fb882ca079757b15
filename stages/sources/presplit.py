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

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.common import schemas
from stages.common.io import read_json
from stages.common.log import get_logger
from stages.sources.malformed import Malformed

log = get_logger("ingest")

SOURCES = ("mmrec", "lattice")
SPLIT_ROLES = ("train", "valid", "test")  # lattice roles, in the order that wins for an item in several splits
MMREC_REQUIRED = ("userID", "itemID", "x_label")
MAX_LISTED = 20  # example indices listed in the stats for users/items without interactions


# ----------------------------------------------------------------------------------------------------- files


def _entry(manifest: dict[str, Any], role: str) -> dict[str, Any] | None:
    for entry in manifest.get("files", []):
        if entry.get("role") == role:
            return entry
    return None


def _path(manifest: dict[str, Any], role: str, raw_dir: Path, *, required: bool) -> tuple[Path, str] | None:
    """The file of `role` and its format; a listed file that is absent is always an error."""
    entry = _entry(manifest, role)
    if entry is None:
        if required:
            roles = sorted({e.get("role") for e in manifest.get("files", [])})
            raise ValueError(f"{raw_dir / 'MANIFEST.json'}: no file with role '{role}' (roles listed: {roles})")
        return None
    if "path" not in entry:
        raise ValueError(f"{raw_dir / 'MANIFEST.json'}: the '{role}' entry has no 'path'")
    path = raw_dir / entry["path"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: listed in {raw_dir / 'MANIFEST.json'} as {role} but missing")
    return path, str(entry.get("format", ""))


def _lines(path: Path) -> Iterator[str]:
    """Text lines without their line ending; a UTF-8 BOM is dropped, undecodable bytes replaced."""
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
        for line in fh:
            yield line.rstrip("\r\n")


def _index(value: Any, path: Path, where: str, what: str) -> int:
    """A non-negative integer index (JSON int or an integer string), or a stop error naming the record."""
    if isinstance(value, bool):
        raise ValueError(f"{path}: {where}: {what} {value!r} is not an integer index")
    if isinstance(value, int):
        idx = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        idx = int(value)
    else:
        raise ValueError(f"{path}: {where}: {what} {value!r} is not an integer index")
    if idx < 0:
        raise ValueError(f"{path}: {where}: {what} {idx} is negative")
    return idx


# ------------------------------------------------------------------------------------------------------ maps


def _map_from_pairs(pairs: list[tuple[str, int, str]], path: Path) -> list[str]:
    """(source id, index, where) -> ids by index; the indices must be exactly 0..n-1, each once."""
    ids: list[str | None] = [None] * len(pairs)
    for source_id, idx, where in pairs:
        if idx >= len(pairs):
            raise ValueError(
                f"{path}: {where}: index {idx} is out of range for a map of {len(pairs)} entries "
                "(indices must be 0..n-1)"
            )
        if ids[idx] is not None:
            raise ValueError(f"{path}: {where}: index {idx} is given to both {ids[idx]!r} and {source_id!r}")
        ids[idx] = source_id
    return ids  # type: ignore[return-value]  # every slot is filled: n distinct indices in 0..n-1


def read_map(path: Path, fmt: str, index_column: str) -> list[str]:
    """A source-id <-> index map as the list of source ids by index.

    `lattice-map`: JSON object id -> index. `mmrec-map`: tab-separated with a header of two columns,
    `index_column` (userID / itemID) and the source id column (user_id / asin).
    """
    pairs: list[tuple[str, int, str]] = []
    if fmt == "lattice-map":
        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object (source id -> index), got {type(data).__name__}")
        for key, value in data.items():
            pairs.append((str(key), _index(value, path, f"key {key!r}", "index"), f"key {key!r}"))
    elif fmt == "mmrec-map":
        lines = _lines(path)
        header = next(lines, "").split("\t")
        if len(header) != 2 or index_column not in header:
            raise ValueError(
                f"{path}: expected a header of two tab-separated columns, one of them '{index_column}'; got {header}"
            )
        i_idx = header.index(index_column)
        for line_no, line in enumerate(lines, start=2):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}: line {line_no}: expected 2 tab-separated fields, got {len(fields)}")
            where = f"line {line_no}"
            pairs.append((fields[1 - i_idx], _index(fields[i_idx], path, where, index_column), where))
    else:
        raise ValueError(f"{path}: map format {fmt!r} is not supported (supported: lattice-map, mmrec-map)")
    if not pairs:
        raise ValueError(f"{path}: the map is empty")
    return _map_from_pairs(pairs, path)


Mapping = tuple[Path, list[str]]  # a map file and the source ids by index


def _maps(manifest: dict[str, Any], raw_dir: Path) -> tuple[Mapping | None, Mapping | None]:
    out: list[Mapping | None] = []
    for role, column in (("user_map", "userID"), ("item_map", "itemID")):
        found = _path(manifest, role, raw_dir, required=False)
        if found is None:
            out.append(None)
            continue
        path, fmt = found
        fmt = fmt or ("lattice-map" if path.suffix == ".json" else "mmrec-map")
        out.append((path, read_map(path, fmt, column)))
    return out[0], out[1]


def _check_range(values: np.ndarray, where: list[str], mapping: Mapping | None, what: str) -> None:
    """Stop on the first index beyond the map, naming the record and the map."""
    if mapping is None or len(values) == 0:
        return
    path, ids = mapping
    bad = np.flatnonzero(values >= len(ids))
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{where[i]}: {what} index {int(values[i])} is out of range for {path} ({len(ids)} entries, "
            f"0..{len(ids) - 1}); {len(bad)} such rows"
        )


# ----------------------------------------------------------------------------------------------------- mmrec


def read_mmrec_inter(path: Path, bad: Malformed) -> tuple[pd.DataFrame, list[str], int, list[str]]:
    """Parse an MMRec `.inter` file: (rows, where each row came from, lines read, header columns)."""
    lines = _lines(path)
    header_line = next(lines, None)
    if header_line is None:
        raise ValueError(f"{path}: the file is empty (expected a header with {', '.join(MMREC_REQUIRED)})")
    header = header_line.split("\t")
    missing = [c for c in MMREC_REQUIRED if c not in header]
    if missing:
        raise ValueError(
            f"{path}: column(s) {missing} missing from the header; found {header} (tab-separated, "
            f"required: {list(MMREC_REQUIRED)})"
        )
    iu, ii, il = (header.index(c) for c in MMREC_REQUIRED)
    ir = header.index("rating") if "rating" in header else None
    it = header.index("timestamp") if "timestamp" in header else None
    users: list[int] = []
    items: list[int] = []
    labels: list[int] = []
    ratings: list[float] = []
    times: list[int] = []
    line_nos: list[int] = []
    n_lines = 1
    for n_lines, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            bad.add(n_lines, f"expected {len(header)} tab-separated fields, got {len(fields)}")
            continue
        try:
            u, i, label = (_int_field(fields[k], name) for k, name in ((iu, "userID"), (ii, "itemID"), (il, "x_label")))
            if u < 0 or i < 0:
                raise ValueError(f"negative index (userID {u}, itemID {i})")
            if label not in (0, 1, 2):
                raise ValueError(f"x_label {label} is not 0 (train), 1 (valid) or 2 (test)")
            rating = float(fields[ir]) if ir is not None else 1.0
            if not np.isfinite(rating):
                raise ValueError(f"rating {fields[ir]!r} is not a finite number")
            ts = _int_field(fields[it], "timestamp") if it is not None else 0
        except ValueError as exc:
            bad.add(n_lines, str(exc))
            continue
        users.append(u)
        items.append(i)
        labels.append(label)
        ratings.append(rating)
        times.append(ts)
        line_nos.append(n_lines)
    frame = pd.DataFrame(
        {
            "user_idx": np.asarray(users, dtype=np.int64),
            "item_idx": np.asarray(items, dtype=np.int64),
            "rating": np.asarray(ratings, dtype=np.float32),
            "timestamp": np.asarray(times, dtype=np.int64),
            "split": np.asarray(labels, dtype=np.int8),
        }
    )
    return frame, [f"{path}: line {n}" for n in line_nos], n_lines, header


def _int_field(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an integer") from None


# --------------------------------------------------------------------------------------------------- lattice


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


# ------------------------------------------------------------------------------------------------------ load


def _unused(n: int, used: np.ndarray) -> list[int]:
    present = np.zeros(n, dtype=bool)
    present[used] = True
    return np.flatnonzero(~present).tolist()


def load(manifest: dict[str, Any], raw_dir: Path) -> tuple[pd.DataFrame, pa.Table, pa.Table, dict[str, Any]]:
    """Read a presplit dataset: (interactions, items table, users table, stats), indices and split as given."""
    source = manifest.get("source")
    if source not in SOURCES:
        raise ValueError(f"{raw_dir / 'MANIFEST.json'}: source {source!r} is not a presplit source {SOURCES}")
    user_map, item_map = _maps(manifest, raw_dir)
    malformed: dict[str, Any] = {}
    notes: list[str] = [
        "indices and split kept as published (no k-core filtering, no reindexing, no re-splitting)",
    ]

    if source == "mmrec":
        path, fmt = _path(manifest, "interactions", raw_dir, required=True)  # type: ignore[misc]
        if fmt not in ("", "mmrec-inter"):
            raise ValueError(f"{raw_dir / 'MANIFEST.json'}: interactions format {fmt!r} is not 'mmrec-inter'")
        bad = Malformed(path.name)
        frame, where, n_lines, header = read_mmrec_inter(path, bad)
        malformed["interactions"] = bad.as_dict()
        rows_read: dict[str, Any] = {"inter_lines": n_lines, "rows_parsed": len(frame)}
        if "timestamp" not in header:
            notes.append(f"{path.name} has no timestamp column: timestamp = 0 for every interaction")
        if "rating" not in header:
            notes.append(f"{path.name} has no rating column: rating = 1.0 (implicit feedback)")
        n0 = len(frame)
        keep = ~frame.duplicated(["user_idx", "item_idx"], keep="first")
        frame = frame[keep.to_numpy()]
        where = [w for w, k in zip(where, keep.to_numpy(), strict=True) if k]
        duplicates = {"repeated_pairs_kept_first": int(n0 - len(frame))}
    else:
        parts, wheres = [], []
        rows_read = {}
        for code, role in enumerate(SPLIT_ROLES):
            path, fmt = _path(manifest, role, raw_dir, required=True)  # type: ignore[misc]
            if fmt not in ("", "lattice-split"):
                raise ValueError(f"{raw_dir / 'MANIFEST.json'}: {role} format {fmt!r} is not 'lattice-split'")
            part, where_part = read_lattice_split(path, code)
            parts.append(part)
            wheres.extend(where_part)
            rows_read[role] = {"users": int(part["user_idx"].nunique()), "pairs": len(part)}
            malformed[role] = Malformed(path.name).as_dict()  # JSON: a bad entry stops, naming its key
        frame = pd.concat(parts, ignore_index=True)
        where = wheres
        notes.append("LATTICE split files have no timestamps or ratings: timestamp = 0, rating = 1.0")
        # Exact repeats inside one split, then pairs in several splits: keep the earliest split.
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
        duplicates = {"repeated_in_split": int(n0 - n1), "in_several_splits_kept_earliest": int(n1 - len(frame))}

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
        raise ValueError(f"{raw_dir / 'MANIFEST.json'}: {modality}_feat format {fmt!r} is not 'npy'")
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
