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

from stages.common.io import _tmp_sibling

_MAP_SIZE = 1 << 40  # virtual address space only; the file grows as data is written


def open_readonly(path: str | Path) -> lmdb.Environment:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LMDB store not found (run the stage that writes it first)")
    return lmdb.open(str(path), subdir=False, readonly=True, lock=False, map_size=_MAP_SIZE)


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
