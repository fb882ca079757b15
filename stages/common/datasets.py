"""One `datasets.<ds>` block of params.yaml, parsed and checked: where a dataset's files come from.

Read by `download` (the whole block), `images` (whether to fetch product images) and `report` (the
published table it is compared with). Which keys a block may hold depends on its `source`; a key that
does not apply is an error naming the keys that do, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmpipe.config import Config, ParamsError, param
from stages.sources.catalog import SOURCES, file_sources

COMMON = ("source", "published", "images")  # what every dataset block may hold; the rest is its source's


def source_keys(source: str) -> tuple[str, ...]:
    """The keys a `datasets.<ds>` block of this source may hold (its declaration's, looked up at call time)."""
    return (*COMMON, *SOURCES[source].keys)


@dataclass(frozen=True)
class DatasetConfig(Config):
    """`datasets.<ds>`: a dataset's source and the settings that source takes."""

    source: str = param(doc="one of " + ", ".join(SOURCES))
    published: str | None = param(None, doc="key of reports/published.yaml to compare with")
    images: bool = param(True, doc="fetch product images from the items' image URLs")
    # demo generator
    seed: int = param(0)
    n_users: int = param(3400, ge=2)
    n_items: int = param(1700, ge=2)
    mean_interactions: float = param(12.0, gt=0)
    popularity_sigma: float = param(1.0, ge=0)
    preference_strength: float = param(0.85, ge=0, le=1)
    categories: tuple[str, ...] | None = param(None, doc="demo: the category names to draw from (null: the default 12)")
    # real sources
    category: str | None = param(None, doc="the release's category name, e.g. Baby")
    name: str | None = param(None, doc="the dataset's name in its source (mmrec: baby; bilibili: bili_food)")
    format: str | None = param(None, doc="local only: the source whose file layout the folder follows")
    path: str | None = param(None, doc="a local folder holding the files instead of downloading them")
    files: Mapping[str, str] = param({}, doc="role -> file name in `path`, where it differs from the catalog's")
    urls: Mapping[str, str] = param({}, doc="role -> URL, overriding the catalog's")
    sha256: Mapping[str, str] = param({}, doc="role -> expected sha256 of the file")
    images_dir: str | None = param(None, doc="local only: the folder of item images inside `path`")
    image_features: bool = param(False, doc="amazon2014: also fetch the release's 4096-d CNN image features")

    @classmethod
    def parse(cls, block: Any, where: str) -> DatasetConfig:
        source = block.get("source") if isinstance(block, Mapping) else None
        if source not in SOURCES:
            raise ParamsError(
                f"params.yaml: {where}.source = {source!r} is not supported; supported: {', '.join(SOURCES)}"
            )
        extra = sorted(set(block) - set(source_keys(source)))
        if extra:
            raise ParamsError(
                f"params.yaml: {where}: key{'s' if len(extra) > 1 else ''} {', '.join(extra)} do not apply to source "
                f"{source!r} (its keys: {', '.join(source_keys(source))})"
            )
        return super().parse(block, where)

    def check(self, where: str) -> None:
        if self.source == "local":
            if self.format not in file_sources():
                raise ParamsError(
                    f"params.yaml: {where}.format = {self.format!r}: a local dataset names the format of its files, "
                    f"one of {', '.join(file_sources())}"
                )
            if not self.path:
                raise ParamsError(f"params.yaml: {where}.path (the folder holding the files) is required for local")

    @property
    def family(self) -> str:
        """The catalog entry the files follow: the source, or for `local` the format it names."""
        return str(self.format) if self.source == "local" else self.source

    @property
    def is_local(self) -> bool:
        return bool(self.path)


def dataset_config(params: dict[str, Any], dataset: str) -> DatasetConfig:
    """The parsed `datasets.<dataset>` block; a dataset without one is an error listing those that exist."""
    blocks = params.get("datasets") or {}
    if dataset not in blocks:
        raise ParamsError(
            f"params.yaml: no block datasets.{dataset} (pipeline.datasets names it); datasets: {', '.join(blocks)}"
        )
    return DatasetConfig.parse(blocks[dataset], f"datasets.{dataset}")
