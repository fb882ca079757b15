"""What a data source is: one declaration, found by name in `catalog.SOURCES`.

A `Source` says everything the pipeline needs of a place data comes from: the `datasets.<ds>` keys it
takes, its files (name, role, format, URL) for a dataset's params, the readers of its formats, and why
it has no direct links when it has none. download, ingest and the params check all ask the declaration;
`tests/test_download_sources.py` holds every declared source to it (found by name, keys accepted, every
file format read by a declared reader).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.sources.malformed import Malformed

# the keys of a source whose files come from somewhere: a local folder, names in it, URLs, their hashes
FILE_KEYS = ("path", "files", "urls", "sha256", "images_dir")

ReviewReader = Callable[[Path, Malformed], Any]  # -> ReviewColumns (or a DataFrame / Table of the same columns)
MetaReader = Callable[[Path, Malformed, set[str] | None], Iterator[dict[str, Any]]]
PresplitReader = Callable[[dict[str, Any], Path], Any]  # (manifest, raw dir) -> indexed.Read


@dataclass(frozen=True)
class FileSpec:
    """One file of a source: its role for ingest, its name in raw/<ds>/, its format, and where it comes from."""

    role: str
    path: str
    format: str
    url: str | None  # None: no public direct link (the user gives `path:` or `urls:`)
    optional: bool = False  # fetched only when the dataset asks for it (e.g. image_features: true)


@dataclass(frozen=True)
class Source:
    """A data source: its params keys, its files, and the readers of its formats."""

    name: str
    keys: tuple[str, ...]  # the `datasets.<ds>` keys it takes beside source, published and images
    files: Callable[[Mapping[str, Any]], list[FileSpec]] | None = None  # None: no files of its own
    review_readers: Mapping[str, ReviewReader] = field(default_factory=dict)  # format -> reader (interactions)
    meta_readers: Mapping[str, MetaReader] = field(default_factory=dict)  # format -> reader (item records)
    presplit: PresplitReader | None = None  # a dataset published with its split: ingest keeps it as given
    no_direct_link: str | None = None  # why its files have no URL (the user gives `path:` or `urls:`)
