"""Stage `coldstart`: the MICRO cold-start split, written as `coldstart.parquet`.

Following MICRO's `cold_start.py` (CRIPAC-DIG/MICRO): a share `coldstart.ratio` of all items is drawn
at random (seeded); the first half of the draw are test items, the second half valid items. Every
interaction with a cold item goes to valid or test, every other interaction goes to train, so a
model trained on this split never sees a cold item and must score it from content alone.
Users whose items are all cold keep no training interaction; evaluation skips them (and counts
them), as MMRec does for users unseen in training.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mmpipe import schemas
from mmpipe.config import Config, ParamsError, param
from mmpipe.io import read_parquet, write_json, write_parquet
from mmpipe.log import get_logger
from mmpipe.paths import PROCESSED, DatasetDir
from stages.common.params import declared, run_stage

log = get_logger("coldstart")


def param_keys(dataset: str) -> list[str]:
    return ["coldstart"]


@dataclass(frozen=True)
class ColdstartConfig(Config):
    ratio: float = param(0.2, gt=0, lt=1, doc="share of items held out as cold (MICRO: 20%)")
    seed: int = param(123)


def cold_items(n_items: int, ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (valid cold items, test cold items), as MICRO draws them."""
    if not 0.0 < ratio < 1.0:
        raise ParamsError(f"params.yaml: coldstart.ratio must be in (0, 1), got {ratio}")
    drawn = np.random.default_rng(seed).choice(n_items, size=int(ratio * n_items), replace=False)
    half = len(drawn) // 2
    return np.sort(drawn[half:]), np.sort(drawn[:half])


def run(dataset: str, params: dict[str, Any], processed: Path = PROCESSED) -> dict[str, Any]:
    start = time.perf_counter()
    cfg = ColdstartConfig.parse(declared(params, param_keys(dataset)).get("coldstart"), "coldstart")
    ratio, seed = cfg.ratio, cfg.seed
    ds = DatasetDir.of(dataset, processed)
    schemas.check_same_ingest(ds.interactions, ds.items)
    table = read_parquet(ds.interactions)
    n_items = len(read_parquet(ds.items, columns=["item_idx"]))
    valid_items, test_items = cold_items(n_items, ratio, seed)

    item = table["item_idx"].to_numpy()
    split = np.zeros(len(item), dtype=np.int8)
    split[np.isin(item, valid_items)] = 1
    split[np.isin(item, test_items)] = 2
    out = table.set_column(table.schema.get_field_index("split"), "split", pa.array(split, pa.int8()))
    run_id = schemas.read_ingest_id(ds.interactions)  # the cold split belongs to the same ingest run
    write_parquet(ds.coldstart, out.cast(schemas.INTERACTIONS), {schemas.INGEST_ID: run_id} if run_id else None)

    user = table["user_idx"].to_numpy()
    users_with_train = np.unique(user[split == 0])
    stats = {
        "ratio": ratio,
        "seed": seed,
        "cold_items": {"valid": len(valid_items), "test": len(test_items)},
        "interactions": {
            "train": int((split == 0).sum()),
            "valid": int((split == 1).sum()),
            "test": int((split == 2).sum()),
        },
        "users_without_train": int(len(np.unique(user)) - len(users_with_train)),
    }
    write_json(ds.coldstart_stats, stats)
    log.info(
        "%s: %d cold items (%d valid, %d test), interactions train/valid/test %d/%d/%d, "
        "%d users left without training interactions, %.1f s",
        dataset,
        len(valid_items) + len(test_items),
        len(valid_items),
        len(test_items),
        *stats["interactions"].values(),
        stats["users_without_train"],
        time.perf_counter() - start,
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("dataset",), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
