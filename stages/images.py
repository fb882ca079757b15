"""Stage `images`: product images -> `images.lmdb` (resized, re-encoded JPEG), with every gap counted.

Runs after ingest, so only the items that survived the k-core get an image (on real data a fraction of
the catalogue: the meta files list every product of a category). An item's image is, in this order:
its file in `raw/<ds>/images/` when the source brings images (the demo, a local folder, PMMRec's
covers), else the one downloaded from its `image_url` (items.parquet) into the download cache
(`download.cache_dir`/images/<source>/, outside DVC's outputs, so a re-run never fetches an image twice
and retries only failures).

Key = item_id (utf-8), value = JPEG bytes with the longest side at most `images.size`. Re-encoding
to one size and format makes the feature stage's input small and uniform, and the LMDB keeps one
file per dataset instead of one per image, which DVC caches and transfers much faster. Huge images
never exhaust memory: JPEGs are decoded at a reduced scale (Pillow's draft mode: 1/2 to 1/8 while the
result stays at least `images.size`), and any image whose decoded size would still exceed
`images.max_pixels` is skipped and counted as `too_large`.
"""

from __future__ import annotations

import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from mmpipe import lmdb_store
from mmpipe.config import Config, param
from mmpipe.io import read_json, read_parquet, write_json
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import IMAGE_EXTENSIONS, MANIFEST, PROCESSED, RAW, RAW_IMAGES, DatasetDir
from stages.common.params import declared, run_stage
from stages.sources import http

log = get_logger("images")

REASONS = ("no_url", "missing_file", "corrupt", "too_large")


def param_keys(dataset: str) -> list[str]:
    return ["images", "download.cache_dir", "download.retries"]


@dataclass(frozen=True)
class ImagesConfig(Config):
    """`images`: the stored size, and how images are fetched for items with an image URL."""

    size: int = param(224, ge=8, doc="longest side after re-encoding")
    quality: int = param(90, ge=1, le=100, doc="JPEG quality")
    workers: int = param(4, ge=1, doc="threads decoding and re-encoding")
    max_pixels: int = param(60_000_000, ge=1, doc="larger images (after JPEG draft decoding) are skipped")
    fetch: bool = param(True, doc="download images from items' image_url when no local file exists")
    fetch_workers: int = param(16, ge=1, doc="images fetched in parallel")
    fetch_timeout: float = param(20.0, gt=0, doc="seconds per image request")


def read_config(params: dict[str, Any], dataset: str) -> tuple[ImagesConfig, Path, int]:
    params = declared(params, param_keys(dataset))
    download = params.get("download") or {}
    cfg = ImagesConfig.parse(params.get("images"), "images")
    return cfg, Path(download.get("cache_dir", "raw/_downloads")), int(download.get("retries", 5))


class TooLarge(ValueError):
    """The image would need more than `images.max_pixels` pixels decoded."""


def find_image(images_dir: Path, item_id: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        path = images_dir / f"{item_id}{ext}"
        if path.is_file():
            return path
    return None


def on_white(img: Image.Image) -> Image.Image:
    """RGB; an image with transparency (RGBA, LA, a palette's transparent colour) composited on white, as
    a product page shows it: `convert("RGB")` alone keeps whatever colour lies under the alpha."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def reencode(data: bytes, size: int, quality: int, max_pixels: int = 60_000_000) -> bytes:
    """Decode (reduced for large JPEGs; truncated files fail here), convert to RGB, shrink, encode as JPEG."""
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # decode at 1/2..1/8 scale, never below `size`
        width, height = img.size
        if width * height > max_pixels:
            raise TooLarge(f"{width}x{height} pixels exceed images.max_pixels = {max_pixels}")
        img.load()
        rgb = on_white(img)
    rgb.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, optimize=False)
    return out.getvalue()


def url_suffix(url: str) -> str:
    suffix = Path(urlparse(url).path).suffix.lower()
    return suffix if suffix in IMAGE_EXTENSIONS else ".jpg"


def fetch_missing(
    items: list[dict[str, Any]], cache: Path, cfg: ImagesConfig, retries: int
) -> tuple[dict[str, Path], dict[str, Any] | None]:
    """Download the images of items with a URL; {item_id: cached file}, fetch report."""
    jobs = [
        http.ImageJob(row["item_id"], row["image_url"], cache / f"{row['item_id']}{url_suffix(row['image_url'])}")
        for row in items
        if row["image_url"]
    ]
    if not jobs:
        return {}, None
    if not cfg.fetch:
        log.info("%d items have an image URL and no local file; images.fetch is false, so none is fetched", len(jobs))
        return {}, {"skipped": len(jobs)}
    log.info("fetching %d product images into %s", len(jobs), cache)
    report = http.fetch_images(jobs, workers=cfg.fetch_workers, timeout=cfg.fetch_timeout, retries=retries)
    return {job.key: job.dest for job in jobs if job.dest.is_file()}, report.as_dict()


def process_one(item_id: str, has_url: bool, path: Path | None, cfg: ImagesConfig) -> tuple[str, bytes | str]:
    """Return (item_id, jpeg bytes) or (item_id, the reason it has none)."""
    if path is None:
        return item_id, "missing_file" if has_url else "no_url"
    data = path.read_bytes()
    if not data:
        return item_id, f"corrupt: {path}: empty file (0 bytes)"
    try:
        return item_id, reencode(data, cfg.size, cfg.quality, cfg.max_pixels)
    except TooLarge as exc:
        return item_id, f"too_large: {path}: {exc}"
    except UnidentifiedImageError:
        return item_id, f"corrupt: {path}: not an image Pillow can read ({len(data)} bytes, starting {data[:8]!r})"
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return item_id, f"corrupt: {path}: {exc}"


def run(dataset: str, params: dict[str, Any], raw_root: Path = RAW, out_root: Path = PROCESSED) -> dict:
    start = time.perf_counter()
    cfg, cache_dir, retries = read_config(params, dataset)
    Image.MAX_IMAGE_PIXELS = None  # our own limit (images.max_pixels) applies after draft decoding
    raw_dir = raw_root / dataset
    manifest = read_json(raw_dir / MANIFEST)
    ds = DatasetDir.of(dataset, out_root)
    items = read_parquet(ds.items, columns=["item_id", "image_url"]).to_pylist()
    fetched: dict[str, Path] = {}
    fetch_report = None
    if "images_dir" in manifest:  # the source brought its images (demo, a local folder, PMMRec covers)
        images_dir = raw_dir / manifest["images_dir"]
    else:  # the images are behind the items' URLs
        images_dir = raw_dir / RAW_IMAGES
        cache = cache_dir / RAW_IMAGES / str(manifest.get("source", dataset))
        fetched, fetch_report = fetch_missing(items, cache, cfg, retries)

    def source_file(item_id: str) -> Path | None:
        return find_image(images_dir, item_id) or fetched.get(item_id)

    stored: dict[str, bytes] = {}
    reasons: dict[str, list[str]] = {r: [] for r in REASONS}
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        jobs = pool.map(
            lambda row: process_one(row["item_id"], bool(row["image_url"]), source_file(row["item_id"]), cfg), items
        )
        for item_id, result in tqdm(jobs, total=len(items), desc="images", disable=progress_disabled()):
            if isinstance(result, bytes):
                stored[item_id] = result
            else:
                kind = result.split(":", 1)[0]
                reasons[kind].append(item_id)
                if kind in ("corrupt", "too_large") and len(reasons[kind]) <= 5:
                    log.warning("%s: item %s: %s", dataset, item_id, result)

    entries = lmdb_store.write_store(ds.images, ((key.encode("utf-8"), stored[key]) for key in sorted(stored)))
    report: dict[str, Any] = {
        "items": len(items),
        "stored": entries,
        **{reason: len(reasons[reason]) for reason in REASONS},
        "corrupt_items": sorted(reasons["corrupt"])[:100],
        "too_large_items": sorted(reasons["too_large"])[:100],
        "size": cfg.size,
        "bytes": sum(len(v) for v in stored.values()),
    }
    if fetch_report is not None:
        report["fetch"] = fetch_report
    write_json(ds.images_report, report)
    log.info(
        "%s: %d/%d images stored (%d missing file, %d without url, %d corrupt, %d too large) in %.1f s",
        dataset, entries, len(items), report["missing_file"], report["no_url"], report["corrupt"],
        report["too_large"], time.perf_counter() - start,
    )  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("dataset",), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
