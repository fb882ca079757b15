"""Record parsing for the raw formats: JSON or Python-literal lines, the per-line review rules, the
block parser of JSON-lines reviews (pyarrow with a per-line fallback) and the meta-lines reader.

See `stages/sources/formats.py` for the contract the readers fulfil and the rules they apply.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
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
    decode_line,
    iter_blocks,
    ordered_map,
    prefetch,
)
from stages.sources.malformed import Malformed

log = get_logger("ingest")

try:  # a dependency of dvc-data, so normally present; json gives the same values, slower
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

MIN_PIECE_LINES = 64  # below this, a piece that pyarrow rejects is parsed line by line
PIECE_BYTES = 2 << 20  # bytes of object lines per pyarrow call (as fast as larger; a rejection costs less)
PIECES = 8  # a rejected piece without a row hint is retried in this many parts
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_NOTHING = object()


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


def _json_loads(text: str) -> Any:
    """Strict JSON (orjson when installed, else json)."""
    if orjson is not None:
        return orjson.loads(text)
    return json.loads(text)


# A Python string literal without prefix, escape-aware, on one line: group 1 single-, group 2 double-quoted.
_PY_STRING = re.compile(r"""'([^'\\\n]*(?:\\.[^'\\\n]*)*)'|"([^"\\\n]*(?:\\.[^"\\\n]*)*)\"""")
_PY_ESCAPE = re.compile(r'\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)|"')
_BARE_WORD = re.compile(r"\b(?:True|False|None|nan)\b")
# Python's repr writes a missing float as `nan`, which neither JSON nor ast.literal_eval reads: null.
_BARE_JSON = {"True": "true", "False": "false", "None": "null", "nan": "null"}


class _Untranslatable(Exception):
    pass


def _escape_to_json(match: re.Match) -> str:
    code = match.group(1)
    if code is None:  # a bare '"' inside a single-quoted string
        return '\\"'
    head = code[0]
    if head in '\\"nrtbf':
        return match.group(0)  # the same character in JSON
    if head == "'":
        return "'"
    if head == "x" and len(code) == 3:
        return "\\u00" + code[1:]
    if head == "u" and len(code) == 5 and not 0xD800 <= int(code[1:], 16) <= 0xDFFF:
        return match.group(0)  # surrogates differ (JSON pairs them, Python does not): literal_eval decides
    raise _Untranslatable  # \a \v \0 \N{} \U, octal, unknown escapes: literal_eval decides


def literal_to_json(line: str) -> str | None:
    """Translate a one-line Python literal into JSON text with the same value, or None when unsure.

    Exact whenever the result parses as JSON: strings keep their content (the escapes both languages
    share are kept, `\\'` and `\\xHH` are rewritten, any other escape gives None); True/False/None
    outside strings become true/false/null; everything else must already be JSON (numbers, brackets),
    so a tuple, a set, a prefix (u'', b''), a comment or a stray quote makes invalid JSON, and the
    caller falls back to `ast.literal_eval`.
    """
    line = line.strip()
    if "'''" in line or '"""' in line or "\x00" in line:
        return None
    if '"' not in line and "\\" not in line:
        if line.count("'") % 2:
            return None  # an unbalanced quote
        if not ("True" in line or "False" in line or "None" in line or "nan" in line) or not _BARE_WORD.search(line):
            return line.replace("'", '"')
        parts = line.split("'")
        outside, bodies = parts[0::2], parts[1::2]
    else:
        parts = _PY_STRING.split(line)
        outside = parts[0::3]
        bodies = []
        try:
            for single, double in zip(parts[1::3], parts[2::3], strict=True):
                body = single if single is not None else double
                if "\\" in body or (single is not None and '"' in body):
                    body = _PY_ESCAPE.sub(_escape_to_json, body)
                bodies.append(body)
        except _Untranslatable:
            return None
    joined = "\x00".join(outside)
    if "'" in joined or '"' in joined:
        return None  # a quote no string literal took: not a literal we can translate
    if "True" in joined or "False" in joined or "None" in joined or "nan" in joined:
        outside = _BARE_WORD.sub(lambda m: _BARE_JSON[m.group(0)], joined).split("\x00")
    pieces: list[str] = [""] * (len(outside) + len(bodies))
    pieces[0::2] = outside
    pieces[1::2] = bodies
    return '"'.join(pieces)


_NAN_WORD = re.compile(r"\bnan\b")


def parse_record(line: str, repairs: Counter | None = None) -> dict[str, Any]:
    """One JSON object, or one Python-literal dict as the Amazon 2014 meta files contain.

    Tried in turn: strict JSON; the Python literal translated to JSON (`literal_to_json`, which reads
    Python's `nan` as null, counted as `nan_as_missing` in `repairs`); lenient JSON (`json.loads`: NaN,
    huge integers, lone surrogates); `ast.literal_eval`. JSON wins where a line is both (as before).
    """
    try:
        if line.startswith("{'"):  # a Python literal for sure: not JSON
            raise ValueError
        obj = _json_loads(line)
    except ValueError:
        obj = _NOTHING
        text = literal_to_json(line)
        if text is not None:
            try:
                obj = _json_loads(text)
            except ValueError:
                obj = _NOTHING
            if obj is not _NOTHING and repairs is not None and "nan" in line:
                nans = len(_NAN_WORD.findall(line)) - len(_NAN_WORD.findall(text))  # those outside strings
                if nans:
                    repairs["nan_as_missing"] += nans
        if obj is _NOTHING and orjson is not None:
            try:
                obj = json.loads(line)
            except ValueError:
                obj = _NOTHING
        if obj is _NOTHING:
            try:
                obj = ast.literal_eval(line.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as exc:
                raise ValueError(f"neither JSON nor a Python literal ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    return obj


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


def _id_value(value: Any, name: str) -> str:
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
    user = _id_value(rec.get(spec.user), spec.user)
    item = _id_value(rec.get(spec.item), spec.item)
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
                item_id = _id_value(rec.get(spec.id_key), spec.id_key)
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
