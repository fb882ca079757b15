"""images: re-encoded JPEGs in one LMDB; missing, wrong-extension and corrupt files counted."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
from PIL import Image

from mmpipe import lmdb_store
from mmpipe.io import write_parquet
from mmpipe.schemas import ITEMS
from stages import images


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (90, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def make_items(root: Path, rows: list[dict]) -> None:
    full = [{"item_idx": i, **{k: None for k in ITEMS.names if k != "item_idx"}, **r} for i, r in enumerate(rows)]
    write_parquet(root / "processed/x/items.parquet", pa.Table.from_pylist(full, schema=ITEMS))


def test_images_counts_missing_corrupt_and_resizes(tmp_path, params):
    raw = tmp_path / "raw/x"
    (raw / "images").mkdir(parents=True)
    (raw / "MANIFEST.json").write_text('{"files": [], "images_dir": "images"}')
    (raw / "images/A.jpg").write_bytes(jpeg((255, 0, 0)))
    (raw / "images/B.png").write_bytes(jpeg((0, 255, 0)))  # wrong extension, still an image
    (raw / "images/C.jpg").write_bytes(jpeg((0, 0, 255))[:200])  # truncated
    (raw / "images/D.jpg").write_bytes(b"<html>404</html>")  # not an image
    make_items(
        tmp_path,
        [{"item_id": k, "image_url": f"http://x/{k}.jpg"} for k in "ABCDE"] + [{"item_id": "F", "image_url": None}],
    )
    params["images"].update(size=32, quality=80)
    report = images.run("x", params, tmp_path / "raw", tmp_path / "processed")
    assert (report["stored"], report["corrupt"], report["missing_file"], report["no_url"]) == (2, 2, 1, 1)
    assert report["corrupt_items"] == ["C", "D"]
    with lmdb_store.reading(tmp_path / "processed/x/images.lmdb") as txn:
        img = Image.open(io.BytesIO(txn.get(b"A")))
        assert img.format == "JPEG" and max(img.size) == 32 and img.size == (32, 21)
        assert txn.get(b"C") is None
