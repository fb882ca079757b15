"""Readers of the raw review and item-metadata formats, found by MANIFEST.json's `format`.

Each source declares the readers of its formats (`Source.review_readers` / `meta_readers`,
stages/sources/source.py); `review_readers()` and `meta_readers()` gather them from `catalog.SOURCES`.
Contract (what `stages.ingest` calls):

* ``review_readers()[format](path: Path, bad: Malformed) -> ReviewColumns``
  reads one whole interactions file. ``ReviewColumns`` holds one row per valid review, column-wise:
  ``user_id`` and ``item_id`` (pyarrow string arrays, or dictionary<int32, string> arrays, chunked or
  not), ``rating`` (numpy float32), ``timestamp`` (numpy int64, seconds) and ``lines`` (physical lines
  read, blank ones included); a pandas DataFrame with those four columns is accepted too
  (``as_review_columns`` converts it; its ``attrs["lines"]`` gives the line count, else the row count
  stands in). Ids must not be null.
* ``meta_readers()[format](path: Path, bad: Malformed, wanted: set[str] | None) -> Iterator[dict]``
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

Where the code lives: `blocks.py` (the byte engine: decompression into blocks of whole lines),
`line_parser.py` (one line to a record), `records.py` (the review rules and block parser),
`meta_lines.py` (the meta-lines reader), `fields.py` (field cleaning), `amazon.py` (the per-release
field specs), `reading.py` (the manifest's files through these readers); this module only registers them.

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

from stages.sources.catalog import SOURCES
from stages.sources.source import MetaReader, ReviewReader


def review_readers() -> dict[str, ReviewReader]:
    """Format -> reader of an interactions file, over every declared source (looked up at call time)."""
    return {fmt: reader for source in SOURCES.values() for fmt, reader in source.review_readers.items()}


def meta_readers() -> dict[str, MetaReader]:
    """Format -> reader of an item-records file, over every declared source."""
    return {fmt: reader for source in SOURCES.values() for fmt, reader in source.meta_readers.items()}


# Manifests written before formats were recorded: the role decides (the demo's and old tests' files).
DEFAULT_FORMATS = {"reviews": "amazon2014-reviews", "meta": "amazon2014-meta"}
