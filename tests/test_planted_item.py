"""A feature row belongs to its item: an item planted with a unique text and image, traced to its rows.

The demo's raw files are copied and one item (in the middle of the catalogue, its neighbours with text
and image too) gets a title no other item has, no brand, categories or description, and an image of four
saturated quadrants that looks like no demo photo. ingest -> images -> features -> export run on the
copy; the row at the item's item_idx (from items.parquet) must be the encoder's output on exactly that
input (the MiniLM text encoder and the seeded demo CLIP, loaded here on their own), the only row that is,
and differ from its neighbours' rows; the same in the exported `text_feat.npy` / `image_feat.npy`.
A one-row shift anywhere between the encoder's output and the files fails here.
"""

from __future__ import annotations

import ast
import gzip
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmpipe.schemas import item_text
from stages import export, features, images, ingest
from stages.encoders.kinds import ENCODERS
from tests.conftest import tiny_params

DS, FEATURE_SET = "demo", "default"
PLANTED_TITLE = "Quokka Nebula Harmonica 7731, the planted probe"
QUADRANTS = ((255, 0, 255), (0, 0, 0), (255, 255, 0), (0, 255, 255))  # magenta, black, yellow, cyan


def planted_image(size: int) -> Image.Image:
    half = size // 2
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    for n, colour in enumerate(QUADRANTS):
        row, col = divmod(n, 2)
        pixels[row * half : (row + 1) * half, col * half : (col + 1) * half] = colour
    return Image.fromarray(pixels)


def image_bytes(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def lmdb_keys_and(path: Path, key: str | None = None) -> tuple[set[str], bytes | None]:
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=path.is_dir())
    try:
        with env.begin() as txn:
            keys = {k.decode() for k, _ in txn.cursor()}
            value = txn.get(key.encode()) if key else None
    finally:
        env.close()
    return keys, value


def pick_item(processed: Path) -> str:
    """An item in the middle whose neighbours (by item_idx) also have a title and a stored image."""
    items = pd.read_parquet(processed / "items.parquet").sort_values("item_idx").reset_index(drop=True)
    stored, _ = lmdb_keys_and(processed / "images.lmdb")
    ok = [bool(t) and i in stored for t, i in zip(items["title"], items["item_id"], strict=True)]
    for k in range(len(items) // 2, len(items) - 1):
        if ok[k - 1] and ok[k] and ok[k + 1]:
            return str(items["item_id"][k])
    raise AssertionError("no item with neighbours that have text and images")


def plant_meta(path: Path, asin: str) -> None:
    """Rewrite the item's meta record (the other lines, malformed ones included, stay byte for byte)."""
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    hits = 0
    for n, line in enumerate(lines):
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            continue
        if isinstance(record, dict) and record.get("asin") == asin:
            keep = {k: v for k, v in record.items() if k not in ("brand", "categories", "description")}
            lines[n] = repr({**keep, "title": PLANTED_TITLE})
            hits += 1
    assert hits == 1, f"{path}: {hits} records of {asin}"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


@dataclass(frozen=True)
class Planted:
    asin: str
    idx: int  # its item_idx in the planted run's items.parquet
    processed: Path  # processed/<ds>
    params: dict
    stored_jpeg: bytes  # what the images stage stored for it

    def rows(self, modality: str) -> np.ndarray:
        table = pd.read_parquet(self.processed / f"features/{FEATURE_SET}/{modality}.parquet")
        table = table.sort_values("item_idx").reset_index(drop=True)
        assert table["item_idx"].tolist() == list(range(len(table)))
        return np.stack([np.asarray(v, dtype=np.float32) for v in table["embedding"]])

    def exported(self, modality: str) -> np.ndarray:
        return np.load(self.processed / f"export/{FEATURE_SET}/{modality}_feat.npy", allow_pickle=True)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, demo_project) -> Planted:
    root = tmp_path_factory.mktemp("planted")
    raw = root / "raw"
    shutil.copytree(demo_project / "raw" / DS, raw / DS)
    asin = pick_item(demo_project / "processed" / DS)
    plant_meta(raw / DS / "meta_Demo.json.gz", asin)
    params = tiny_params()
    # the demo CLIP: at the tiny images' 48 pixels, the ImageNet CNN's rows lie closer together than one
    # JPEG round trip moves them (test_the_image_row_is_nearest_to_the_image_before_jpeg needs a margin)
    params["features"][FEATURE_SET]["image"] = {
        "kind": "clip_image",
        "model": str(demo_project / "raw/encoders/demo-clip"),
    }
    size = params["images"]["size"]
    (raw / DS / "images" / f"{asin}.jpg").write_bytes(image_bytes(planted_image(size), "JPEG", quality=95))

    processed = root / "processed"
    ingest.run(DS, params, raw, processed)
    images.run(DS, params, raw, processed)
    for modality in ("text", "image"):
        features.run(DS, FEATURE_SET, modality, params, processed)
    export.run(DS, FEATURE_SET, params, processed)

    ds = processed / DS
    items = pd.read_parquet(ds / "items.parquet")
    idx = int(items.loc[items["item_id"] == asin, "item_idx"].item())
    assert 0 < idx < len(items) - 1
    _, stored = lmdb_keys_and(ds / "images.lmdb", asin)
    assert stored is not None
    return Planted(asin, idx, ds, params, stored)


@pytest.fixture(scope="module")
def direct(planted) -> dict[str, np.ndarray]:
    """The encoders of the feature set, loaded here, on the planted inputs alone (batches of one)."""
    blocks = planted.params["features"][FEATURE_SET]
    text = ENCODERS["sbert"](f"features.{FEATURE_SET}.text", blocks["text"], False)
    image = ENCODERS[blocks["image"]["kind"]](f"features.{FEATURE_SET}.image", blocks["image"], False)
    size = planted.params["images"]["size"]
    return {
        "text": text.encode([PLANTED_TITLE])[0],
        "image": image.encode([planted.stored_jpeg])[0],  # the bytes the images stage stored
        "image_pristine": image.encode([image_bytes(planted_image(size), "PNG")])[0],  # before any JPEG
    }


def assert_row_is(matrix: np.ndarray, idx: int, vector: np.ndarray, what: str) -> None:
    """matrix[idx] is `vector` (to float noise across batch sizes), no other row is, and its neighbours
    differ from it."""
    np.testing.assert_allclose(matrix[idx], vector, rtol=1e-4, atol=1e-5, err_msg=f"{what}: row {idx}")
    dist = np.linalg.norm(matrix - vector, axis=1)
    close = np.flatnonzero(dist <= 1e-4 * max(1.0, float(np.linalg.norm(vector))))
    assert close.tolist() == [idx], f"{what}: rows equal to the planted item's encoding: {close.tolist()}"
    for other in (idx - 1, idx + 1):
        assert dist[other] > 1e-2 * np.linalg.norm(vector), f"{what}: row {other} equals the planted row"


def test_the_planted_inputs_reach_the_item(planted):
    items = pq.read_table(planted.processed / "items.parquet").to_pylist()  # None stays None (not NaN)
    (row,) = (r for r in items if r["item_id"] == planted.asin)
    assert row["title"] == PLANTED_TITLE and row["item_idx"] == planted.idx
    assert not (row["brand"] or row["categories"] or row["description"])
    template = planted.params["features"][FEATURE_SET]["text"]["template"]
    assert item_text(row, template) == PLANTED_TITLE  # what the text encoder gets for this item
    assert [r["item_id"] for r in items if r["title"] == PLANTED_TITLE] == [planted.asin]
    size = planted.params["images"]["size"]
    stored = np.asarray(Image.open(io.BytesIO(planted.stored_jpeg)).convert("RGB"), dtype=np.float64)
    assert stored.shape == (size, size, 3)
    assert np.abs(stored - np.asarray(planted_image(size), dtype=np.float64)).mean() < 12  # JPEG noise only


@pytest.mark.parametrize("modality", ["text", "image"])
def test_the_features_row_is_the_planted_encoding(planted, direct, modality):
    rows = planted.rows(modality)
    assert_row_is(rows, planted.idx, direct[modality], f"features/{FEATURE_SET}/{modality}.parquet")


def test_the_image_row_is_nearest_to_the_image_before_jpeg(planted, direct):
    """Independent of the images stage's bytes: the planted pattern itself, encoded without any JPEG
    round trip, is nearest to the planted item's row, by a wide margin."""
    rows = planted.rows("image")
    dist = np.linalg.norm(rows - direct["image_pristine"], axis=1)
    order = np.argsort(dist)
    assert order[0] == planted.idx, f"nearest row {order[0]}, planted item {planted.idx}"
    assert dist[order[0]] < 0.5 * dist[order[1]], (dist[order[0]], dist[order[1]])


@pytest.mark.parametrize("modality", ["text", "image"])
def test_the_exported_row_is_the_planted_encoding(planted, direct, modality):
    maps = pd.read_csv(planted.processed / f"export/{FEATURE_SET}/i_id_mapping.csv", sep="\t", dtype={"asin": str})
    item_id = int(maps.loc[maps["asin"] == planted.asin, "itemID"].item())
    assert item_id == planted.idx
    matrix = planted.exported(modality)
    assert matrix.dtype == np.float32
    assert_row_is(matrix, item_id, direct[modality], f"export/{FEATURE_SET}/{modality}_feat.npy")
