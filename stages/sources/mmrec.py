"""MMRec's processed datasets: `<name>.inter` (userID, itemID, x_label [, rating, timestamp]) + id maps.

The split (x_label: 0 train, 1 valid, 2 test) and the indices are kept as published; a repeated
(user, item) pair keeps its first row.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpipe.config import ParamsError
from mmpipe.paths import MANIFEST, MMREC_ITEM_MAP, MMREC_USER_MAP
from stages.sources.indexed import Read, _lines, _path, feature_files
from stages.sources.malformed import Malformed
from stages.sources.source import FILE_KEYS, FileSpec, Source

MMREC_REQUIRED = ("userID", "itemID", "x_label")


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


def read(manifest: dict[str, Any], raw_dir: Path) -> Read:
    path, fmt = _path(manifest, "interactions", raw_dir, required=True)  # type: ignore[misc]
    if fmt not in ("", "mmrec-inter"):
        raise ValueError(f"{raw_dir / MANIFEST}: interactions format {fmt!r} is not 'mmrec-inter'")
    bad = Malformed(path.name)
    frame, where, n_lines, header = read_mmrec_inter(path, bad)
    notes = []
    if "timestamp" not in header:
        notes.append(f"{path.name} has no timestamp column: timestamp = 0 for every interaction")
    if "rating" not in header:
        notes.append(f"{path.name} has no rating column: rating = 1.0 (implicit feedback)")
    n0 = len(frame)
    keep = ~frame.duplicated(["user_idx", "item_idx"], keep="first")
    frame = frame[keep.to_numpy()]
    where = [w for w, k in zip(where, keep.to_numpy(), strict=True) if k]
    return Read(
        frame=frame,
        where=where,
        rows_read={"inter_lines": n_lines, "rows_parsed": n0},
        malformed={"interactions": bad.as_dict()},
        duplicates={"repeated_pairs_kept_first": int(n0 - len(frame))},
        notes=notes,
    )


def mmrec_files(cfg: Mapping[str, Any]) -> list[FileSpec]:
    """`name: baby` -> baby.inter, and the optional id maps and feature matrices beside it."""
    name = cfg.get("name")
    if not name:
        raise ParamsError("params.yaml: datasets.<ds>.name (the MMRec dataset name, e.g. baby) is required")
    return [
        FileSpec("interactions", f"{name}.inter", "mmrec-inter", None),
        FileSpec("user_map", MMREC_USER_MAP, "mmrec-map", None, optional=True),
        FileSpec("item_map", MMREC_ITEM_MAP, "mmrec-map", None, optional=True),
        *feature_files(),
    ]


MMREC = Source(
    "mmrec",
    keys=(*FILE_KEYS, "name"),
    files=mmrec_files,
    presplit=read,
    no_direct_link="MMRec's processed datasets are shared through Google Drive, not direct links",
)
