"""Stage `images`: product images -> `images.lmdb` (resized, re-encoded JPEG), with missing/corrupt counted.

Key = item_id (utf-8), value = JPEG bytes with the longest side at most `images.size`. Re-encoding
to one size and format makes the feature stage's input small and uniform, and the LMDB keeps one
file per dataset instead of one per image, which DVC caches and transfers much faster.
"""

from __future__ import annotations

import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from stages.common import lmdb_store
from stages.common.io import read_json, read_parquet, write_json
from stages.common.log import get_logger, progress_disabled
from stages.common.params import dataset_stage_main, get

log = get_logger("images")

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")


def find_image(images_dir: Path, item_id: str) -> Path | None:
    for ext in EXTENSIONS:
        path = images_dir / f"{item_id}{ext}"
        if path.is_file():
            return path
    return None


def reencode(data: bytes, size: int, quality: int) -> bytes:
    """Decode fully (truncated files fail here), convert to RGB, shrink, encode as JPEG."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        rgb = img.convert("RGB")
    rgb.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, optimize=False)
    return out.getvalue()


def process_one(item_id: str, has_url: bool, images_dir: Path, size: int, quality: int) -> tuple[str, bytes | str]:
    """Return (item_id, jpeg bytes) or (item_id, reason it has none)."""
    path = find_image(images_dir, item_id)
    if path is None:
        return item_id, "missing_file" if has_url else "no_url"
    try:
        return item_id, reencode(path.read_bytes(), size, quality)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        return item_id, f"corrupt: {path.name}: {exc}"


def run(dataset: str, params: dict[str, Any], raw_root: Path = Path("raw"), out_root: Path = Path("processed")) -> dict:
    start = time.perf_counter()
    size, quality = int(get(params, "images.size")), int(get(params, "images.quality"))
    workers = int(get(params, "images.workers", 4))
    raw_dir = raw_root / dataset
    manifest = read_json(raw_dir / "MANIFEST.json")
    images_dir = raw_dir / manifest.get("images_dir", "images")
    items = read_parquet(out_root / dataset / "items.parquet", columns=["item_id", "image_url"]).to_pylist()

    stored: dict[str, bytes] = {}
    reasons: dict[str, list[str]] = {"missing_file": [], "no_url": [], "corrupt": []}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(
            lambda row: process_one(row["item_id"], bool(row["image_url"]), images_dir, size, quality), items
        )
        for item_id, result in tqdm(jobs, total=len(items), desc="images", disable=progress_disabled()):
            if isinstance(result, bytes):
                stored[item_id] = result
            else:
                kind = result.split(":", 1)[0]
                reasons[kind].append(item_id)
                if kind == "corrupt" and len(reasons["corrupt"]) <= 5:
                    log.warning("%s: %s", dataset, result)

    out_dir = out_root / dataset
    entries = lmdb_store.write_store(
        out_dir / "images.lmdb", ((key.encode("utf-8"), stored[key]) for key in sorted(stored))
    )
    report = {
        "items": len(items),
        "stored": entries,
        "missing_file": len(reasons["missing_file"]),
        "no_url": len(reasons["no_url"]),
        "corrupt": len(reasons["corrupt"]),
        "corrupt_items": sorted(reasons["corrupt"])[:100],
        "size": size,
        "bytes": sum(len(v) for v in stored.values()),
    }
    write_json(out_dir / "images_report.json", report)
    log.info(
        "%s: %d/%d images stored (%d missing file, %d without url, %d corrupt) in %.1f s",
        dataset,
        entries,
        len(items),
        report["missing_file"],
        report["no_url"],
        report["corrupt"],
        time.perf_counter() - start,
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return dataset_stage_main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
