"""Stage `ingest`: raw reviews + meta -> k-core filtered, reindexed, split interactions and item table.

Inputs come from `raw/<ds>/MANIFEST.json`: every file with role `reviews` (or `interactions`) and every
file with role `meta` (or `items`), read in manifest order, each by the reader its `format` names in
`stages.sources.formats` (REVIEW_READERS / META_READERS; a manifest without formats means the Amazon
2014 ones). Pre-split sources (`source: mmrec` / `lattice`) are read by `stages.sources.presplit` and
keep their published split: no k-core, no re-splitting.

The stage is a chain of named steps (`read_rows`, then `STEPS` in order, then the items), each
counted in `ingest_stats.json`:
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mmpipe import schemas
from mmpipe.config import Config, ParamsError, param
from mmpipe.io import atomic_dir, read_json, remove_stale_temps, temp_prefix, write_json, write_parquet
from mmpipe.log import get_logger
from mmpipe.paths import MANIFEST, PROCESSED, RAW, DatasetDir
from mmpipe.schemas import ITEM_FIELDS, write_features
from stages.common.params import declared, run_stage
from stages.sources import formats, presplit, records
from stages.sources.malformed import Malformed
from stages.sources.splits import SPLITS, cold_in_eval

log = get_logger("ingest")

REVIEW_ROLES = ("reviews", "interactions")
META_ROLES = ("meta", "items")
SHIPPED_INDEX = "index.json"  # shipped/index.json: role -> items with features, dim
AMAZON_CNN_DIM = 4096  # image_features_<Cat>.b: records of a 10-byte ASIN + 4096 little-endian float32


def param_keys(dataset: str) -> list[str]:
    return ["kcore", "split"]


@dataclass(frozen=True)
class KCoreConfig(Config):
    user_min: int = param(5, ge=1, doc="users with fewer interactions are removed, repeatedly")
    item_min: int = param(5, ge=1, doc="items with fewer interactions are removed, repeatedly")
    rating_min: float | None = param(None, doc="keep reviews rated >= this (implicit feedback); null keeps all")


@dataclass(frozen=True)
class SplitConfig(Config):
    method: str = param("user_time", doc="one of " + ", ".join(SPLITS))
    ratios: tuple[float, ...] = param([0.8, 0.1, 0.1], doc="train/valid/test shares, summing to 1")
    seed: int = param(0, doc="for method: random")

    def check(self, where: str) -> None:
        if self.method not in SPLITS:
            raise ParamsError(
                f"params.yaml: {where}.method = {self.method!r} is not supported (supported: {', '.join(SPLITS)})"
            )
        if len(self.ratios) != 3 or min(self.ratios) < 0:
            raise ParamsError(
                f"params.yaml: {where}.ratios = {list(self.ratios)}: expected three non-negative shares "
                f"(train, valid, test)"
            )
        if abs(sum(self.ratios) - 1.0) > 1e-6:
            raise ParamsError(
                f"params.yaml: {where}.ratios = {list(self.ratios)} sum to {sum(self.ratios):g}; the shares must "
                f"sum to 1 (e.g. [0.8, 0.1, 0.1])"
            )


@dataclass(frozen=True)
class IngestConfig:
    kcore: KCoreConfig
    split: SplitConfig


def read_config(params: dict[str, Any]) -> IngestConfig:
    params = declared(params, param_keys(""))
    kcore = KCoreConfig.parse(params.get("kcore"), "kcore")
    return IngestConfig(kcore, SplitConfig.parse(params.get("split"), "split"))


# ------------------------------------------------------------------------------------------------ inputs


def find_files(manifest: dict[str, Any], roles: tuple[str, ...], raw_dir: Path) -> list[tuple[Path, str]]:
    """(path, format) of every manifest entry with one of `roles`, in manifest order; each must exist."""
    out = []
    for entry in manifest.get("files", []):
        role = entry.get("role")
        if role in roles:
            path = raw_dir / entry["path"]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {raw_dir / 'MANIFEST.json'} as {role} but missing")
            out.append((path, entry.get("format") or formats.DEFAULT_FORMATS[roles[0]]))
    if not out:
        raise ValueError(f"{raw_dir / 'MANIFEST.json'}: no file with role '{roles[0]}'")
    return out


def _reader(registry: dict[str, Any], fmt: str, path: Path, kind: str) -> Any:
    if fmt not in registry:
        raise ValueError(
            f"{path}: format {fmt!r} has no {kind} reader in stages/sources/formats.py (known: {', '.join(registry)})"
        )
    return registry[fmt]


def _merge_malformed(bads: list[Malformed]) -> dict[str, Any]:
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
        reader = _reader(formats.REVIEW_READERS, fmt, path, "reviews")
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
        reader = _reader(formats.META_READERS, fmt, path, "meta")
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


# ------------------------------------------------------------------------------------------ transformations


def dedup_codes(user: np.ndarray, item: np.ndarray, rating: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Rows to keep (sorted indices) after the duplicate rules; (keep, exact duplicates, repeated pairs)."""
    n = len(user)
    if n == 0:
        return np.zeros(0, np.int64), 0, 0
    n_items = int(item.max()) + 1
    key = user.astype(np.int64) * n_items + item.astype(np.int64)
    ordered = np.sort(key)
    repeated_keys = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated_keys):
        return np.arange(n, dtype=np.int64), 0, 0
    multi = np.flatnonzero(pd.Series(key).isin(repeated_keys).to_numpy())  # rows of pairs seen twice or more
    if not len(multi):
        return np.arange(n, dtype=np.int64), 0, 0
    k, t, r = key[multi], ts[multi], rating[multi]
    order = np.lexsort((multi, r, t, k))  # by pair, then time, then rating
    k, t, r = k[order], t[order], r[order]
    same_row = (k[1:] == k[:-1]) & (t[1:] == t[:-1]) & (r[1:] == r[:-1])
    exact = int(same_row.sum())
    first_of_pair = np.r_[True, k[1:] != k[:-1]]
    repeated = len(multi) - exact - int(first_of_pair.sum())
    keep = np.ones(n, dtype=bool)
    keep[multi[order[~first_of_pair]]] = False
    return np.flatnonzero(keep), exact, repeated


def k_core_codes(
    user: np.ndarray, item: np.ndarray, user_min: int, item_min: int
) -> tuple[np.ndarray, list[dict[str, int]]]:
    """Indices of the rows in the iterative (user_min, item_min)-core, and each round's removals."""
    idx = np.arange(len(user), dtype=np.int64)
    u, i = user, item
    ucount = np.bincount(u, minlength=int(user.max()) + 1 if len(user) else 0)
    icount = np.bincount(i, minlength=int(item.max()) + 1 if len(item) else 0)
    rounds: list[dict[str, int]] = []
    while len(idx):
        low_u = ucount < user_min
        low_i = icount < item_min
        drop = low_u[u] | low_i[i]
        n_drop = int(np.count_nonzero(drop))
        if not n_drop:
            break
        rounds.append(
            {
                "round": len(rounds) + 1,
                "users_removed": int(np.count_nonzero(low_u & (ucount > 0))),
                "items_removed": int(np.count_nonzero(low_i & (icount > 0))),
                "interactions_removed": n_drop,
            }
        )
        # counts of the rows left: subtract the dropped rows (cheaper than recounting once few drop)
        ucount -= np.bincount(u[drop], minlength=len(ucount))
        icount -= np.bincount(i[drop], minlength=len(icount))
        keep = ~drop
        idx, u, i = idx[keep], u[keep], i[keep]
    return idx, rounds


def k_core(frame: pd.DataFrame, user_min: int, item_min: int) -> tuple[pd.DataFrame, list[dict[str, int]]]:
    """Remove users/items below their minimum count, repeatedly, until every count holds (DataFrame API)."""
    user = pd.factorize(frame["user_id"])[0].astype(np.int64)
    item = pd.factorize(frame["item_id"])[0].astype(np.int64)
    idx, rounds = k_core_codes(user, item, user_min, item_min)
    return frame.iloc[idx].reset_index(drop=True), rounds


def deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Drop exact duplicate rows, then keep the earliest review of each (user, item) pair (DataFrame API)."""
    keep, exact, repeated = dedup_codes(
        pd.factorize(frame["user_id"])[0],
        pd.factorize(frame["item_id"])[0],
        frame["rating"].to_numpy(),
        frame["timestamp"].to_numpy(),
    )
    return frame.iloc[keep].reset_index(drop=True), exact, repeated


def _sorted_rank(ids: pa.Array, used: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    """(new index per old code, -1 where unused; the used ids in sorted order)."""
    used_codes = np.flatnonzero(used)
    used_ids = ids.take(pa.array(used_codes))
    order = pc.sort_indices(used_ids).to_numpy()  # byte order of UTF-8 = code point order
    rank = np.full(len(used), -1, dtype=np.int64)
    rank[used_codes[order]] = np.arange(len(order))
    return rank, used_ids.take(pa.array(order))


def row_order(user_idx: np.ndarray, timestamp: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """The order of rows by (user, time, item); (user, item) pairs must be unique, so the order is too.

    One argsort of an int64 key packing (user, time) when it fits (times shifted and divided by their
    common step, e.g. one day), then rows of equal key ordered by item; else a lexsort of the three.
    """
    n = len(user_idx)
    if not n:
        return np.zeros(0, dtype=np.int64)
    t0 = int(timestamp.min())
    shifted = timestamp - t0
    step = int(np.gcd.reduce(shifted)) or 1
    span = int(shifted.max()) // step + 1
    n_users = int(user_idx.max()) + 1
    if n_users * span >= 2**62:
        return np.lexsort((item_idx, timestamp, user_idx))
    key = user_idx.astype(np.int64) * span + shifted // step
    order = np.argsort(key)
    ordered = key[order]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(tied):  # the same user at the same time: by item (tie runs are contiguous in `order`)
        in_run = np.zeros(n, dtype=bool)
        in_run[tied] = True
        in_run[tied + 1] = True
        pos = np.flatnonzero(in_run)
        rows = order[pos]
        order[pos] = rows[np.lexsort((item_idx[rows], ordered[pos]))]
    return order


def rating_filter(rating: np.ndarray, keep: np.ndarray, rating_min: float | None) -> tuple[np.ndarray, int]:
    """Rows of `keep` rated >= rating_min (all when None); (kept rows, how many were below)."""
    if rating_min is None:
        return keep, 0
    liked = rating[keep] >= rating_min
    return keep[liked], int((~liked).sum())


def drop_unseen_in_eval(
    user_idx: np.ndarray, item_idx: np.ndarray, split: np.ndarray, user_ids: pa.Array, item_ids: pa.Array
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array, pa.Array, np.ndarray, dict[str, int]]:
    """global_time: remove valid/test rows of users/items without a train row, then unused users/items."""
    drop = cold_in_eval(user_idx, item_idx, split)
    removed = {name: int((drop & (split == code)).sum()) for name, code in schemas.SPLIT_CODES.items() if code}
    keep_rows = ~drop
    user_idx, item_idx, split = user_idx[keep_rows], item_idx[keep_rows], split[keep_rows]
    if not len(user_idx):
        raise ValueError("the global_time split left no interactions")
    used_u = np.bincount(user_idx, minlength=len(user_ids)) > 0
    used_i = np.bincount(item_idx, minlength=len(item_ids)) > 0
    removed.update(users_dropped=int((~used_u).sum()), items_dropped=int((~used_i).sum()))
    user_idx = (np.cumsum(used_u) - 1)[user_idx].astype(np.int32)
    item_idx = (np.cumsum(used_i) - 1)[item_idx].astype(np.int32)
    user_ids, item_ids = user_ids.filter(pa.array(used_u)), item_ids.filter(pa.array(used_i))
    return user_idx, item_idx, split, user_ids, item_ids, keep_rows, removed


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


# ------------------------------------------------------------------------------------- shipped features


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


# ------------------------------------------------------------------------------------------------ the stage


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
                write_features(shipped_dir / f"{role}.parquet", matrix, has_input)
            # the index is written even when the source ships nothing, so the folder is never empty
            index = {
                role: {"items_with_features": int(h.sum()), "dim": int(m.shape[1])} for role, (m, h) in shipped.items()
            }
            write_json(shipped_dir / SHIPPED_INDEX, index)
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


@dataclass
class Rows:
    """The interactions between the steps: integer codes per row, and what the steps counted.

    `keep` selects the rows still in (filter steps narrow it; nothing is copied until `reindex`).
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    user_ids: pa.Array
    item_ids: pa.Array
    keep: np.ndarray
    stats: dict[str, Any]
    split: np.ndarray | None = None


def step_deduplicate(rows: Rows, cfg: IngestConfig) -> None:
    """Exact duplicate reviews count once; a repeated (user, item) pair keeps its earliest review."""
    rows.keep, exact, repeated = dedup_codes(rows.user, rows.item, rows.rating, rows.timestamp)
    rows.stats["duplicates"] = {"exact_lines": exact, "repeated_pairs_kept_earliest": repeated}


def step_rating_filter(rows: Rows, cfg: IngestConfig) -> None:
    """`kcore.rating_min`: implicit feedback from ratings >= it (after dedup: the earliest review decides)."""
    rows.keep, below = rating_filter(rows.rating, rows.keep, cfg.kcore.rating_min)
    rows.stats["rating_filter"] = {"rating_min": cfg.kcore.rating_min, "removed": below}


def step_k_core(rows: Rows, cfg: IngestConfig) -> None:
    """Iterative k-core until no user/item is below `kcore.user_min` / `kcore.item_min`."""
    user_min, item_min = cfg.kcore.user_min, cfg.kcore.item_min
    core, rounds = k_core_codes(rows.user[rows.keep], rows.item[rows.keep], user_min, item_min)
    rows.keep = rows.keep[core]
    rows.stats["kcore"] = {"user_min": user_min, "item_min": item_min, "rounds": rounds}
    if not len(rows.keep):
        below = rows.stats["rating_filter"]["removed"]
        raise ValueError(
            f"{', '.join(f['path'] for f in rows.stats['files']['reviews'])}: no interactions left after "
            f"{user_min}/{item_min}-core filtering ({rows.stats['rows_read']['reviews_parsed']} valid review lines "
            f"read"
            + (f", {below} below kcore.rating_min = {cfg.kcore.rating_min}" if cfg.kcore.rating_min is not None else "")
            + ")"
        )


def step_reindex(rows: Rows, cfg: IngestConfig) -> None:
    """Users and items numbered in the sorted order of their source ids; rows ordered by user, time, item."""
    user_code, item_code = rows.user[rows.keep], rows.item[rows.keep]
    rating, timestamp = rows.rating[rows.keep], rows.timestamp[rows.keep]
    user_rank, rows.user_ids = _sorted_rank(rows.user_ids, np.bincount(user_code, minlength=len(rows.user_ids)) > 0)
    item_rank, rows.item_ids = _sorted_rank(rows.item_ids, np.bincount(item_code, minlength=len(rows.item_ids)) > 0)
    user_idx = user_rank[user_code].astype(np.int32)
    item_idx = item_rank[item_code].astype(np.int32)
    order = row_order(user_idx, timestamp, item_idx)
    rows.user, rows.item, rows.rating, rows.timestamp = (
        user_idx[order],
        item_idx[order],
        rating[order],
        timestamp[order],
    )
    rows.keep = np.arange(len(order))


def step_split(rows: Rows, cfg: IngestConfig) -> None:
    """`split.method` from the registry; global_time then drops valid/test rows of unseen users/items."""
    method = cfg.split.method
    rows.split = SPLITS[method](rows.user, rows.timestamp, list(cfg.split.ratios), cfg.split.seed)
    rows.stats["split_method"] = {
        "method": method,
        "ratios": list(cfg.split.ratios),
        **({"seed": cfg.split.seed} if method == "random" else {}),
    }
    if method == "global_time":
        rows.user, rows.item, rows.split, rows.user_ids, rows.item_ids, kept, cold = drop_unseen_in_eval(
            rows.user, rows.item, rows.split, rows.user_ids, rows.item_ids
        )
        rows.rating, rows.timestamp = rows.rating[kept], rows.timestamp[kept]
        rows.keep = np.arange(len(rows.user))
        rows.stats["split_removed_cold"] = cold


# The steps from parsed reviews to split interactions, in order; each counts what it did in the stats.
STEPS = (
    ("deduplicate", step_deduplicate),
    ("rating_filter", step_rating_filter),
    ("k_core", step_k_core),
    ("reindex", step_reindex),
    ("split", step_split),
)


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
        "malformed": {"reviews": _merge_malformed(bad_reviews)},
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
    if manifest.get("source") in presplit.SOURCES:
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
    stats["malformed"]["meta"] = _merge_malformed(bad_meta)
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
