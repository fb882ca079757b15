"""The split methods of `ingest`, one registry: rows sorted by (user, time, item) in, a split code per row out.

* `user_time` (default): per-user chronological split with MMRec's x_label rule (`split_user_time`);
* `random`: the same per-user counts, the user's interactions in a seeded random order;
* `global_time`: one global timestamp cut: train = before t1, valid = [t1, t2), test = from t2, t1/t2 the
  timestamps at the `split.ratios` quantiles of all interactions (ties stay together, on the later side);
  ingest then removes valid/test rows whose user or item has no train row (`cold_in_eval`);
* `leave_one_out`: per user, the latest interaction is test, the one before valid, the rest train;
  users with fewer than 3 interactions keep all in train (PMMRec's and SASRec's protocol).

A method is `fn(user_idx, timestamp, ratios, seed) -> split codes`; a new one is one function and one
entry in SPLITS.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmpipe import schemas


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


SplitMethod = Callable[[np.ndarray, np.ndarray, list[float], int], np.ndarray]
SPLITS: dict[str, SplitMethod] = {
    "user_time": lambda user, time, ratios, seed: split_user_time(user, ratios),
    "random": lambda user, time, ratios, seed: split_random(user, ratios, seed),
    "global_time": lambda user, time, ratios, seed: split_global_time(time, ratios),
    "leave_one_out": lambda user, time, ratios, seed: split_leave_one_out(user),
}
