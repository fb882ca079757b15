"""User sequences for sequential recommenders (PMMRec, SASRec): leave-one-out on each user's timeline.

From interactions.parquet (ingest orders each user's rows by time, then item), every user's items in
order form a sequence: the last item is the test target, the one before the validation target, the rest
the training sequence (PMMRec's and SASRec's protocol; it equals ingest's `split.method: leave_one_out`).
Users with fewer than `min_len` (3) items are dropped and counted. Training uses the last
`max_seq_len + 1` training items (`max_seq_len` inputs, each predicting the next), histories for
evaluation are the last `max_seq_len` items before the target, and every earlier item of the user is
masked from the ranking.

Item indices are the dataset's `item_idx`; batches use `item_idx + 1`, with 0 as padding (left padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from mmpipe.io import read_parquet, sha256_tree
from mmpipe.paths import DatasetDir
from mmpipe.schemas import check_same_ingest

PAD = 0  # item index 0 in batches; real items are item_idx + 1


@dataclass
class Sequences:
    """Per kept user: the training sequence (item_idx) and the validation and test targets."""

    n_items: int
    users: np.ndarray  # user_idx of the kept users
    train: list[np.ndarray]
    valid_target: np.ndarray
    test_target: np.ndarray
    dropped_short: int  # users with fewer than min_len items
    popularity: np.ndarray = field(default_factory=lambda: np.zeros(0))  # occurrences in training windows

    def __len__(self) -> int:
        return len(self.users)

    def history(self, user: int, stage: str, max_len: int) -> np.ndarray:
        """The items before the `stage` target ('valid' or 'test'), the last `max_len` of them."""
        seq = self.train[user] if stage == "valid" else np.append(self.train[user], self.valid_target[user])
        return seq[-max_len:]

    def eval_matrices(self, stage: str, max_len: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(history mask, target) as users x items matrices, for the full-ranking evaluator.

        Every item of the user's whole history is masked (not only the last max_len), as a sequential
        model must not recommend what the user already has.
        """
        rows, cols = [], []
        for u, seq in enumerate(self.train):
            full = seq if stage == "valid" else np.append(seq, self.valid_target[u])
            rows.append(np.full(len(full), u))
            cols.append(full)
        mask = sp.csr_matrix(
            (np.ones(sum(len(c) for c in cols), np.float32), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(self), self.n_items),
        )
        mask.data[:] = 1.0  # an item repeated in a history counts once
        target = self.valid_target if stage == "valid" else self.test_target
        truth = sp.csr_matrix(
            (np.ones(len(self), np.float32), (np.arange(len(self)), target)), shape=(len(self), self.n_items)
        )
        return mask, truth


def build_sequences(interactions: pa.Table, n_items: int, max_seq_len: int, min_len: int = 3) -> Sequences:
    """Leave-one-out sequences from interactions ordered by user, then time (as ingest writes them)."""
    user = interactions["user_idx"].to_numpy()
    item = interactions["item_idx"].to_numpy().astype(np.int64)
    ts = interactions["timestamp"].to_numpy()
    order = np.lexsort((np.arange(len(user)), ts, user))  # stable: ingest's own order within a time
    user, item = user[order], item[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if len(user) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(user)]
    kept_users, train, valid, test = [], [], [], []
    dropped = 0
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if e - s < min_len:
            dropped += 1
            continue
        seq = item[s:e]
        kept_users.append(user[s])
        train.append(seq[:-2])
        valid.append(seq[-2])
        test.append(seq[-1])
    windows = [t[-(max_seq_len + 1) :] for t in train]  # what training sees
    popularity = np.bincount(np.concatenate(windows), minlength=n_items) if train else np.zeros(n_items, np.int64)
    return Sequences(
        n_items=n_items,
        users=np.asarray(kept_users, dtype=np.int64),
        train=train,
        valid_target=np.asarray(valid, dtype=np.int64),
        test_target=np.asarray(test, dtype=np.int64),
        dropped_short=dropped,
        popularity=popularity,
    )


def concat_sequences(parts: list[Sequences]) -> Sequences:
    """Several datasets' sequences as one catalogue: dataset k's items come after those of datasets < k.

    Pre-training on several sources (PMMRec's multi-domain pre-training) then sees one dataset whose
    items are the union of the sources' items, each still described only by its content. One part is
    returned as is.
    """
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0, *(p.n_items for p in parts[:-1])])
    return Sequences(
        n_items=int(sum(p.n_items for p in parts)),
        users=np.arange(sum(len(p) for p in parts), dtype=np.int64),  # positions: user ids clash across sources
        train=[seq + off for p, off in zip(parts, offsets, strict=True) for seq in p.train],
        valid_target=np.concatenate([p.valid_target + off for p, off in zip(parts, offsets, strict=True)]),
        test_target=np.concatenate([p.test_target + off for p, off in zip(parts, offsets, strict=True)]),
        dropped_short=sum(p.dropped_short for p in parts),
        popularity=np.concatenate([p.popularity for p in parts]),
    )


def load_sequences(dataset_dir: Path | DatasetDir, max_seq_len: int) -> Sequences:
    ds = dataset_dir if isinstance(dataset_dir, DatasetDir) else DatasetDir(Path(dataset_dir))
    check_same_ingest(ds.interactions, ds.items)
    n_items = len(read_parquet(ds.items, columns=["item_idx"]))
    table = read_parquet(ds.interactions, columns=["user_idx", "item_idx", "timestamp"])
    return build_sequences(table, n_items, max_seq_len)


def left_pad(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """[len(seqs), length] of item_idx + 1, left-padded with PAD (the last item in the last column)."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, seq in enumerate(seqs):
        seq = seq[-length:]
        if len(seq):
            out[i, length - len(seq) :] = seq + 1
    return out


def training_batch(seqs: Sequences, users: np.ndarray, max_seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each [B, max_seq_len] of item_idx + 1: position j of the inputs predicts
    position j of the targets (the next item); PAD where a user's sequence is shorter."""
    full = left_pad([seqs.train[u] for u in users], max_seq_len + 1)
    return full[:, :-1], full[:, 1:]


def sequence_input_files(ds: DatasetDir) -> dict[str, Path]:
    """The files `load_sequences` and the item towers read of a dataset, by their name in a record."""
    return {path.name: path for path in (ds.interactions, ds.items, ds.images)}


def sequence_input_hashes(ds: DatasetDir) -> dict[str, str]:
    """sha256 of each of them: what the pretrain_input stage records and pretrain checks before training."""
    missing = [str(p) for p in sequence_input_files(ds).values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: not found (run ingest and images for {ds.name} first)")
    return {name: sha256_tree(path) for name, path in sequence_input_files(ds).items()}
