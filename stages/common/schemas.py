"""The Parquet schemas of the data contracts between stages (see ARCHITECTURE.md)."""

from __future__ import annotations

import pyarrow as pa

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
