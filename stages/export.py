"""Stage `export`: write a processed dataset in the MMRec / REARM format, so those codebases can read it as is.

`processed/<ds>/export/<feature set>/` (one per feature set, built in a temporary folder and renamed into
place as a whole):

* `<ds>.inter`: MMRec's interaction file, tab-separated with the header
  `userID itemID rating timestamp x_label` (x_label = split: 0 train, 1 valid, 2 test), sorted by userID,
  x_label, itemID. MMRec reads it with `USER_ID_FIELD: userID`, `ITEM_ID_FIELD: itemID`,
  `inter_splitting_label: x_label`, `field_separator: "\\t"`.
* `u_id_mapping.csv` / `i_id_mapping.csv`: MMRec's id maps, tab-separated, `user_id<TAB>userID` and
  `asin<TAB>itemID` (source id -> index).
* `train.npy`, `valid.npy`, `test.npy`: REARM's split arrays, int64 of shape (2, n): row 0 user, row 1 item.
* `<modality>_feat.npy` (MMRec / REARM: `image_feat.npy`, `text_feat.npy`): float32 (n_items, d), row i =
  item i, for each modality of `pipeline.modalities`, from the feature set.
* `export_stats.json`: the counts written (no timings, so the folder's bytes depend only on its inputs).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpipe import schemas
from mmpipe.io import atomic_dir, read_parquet, write_json, write_text
from mmpipe.log import get_logger
from mmpipe.paths import MMREC_ITEM_MAP, MMREC_USER_MAP, PROCESSED, DatasetDir, feature_file
from mmpipe.schemas import check_columns, read_features
from stages.common import pipeline
from stages.common.params import declared, run_stage

log = get_logger("export")


def param_keys(dataset: str, feature_set: str) -> list[str]:
    return ["pipeline.modalities"]


INTER_COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")


def _index_table(path: Path, idx_col: str, id_col: str) -> list[str]:
    table = read_parquet(path, columns=[idx_col, id_col])
    idx = table[idx_col].to_numpy()
    if not np.array_equal(idx, np.arange(len(idx))):
        raise ValueError(f"{path}: {idx_col} must be 0..n-1 in order")
    return [str(v) for v in table[id_col].to_pylist()]


def _format_inter(frame: pd.DataFrame) -> str:
    out = pd.DataFrame(
        {
            "userID": frame["user_idx"].to_numpy(),
            "itemID": frame["item_idx"].to_numpy(),
            "rating": frame["rating"].to_numpy(dtype=np.float64),
            "timestamp": frame["timestamp"].to_numpy(),
            "x_label": frame["split"].to_numpy(),
        }
    )
    return out.to_csv(sep="\t", index=False, lineterminator="\n", float_format="%.7g")


def _mapping(name: str, index_name: str, ids: list[str]) -> str:
    for i, value in enumerate(ids):
        if "\t" in value or "\n" in value:
            raise ValueError(f"{name}: id {value!r} of index {i} contains a tab or newline; cannot write {name}")
    return f"{name}\t{index_name}\n" + "".join(f"{value}\t{i}\n" for i, value in enumerate(ids))


def run(dataset: str, feature_set: str, params: dict[str, Any], processed: Path = PROCESSED) -> dict[str, Any]:
    start = time.perf_counter()
    modalities = pipeline.modalities(declared(params, param_keys(dataset, feature_set)))
    ds = DatasetDir.of(dataset, processed)
    inter_path = ds.interactions
    schemas.check_same_ingest(inter_path, ds.users, ds.items)
    table = read_parquet(inter_path)
    check_columns(table, {f.name: f.type for f in schemas.INTERACTIONS}, inter_path)
    user_ids = _index_table(ds.users, "user_idx", "user_id")
    item_ids = _index_table(ds.items, "item_idx", "item_id")
    n_users, n_items = len(user_ids), len(item_ids)

    frame = table.select(schemas.INTERACTIONS.names).to_pandas()
    for col, n, what in (("user_idx", n_users, ds.users.name), ("item_idx", n_items, ds.items.name)):
        values = frame[col].to_numpy()
        if len(values) and (values.min() < 0 or values.max() >= n):
            raise ValueError(f"{inter_path}: {col} outside 0..{n - 1} (the {n} rows of {what})")
    if not frame["split"].isin(list(schemas.SPLIT_CODES.values())).all():
        raise ValueError(f"{inter_path}: split has codes other than 0, 1, 2")
    frame = frame.sort_values(["user_idx", "split", "item_idx"], kind="stable").reset_index(drop=True)

    split_counts = {name: int((frame["split"] == code).sum()) for name, code in schemas.SPLIT_CODES.items()}
    stats: dict[str, Any] = {
        "dataset": dataset,
        "feature_set": feature_set,
        "users": n_users,
        "items": n_items,
        "interactions": len(frame),
        "split": split_counts,
        "features": {},
    }
    out_dir = ds.export_dir(feature_set)
    with atomic_dir(out_dir) as tmp:
        write_text(tmp / f"{dataset}.inter", _format_inter(frame))
        write_text(tmp / MMREC_USER_MAP, _mapping("user_id", "userID", user_ids))
        write_text(tmp / MMREC_ITEM_MAP, _mapping("asin", "itemID", item_ids))
        for name, code in schemas.SPLIT_CODES.items():
            part = frame[frame["split"] == code]
            pairs = np.stack([part["user_idx"].to_numpy(np.int64), part["item_idx"].to_numpy(np.int64)])
            np.save(tmp / f"{name}.npy", pairs, allow_pickle=False)
        for modality in sorted(modalities):
            feat_path = ds.features(feature_set, modality)
            matrix, has_input = read_features(feat_path)
            if matrix.shape[0] != n_items:
                raise ValueError(f"{feat_path}: {matrix.shape[0]} rows, but {ds.items.name} has {n_items} items")
            np.save(tmp / feature_file(modality), np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)
            stats["features"][modality] = {
                "feature_set": feature_set,
                "file": feature_file(modality),
                "dim": int(matrix.shape[1]),
                "items_without_input": int((~has_input).sum()),
            }
        write_json(tmp / ds.export_stats(feature_set).name, stats)
    log.info(
        "%s: exported %d users, %d items, %d interactions (train/valid/test %d/%d/%d), features %s to %s in %.1f s",
        dataset, n_users, n_items, len(frame), *split_counts.values(),
        {m: f["dim"] for m, f in stats["features"].items()}, out_dir, time.perf_counter() - start,
    )  # fmt: skip
    return stats


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("dataset", "feature_set"), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
