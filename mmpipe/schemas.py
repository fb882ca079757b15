"""The data contracts between stages: Parquet schemas, split codes, and the features file format.

Every file a stage hands to another is described here once (see docs/ARCHITECTURE.md); writers build
tables with these schemas and readers check them, so a file that does not match its contract stops
the reading stage with a message naming the file and the column.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmpipe.config import ParamsError
from mmpipe.io import read_parquet, write_parquet

# interactions.parquet and coldstart.parquet; split: 0 train, 1 valid, 2 test
INTERACTIONS = pa.schema(
    [
        ("user_idx", pa.int32()),
        ("item_idx", pa.int32()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
        ("split", pa.int8()),
    ]
)
ITEMS = pa.schema(
    [
        ("item_idx", pa.int32()),
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("brand", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("image_url", pa.string()),
    ]
)
USERS = pa.schema([("user_idx", pa.int32()), ("user_id", pa.string())])
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
ITEM_FIELDS = tuple(name for name in ITEMS.names if name not in ("item_idx", "item_id"))


def item_text(row: dict[str, Any], template: str) -> str:
    """An item's text: the template filled from its row (items.parquet fields); missing fields become empty,
    spaces collapse. One rule for the feature encoders and the end-to-end text towers."""
    values = {
        key: (" ".join(value) if isinstance(value, list) else str(value)) if value else "" for key, value in row.items()
    }
    try:
        text = template.format_map(values)
    except KeyError as exc:
        raise ParamsError(
            f"params.yaml: the text template uses field {exc} that items.parquet does not have "
            f"(fields: {sorted(values)})"
        ) from None
    return " ".join(text.split())


def features_schema(dim: int) -> pa.Schema:
    """features/<space>/<modality>.parquet: one row per item in item_idx order, never silently zero."""
    return pa.schema(
        [
            ("item_idx", pa.int32()),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("has_input", pa.bool_()),  # false: the item had no input; its row holds the fill value
        ]
    )


# interactions/items/users.parquet (and coldstart.parquet, made from them) carry the id of the ingest run
# that wrote them in their Parquet metadata: readers check they belong together, so a crash between
# ingest's renames, or a stage run by hand, can never pair new interactions with old items.
INGEST_ID = "mmpipe.ingest_id"


def ingest_id(interactions: pa.Table, item_ids: list[str], user_ids: list[str]) -> str:
    """A content hash of an ingest run's output: the interactions and the item and user id lists."""
    digest = hashlib.sha256()
    for name in INTERACTIONS.names:
        digest.update(np.ascontiguousarray(interactions.column(name).to_numpy()).tobytes())
    for ids in (item_ids, user_ids):
        digest.update("\n".join(ids).encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def read_ingest_id(path: str | Path) -> str | None:
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(INGEST_ID.encode())
    return value.decode() if value is not None else None


def check_same_ingest(*paths: str | Path) -> None:
    """Stop when files that must come from one ingest run carry different ingest ids (none: not checked)."""
    found = {Path(p): read_ingest_id(p) for p in paths}
    ids = {v for v in found.values() if v is not None}
    if len(ids) > 1:
        listing = ", ".join(f"{p} ({v or 'no id'})" for p, v in found.items())
        raise ValueError(
            f"{listing}: written by different ingest runs; re-run ingest (and the stages after it) for this dataset"
        )


def check_columns(table: pa.Table, required: dict[str, pa.DataType], path: str | Path) -> None:
    """Stop with a clear message when a Parquet input does not match its contract."""
    for name, dtype in required.items():
        if name not in table.schema.names:
            raise ValueError(f"{path}: column '{name}' is missing (have {table.schema.names})")
        if table.schema.field(name).type != dtype:
            raise ValueError(f"{path}: column '{name}' has type {table.schema.field(name).type}, expected {dtype}")


def write_features(path: str | Path, matrix: np.ndarray, has_input: np.ndarray) -> None:
    """Write a features file: row i is item i's float32 vector, `has_input` flags items that had input."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(has_input):
        raise ValueError(f"{path}: features must be [n_items, d] with one flag per item, got {matrix.shape}")
    dim = int(matrix.shape[1])
    table = pa.table(
        {
            "item_idx": pa.array(np.arange(len(has_input), dtype=np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim),
            "has_input": pa.array(np.asarray(has_input, dtype=bool)),
        },
        schema=features_schema(dim),
    )
    write_parquet(path, table)


def read_features(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a features file into (matrix [n_items, d] float32, has_input [n_items] bool), checking it."""
    table = read_parquet(path)
    for col in ("item_idx", "embedding", "has_input"):
        if col not in table.schema.names:
            raise ValueError(f"{path}: column '{col}' is missing")
    idx = table["item_idx"].to_numpy()
    if not np.array_equal(idx, np.arange(len(idx))):
        raise ValueError(f"{path}: item_idx must be 0..n-1 in order")
    emb = table["embedding"].combine_chunks()
    if not pa.types.is_fixed_size_list(emb.type):
        raise ValueError(f"{path}: column 'embedding' must be a fixed-size list of float32, got {emb.type}")
    dim = emb.type.list_size
    matrix = emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    return matrix, table["has_input"].to_numpy(zero_copy_only=False)


def decode_image(data: bytes, what: str) -> Any:
    """The RGB image (PIL) of stored image bytes (images.lmdb's JPEGs, covers). Bytes Pillow cannot read
    are an error naming `what` and the repair, not Pillow's bare UnidentifiedImageError: the images stage
    stores only images it could read, so such bytes mean the store was damaged afterwards."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
        raise ValueError(
            f"{what}: stored image bytes Pillow cannot read ({len(data)} bytes, starting {data[:8]!r}: {exc}); "
            f"the image store is damaged: delete it and re-run its images stage (or `dvc pull` it again)"
        ) from None
