"""The review readers: the per-line review rules and the block parser of JSON-lines reviews (pyarrow,
with a per-line fallback through `line_parser.parse_record`). The meta reader is `meta_lines.py`.

See `stages/sources/formats.py` for the contract the readers fulfil and the rules they apply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from mmpipe.log import get_logger
from stages.sources.blocks import (
    BLOCK_SIZE,
    PARSE_WORKERS,
    _decode,
    _line_bounds,
    _object_lines,
    iter_blocks,
    ordered_map,
    prefetch,
)
from stages.sources.line_parser import parse_record
from stages.sources.malformed import Malformed

log = get_logger("ingest")


MIN_PIECE_LINES = 64  # below this, a piece that pyarrow rejects is parsed line by line
PIECE_BYTES = 2 << 20  # bytes of object lines per pyarrow call (as fast as larger; a rejection costs less)
PIECES = 8  # a rejected piece without a row hint is retried in this many parts
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# ------------------------------------------------------------------------------------------------ columns


@dataclass
class ReviewColumns:
    """The valid reviews of one file, column-wise (row i of every column is one review)."""

    user_id: pa.Array | pa.ChunkedArray  # string or dictionary<int32, string>
    item_id: pa.Array | pa.ChunkedArray
    rating: np.ndarray  # float32
    timestamp: np.ndarray  # int64, seconds
    lines: int = 0  # physical lines read, blank ones included

    def __len__(self) -> int:
        return len(self.rating)


def as_review_columns(obj: Any, lines: int | None = None) -> ReviewColumns:
    """Accept a reader's result as ReviewColumns, a pandas DataFrame or a pyarrow Table."""
    if isinstance(obj, ReviewColumns):
        return obj
    if isinstance(obj, pa.Table):
        cols = {name: obj.column(name) for name in ("user_id", "item_id", "rating", "timestamp")}
        rating = cols["rating"].to_numpy()
        timestamp = cols["timestamp"].to_numpy()
    else:  # a pandas DataFrame (`attrs["lines"]`, when set, is the number of lines read)
        cols = {name: pa.array(obj[name], type=pa.string(), from_pandas=True) for name in ("user_id", "item_id")}
        rating = obj["rating"].to_numpy()
        timestamp = obj["timestamp"].to_numpy()
        lines = obj.attrs.get("lines", lines)
    n = len(rating)
    return ReviewColumns(
        cols["user_id"],
        cols["item_id"],
        np.asarray(rating, dtype=np.float64).astype(np.float32),
        np.asarray(timestamp, dtype=np.int64),
        n if lines is None else lines,
    )


# ------------------------------------------------------------------------------------------------ reviews


@dataclass(frozen=True)
class ReviewSpec:
    """Where a JSON-lines reviews format keeps its four fields."""

    user: str
    item: str
    rating: str
    time: str
    time_divisor: int = 1  # 1000: the file gives milliseconds

    def schema(self) -> pa.Schema:
        return pa.schema(
            [
                (self.user, pa.string()),
                (self.item, pa.string()),
                (self.rating, pa.float64()),
                (self.time, pa.int64()),
            ]
        )


def _int_value(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"field '{name}' is not a number: {value!r}")
    if isinstance(value, int):
        out = value
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"field '{name}' is not an integer: {value!r}")
        out = int(value)
    elif isinstance(value, str):
        try:
            out = int(value.strip())
        except ValueError:
            raise ValueError(f"field '{name}' is not an integer: {value[:40]!r}") from None
    else:
        raise ValueError(f"field '{name}' is not a number: {type(value).__name__}")
    if not INT64_MIN <= out <= INT64_MAX:
        raise ValueError(f"field '{name}' is out of range: {out}")
    return out


def _rating_value(value: Any, name: str) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"field '{name}' is not a number: {type(value).__name__}")
    try:
        out = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"field '{name}' is not a number: {str(value)[:40]!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"field '{name}' is not a finite number: {value!r}")
    return out


def id_value(value: Any, name: str) -> str:
    if not value or not isinstance(value, str):
        raise ValueError(f"missing field '{name}'")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"field '{name}' holds a lone surrogate (invalid unicode)") from None
    return value


def _review_fields(text: str, spec: ReviewSpec) -> tuple[str, str, float, int]:
    """(user, item, rating, time as written) of one review line; ValueError names what is wrong."""
    rec = parse_record(text)
    user = id_value(rec.get(spec.user), spec.user)
    item = id_value(rec.get(spec.item), spec.item)
    ts = rec.get(spec.time)
    if ts is None:
        raise ValueError(f"missing field '{spec.time}'")
    ts = _int_value(ts, spec.time)
    rating = _rating_value(rec.get(spec.rating), spec.rating)
    return user, item, rating, ts


@dataclass
class _Part:
    """Rows of one block (or a piece of it) in line order, and what was skipped there.

    Rows from pyarrow may still lack a user, item or time (nulls, empty ids): `ReviewBlockParser.block`
    checks all rows of a block at once (one set of vectorised calls per block, not per piece).
    """

    line: np.ndarray  # int64 line numbers
    user: pa.Array  # string
    item: pa.Array  # string
    rating: pa.Array  # float64, null = missing
    time: pa.Array  # int64 as written (before time_divisor), null = missing
    bad: list[tuple[int, str]] = field(default_factory=list)
    fallback_pieces: int = 0  # pieces pyarrow rejected
    fallback_lines: int = 0  # lines parsed one by one

    @classmethod
    def empty(cls) -> _Part:
        none = pa.array([], pa.string())
        return cls(np.zeros(0, np.int64), none, none, pa.array([], pa.float64()), pa.array([], pa.int64()))

    @classmethod
    def concat(cls, parts: list[_Part]) -> _Part:
        """The rows of all parts in line order, their skips and counters summed."""
        rows = [p for p in parts if len(p.line)]
        if not rows:
            out = cls.empty()
        elif len(rows) == 1:
            out = cls(rows[0].line, rows[0].user, rows[0].item, rows[0].rating, rows[0].time)
        else:
            line = np.concatenate([p.line for p in rows])
            columns = [
                pa.concat_arrays([getattr(p, name) for p in rows]) for name in ("user", "item", "rating", "time")
            ]
            if len(line) > 1 and not np.all(line[1:] > line[:-1]):
                order = np.argsort(line, kind="stable")
                line = line[order]
                take = pa.array(order)
                columns = [c.take(take) for c in columns]
            out = cls(line, *columns)
        out.bad = sorted(entry for p in parts for entry in p.bad)
        out.fallback_pieces = sum(p.fallback_pieces for p in parts)
        out.fallback_lines = sum(p.fallback_lines for p in parts)
        return out


_ROW_HINT = re.compile(r"\bin row (\d+)")


class ReviewBlockParser:
    """Parse blocks of JSON lines: pyarrow on pieces of object lines, smaller pieces, then line by line.

    A block's lines that start with '{' and end with '}' form runs; each run is cut into pieces of
    about PIECE_BYTES, which pyarrow parses as zero-copy slices of the block. When pyarrow rejects a
    piece, its error's row (when it names one) splits the piece around that line, which is parsed on
    its own; otherwise the piece is cut in PIECES parts, down to per-line parsing below
    MIN_PIECE_LINES lines. Every piece pyarrow accepts is checked (one row per line, valid UTF-8 ids),
    so the result is the per-line rules' result whatever path a line takes.
    Stateless between calls (blocks may be parsed in several threads); each `_Part` carries its skips.
    """

    def __init__(self, spec: ReviewSpec, piece_bytes: int | None = None) -> None:
        self.spec = spec
        self.piece_bytes = PIECE_BYTES if piece_bytes is None else piece_bytes
        self.parse_options = pa_json.ParseOptions(explicit_schema=spec.schema(), unexpected_field_behavior="ignore")

    def block(self, first_line: int, block: bytes) -> _Part:
        """The valid rows of a block (ids non-empty, times present; ratings filled), and its skips."""
        arr, starts, ends = _line_bounds(block)
        if not len(ends):
            return _Part.empty()
        objects = _object_lines(arr, starts, ends)
        lines = first_line + np.arange(len(ends), dtype=np.int64)
        buffer = pa.py_buffer(block)
        parts = []
        obj = np.flatnonzero(objects)
        if len(obj):
            # pieces: runs of consecutive object lines, cut where a line starts in a new piece_bytes bucket
            bucket = starts[obj] // self.piece_bytes
            new = np.r_[True, (np.diff(obj) != 1) | (bucket[1:] != bucket[:-1])]
            bounds = np.r_[np.flatnonzero(new), len(obj)]
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                idx = obj[a:b]
                parts.append(self._fast(block, buffer, lines[idx], starts[idx], ends[idx]))
        other = np.flatnonzero(~objects)
        if len(other):
            parts.append(self.per_line([block[starts[k] : ends[k]] for k in other.tolist()], lines[other]))
        return self._checked(_Part.concat(parts))

    def _checked(self, part: _Part) -> _Part:
        """Rows without a user, item or time -> skips (named by the first missing field); ratings filled."""
        spec = self.spec
        ok_user = pc.fill_null(pc.greater(pc.binary_length(part.user), 0), False)
        ok_item = pc.fill_null(pc.greater(pc.binary_length(part.item), 0), False)
        ok = pc.and_(pc.and_(ok_user, ok_item), part.time.is_valid())
        rating = pc.fill_null(part.rating, 1.0)
        if pc.all(ok).as_py() is False:
            ok_np = ok.to_numpy(zero_copy_only=False)
            ok_user_np = ok_user.to_numpy(zero_copy_only=False)
            ok_item_np = ok_item.to_numpy(zero_copy_only=False)
            for r in np.flatnonzero(~ok_np).tolist():
                name = spec.user if not ok_user_np[r] else spec.item if not ok_item_np[r] else spec.time
                part.bad.append((int(part.line[r]), f"missing field '{name}'"))
            part.bad.sort()
            part.line = part.line[ok_np]
            part.user, part.item = part.user.filter(ok), part.item.filter(ok)
            rating, part.time = rating.filter(ok), part.time.filter(ok)
        part.rating = rating
        return part

    def _read(self, buffer: pa.Buffer, start: int, end: int, n_lines: int) -> tuple[pa.Table | None, int | None]:
        """(pyarrow's parse of buffer[start:end], None) or (None, the row its error names, if any)."""
        try:
            table = pa_json.read_json(
                pa.BufferReader(buffer.slice(start, end - start)),
                read_options=pa_json.ReadOptions(use_threads=False, block_size=max(end - start + 1, 1 << 20)),
                parse_options=self.parse_options,
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError) as exc:
            hint = _ROW_HINT.search(str(exc))
            return None, int(hint.group(1)) if hint else None
        if table.num_rows != n_lines:
            return None, None  # e.g. a line holding two objects
        try:  # pyarrow does not check UTF-8: ids with bad bytes go the per-line way (bytes replaced)
            table.column(self.spec.user).validate(full=True)
            table.column(self.spec.item).validate(full=True)
        except pa.ArrowInvalid:
            return None, None
        return table, None

    def _fast(self, block: bytes, buffer: pa.Buffer, lines: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> _Part:
        """Consecutive object lines of `block` (numbers `lines`, byte bounds `starts`/`ends`) via pyarrow."""
        n = len(lines)
        table, row = self._read(buffer, int(starts[0]), min(int(ends[-1]) + 1, len(block)), n)
        if table is not None:
            spec = self.spec
            return _Part(
                lines,
                *(table.column(name).combine_chunks() for name in (spec.user, spec.item, spec.rating, spec.time)),
            )
        if row is not None and 0 <= row < n:  # around the line pyarrow named
            parts = [self.per_line([block[starts[row] : ends[row]]], lines[row : row + 1])]
            if row:
                parts.insert(0, self._fast(block, buffer, lines[:row], starts[:row], ends[:row]))
            if row + 1 < n:
                parts.append(self._fast(block, buffer, lines[row + 1 :], starts[row + 1 :], ends[row + 1 :]))
            part = _Part.concat(parts)
        elif n <= MIN_PIECE_LINES:
            part = self.per_line([block[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)], lines)
        else:
            cuts = np.linspace(0, n, PIECES + 1).astype(np.int64).tolist()
            part = _Part.concat(
                [
                    self._fast(block, buffer, lines[a:b], starts[a:b], ends[a:b])
                    for a, b in zip(cuts[:-1], cuts[1:], strict=True)
                    if b > a
                ]
            )
        part.fallback_pieces += 1
        return part

    def per_line(self, raws: list[bytes], lines: np.ndarray) -> _Part:
        """The reference rules, one line at a time (bytes that are not UTF-8 replaced)."""
        users: list[str] = []
        items: list[str] = []
        ratings: list[float] = []
        times: list[int] = []
        kept: list[int] = []
        bad: list[tuple[int, str]] = []
        n = 0
        for raw, line_no in zip(raws, lines.tolist(), strict=True):
            text = _decode(raw)
            if not text.strip():
                continue
            n += 1
            try:
                user, item, rating, ts = _review_fields(text, self.spec)
            except ValueError as exc:
                bad.append((line_no, str(exc)))
                continue
            users.append(user)
            items.append(item)
            ratings.append(rating)
            times.append(ts)
            kept.append(line_no)
        part = _Part(
            np.asarray(kept, dtype=np.int64),
            pa.array(users, pa.string()),
            pa.array(items, pa.string()),
            pa.array(ratings, pa.float64()),
            pa.array(times, pa.int64()),
            bad,
        )
        part.fallback_lines = n
        return part


@dataclass
class ReadStats:
    """How a read went, for the log and the benchmark."""

    blocks: int = 0
    fallback_pieces: int = 0  # pieces of blocks that pyarrow rejected (each re-parsed smaller)
    fallback_lines: int = 0  # lines parsed one by one


LAST_READ: dict[str, ReadStats] = {}  # file name -> stats of its latest read in this process
# Threads parsing blocks (pyarrow releases the GIL), beside the one decompressing: one per core, up to 4.


# 1e11 ms is March 1973, before any review site; 1e11 s is the year 5138. A median below it in a file
# whose format gives milliseconds (Amazon 2023) means the file gives seconds.
SECONDS_BELOW = 1e11


def given_in_seconds(time: np.ndarray) -> bool:
    """Whether timestamps that the format gives in milliseconds are in seconds (their median says)."""
    valid = time[~np.isnan(time)] if time.dtype.kind == "f" else time
    return bool(len(valid)) and float(np.median(valid)) < SECONDS_BELOW


def read_json_reviews(
    path: Path, bad: Malformed, spec: ReviewSpec, block_size: int = BLOCK_SIZE, workers: int | None = None
) -> ReviewColumns:
    """A JSON-lines reviews file -> ReviewColumns, by blocks (see the module docstring)."""
    parser = ReviewBlockParser(spec)

    def job(entry: tuple[int, bytes]) -> tuple[int, _Part]:
        first_line, block = entry
        n_lines = block.count(b"\n") + (1 if block and not block.endswith(b"\n") else 0)
        return first_line + n_lines - 1, parser.block(first_line, block)

    users: list[pa.Array] = []
    items: list[pa.Array] = []
    ratings: list[np.ndarray] = []
    times: list[np.ndarray] = []
    stats = ReadStats()
    lines = 0
    blocks = prefetch(iter_blocks(path, block_size))
    divisor = spec.time_divisor
    for last_line, part in ordered_map(job, blocks, PARSE_WORKERS if workers is None else workers):
        lines = last_line
        stats.blocks += 1
        stats.fallback_pieces += part.fallback_pieces
        stats.fallback_lines += part.fallback_lines
        for line_no, reason in part.bad:
            bad.add(line_no, reason)
        if not len(part.line):
            continue
        users.append(part.user)
        items.append(part.item)
        ratings.append(part.rating.to_numpy(zero_copy_only=False).astype(np.float32))
        time = part.time.to_numpy(zero_copy_only=False)
        if divisor != 1 and not times and given_in_seconds(time):
            log.warning(
                "%s: timestamps look like seconds (median %d, in milliseconds that is before 1973), though "
                "the format gives milliseconds: read as seconds", path.name, int(np.nanmedian(time)),
            )  # fmt: skip
            divisor = 1
        times.append(time // divisor if divisor != 1 else time)
    LAST_READ[path.name] = stats
    return ReviewColumns(
        pa.chunked_array(users, pa.string()),
        pa.chunked_array(items, pa.string()),
        np.concatenate(ratings) if ratings else np.zeros(0, np.float32),
        np.concatenate(times) if times else np.zeros(0, np.int64),
        lines,
    )


def _reviews_reader(spec: ReviewSpec) -> Callable[[Path, Malformed], ReviewColumns]:
    def read(path: Path, bad: Malformed) -> ReviewColumns:
        return read_json_reviews(path, bad, spec)

    read.__doc__ = f"Reviews as JSON lines: {spec.user}, {spec.item}, {spec.rating}, {spec.time}."
    return read
