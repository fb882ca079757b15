"""Stage `ingest`: raw reviews + meta -> k-core filtered, reindexed, split interactions and item table.

Inputs come from `raw/<ds>/MANIFEST.json`: every file with role `reviews` (or `interactions`) and every
file with role `meta` (or `items`), read in manifest order, each by the reader its `format` names in
`stages.sources.formats` (its source's declared readers; a manifest without formats means the Amazon
2014 ones). Pre-split sources (`source: mmrec` / `lattice`) are read by `stages.sources.presplit` and
keep their published split: no k-core, no re-splitting.

The stage is a chain of named steps (`read_rows`, then `STEPS` in order, then the items), each
counted in `ingest_stats.json`; the readers live in `stages/sources/reading.py`, the filters and splits
(`STEPS`, and the `kcore` / `split` blocks) in `stages/common/interactions.py`:
1. `read_rows`: parse reviews (JSON or Python-literal lines, gzip or plain); malformed lines are
   skipped and counted with their line numbers and reasons;
2. `deduplicate`: reviews equal in (user, item, rating, timestamp) count once ("exact_lines"); of the
   reviews left, a (user, item) pair given several times keeps its earliest review (smallest
   timestamp, then smallest rating) ("repeated_pairs_kept_earliest");
3. `rating_filter`: `kcore.rating_min` (default null: keep all) keeps reviews rated >= it, as implicit
   feedback (after step 2, as RecBole orders them: the earliest review of a pair decides);
4. `k_core`: iterative k-core until no user/item is below `kcore.user_min` / `kcore.item_min`;
5. `reindex`: users and items numbered in the sorted order of their source ids; rows by user, time, item;
6. `split`: `split.method`, one of `stages.sources.splits.SPLITS`; for `global_time`, valid/test rows
   whose user or item has no train row are removed and counted (`drop_unseen_in_eval`);
7. items (`read_all_meta`, `item_table`): the meta records of the kept items (read only for those items);
8. `shipped_features`: features the source ships (MMRec/LATTICE `.npy`, the Amazon 2014 CNN file), as
   `shipped/<role>.parquet` rows aligned with item_idx (the raw formats stay in this stage; the
   features stage reads only these);
9. `write_outputs`: every table is written to a temporary file first, then all are renamed.

All steps after parsing work on integer codes (numpy), never on Python strings per row.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mmpipe import schemas
from mmpipe.io import atomic_dir, read_json, remove_stale_temps, temp_prefix, write_json, write_parquet
from mmpipe.log import get_logger
from mmpipe.paths import MANIFEST, PROCESSED, RAW, DatasetDir
from mmpipe.schemas import ITEM_FIELDS, write_features
from stages.common.interactions import STEPS, IngestConfig, Rows, read_config
from stages.common.params import run_stage
from stages.sources import presplit
from stages.sources.reading import (
    META_ROLES,
    REVIEW_ROLES,
    find_files,
    merge_malformed,
    read_all_meta,
    read_all_reviews,
    shipped_features,
)

log = get_logger("ingest")


def param_keys(dataset: str) -> list[str]:
    return ["kcore", "split"]


def item_table(item_list: list[str], meta: dict[str, dict[str, Any]]) -> tuple[pa.Table, list[dict[str, Any]]]:
    """items.parquet: one row per kept item, its meta fields (null where the meta has none)."""
    empty = dict.fromkeys(ITEM_FIELDS)
    records = [meta.get(asin, empty) for asin in item_list]
    table = pa.table(
        {
            "item_idx": pa.array(np.arange(len(item_list), dtype=np.int32)),
            "item_id": pa.array(item_list, pa.string()),
            **{key: pa.array([r[key] for r in records], schemas.ITEMS.field(key).type) for key in ITEM_FIELDS},
        },
        schema=schemas.ITEMS,
    )
    return table, records


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_outputs(ds: DatasetDir, tables: dict[str, pa.Table], shipped: dict[str, Any], stats: dict) -> None:
    """Write every output to a temporary file first, then rename them all: no partial set on a crash.

    The three tables carry one ingest id (`schemas.INGEST_ID`), so a reader can tell that they belong
    together even if a crash stopped the renames half-way.
    """
    ds.root.mkdir(parents=True, exist_ok=True)
    run_id = schemas.ingest_id(
        tables[ds.interactions.name],
        tables[ds.items.name]["item_id"].to_pylist(),
        tables[ds.users.name]["user_id"].to_pylist(),
    )
    stats["ingest_id"] = run_id
    remove_stale_temps(ds.root, "ingest")  # what a killed ingest left
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix("ingest"), suffix=".tmp", dir=ds.root))
    try:
        for name, table in tables.items():
            write_parquet(tmp / name, table.combine_chunks(), {schemas.INGEST_ID: run_id})
        write_json(tmp / ds.ingest_stats.name, stats)
        with atomic_dir(ds.shipped) as shipped_dir:
            for role, (matrix, has_input) in sorted(shipped.items()):
                write_features(shipped_dir / ds.shipped_features(role).name, matrix, has_input)
            # the index is written even when the source ships nothing, so the folder is never empty
            index = {
                role: {"items_with_features": int(h.sum()), "dim": int(m.shape[1])} for role, (m, h) in shipped.items()
            }
            write_json(shipped_dir / ds.shipped_index.name, index)
            for path in sorted(tmp.iterdir()):
                os.replace(path, ds.root / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_presplit(ds: DatasetDir, manifest: dict[str, Any], raw_dir: Path) -> dict[str, Any]:
    """A source published with its split (MMRec, LATTICE): its loader's tables, written as is."""
    frame, items_table, users_table, stats = presplit.load(manifest, raw_dir)
    log.info(
        "%s: %s source, the given split is kept (kcore and split params are not applied)", ds.name, manifest["source"]
    )
    table = pa.Table.from_pandas(frame[schemas.INTERACTIONS.names], schema=schemas.INTERACTIONS, preserve_index=False)
    item_ids = items_table["item_id"].to_pylist()
    tables = {ds.interactions.name: table, ds.items.name: items_table, ds.users.name: users_table}
    shipped = shipped_features(manifest, raw_dir, item_ids)
    if shipped:
        stats["shipped_features"] = {role: int(h.sum()) for role, (_, h) in shipped.items()}
    write_outputs(ds, tables, shipped, stats)
    return stats


def read_rows(review_files: list[tuple[Path, str]]) -> Rows:
    """Parse every reviews file into codes; the parse counts go into the stats.

    No valid review at all is an error that says so (an empty file, or every line malformed, with the
    first reasons), not the k-core's "no interactions left" further down.
    """
    data, bad_reviews, summaries = read_all_reviews(review_files)
    if not len(data["user"]):
        names = ", ".join(str(path) for path, _ in review_files)
        lines = sum(s["lines"] for s in summaries)
        if not lines:
            raise ValueError(f"{names}: empty: no review line to read")
        reasons = "; ".join(f"{b.file}: {b.first_reasons()}" for b in bad_reviews if b.count)
        raise ValueError(
            f"{names}: no valid review line was read ({lines} lines, "
            f"{sum(b.count for b in bad_reviews)} malformed; first: {reasons or 'only blank lines'})"
        )
    stats: dict[str, Any] = {
        "rows_read": {"review_lines": sum(s["lines"] for s in summaries), "reviews_parsed": len(data["user"])},
        "malformed": {"reviews": merge_malformed(bad_reviews)},
        "files": {"reviews": summaries},
    }
    return Rows(
        data["user"], data["item"], data["rating"], data["timestamp"], data["user_ids"], data["item_ids"],
        np.arange(len(data["user"])), stats,
    )  # fmt: skip


def items_missing(item_list: list[str], meta: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, int]:
    """How many kept items lack their meta record, or each field of it."""
    missing = {"meta": sum(1 for asin in item_list if asin not in meta)}
    for key in ("title", "description", "brand", "categories", "image_url"):
        missing[key] = sum(1 for r in records if not r[key])
    missing["any_text"] = sum(
        1 for r in records if not (r["title"] or r["description"] or r["brand"] or r["categories"])
    )
    return missing


def run(dataset: str, params: dict[str, Any], raw: Path = RAW, processed: Path = PROCESSED) -> dict:
    cfg = read_config(params)
    with _gc_paused():  # many long-lived objects (meta dicts): the cyclic GC would rescan them again and again
        return _run(dataset, cfg, Path(raw) / dataset, DatasetDir.of(dataset, processed))


def _run(dataset: str, cfg: IngestConfig, raw_dir: Path, ds: DatasetDir) -> dict:
    start = time.perf_counter()
    manifest = read_json(raw_dir / MANIFEST)
    if presplit.is_presplit(manifest.get("source")):
        return run_presplit(ds, manifest, raw_dir)
    rows = read_rows(find_files(manifest, REVIEW_ROLES, raw_dir))
    timings = {"read": time.perf_counter() - start}
    for name, step in STEPS:
        step_start = time.perf_counter()
        step(rows, cfg)
        timings[name] = time.perf_counter() - step_start

    step_start = time.perf_counter()
    item_list = rows.item_ids.to_pylist()
    meta, bad_meta, meta_summaries = read_all_meta(find_files(manifest, META_ROLES, raw_dir), set(item_list))
    items_table, records = item_table(item_list, meta)
    shipped = shipped_features(manifest, raw_dir, item_list)
    timings["items"] = time.perf_counter() - step_start

    n_users, n_items, n_rows = len(rows.user_ids), len(item_list), len(rows.user)
    split_counts = np.bincount(rows.split, minlength=3)
    stats = rows.stats
    stats["rows_read"]["meta_lines"] = sum(s["lines"] for s in meta_summaries)
    stats["malformed"]["meta"] = merge_malformed(bad_meta)
    stats["repaired"] = {"meta": dict(sorted(sum((b.repairs for b in bad_meta), Counter()).items()))}
    stats["files"]["meta"] = meta_summaries
    stats.update(
        users=n_users,
        items=n_items,
        interactions=n_rows,
        sparsity=round(1.0 - n_rows / (n_users * n_items), 6),
        split={name: int(split_counts[code]) for name, code in schemas.SPLIT_CODES.items()},
        items_missing=items_missing(item_list, meta, records),
    )
    if shipped:
        stats["shipped_features"] = {role: int(h.sum()) for role, (_, h) in shipped.items()}
    interactions = pa.table(
        {"user_idx": rows.user, "item_idx": rows.item, "rating": rows.rating, "timestamp": rows.timestamp,
         "split": rows.split},
        schema=schemas.INTERACTIONS,
    )  # fmt: skip
    users_table = pa.table(
        {"user_idx": pa.array(np.arange(n_users, dtype=np.int32)), "user_id": rows.user_ids}, schema=schemas.USERS
    )
    tables = {ds.interactions.name: interactions, ds.items.name: items_table, ds.users.name: users_table}
    write_outputs(ds, tables, shipped, stats)
    dups, rounds = stats["duplicates"], stats["kcore"]["rounds"]
    below = stats["rating_filter"]["removed"]
    log.info(
        "%s: %d lines -> %d reviews (%d malformed, %d duplicate lines, %d repeated pairs%s), %d k-core rounds -> "
        "%d users, %d items, %d interactions (%s split train/valid/test %d/%d/%d); %s",
        dataset, stats["rows_read"]["review_lines"], stats["rows_read"]["reviews_parsed"],
        stats["malformed"]["reviews"]["count"], dups["exact_lines"], dups["repeated_pairs_kept_earliest"],
        f", {below} rated below {cfg.kcore.rating_min}" if cfg.kcore.rating_min is not None else "", len(rounds),
        n_users, n_items, n_rows, cfg.split.method, *split_counts,
        ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()),
    )  # fmt: skip
    return stats


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("dataset",), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
