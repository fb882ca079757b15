"""LMDB helpers: single-file stores, no lock files, atomic and deterministic writes.

DVC hashes every byte of an output, so LMDB files are opened with `lock=False` (no `-lock` file
appears beside them and readers never modify them) and written through a compacting copy,
which makes the bytes depend only on the key/value content.
"""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import lmdb

from mmpipe.io import _tmp_sibling

_MAP_SIZE = 1 << 40  # virtual address space only; the file grows as data is written


def open_readonly(path: str | Path) -> lmdb.Environment:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LMDB store not found (run the stage that writes it first)")
    return open_lmdb(path, subdir=False, map_size=_MAP_SIZE)


def open_lmdb(path: Path, subdir: bool, **options: object) -> lmdb.Environment:
    """Open an LMDB read-only without a lock file; a damaged file is an error naming it and the repair,
    not LMDB's bare "MDB_INVALID"."""
    try:
        return lmdb.open(str(path), subdir=subdir, readonly=True, lock=False, **options)
    except lmdb.Error as exc:
        raise ValueError(
            f"{path}: not a readable LMDB store ({type(exc).__name__}: {exc}); it is damaged or not LMDB: "
            f"rebuild it with the stage that writes it (`dvc repro` after deleting it, or `dvc pull` it again)"
        ) from None


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[lmdb.Transaction]:
    env = open_readonly(path)
    try:
        with env.begin(buffers=False) as txn:
            yield txn
    finally:
        env.close()


def count(path: str | Path) -> int:
    env = open_readonly(path)
    try:
        return int(env.stat()["entries"])
    finally:
        env.close()


def write_store(target: str | Path, items: Iterable[tuple[bytes, bytes]], base: str | Path | None = None) -> int:
    """Write key/value pairs (plus, optionally, every entry of the store `base`) into `target`.

    Entries are inserted in key order into a fresh store (a new value replaces a `base` value with the
    same key), so the bytes depend only on the final content, not on the order of arrival or on the
    history of `base`. The result is renamed onto `target`: the file is complete or absent.
    Returns the number of entries written.
    """
    target = Path(target)
    new = dict(items)
    work = _tmp_sibling(target, ".work")
    work.unlink()
    try:
        env = lmdb.open(str(work), subdir=False, lock=False, map_size=_MAP_SIZE, sync=False)
        try:
            with contextlib.ExitStack() as stack:
                old: Iterable[tuple[bytes, bytes]] = ()
                if base is not None and Path(base).is_file():
                    old = (kv for kv in stack.enter_context(reading(base)).cursor() if kv[0] not in new)
                merged = heapq.merge(old, sorted(new.items()))
                txn = env.begin(write=True)
                for n, (key, value) in enumerate(merged, start=1):
                    txn.put(key, value, append=True)
                    if n % 5000 == 0:  # bounded transactions for large stores
                        txn.commit()
                        txn = env.begin(write=True)
                txn.commit()
            entries = int(env.stat()["entries"])
        finally:
            env.close()
        os.replace(work, target)
        return entries
    finally:
        if work.exists():
            work.unlink()


class Journal:
    """A scratch LMDB that collects entries during a long computation, committed in chunks.

    Each `add` is one durable LMDB transaction, so a process killed mid-way keeps every committed chunk;
    a re-run reads them back (`get`) and carries on. The journal is not an output: once the work is
    done its entries are merged into the deterministic store with `write_store(..., base=...)` and the
    journal is removed.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(self.path), subdir=False, lock=False, map_size=_MAP_SIZE, sync=True)

    def add(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            for key, value in items:
                txn.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        with self.env.begin(buffers=False) as txn:
            return txn.get(key)

    def items(self) -> list[tuple[bytes, bytes]]:
        with self.env.begin(buffers=False) as txn:
            return list(txn.cursor())

    def __len__(self) -> int:
        return int(self.env.stat()["entries"])

    def close(self) -> None:
        self.env.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
