"""Readers of the raw review and item-metadata formats, one registry keyed by MANIFEST.json's `format`.

Contract (what `stages.ingest` calls; a new format registers one function in each dict it supports):

* ``REVIEW_READERS[format](path: Path, bad: Malformed) -> ReviewColumns``
  reads one whole interactions file. ``ReviewColumns`` holds one row per valid review, column-wise:
  ``user_id`` and ``item_id`` (pyarrow string arrays, or dictionary<int32, string> arrays, chunked or
  not), ``rating`` (numpy float32), ``timestamp`` (numpy int64, seconds) and ``lines`` (physical lines
  read, blank ones included). Readers of small formats can build it with ``ReviewColumns.from_lists``;
  a pandas DataFrame with those four columns is accepted too (``as_review_columns`` converts it; its
  ``attrs["lines"]`` gives the line count, else the row count stands in). Ids must not be null.
* ``META_READERS[format](path: Path, bad: Malformed, wanted: set[str] | None) -> Iterator[dict]``
  yields item records ``{"item_id", "title", "description", "brand", "categories", "image_url"}``
  (``categories`` a list of str or None; every other value a str or None), only for the ids in
  ``wanted`` when it is given (an item may be yielded twice: ingest keeps the first). The generator
  may ``return`` the number of lines it read (``StopIteration.value``); ingest counts the yielded
  records when it returns None.
* Both count every skipped line in ``bad`` (``Malformed.add(line_no, reason)``, 1-based physical line
  numbers) and never stop on a bad line; a missing or unreadable file, or a gzip stream that ends
  early, is an error that names the file.

Formats (files plain or gzip, single- or multi-member; UTF-8, undecodable bytes replaced by U+FFFD;
a leading BOM is ignored):

* ``amazon2014-reviews`` / ``amazon2018-reviews``: JSON lines; ``reviewerID``, ``asin``, ``overall``,
  ``unixReviewTime`` (seconds). Other fields (``reviewText``, ``vote``, ``style``, ...) are ignored.
* ``amazon2023-reviews``: JSON lines; ``user_id``, ``parent_asin`` (the item: reviews of a product's
  variants count for the product, as the 2023 release's own benchmarks do), ``rating`` and
  ``timestamp`` in milliseconds (floored to seconds).
* ``amazon2014-meta``: one Python-literal dict per line (single quotes, True/False/None), JSON also
  accepted; ``asin``, ``title``, ``description``, ``brand``, ``categories`` (a list of category
  paths, flattened to unique names in order), ``imUrl``.
* ``amazon2018-meta``: JSON lines; ``asin``, ``title``, ``description`` (list of str), ``brand``,
  ``category`` (flat list), ``feature`` (list), ``imageURLHighRes`` / ``imageURL`` (lists; the first
  high-resolution URL is preferred, else the first plain one).
* ``amazon2023-meta``: JSON lines; ``parent_asin``, ``title``, ``description`` (list), ``features``
  (list), ``categories`` (flat list; when empty, ``main_category`` stands in), ``store`` (the brand),
  ``images`` (list of {hi_res, large, thumb, variant}): the ``MAIN`` image's hi_res, else its large,
  else the same from the other images in order, else any thumb.

Decisions shared by the meta readers: text fields are HTML-unescaped, whitespace-collapsed and None
when empty (lists are joined with spaces); for 2018/2023, when ``description`` is empty the
``feature(s)`` bullet points become the description (many products have only those), and are not
added when a description exists (no duplicated text).

Per-line rules for reviews (identical on the fast and the fallback path): a line that is not a JSON
object (or Python-literal dict) is malformed; so is one whose user or item id is missing, empty or
not a string, whose time is missing or not an integer in range (a whole float such as ``1.0`` or a
numeric string is accepted), or whose rating is not a finite number; a missing/null rating is 1.0
(implicit feedback). Blank lines are skipped without being counted as malformed.

Speed (see bench/ingest_scale.py): a background thread decompresses each reviews file into blocks of
whole lines (``BLOCK_SIZE``); ``PARSE_WORKERS`` threads parse blocks (pyarrow releases the GIL). In a
block, lines that do not start with ``{`` and end with ``}`` are set aside and parsed one by one; the
others are parsed by ``pyarrow.json`` (a schema of only the four needed columns, other fields ignored)
in zero-copy pieces of about ``PIECE_BYTES``. A piece pyarrow rejects (a bad value, a line holding
two objects) or whose result fails a check (one row per line, valid UTF-8 ids) is split around the
row pyarrow's error names, else cut in ``PIECES`` parts, down to per-line parsing of small parts, so
a bad line costs the re-parse of a piece, and the result is the per-line rules' result whatever path
a line takes. Meta lines of items outside ``wanted`` are recognised by a regex on their id and skipped
unparsed when they look complete (start with ``{``, end with ``}``): a deeper defect in such a line
goes uncounted, as the line is not used; every other line is parsed. Python-literal meta lines are
translated to JSON by string operations (``literal_to_json``: exact where it answers, checked against
``ast.literal_eval`` by the tests) and only the rest goes through ``ast.literal_eval``.
"""

from __future__ import annotations

import ast
import functools
import html
import json
import math
import os
import queue
import re
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from tqdm import tqdm

from stages.common.log import progress_disabled
from stages.sources import bilibili
from stages.sources.malformed import Malformed

try:  # a dependency of dvc-data, so normally present; json gives the same values, slower
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

BLOCK_SIZE = 8 << 20  # decompressed bytes parsed at a time (cut at a newline)
READ_SIZE = 1 << 20  # compressed bytes read at a time
PROGRESS_MIN_BYTES = 32 << 20  # files smaller than this get no progress bar
MIN_PIECE_LINES = 64  # below this, a piece that pyarrow rejects is parsed line by line
PIECE_BYTES = 2 << 20  # bytes of object lines per pyarrow call (as fast as larger; a rejection costs less)
PIECES = 8  # a rejected piece without a row hint is retried in this many parts
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
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

    @classmethod
    def from_lists(
        cls, users: list[str], items: list[str], ratings: Iterable[float], times: Iterable[int], lines: int
    ) -> ReviewColumns:
        return cls(
            pa.array(users, pa.string()),
            pa.array(items, pa.string()),
            np.asarray(list(ratings), dtype=np.float64).astype(np.float32),
            np.asarray(list(times), dtype=np.int64),
            lines,
        )


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


# ------------------------------------------------------------------------------------------ reading bytes


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


# ------------------------------------------------------------------------------------- records and text


def _json_loads(text: str) -> Any:
    """Strict JSON (orjson when installed, else json)."""
    if orjson is not None:
        return orjson.loads(text)
    return json.loads(text)


# A Python string literal without prefix, escape-aware, on one line: group 1 single-, group 2 double-quoted.
_PY_STRING = re.compile(r"""'([^'\\\n]*(?:\\.[^'\\\n]*)*)'|"([^"\\\n]*(?:\\.[^"\\\n]*)*)\"""")
_PY_ESCAPE = re.compile(r'\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)|"')
_BARE_WORD = re.compile(r"\b(?:True|False|None)\b")
_BARE_JSON = {"True": "true", "False": "false", "None": "null"}


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
        if not ("True" in line or "False" in line or "None" in line) or not _BARE_WORD.search(line):
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
    if "True" in joined or "False" in joined or "None" in joined:
        outside = _BARE_WORD.sub(lambda m: _BARE_JSON[m.group(0)], joined).split("\x00")
    pieces: list[str] = [""] * (len(outside) + len(bodies))
    pieces[0::2] = outside
    pieces[1::2] = bodies
    return '"'.join(pieces)


def parse_record(line: str) -> dict[str, Any]:
    """One JSON object, or one Python-literal dict as the Amazon 2014 meta files contain.

    Tried in turn: strict JSON; the Python literal translated to JSON (`literal_to_json`); lenient
    JSON (`json.loads`: NaN, huge integers, lone surrogates); `ast.literal_eval`. JSON wins where a
    line is both (as before).
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


_NOTHING = object()


def clean_text(value: Any) -> str | None:
    """A clean text field: HTML entities unescaped, whitespace collapsed, empty -> None; lists joined."""
    if value is None:
        return None
    if type(value) is not str:
        value = " ".join(str(v) for v in value if v) if isinstance(value, list | tuple) else str(value)
    if "&" in value:
        value = html.unescape(value)
    return " ".join(value.split()) or None


def clean_categories(value: Any) -> list[str] | None:
    """Flatten category paths ([['Baby', 'Strollers'], ...]) or a flat list into unique names, in order."""
    if not value:
        return None
    out: list[str] = []
    for entry in value if isinstance(value, list | tuple) else [value]:
        for name in entry if isinstance(entry, list | tuple) else [entry]:
            name = clean_text(name)
            if name and name not in out:
                out.append(name)
    return out or None


def _first_url(value: Any) -> str | None:
    """The first non-empty URL of a list (or the value itself when it is one string)."""
    for entry in value if isinstance(value, list | tuple) else [value]:
        url = clean_text(entry) if isinstance(entry, str) else None
        if url:
            return url
    return None


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


AMAZON2014_REVIEWS = ReviewSpec("reviewerID", "asin", "overall", "unixReviewTime")
AMAZON2018_REVIEWS = AMAZON2014_REVIEWS
AMAZON2023_REVIEWS = ReviewSpec("user_id", "parent_asin", "rating", "timestamp", time_divisor=1000)


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


@dataclass
class ReadStats:
    """How a read went, for the log and the benchmark."""

    blocks: int = 0
    fallback_pieces: int = 0  # pieces of blocks that pyarrow rejected (each re-parsed smaller)
    fallback_lines: int = 0  # lines parsed one by one


LAST_READ: dict[str, ReadStats] = {}  # file name -> stats of its latest read in this process
# Threads parsing blocks (pyarrow releases the GIL), beside the one decompressing: one per core, up to 4.
PARSE_WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


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
        times.append(time // spec.time_divisor if spec.time_divisor != 1 else time)
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


# --------------------------------------------------------------------------------------------------- meta


def _amazon2014_item(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": clean_text(rec.get("title")),
        "description": clean_text(rec.get("description")),
        "brand": clean_text(rec.get("brand")),
        "categories": clean_categories(rec.get("categories")),
        "image_url": clean_text(rec.get("imUrl")),
    }


def _amazon2018_item(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": clean_text(rec.get("title")),
        "description": clean_text(rec.get("description")) or clean_text(rec.get("feature")),
        "brand": clean_text(rec.get("brand")),
        "categories": clean_categories(rec.get("category")),
        "image_url": _first_url(rec.get("imageURLHighRes")) or _first_url(rec.get("imageURL")),
    }


def _image_2023(images: Any) -> str | None:
    """The MAIN image's hi_res, else its large, else the same from the other images, else any thumb."""
    if isinstance(images, dict):  # the column-wise form some converted copies use: {hi_res: [...], ...}
        keys = [k for k in ("hi_res", "large", "thumb", "variant") if isinstance(images.get(k), list)]
        n = max((len(images[k]) for k in keys), default=0)
        images = [{k: images[k][i] if i < len(images[k]) else None for k in keys} for i in range(n)]
    if not isinstance(images, list):
        return None
    entries = [im for im in images if isinstance(im, dict)]
    ordered = [im for im in entries if im.get("variant") == "MAIN"] + [
        im for im in entries if im.get("variant") != "MAIN"
    ]
    for keys in (("hi_res", "large"), ("thumb",)):
        for im in ordered:
            for key in keys:
                url = _first_url(im.get(key))
                if url:
                    return url
    return None


def _amazon2023_item(rec: dict[str, Any]) -> dict[str, Any]:
    categories = clean_categories(rec.get("categories"))
    if categories is None and rec.get("main_category"):
        categories = clean_categories([rec.get("main_category")])
    return {
        "title": clean_text(rec.get("title")),
        "description": clean_text(rec.get("description")) or clean_text(rec.get("features")),
        "brand": clean_text(rec.get("store")),
        "categories": categories,
        "image_url": _image_2023(rec.get("images")),
    }


@dataclass(frozen=True)
class MetaSpec:
    """A meta format: the item id's key, the quotes around keys, and the record -> item mapping."""

    id_key: str
    quotes: bytes
    item: Callable[[dict[str, Any]], dict[str, Any]]

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


AMAZON2014_META = MetaSpec("asin", b"'\"", _amazon2014_item)
AMAZON2018_META = MetaSpec("asin", b'"', _amazon2018_item)
AMAZON2023_META = MetaSpec("parent_asin", b'"', _amazon2023_item)


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
            text = _decode(block[starts[k] : ends[k]])
            if not text.strip():
                continue
            try:
                rec = parse_record(text)
                item_id = _id_value(rec.get(spec.id_key), spec.id_key)
            except ValueError as exc:
                bad.add(first_line + k, str(exc))
                continue
            if wanted is not None and item_id not in wanted:
                continue
            yield {"item_id": item_id, **spec.item(rec)}
    return lines


def _meta_reader(spec: MetaSpec) -> Callable[[Path, Malformed, set[str] | None], Iterator[dict[str, Any]]]:
    def read(path: Path, bad: Malformed, wanted: set[str] | None) -> Iterator[dict[str, Any]]:
        return read_meta_lines(path, bad, wanted, spec)

    read.__doc__ = f"Item records keyed by {spec.id_key!r}, one per line."
    return read


# ---------------------------------------------------------------------------------------------- registry

ReviewReader = Callable[[Path, Malformed], ReviewColumns]
MetaReader = Callable[[Path, Malformed, set[str] | None], Iterator[dict[str, Any]]]

REVIEW_READERS: dict[str, ReviewReader] = {
    "amazon2014-reviews": _reviews_reader(AMAZON2014_REVIEWS),
    "amazon2018-reviews": _reviews_reader(AMAZON2018_REVIEWS),
    "amazon2023-reviews": _reviews_reader(AMAZON2023_REVIEWS),
    bilibili.INTERACTIONS_FORMAT: bilibili.read_interactions,  # PMMRec's user -> item sequence lines
}
META_READERS: dict[str, MetaReader] = {
    "amazon2014-meta": _meta_reader(AMAZON2014_META),
    "amazon2018-meta": _meta_reader(AMAZON2018_META),
    "amazon2023-meta": _meta_reader(AMAZON2023_META),
    bilibili.ITEMS_FORMAT: bilibili.iter_items,  # PMMRec's item -> title lines
}
# Manifests written before formats were recorded: the role decides (the demo's and old tests' files).
DEFAULT_FORMATS = {"reviews": "amazon2014-reviews", "meta": "amazon2014-meta"}
