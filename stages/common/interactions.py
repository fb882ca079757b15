"""The interactions' filters and split, on integer codes: dedup, rating filter, k-core, reindex, split.

The ingest stage's middle: after `stages/sources/reading.py` has parsed the reviews into codes, `STEPS`
run in order on one `Rows`, each counting what it did in the stats that ingest writes. Their params
blocks (`kcore`, `split`) are typed here, beside the steps that read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mmpipe import schemas
from mmpipe.config import Config, ParamsError, param
from stages.common.params import declared
from stages.sources.splits import SPLITS, cold_in_eval


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
    params = declared(params, ["kcore", "split"])
    kcore = KCoreConfig.parse(params.get("kcore"), "kcore")
    return IngestConfig(kcore, SplitConfig.parse(params.get("split"), "split"))


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
