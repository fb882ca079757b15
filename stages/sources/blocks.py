"""The byte engine under the raw-format readers: gzip or plain files read as blocks of whole lines.

A background thread decompresses each file (gzip single- or multi-member, or plain) into blocks of
about `BLOCK_SIZE` bytes cut at a newline, with a progress bar for large files; a gzip stream that
ends early is an error naming the file. `prefetch` overlaps reading with parsing, `ordered_map` runs
a parser over blocks on a few threads and yields results in block order.
"""

from __future__ import annotations

import os
import queue
import threading
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mmpipe.log import progress_disabled

BLOCK_SIZE = 8 << 20  # decompressed bytes parsed at a time (cut at a newline)
READ_SIZE = 1 << 20  # compressed bytes read at a time
PROGRESS_MIN_BYTES = 32 << 20  # files smaller than this get no progress bar
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
PARSE_WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _decompressed(path: Path, fh: Any, bar: tqdm, block_size: int) -> Iterator[bytes]:
    """The file's bytes, gunzipped (every member of a multi-member file) when it is gzip."""
    if fh.read(2) != GZIP_MAGIC:
        fh.seek(0)
        while chunk := fh.read(block_size):
            bar.update(len(chunk))
            yield chunk
        return
    fh.seek(0)
    dec = zlib.decompressobj(wbits=31)
    leftover = b""
    padding = False  # zero bytes after the last member (some tools pad): allowed, ignored
    while True:
        raw = fh.read(READ_SIZE)
        bar.update(len(raw))
        data, leftover = leftover + raw, b""
        while data and not padding:
            if dec.eof:  # a finished member: another member follows, or padding
                if len(data) < 2 and raw:
                    leftover = data  # too short to tell: wait for the next read
                    break
                if not data.startswith(GZIP_MAGIC):
                    padding = True
                    break
                dec = zlib.decompressobj(wbits=31)
            try:
                out = dec.decompress(data, block_size)
            except zlib.error as exc:
                raise ValueError(f"{path}: corrupt gzip data ({exc})") from None
            if out:
                yield out
            data = dec.unconsumed_tail or (dec.unused_data if dec.eof else b"")
        if padding and data.strip(b"\x00"):
            raise ValueError(f"{path}: bytes after the end of the gzip stream are not gzip")
        if not raw:
            break
    if not dec.eof:
        raise ValueError(f"{path}: the gzip stream ends early (truncated download?); re-fetch the file")


def iter_blocks(path: Path, block_size: int = BLOCK_SIZE) -> Iterator[tuple[int, bytes]]:
    """(number of the first line, block of whole lines) over the decompressed file.

    Every block but the last ends with a newline; a line longer than `block_size` makes a longer block.
    The progress bar counts bytes read from disk.
    """
    size = path.stat().st_size
    disable = progress_disabled() or size < PROGRESS_MIN_BYTES
    with (
        path.open("rb") as fh,
        tqdm(total=size, unit="B", unit_scale=True, desc=path.name, disable=disable, leave=False) as bar,
    ):
        pieces: list[bytes] = []
        pending = 0
        line_no = 1
        first = True
        for chunk in _decompressed(path, fh, bar, block_size):
            if first:
                first = False
                if chunk.startswith(UTF8_BOM):
                    chunk = chunk[len(UTF8_BOM) :]
            pieces.append(chunk)
            pending += len(chunk)
            if pending < block_size:
                continue
            cut = chunk.rfind(b"\n") + 1  # only the newest chunk can hold the block's last newline
            if cut == 0:  # no line ends in this chunk (a very long line): keep reading
                continue
            pieces[-1] = chunk[:cut]
            block = b"".join(pieces)
            rest = chunk[cut:]
            yield line_no, block
            line_no += block.count(b"\n")
            pieces, pending = ([rest], len(rest)) if rest else ([], 0)
        if pending:
            yield line_no, b"".join(pieces)


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run an iterator in a background thread, `depth` items ahead (zlib and pyarrow release the GIL)."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="ingest-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "item":
                yield value
            elif kind == "done":
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join()


def _line_bounds(block: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(block as uint8, line starts, line ends without the newline) for every line of a block."""
    arr = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if len(block) and block[-1] != 10:
        ends = np.append(ends, len(block))
    starts = np.empty_like(ends)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return arr, starts, ends


def _object_lines(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines that start with '{' and end with '}' (before an optional '\\r'): the fast path's candidates."""
    nonempty = ends > starts
    if not len(arr):
        return nonempty
    last = np.clip(ends - 1, 0, len(arr) - 1)
    last = last - ((arr[last] == 13) & (last > starts))
    first_ok = arr[np.clip(starts, 0, len(arr) - 1)] == 123
    return nonempty & first_ok & (arr[last] == 125) & (last > starts)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def decode_line(raw: bytes, repairs: Counter) -> str:
    """UTF-8, or for a line that is not (a legacy Latin-1 / Windows-1252 export) cp1252, counted as
    `decoded_as_cp1252`: its accented letters survive instead of becoming U+FFFD."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        repairs["decoded_as_cp1252"] += 1
        return raw.decode("cp1252", errors="replace")


def ordered_map(fn: Callable[[Any], Any], items: Iterator[Any], workers: int) -> Iterator[Any]:
    """fn over items in `workers` threads, results in input order, at most `workers + 1` in flight."""
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-parse") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
