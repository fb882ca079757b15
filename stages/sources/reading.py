"""Read a dataset's raw files as its MANIFEST.json lists them: reviews, meta, and the features it ships.

The ingest stage's input side. Each file is read by the reader its `format` names in `formats.py`
(its source's declared readers); reviews become integer codes over one dictionary of ids per column (the
steps after reading never touch Python strings per row); meta is read only for the items kept.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmpipe.log import get_logger
from mmpipe.paths import MANIFEST
from mmpipe.schemas import ITEM_FIELDS
from stages.sources import formats, presplit, records
from stages.sources.malformed import Malformed

log = get_logger("ingest")

REVIEW_ROLES = ("reviews", "interactions")
META_ROLES = ("meta", "items")
AMAZON_CNN_DIM = 4096  # image_features_<Cat>.b: records of a 10-byte ASIN + 4096 little-endian float32


def find_files(manifest: dict[str, Any], roles: tuple[str, ...], raw_dir: Path) -> list[tuple[Path, str]]:
    """(path, format) of every manifest entry with one of `roles`, in manifest order; each must exist."""
    out = []
    for entry in manifest.get("files", []):
        role = entry.get("role")
        if role in roles:
            path = raw_dir / entry["path"]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {raw_dir / MANIFEST} as {role} but missing")
            out.append((path, entry.get("format") or formats.DEFAULT_FORMATS[roles[0]]))
    if not out:
        raise ValueError(f"{raw_dir / MANIFEST}: no file with role '{roles[0]}'")
    return out


def _reader(registry: dict[str, Any], fmt: str, path: Path, kind: str) -> Any:
    if fmt not in registry:
        raise ValueError(
            f"{path}: format {fmt!r} has no {kind} reader: no source in stages/sources/catalog.py declares it "
            f"(known: {', '.join(registry)})"
        )
    return registry[fmt]


def merge_malformed(bads: list[Malformed]) -> dict[str, Any]:
    """One file: its Malformed as is; several: the total, per-file details, the first lines with their file."""
    if len(bads) == 1:
        return bads[0].as_dict()
    first = [{"file": b.file, **entry} for b in bads for entry in b.lines]
    return {
        "count": sum(b.count for b in bads),
        "first": first[:100],
        "files": {b.file: b.as_dict() for b in bads},
    }


def _codes(columns: list[pa.Array | pa.ChunkedArray]) -> tuple[np.ndarray, pa.Array]:
    """Integer codes over the concatenated columns, and the shared dictionary (code -> id)."""
    chunks: list[pa.Array] = []
    for column in columns:
        chunks += column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not chunks:
        return np.zeros(0, np.int32), pa.array([], pa.string())
    dict_type = pa.dictionary(pa.int32(), pa.string())
    if all(pa.types.is_string(c.type) for c in chunks):
        encoded = pc.dictionary_encode(pa.chunked_array(chunks, pa.string()))  # one dictionary for all chunks
    else:  # readers that return dictionary arrays (or other string types)
        chunks = [
            c.cast(dict_type) if pa.types.is_dictionary(c.type) else pc.dictionary_encode(c.cast(pa.string()))
            for c in chunks
        ]
        encoded = pa.chunked_array(chunks, dict_type).unify_dictionaries()
    if not encoded.num_chunks:
        return np.zeros(0, np.int32), pa.array([], pa.string())
    dictionary = encoded.chunks[0].dictionary
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in encoded.chunks]).astype(np.int32)
    return codes, dictionary


def read_all_reviews(files: list[tuple[Path, str]]) -> tuple[dict[str, Any], list[Malformed], list[dict[str, Any]]]:
    """Every reviews file -> codes and columns of all valid reviews; per-file Malformed and summaries."""
    users: list[pa.Array | pa.ChunkedArray] = []
    items: list[pa.Array | pa.ChunkedArray] = []
    ratings: list[np.ndarray] = []
    times: list[np.ndarray] = []
    bads: list[Malformed] = []
    summaries: list[dict[str, Any]] = []
    for path, fmt in files:
        reader = _reader(formats.review_readers(), fmt, path, "reviews")
        bad = Malformed(path.name)
        start = time.perf_counter()
        cols = records.as_review_columns(reader(path, bad))
        if cols.user_id.null_count or cols.item_id.null_count:
            raise ValueError(f"{path}: the {fmt} reader returned rows without a user or item id")
        users.append(cols.user_id)
        items.append(cols.item_id)
        ratings.append(np.asarray(cols.rating, dtype=np.float32))
        times.append(np.asarray(cols.timestamp, dtype=np.int64))
        bads.append(bad)
        summaries.append(
            {"path": path.name, "format": fmt, "lines": cols.lines, "parsed": len(cols), "malformed": bad.count}
        )
        log.info(
            "%s (%s): %d lines, %d reviews, %d malformed in %.1f s",
            path.name, fmt, cols.lines, len(cols), bad.count, time.perf_counter() - start,
        )  # fmt: skip
    with ThreadPoolExecutor(2) as pool:  # arrow's hashing releases the GIL: users and items side by side
        user_job, item_job = pool.submit(_codes, users), pool.submit(_codes, items)
        (user, user_ids), (item, item_ids) = user_job.result(), item_job.result()
    data = {
        "user": user,
        "item": item,
        "rating": np.concatenate(ratings),
        "timestamp": np.concatenate(times),
        "user_ids": user_ids,
        "item_ids": item_ids,
    }
    return data, bads, summaries


def read_all_meta(
    files: list[tuple[Path, str]], wanted: set[str]
) -> tuple[dict[str, dict[str, Any]], list[Malformed], list[dict[str, Any]]]:
    """Item records of the wanted items from every meta file (the first record of an item wins)."""
    meta: dict[str, dict[str, Any]] = {}
    bads: list[Malformed] = []
    summaries: list[dict[str, Any]] = []
    for path, fmt in files:
        reader = _reader(formats.meta_readers(), fmt, path, "meta")
        bad = Malformed(path.name)
        start = time.perf_counter()
        yielded = 0
        records = iter(reader(path, bad, wanted))
        lines = None
        while True:
            try:
                rec = next(records)
            except StopIteration as stop:  # a generator's return value: the lines it read
                lines = stop.value
                break
            yielded += 1
            item_id = rec.get("item_id")
            if item_id in wanted and item_id not in meta:
                meta[item_id] = {key: rec.get(key) for key in ITEM_FIELDS}
        lines = yielded if lines is None else int(lines)
        bads.append(bad)
        summaries.append({"path": path.name, "format": fmt, "lines": lines, "records": yielded, "malformed": bad.count})
        log.info(
            "%s (%s): %d lines, %d wanted records, %d malformed in %.1f s",
            path.name, fmt, lines, yielded, bad.count, time.perf_counter() - start,
        )  # fmt: skip
    if not meta and any(b.count for b in bads):
        # every line malformed (a wrong encoding, a wrong format): every item would silently lose its text
        names = ", ".join(str(path) for path, _ in files)
        reasons = "; ".join(f"{b.file}: {b.first_reasons()}" for b in bads if b.count)
        raise ValueError(
            f"{names}: no usable meta record ({sum(s['lines'] for s in summaries)} lines, "
            f"{sum(b.count for b in bads)} malformed; first: {reasons}); check the file's encoding (UTF-8) "
            f"and format (the `format` of its entry in MANIFEST.json)"
        )
    missing = sorted(wanted - meta.keys())
    if files and missing:  # e.g. ids of a Bilibili users file that its texts file lacks
        log.warning(
            "%s: %d of the %d kept items have no record (first: %s): they are kept without title or image URL",
            ", ".join(path.name for path, _ in files), len(missing), len(wanted), ", ".join(missing[:5]),
        )  # fmt: skip
    return meta, bads, summaries


def read_amazon_image_features(path: Path, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stream the 2014 release's CNN features file, keeping the rows of our items (it covers far more)."""
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    matrix = np.zeros((len(item_ids), AMAZON_CNN_DIM), dtype=np.float32)
    found = np.zeros(len(item_ids), dtype=bool)
    record = 10 + 4 * AMAZON_CNN_DIM
    size = path.stat().st_size
    if size % record:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {record}-byte records (truncated download?)")
    with path.open("rb") as fh:
        for n in range(size // record):
            data = fh.read(record)
            asin = data[:10].decode("ascii", errors="replace").strip()
            i = index.get(asin)
            if i is not None and not found[i]:
                matrix[i] = np.frombuffer(data, dtype="<f4", offset=10)
                found[i] = True
            if n % 100_000 == 0 and n:
                log.info("%s: %d records read", path.name, n)
    return matrix, found


def shipped_features(manifest: dict[str, Any], raw_dir: Path, item_ids: list[str]) -> dict[str, Any]:
    """{role: (matrix, has_input)} of the features files the source ships, rows aligned with item_idx."""
    out: dict[str, Any] = {}
    for entry in manifest.get("files", []):
        role, fmt = entry.get("role"), entry.get("format")
        if fmt == "amazon2014-image-features":
            out[role] = read_amazon_image_features(raw_dir / entry["path"], item_ids)
        elif role in ("image_feat", "text_feat"):
            matrix = presplit.precomputed_features(manifest, raw_dir, role.removesuffix("_feat"), n_items=len(item_ids))
            out[role] = (matrix, np.abs(matrix).sum(axis=1) > 0)  # all-zero rows: the source had no input
    return out
