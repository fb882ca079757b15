"""images: re-encoded JPEGs in one LMDB; missing, wrong-extension and corrupt files counted."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pytest
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


def test_empty_image_file_is_named_and_counted(tmp_path, params, caplog):
    raw = tmp_path / "raw/x"
    (raw / "images").mkdir(parents=True)
    (raw / "MANIFEST.json").write_text('{"files": [], "images_dir": "images"}')
    (raw / "images/E.jpg").write_bytes(b"")
    (raw / "images/H.jpg").write_bytes(b"<html>404</html>")
    make_items(tmp_path, [{"item_id": "E", "image_url": "u"}, {"item_id": "H", "image_url": "u"}])
    with caplog.at_level("WARNING", logger="mmpipe.images"):
        report = images.run("x", params, tmp_path / "raw", tmp_path / "processed")
    assert report["corrupt"] == 2 and report["corrupt_items"] == ["E", "H"]
    assert f"{raw / 'images/E.jpg'}: empty file (0 bytes)" in caplog.text  # was: cannot identify <_io.BytesIO ...>
    assert "not an image Pillow can read (16 bytes, starting b'<html>40')" in caplog.text


def test_huge_jpeg_is_decoded_at_reduced_scale(monkeypatch):
    """A 4000x3000 JPEG stored at 224 px is decoded at 1/8 scale (500x375), not whole (36 MB of pixels)."""
    out = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(out, format="JPEG", quality=70)
    decoded_sizes = []
    real_load = Image.Image.load

    def spy(self):
        decoded_sizes.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    jpeg_bytes = images.reencode(out.getvalue(), size=224, quality=80)
    assert decoded_sizes[0] == (500, 375)
    assert Image.open(io.BytesIO(jpeg_bytes)).size == (224, 168)


def test_image_over_the_pixel_limit_is_skipped_and_counted(tmp_path, params):
    raw = tmp_path / "raw/x"
    (raw / "images").mkdir(parents=True)
    (raw / "MANIFEST.json").write_text('{"files": [], "images_dir": "images"}')
    Image.new("RGB", (1200, 1000), (0, 90, 0)).save(raw / "images/P.png")  # PNG: no reduced decoding
    (raw / "images/J.jpg").write_bytes(jpeg((0, 0, 200), (1200, 1000)))  # JPEG: decoded at 1/4 scale, fits
    make_items(tmp_path, [{"item_id": "P", "image_url": "u"}, {"item_id": "J", "image_url": "u"}])
    params["images"].update(size=64, max_pixels=1_000_000)
    report = images.run("x", params, tmp_path / "raw", tmp_path / "processed")
    assert (report["stored"], report["too_large"], report["too_large_items"]) == (1, 1, ["P"])


def test_transparent_images_are_composited_on_white():
    """A fully transparent red PNG is white on a product page, not solid red; half transparency blends."""

    def png(mode: str, colour: tuple) -> bytes:
        out = io.BytesIO()
        Image.new(mode, (32, 32), colour).save(out, format="PNG")
        return out.getvalue()

    def centre(data: bytes) -> tuple:
        with Image.open(io.BytesIO(images.reencode(data, size=32, quality=95))) as img:
            return img.convert("RGB").getpixel((16, 16))

    assert all(c >= 250 for c in centre(png("RGBA", (255, 0, 0, 0))))  # was (254, 0, 0)
    r, g, b = centre(png("RGBA", (255, 0, 0, 128)))
    assert r >= 250 and 120 <= g <= 135 and 120 <= b <= 135  # half red over white
    r, g, b = centre(png("RGB", (255, 0, 0)))
    assert r >= 250 and g <= 5 and b <= 5  # opaque images are unchanged


def test_a_damaged_lmdb_store_names_the_file_and_the_repair(tmp_path):
    store = tmp_path / "images.lmdb"
    lmdb_store.write_store(store, [(b"I1", b"jpeg bytes")])
    store.write_bytes(b"not an lmdb file at all" * 300)
    with pytest.raises(ValueError, match=r"images.lmdb: not a readable LMDB store \(\w+: .*\); it is damaged"):
        lmdb_store.count(store)
