"""Files of the pre-split sources (MMRec, LATTICE): manifest entries, index maps, range checks.

Shared by `stages/sources/mmrec.py` and `lattice.py`, whose readers return a `Read`, and by
`presplit.py`, which turns a `Read` into the ingest tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpipe.io import read_json
from mmpipe.log import get_logger
from mmpipe.paths import MANIFEST, feature_file
from stages.sources.source import FileSpec

log = get_logger("ingest")

MAX_LISTED = 20  # example indices listed in the stats for users/items without interactions


@dataclass
class Read:
    """What a pre-split source's reader found: rows (user_idx, item_idx, rating, timestamp, split) and notes."""

    frame: pd.DataFrame
    where: list[str]  # per row: the file and line (or key) it came from, for error messages
    rows_read: dict[str, Any]
    malformed: dict[str, Any]
    duplicates: dict[str, int]
    notes: list[str] = field(default_factory=list)


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
            raise ValueError(f"{raw_dir / MANIFEST}: no file with role '{role}' (roles listed: {roles})")
        return None
    if "path" not in entry:
        raise ValueError(f"{raw_dir / MANIFEST}: the '{role}' entry has no 'path'")
    path = raw_dir / entry["path"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: listed in {raw_dir / MANIFEST} as {role} but missing")
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


def feature_files() -> list[FileSpec]:
    """The optional `image_feat.npy` / `text_feat.npy` a pre-split dataset may ship beside its split."""
    return [FileSpec(f"{m}_feat", feature_file(m), "npy", None, optional=True) for m in ("image", "text")]
