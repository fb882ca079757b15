"""Stage `ingest`: raw reviews + meta -> k-core filtered, reindexed, split interactions and item table.

Steps, each counted in `ingest_stats.json` (a DVC metrics file):
1. parse reviews and meta line by line (JSON or Python-literal lines, gzip or plain); malformed lines
   are skipped and counted with their line numbers and reasons;
2. drop exact duplicate reviews, then resolve repeated (user, item) pairs by keeping the earliest;
3. iterative k-core on users and items until no user/item is below its minimum;
4. deterministic reindexing: users and items sorted by their source ids;
5. split per `split.method` (default `user_time`: per-user chronological split with MMRec's rule).
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.common import schemas
from stages.common.io import read_json, write_json, write_parquet
from stages.common.log import get_logger
from stages.common.params import ParamsError, dataset_stage_main, get
from stages.sources.malformed import Malformed

log = get_logger("ingest")


def open_text(path: Path) -> Iterator[str]:
    """Lines of a gzip or plain text file; bytes that are not UTF-8 are replaced, not fatal."""
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="\n") as fh:
        yield from fh


def parse_record(line: str) -> dict[str, Any]:
    """One JSON object, or one Python-literal dict as the Amazon 2014 meta files contain."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise ValueError(f"neither JSON nor a Python literal ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    return obj


def read_reviews(path: Path) -> tuple[pd.DataFrame, Malformed, int]:
    """Parse the reviews file into (user_id, item_id, rating, timestamp) rows."""
    bad = Malformed(path.name)
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    times: list[int] = []
    n_lines = 0
    for n_lines, line in enumerate(open_text(path), start=1):
        if not line.strip():
            continue
        try:
            rec = parse_record(line)
            user, item = rec.get("reviewerID"), rec.get("asin")
            if not user or not isinstance(user, str):
                raise ValueError("missing field 'reviewerID'")
            if not item or not isinstance(item, str):
                raise ValueError("missing field 'asin'")
            ts = rec.get("unixReviewTime")
            if ts is None:
                raise ValueError("missing field 'unixReviewTime'")
            ts = int(ts)
            rating = float(rec.get("overall", 1.0))
        except (ValueError, TypeError) as exc:
            bad.add(n_lines, str(exc))
            continue
        users.append(user)
        items.append(item)
        ratings.append(rating)
        times.append(ts)
    frame = pd.DataFrame(
        {
            "user_id": pd.array(users, dtype="string"),
            "item_id": pd.array(items, dtype="string"),
            "rating": np.asarray(ratings, dtype=np.float32),
            "timestamp": np.asarray(times, dtype=np.int64),
        }
    )
    return frame, bad, n_lines


def _text(value: Any) -> str | None:
    """A clean text field: HTML entities unescaped, whitespace collapsed, empty -> None."""
    if value is None:
        return None
    if isinstance(value, list):
        value = " ".join(str(v) for v in value if v)
    text = " ".join(html.unescape(str(value)).split())
    return text or None


def _categories(value: Any) -> list[str] | None:
    """Flatten Amazon category paths ([['Baby', 'Strollers'], ...]) into unique names, in order."""
    if not value:
        return None
    out: list[str] = []
    for entry in value if isinstance(value, list) else [value]:
        for name in entry if isinstance(entry, list) else [entry]:
            name = _text(name)
            if name and name not in out:
                out.append(name)
    return out or None


def read_meta(path: Path, wanted: set[str]) -> tuple[dict[str, dict[str, Any]], Malformed, int]:
    """Parse meta lines, keeping only the items in `wanted` (those left after k-core)."""
    bad = Malformed(path.name)
    meta: dict[str, dict[str, Any]] = {}
    n_lines = 0
    for n_lines, line in enumerate(open_text(path), start=1):
        if not line.strip():
            continue
        try:
            rec = parse_record(line)
            asin = rec.get("asin")
            if not asin or not isinstance(asin, str):
                raise ValueError("missing field 'asin'")
        except ValueError as exc:
            bad.add(n_lines, str(exc))
            continue
        if asin in wanted and asin not in meta:
            meta[asin] = {
                "title": _text(rec.get("title")),
                "description": _text(rec.get("description")),
                "brand": _text(rec.get("brand")),
                "categories": _categories(rec.get("categories")),
                "image_url": _text(rec.get("imUrl")),
            }
    return meta, bad, n_lines


def deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Drop exact duplicate rows, then keep the earliest review of each (user, item) pair."""
    n0 = len(frame)
    frame = frame.drop_duplicates()
    exact = n0 - len(frame)
    frame = frame.sort_values(["user_id", "item_id", "timestamp", "rating"], kind="stable")
    frame = frame.drop_duplicates(["user_id", "item_id"], keep="first")
    repeated = n0 - exact - len(frame)
    return frame.reset_index(drop=True), exact, repeated


def k_core(frame: pd.DataFrame, user_min: int, item_min: int) -> tuple[pd.DataFrame, list[dict[str, int]]]:
    """Remove users/items below their minimum count, repeatedly, until every count holds."""
    rounds: list[dict[str, int]] = []
    while True:
        ucount = frame["user_id"].map(frame["user_id"].value_counts())
        icount = frame["item_id"].map(frame["item_id"].value_counts())
        drop = (ucount < user_min) | (icount < item_min)
        if not drop.any():
            return frame.reset_index(drop=True), rounds
        rounds.append(
            {
                "round": len(rounds) + 1,
                "users_removed": int(frame.loc[ucount < user_min, "user_id"].nunique()),
                "items_removed": int(frame.loc[icount < item_min, "item_id"].nunique()),
                "interactions_removed": int(drop.sum()),
            }
        )
        frame = frame[~drop]


def split_user_time(user_idx: np.ndarray, ratios: list[float]) -> np.ndarray:
    """Per-user chronological split; rows must be sorted by user, then time.

    The rule is MMRec's x_label rule generalised to any ratios: a user with n interactions gets
    n_eval = max(2, int(n * (valid + test))) evaluation items (at most n - 1, so train is never
    empty), n_eval * valid / (valid + test) of them (floored) go to valid, the rest to test; the
    latest interactions are the evaluation ones.
    """
    r_train, r_valid, r_test = ratios
    share_eval = (r_valid + r_test) / (r_train + r_valid + r_test)
    share_valid = r_valid / (r_valid + r_test) if r_valid + r_test > 0 else 0.0
    split = np.zeros(len(user_idx), dtype=np.int8)
    starts = np.flatnonzero(np.r_[True, user_idx[1:] != user_idx[:-1]])
    ends = np.r_[starts[1:], len(user_idx)]
    for s, e in zip(starts, ends, strict=True):
        n = e - s
        if share_eval == 0 or n < 2:
            continue
        n_eval = min(max(2, int(n * share_eval + 1e-9)), n - 1)
        n_valid = int(n_eval * share_valid + 1e-9)
        split[e - n_eval : e - n_eval + n_valid] = schemas.SPLIT_CODES["valid"]
        split[e - n_eval + n_valid : e] = schemas.SPLIT_CODES["test"]
    return split


def build_split(interactions: pd.DataFrame, params: dict[str, Any]) -> np.ndarray:
    method = get(params, "split.method")
    ratios = [float(r) for r in get(params, "split.ratios")]
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ParamsError(f"params.yaml: split.ratios must be three non-negative numbers, got {ratios}")
    if method == "user_time":
        return split_user_time(interactions["user_idx"].to_numpy(), ratios)
    raise ParamsError(f"params.yaml: split.method = {method!r} is not supported (supported: user_time)")


def find_file(manifest: dict[str, Any], role: str, raw_dir: Path) -> Path:
    for entry in manifest.get("files", []):
        if entry.get("role") == role:
            path = raw_dir / entry["path"]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {raw_dir / 'MANIFEST.json'} as {role} but missing")
            return path
    raise ValueError(f"{raw_dir / 'MANIFEST.json'}: no file with role '{role}'")


def run(dataset: str, params: dict[str, Any], raw_root: Path = Path("raw"), out_root: Path = Path("processed")) -> dict:
    start = time.perf_counter()
    raw_dir = raw_root / dataset
    manifest = read_json(raw_dir / "MANIFEST.json")
    reviews_path = find_file(manifest, "reviews", raw_dir)
    meta_path = find_file(manifest, "meta", raw_dir)
    user_min, item_min = int(get(params, "kcore.user_min")), int(get(params, "kcore.item_min"))

    frame, bad_reviews, review_lines = read_reviews(reviews_path)
    rows_read = len(frame)
    frame, exact_dups, repeated_pairs = deduplicate(frame)
    frame, rounds = k_core(frame, user_min, item_min)
    if frame.empty:
        raise ValueError(
            f"{reviews_path}: no interactions left after {user_min}/{item_min}-core filtering "
            f"({rows_read} valid review lines read)"
        )

    users = np.sort(frame["user_id"].unique().to_numpy(dtype=object))
    items = np.sort(frame["item_id"].unique().to_numpy(dtype=object))
    frame["user_idx"] = np.searchsorted(users, frame["user_id"].to_numpy(dtype=object)).astype(np.int32)
    frame["item_idx"] = np.searchsorted(items, frame["item_id"].to_numpy(dtype=object)).astype(np.int32)
    frame = frame.sort_values(["user_idx", "timestamp", "item_idx"], kind="stable").reset_index(drop=True)
    frame["split"] = build_split(frame, params)

    meta, bad_meta, meta_lines = read_meta(meta_path, set(items.tolist()))
    empty = {"title": None, "description": None, "brand": None, "categories": None, "image_url": None}
    item_rows = [{"item_idx": i, "item_id": asin, **meta.get(asin, empty)} for i, asin in enumerate(items)]
    items_table = pa.Table.from_pylist(item_rows, schema=schemas.ITEMS)

    out_dir = out_root / dataset
    write_parquet(
        out_dir / "interactions.parquet",
        pa.Table.from_pandas(frame[schemas.INTERACTIONS.names], schema=schemas.INTERACTIONS, preserve_index=False),
    )
    write_parquet(out_dir / "items.parquet", items_table)
    write_parquet(
        out_dir / "users.parquet",
        pa.table({"user_idx": np.arange(len(users), dtype=np.int32), "user_id": users.tolist()}, schema=schemas.USERS),
    )

    def count_missing(key: str) -> int:
        return sum(1 for row in item_rows if not row[key])

    split_counts = np.bincount(frame["split"].to_numpy(), minlength=3)
    stats = {
        "rows_read": {"review_lines": review_lines, "meta_lines": meta_lines, "reviews_parsed": rows_read},
        "malformed": {"reviews": bad_reviews.as_dict(), "meta": bad_meta.as_dict()},
        "duplicates": {"exact_lines": exact_dups, "repeated_pairs_kept_earliest": repeated_pairs},
        "kcore": {"user_min": user_min, "item_min": item_min, "rounds": rounds},
        "users": len(users),
        "items": len(items),
        "interactions": len(frame),
        "sparsity": round(1.0 - len(frame) / (len(users) * len(items)), 6),
        "split": {name: int(split_counts[code]) for name, code in schemas.SPLIT_CODES.items()},
        "items_missing": {
            "meta": sum(1 for asin in items if asin not in meta),
            "title": count_missing("title"),
            "description": count_missing("description"),
            "image_url": count_missing("image_url"),
            "any_text": sum(
                1 for row in item_rows if not (row["title"] or row["description"] or row["brand"] or row["categories"])
            ),
        },
    }
    write_json(out_dir / "ingest_stats.json", stats)
    log.info(
        "%s: %d lines -> %d reviews (%d malformed, %d duplicate lines, %d repeated pairs), %d k-core rounds -> "
        "%d users, %d items, %d interactions (train/valid/test %d/%d/%d) in %.1f s",
        dataset,
        review_lines,
        rows_read,
        bad_reviews.count,
        exact_dups,
        repeated_pairs,
        len(rounds),
        len(users),
        len(items),
        len(frame),
        *split_counts,
        time.perf_counter() - start,
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    return dataset_stage_main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
