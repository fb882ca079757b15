"""The meta reader for files with one item record per line (JSON or Python literal).

Only lines that may hold a wanted item are parsed: a regex finds each line's id in the raw bytes, and a
line whose id is surely not wanted is skipped without decoding (most of a category's meta file).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.sources.blocks import BLOCK_SIZE, _line_bounds, _object_lines, decode_line, iter_blocks, prefetch
from stages.sources.line_parser import parse_record
from stages.sources.malformed import Malformed
from stages.sources.records import id_value


@dataclass(frozen=True)
class MetaSpec:
    """A meta format: the item id's key, the quotes around keys, and the record -> item mapping."""

    id_key: str
    quotes: bytes
    item: Callable[[dict[str, Any], Counter], dict[str, Any]]  # record, repairs counter -> item fields

    @property
    def id_regex(self) -> re.Pattern[bytes]:
        """`key<q>: <q>value<q>` on one line (the value without quotes, backslashes or newlines).

        It starts with the key's literal text, so `re` scans for it fast; the quote before the key is
        checked by the caller (a look-behind here would make the scan several times slower).
        """
        return _id_regex(self.id_key, self.quotes)


@functools.cache
def _id_regex(key: str, quotes: bytes) -> re.Pattern[bytes]:
    q = b"[" + re.escape(quotes) + b"]"
    value = rb"""([^'"\\\n]+)"""
    return re.compile(re.escape(key).encode() + q + rb"[ \t]*:[ \t]*" + q + value + q)


def _lines_to_parse(
    block: bytes, spec: MetaSpec, wanted: set[bytes] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(line indices worth parsing, starts, ends): lines that are not blank and not surely unwanted."""
    arr, starts, ends = _line_bounds(block)
    candidates = ends > starts
    if wanted is not None and len(ends):
        has_id = np.zeros(len(ends), dtype=bool)
        any_wanted = np.zeros(len(ends), dtype=bool)
        found = [(m.start(), m.group(1)) for m in spec.id_regex.finditer(block)]
        if found:
            at = np.fromiter((a for a, _ in found), dtype=np.int64, count=len(found))
            # the key must follow a quote (not be the tail of another key, e.g. `parent_asin` for `asin`)
            keyed = (at > 0) & np.isin(arr[np.maximum(at - 1, 0)], np.frombuffer(spec.quotes, dtype=np.uint8))
            # wanted, or not ASCII (the file's bytes may differ from the decoded id): parse to decide
            flags = np.fromiter((v in wanted or not v.isascii() for _, v in found), dtype=bool, count=len(found))
            line_of = np.searchsorted(ends, at[keyed], side="left")
            has_id[line_of] = True
            any_wanted[line_of[flags[keyed]]] = True
        surely_unwanted = has_id & ~any_wanted & _object_lines(arr, starts, ends)
        candidates &= ~surely_unwanted
    return np.flatnonzero(candidates), starts, ends


def read_meta_lines(
    path: Path, bad: Malformed, wanted: set[str] | None, spec: MetaSpec, block_size: int = BLOCK_SIZE
) -> Iterator[dict[str, Any]]:
    """Item records of a meta file with one record per line; returns the number of lines read."""
    wanted_bytes = None if wanted is None else {w.encode("utf-8") for w in wanted}
    lines = 0
    for first_line, block in prefetch(iter_blocks(path, block_size)):
        idx, starts, ends = _lines_to_parse(block, spec, wanted_bytes)
        lines = first_line + len(ends) - 1
        for k in idx.tolist():
            text = decode_line(block[starts[k] : ends[k]], bad.repairs)
            if not text.strip():
                continue
            try:
                rec = parse_record(text, bad.repairs)
                item_id = id_value(rec.get(spec.id_key), spec.id_key)
            except ValueError as exc:
                bad.add(first_line + k, str(exc))
                continue
            if wanted is not None and item_id not in wanted:
                continue
            yield {"item_id": item_id, **spec.item(rec, bad.repairs)}
    return lines


def _meta_reader(spec: MetaSpec) -> Callable[[Path, Malformed, set[str] | None], Iterator[dict[str, Any]]]:
    def read(path: Path, bad: Malformed, wanted: set[str] | None) -> Iterator[dict[str, Any]]:
        return read_meta_lines(path, bad, wanted, spec)

    read.__doc__ = f"Item records keyed by {spec.id_key!r}, one per line."
    return read
