"""Stage `ingest`: raw reviews + meta -> k-core filtered, reindexed, split interactions and item table.

Inputs come from `raw/<ds>/MANIFEST.json`: every file with role `reviews` (or `interactions`) and every
file with role `meta` (or `items`), read in manifest order, each by the reader its `format` names in
`stages.sources.formats` (REVIEW_READERS / META_READERS; a manifest without formats means the Amazon
2014 ones). Pre-split sources (`source: mmrec` / `lattice`) are handed to `stages.sources.presplit`
and keep their published split: no k-core, no re-splitting.

Steps, each counted in `ingest_stats.json` (a DVC metrics file):
1. parse reviews and meta (JSON or Python-literal lines, gzip or plain); malformed lines are skipped and
   counted with their line numbers and reasons;
2. duplicates: reviews equal in (user, item, rating, timestamp) count once ("exact_lines"); of the
   reviews left, a (user, item) pair given several times keeps its earliest review (smallest timestamp,
   then smallest rating) ("repeated_pairs_kept_earliest");
3. `kcore.rating_min` (default null: keep all): keep reviews rated >= it, as implicit feedback
   (after step 2, as RecBole orders them: the earliest review of a pair decides);
4. iterative k-core on users and items until no user/item is below `kcore.user_min` / `kcore.item_min`;
5. deterministic reindexing: users and items sorted by their source ids; rows by user, time, item;
6. split per `split.method`:
   * `user_time` (default): per-user chronological split with MMRec's rule (see `split_user_time`);
   * `random`: the same per-user counts, the user's interactions in a random order (`split.seed`, 0);
   * `global_time`: one global timestamp cut: train = before t1, valid = [t1, t2), test = from t2,
     t1/t2 the timestamps at the `split.ratios` quantiles of all interactions (ties stay together,
     on the later side); then valid/test rows whose user or item has no train row are removed and
     counted, and users/items left without rows are dropped (indices stay contiguous);
   * `leave_one_out`: per user, the latest interaction is test, the one before valid, the rest train;
     users with fewer than 3 interactions keep all in train.

All steps after parsing work on integer codes (numpy), never on Python strings per row.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.common import schemas
from stages.common.io import read_json, write_json, write_parquet
from stages.common.log import get_logger
from stages.common.params import ParamsError, dataset_stage_main, get
from stages.sources import formats
from stages.sources.formats import parse_record  # noqa: F401  (part of this module's API)
from stages.sources.malformed import Malformed

log = get_logger("ingest")

REVIEW_ROLES = ("reviews", "interactions")
META_ROLES = ("meta", "items")
PRESPLIT_SOURCES = ("mmrec", "lattice")
SPLIT_METHODS = ("user_time", "random", "global_time", "leave_one_out")
ITEM_FIELDS = ("title", "description", "brand", "categories", "image_url")


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


def find_file(manifest: dict[str, Any], role: str, raw_dir: Path) -> Path:
    """The first file with `role` (kept for callers that expect one file)."""
    return find_files(manifest, (role,), raw_dir)[0][0]


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
        cols = formats.as_review_columns(reader(path, bad))
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


# -------------------------------------------------------------------------------------------------- splits


def _groups(user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, size) of each user's rows; rows must be sorted by user."""
    if not len(user_idx):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, user_idx[1:] != user_idx[:-1]])
    sizes = np.diff(np.r_[starts, len(user_idx)])
    return starts, sizes


def _eval_counts(sizes: np.ndarray, ratios: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """MMRec's x_label rule per user: (evaluation rows, of which valid)."""
    r_train, r_valid, r_test = ratios
    share_eval = (r_valid + r_test) / (r_train + r_valid + r_test)
    share_valid = r_valid / (r_valid + r_test) if r_valid + r_test > 0 else 0.0
    if share_eval == 0:
        zero = np.zeros(len(sizes), dtype=np.int64)
        return zero, zero
    n_eval = np.minimum(np.maximum(2, np.floor(sizes * share_eval + 1e-9).astype(np.int64)), sizes - 1)
    n_eval = np.where(sizes < 2, 0, n_eval)
    n_valid = np.floor(n_eval * share_valid + 1e-9).astype(np.int64)
    return n_eval, n_valid


def _labels_by_rank(rank: np.ndarray, size: np.ndarray, n_eval: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """Per row: train below size - n_eval, then n_valid valid rows, then test."""
    n_train = size - n_eval
    out = np.full(len(rank), schemas.SPLIT_CODES["test"], dtype=np.int8)
    out[rank < n_train + n_valid] = schemas.SPLIT_CODES["valid"]
    out[rank < n_train] = schemas.SPLIT_CODES["train"]
    return out


def split_user_time(user_idx: np.ndarray, ratios: list[float]) -> np.ndarray:
    """Per-user chronological split; rows must be sorted by user, then time.

    The rule is MMRec's x_label rule generalised to any ratios: a user with n interactions gets
    n_eval = max(2, int(n * (valid + test))) evaluation items (at most n - 1, so train is never
    empty), n_eval * valid / (valid + test) of them (floored) go to valid, the rest to test; the
    latest interactions are the evaluation ones.
    """
    starts, sizes = _groups(user_idx)
    n_eval, n_valid = _eval_counts(sizes, ratios)
    rank = np.arange(len(user_idx)) - np.repeat(starts, sizes)
    return _labels_by_rank(rank, *(np.repeat(x, sizes) for x in (sizes, n_eval, n_valid)))


def split_random(user_idx: np.ndarray, ratios: list[float], seed: int) -> np.ndarray:
    """The user_time split's per-user counts, each user's interactions in a seeded random order."""
    starts, sizes = _groups(user_idx)
    n_eval, n_valid = _eval_counts(sizes, ratios)
    keys = np.random.default_rng(seed).random(len(user_idx))
    order = np.lexsort((keys, user_idx))  # within each user, by the random key
    rank = np.arange(len(user_idx)) - np.repeat(starts, sizes)
    out = np.empty(len(user_idx), dtype=np.int8)
    out[order] = _labels_by_rank(rank, *(np.repeat(x, sizes) for x in (sizes, n_eval, n_valid)))
    return out


def split_leave_one_out(user_idx: np.ndarray) -> np.ndarray:
    """Per user (rows sorted by user, then time): last test, second-last valid; < 3 rows: all train."""
    starts, sizes = _groups(user_idx)
    rank = np.arange(len(user_idx)) - np.repeat(starts, sizes)
    size = np.repeat(sizes, sizes)
    from_end = size - 1 - rank
    out = np.zeros(len(user_idx), dtype=np.int8)
    big = size >= 3
    out[big & (from_end == 1)] = schemas.SPLIT_CODES["valid"]
    out[big & (from_end == 0)] = schemas.SPLIT_CODES["test"]
    return out


def split_global_time(timestamp: np.ndarray, ratios: list[float]) -> np.ndarray:
    """One global time cut: train before t1, valid in [t1, t2), test from t2 (ties on the later side)."""
    n = len(timestamp)
    total = sum(ratios)
    ts_sorted = np.sort(timestamp)

    def cut(share: float) -> float:
        k = int(n * share + 1e-9)
        return float("inf") if k >= n else ts_sorted[k]

    t1 = cut(ratios[0] / total)
    t2 = cut((ratios[0] + ratios[1]) / total)
    out = np.full(n, schemas.SPLIT_CODES["test"], dtype=np.int8)
    out[timestamp < t2] = schemas.SPLIT_CODES["valid"]
    out[timestamp < t1] = schemas.SPLIT_CODES["train"]
    return out


def cold_in_eval(user_idx: np.ndarray, item_idx: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Valid/test rows whose user or item has no train row."""
    train = split == schemas.SPLIT_CODES["train"]
    warm_u = np.zeros(int(user_idx.max()) + 1 if len(user_idx) else 0, dtype=bool)
    warm_i = np.zeros(int(item_idx.max()) + 1 if len(item_idx) else 0, dtype=bool)
    warm_u[user_idx[train]] = True
    warm_i[item_idx[train]] = True
    return ~train & ~(warm_u[user_idx] & warm_i[item_idx])


def split_params(params: dict[str, Any]) -> tuple[str, list[float], int]:
    method = get(params, "split.method")
    ratios = [float(r) for r in get(params, "split.ratios")]
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ParamsError(f"params.yaml: split.ratios must be three non-negative numbers, got {ratios}")
    if method not in SPLIT_METHODS:
        raise ParamsError(
            f"params.yaml: split.method = {method!r} is not supported (supported: {', '.join(SPLIT_METHODS)})"
        )
    seed = get(params, "split.seed", 0)
    return method, ratios, int(0 if seed is None else seed)


def build_split(interactions: pd.DataFrame, params: dict[str, Any]) -> np.ndarray:
    """The split column for rows sorted by (user_idx, timestamp, item_idx), per `split.method`."""
    method, ratios, seed = split_params(params)
    user_idx = interactions["user_idx"].to_numpy()
    if method == "user_time":
        return split_user_time(user_idx, ratios)
    if method == "random":
        return split_random(user_idx, ratios, seed)
    if method == "leave_one_out":
        return split_leave_one_out(user_idx)
    return split_global_time(interactions["timestamp"].to_numpy(), ratios)


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


def _kcore_params(params: dict[str, Any]) -> tuple[int, int, float | None]:
    user_min, item_min = int(get(params, "kcore.user_min")), int(get(params, "kcore.item_min"))
    rating_min = get(params, "kcore.rating_min", None)
    if rating_min is not None:
        try:
            rating_min = float(rating_min)
        except (TypeError, ValueError):
            raise ParamsError(f"params.yaml: kcore.rating_min must be a number or null, got {rating_min!r}") from None
    return user_min, item_min, rating_min


def run_presplit(dataset: str, manifest: dict[str, Any], raw_dir: Path, out_dir: Path) -> dict[str, Any]:
    """A source published with its split (MMRec, LATTICE): its loader's tables, written as is."""
    from stages.sources import presplit

    frame, items_table, users_table, stats = presplit.load(manifest, raw_dir)
    log.info(
        "%s: %s source, the given split is kept (kcore and split params are not applied)", dataset, manifest["source"]
    )
    table = pa.Table.from_pandas(frame[schemas.INTERACTIONS.names], schema=schemas.INTERACTIONS, preserve_index=False)
    write_parquet(out_dir / "interactions.parquet", table.combine_chunks())
    write_parquet(out_dir / "items.parquet", items_table.combine_chunks())
    write_parquet(out_dir / "users.parquet", users_table.combine_chunks())
    write_json(out_dir / "ingest_stats.json", stats)
    return stats


def run(dataset: str, params: dict[str, Any], raw_root: Path = Path("raw"), out_root: Path = Path("processed")) -> dict:
    with _gc_paused():  # many long-lived objects (meta dicts): the cyclic GC would rescan them again and again
        return _run(dataset, params, raw_root, out_root)


def _run(dataset: str, params: dict[str, Any], raw_root: Path, out_root: Path) -> dict:
    start = time.perf_counter()
    raw_dir = raw_root / dataset
    out_dir = out_root / dataset
    manifest = read_json(raw_dir / "MANIFEST.json")
    if manifest.get("source") in PRESPLIT_SOURCES:
        return run_presplit(dataset, manifest, raw_dir, out_dir)
    review_files = find_files(manifest, REVIEW_ROLES, raw_dir)
    meta_files = find_files(manifest, META_ROLES, raw_dir)
    user_min, item_min, rating_min = _kcore_params(params)
    method, ratios, seed = split_params(params)

    data, bad_reviews, review_summaries = read_all_reviews(review_files)
    review_lines = sum(s["lines"] for s in review_summaries)
    rows_read = len(data["user"])
    t_read = time.perf_counter()

    keep, exact_dups, repeated_pairs = dedup_codes(data["user"], data["item"], data["rating"], data["timestamp"])
    if rating_min is not None:
        liked = data["rating"][keep] >= rating_min
        below = int((~liked).sum())
        keep = keep[liked]
    else:
        below = 0
    core, rounds = k_core_codes(data["user"][keep], data["item"][keep], user_min, item_min)
    rows = keep[core]
    if not len(rows):
        names = ", ".join(str(p) for p, _ in review_files)
        raise ValueError(
            f"{names}: no interactions left after {user_min}/{item_min}-core filtering "
            f"({rows_read} valid review lines read"
            + (f", {below} below kcore.rating_min = {rating_min}" if rating_min is not None else "")
            + ")"
        )
    user_code, item_code = data["user"][rows], data["item"][rows]
    rating, timestamp = data["rating"][rows], data["timestamp"][rows]
    del data["user"], data["item"], data["rating"], data["timestamp"]

    # Reindex: users and items sorted by source id; rows by user, time, item.
    user_rank, user_ids = _sorted_rank(data["user_ids"], np.bincount(user_code, minlength=len(data["user_ids"])) > 0)
    item_rank, item_ids = _sorted_rank(data["item_ids"], np.bincount(item_code, minlength=len(data["item_ids"])) > 0)
    user_idx = user_rank[user_code].astype(np.int32)
    item_idx = item_rank[item_code].astype(np.int32)
    order = row_order(user_idx, timestamp, item_idx)
    user_idx, item_idx, rating, timestamp = user_idx[order], item_idx[order], rating[order], timestamp[order]

    frame = pd.DataFrame({"user_idx": user_idx, "timestamp": timestamp}, copy=False)
    split = build_split(frame, params)
    cold: dict[str, int] = {}
    if method == "global_time":
        drop = cold_in_eval(user_idx, item_idx, split)
        cold = {name: int((drop & (split == code)).sum()) for name, code in schemas.SPLIT_CODES.items() if code}
        keep_rows = ~drop
        user_idx, item_idx = user_idx[keep_rows], item_idx[keep_rows]
        rating, timestamp, split = rating[keep_rows], timestamp[keep_rows], split[keep_rows]
        if not len(user_idx):
            raise ValueError(f"{raw_dir}: the global_time split left no interactions")
        # users/items left without rows are dropped; indices stay contiguous and sorted by id
        used_u = np.bincount(user_idx, minlength=len(user_ids)) > 0
        used_i = np.bincount(item_idx, minlength=len(item_ids)) > 0
        cold.update(users_dropped=int((~used_u).sum()), items_dropped=int((~used_i).sum()))
        user_idx = (np.cumsum(used_u) - 1)[user_idx].astype(np.int32)
        item_idx = (np.cumsum(used_i) - 1)[item_idx].astype(np.int32)
        user_ids, item_ids = user_ids.filter(pa.array(used_u)), item_ids.filter(pa.array(used_i))
    t_core = time.perf_counter()

    item_list = item_ids.to_pylist()
    meta, bad_meta, meta_summaries = read_all_meta(meta_files, set(item_list))
    meta_lines = sum(s["lines"] for s in meta_summaries)
    empty = dict.fromkeys(ITEM_FIELDS)
    records = [meta.get(asin, empty) for asin in item_list]
    items_table = pa.table(
        {
            "item_idx": pa.array(np.arange(len(item_list), dtype=np.int32)),
            "item_id": pa.array(item_list, pa.string()),
            **{key: pa.array([r[key] for r in records], schemas.ITEMS.field(key).type) for key in ITEM_FIELDS},
        },
        schema=schemas.ITEMS,
    )
    interactions = pa.table(
        {"user_idx": user_idx, "item_idx": item_idx, "rating": rating, "timestamp": timestamp, "split": split},
        schema=schemas.INTERACTIONS,
    )
    users_table = pa.table(
        {"user_idx": pa.array(np.arange(len(user_ids), dtype=np.int32)), "user_id": user_ids},
        schema=schemas.USERS,
    )
    write_parquet(out_dir / "interactions.parquet", interactions)
    write_parquet(out_dir / "items.parquet", items_table)
    write_parquet(out_dir / "users.parquet", users_table)

    def count_missing(key: str) -> int:
        return sum(1 for r in records if not r[key])

    n_users, n_items, n_rows = len(user_ids), len(item_list), len(user_idx)
    split_counts = np.bincount(split, minlength=3)
    stats: dict[str, Any] = {
        "rows_read": {"review_lines": review_lines, "meta_lines": meta_lines, "reviews_parsed": rows_read},
        "malformed": {"reviews": _merge_malformed(bad_reviews), "meta": _merge_malformed(bad_meta)},
        "duplicates": {"exact_lines": exact_dups, "repeated_pairs_kept_earliest": repeated_pairs},
        "rating_filter": {"rating_min": rating_min, "removed": below},
        "kcore": {"user_min": user_min, "item_min": item_min, "rounds": rounds},
        "users": n_users,
        "items": n_items,
        "interactions": n_rows,
        "sparsity": round(1.0 - n_rows / (n_users * n_items), 6),
        "split": {name: int(split_counts[code]) for name, code in schemas.SPLIT_CODES.items()},
        "split_method": {"method": method, "ratios": ratios, **({"seed": seed} if method == "random" else {})},
        "items_missing": {
            "meta": sum(1 for asin in item_list if asin not in meta),
            "title": count_missing("title"),
            "description": count_missing("description"),
            "brand": count_missing("brand"),
            "categories": count_missing("categories"),
            "image_url": count_missing("image_url"),
            "any_text": sum(
                1 for r in records if not (r["title"] or r["description"] or r["brand"] or r["categories"])
            ),
        },
        "files": {"reviews": review_summaries, "meta": meta_summaries},
    }
    if method == "global_time":
        stats["split_removed_cold"] = cold
    write_json(out_dir / "ingest_stats.json", stats)
    log.info(
        "%s: %d lines -> %d reviews (%d malformed, %d duplicate lines, %d repeated pairs%s), %d k-core rounds -> "
        "%d users, %d items, %d interactions (%s split train/valid/test %d/%d/%d); read %.1f s, filter+split "
        "%.1f s, meta+write %.1f s",
        dataset,
        review_lines,
        rows_read,
        sum(b.count for b in bad_reviews),
        exact_dups,
        repeated_pairs,
        f", {below} rated below {rating_min}" if rating_min is not None else "",
        len(rounds),
        n_users,
        n_items,
        n_rows,
        method,
        *split_counts,
        t_read - start,
        t_core - t_read,
        time.perf_counter() - t_core,
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    return dataset_stage_main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
