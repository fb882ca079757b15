"""Every data source, by name: the one list of `Source` declarations (stages/sources/source.py).

`download` asks a source for its files (name, role, format, URL; with `path:` what to expect in a local
folder) and writes each file's role and format into MANIFEST.json, so `ingest` never guesses; ingest
reads each format with the reader its source declared; the params check takes a dataset block's keys
from its source. Any URL can be overridden per dataset in params (`datasets.<ds>.urls.<role>`).

Adding a source: a module in stages/sources/ with its readers and one `Source(...)` (its keys, its
files, its readers), and its name in `SOURCES` below; docs/datasets.md has the steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmpipe.config import ParamsError
from stages.sources.amazon import AMAZON2014, AMAZON2018, AMAZON2023
from stages.sources.bilibili import BILIBILI
from stages.sources.demo import DEMO
from stages.sources.lattice import LATTICE
from stages.sources.mmrec import MMREC
from stages.sources.source import FILE_KEYS, FileSpec, Source

# files already on disk, in the layout of the source `format:` names
LOCAL = Source("local", keys=(*FILE_KEYS, "format", "category", "name", "image_features"))

SOURCES: dict[str, Source] = {
    s.name: s for s in (DEMO, LOCAL, AMAZON2014, AMAZON2018, AMAZON2023, BILIBILI, MMREC, LATTICE)
}


def file_sources() -> tuple[str, ...]:
    """The sources with files of their own: what a `local` dataset's `format:` may name."""
    return tuple(name for name, s in SOURCES.items() if s.files is not None)


def source(name: str) -> Source:
    if name not in SOURCES:
        raise ParamsError(f"params.yaml: source {name!r} is not in the catalog (known: {', '.join(SOURCES)})")
    return SOURCES[name]


def file_specs(name: str, cfg: Mapping[str, Any]) -> list[FileSpec]:
    """The files of one dataset of source `name`, from its params block (category, name, image_features)."""
    files = source(name).files
    if files is None:
        raise ParamsError(f"params.yaml: source {name!r} has no files of its own (known: {', '.join(file_sources())})")
    return files(cfg)
