"""images and features: missing/corrupt images, text without input, the embedding cache, offline errors."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from stages import features, images
from stages.common import lmdb_store
from stages.common.io import read_features, read_json, read_parquet, write_parquet
from stages.common.schemas import ITEMS


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


def test_render_text_template_handles_missing_fields():
    row = {"title": "Soft Rattle", "brand": None, "categories": ["Baby", "Toys"], "description": ""}
    assert features.render_text(row, "{title} {brand} {categories} {description}") == "Soft Rattle Baby Toys"
    assert features.render_text({"title": None}, "{title}") == ""
    with pytest.raises(ValueError, match="field 'colour'"):
        features.render_text(row, "{colour}")


def sbert_params(params: dict) -> dict:
    params["features"]["sbert"]["batch_size"] = 16
    return params


def test_sbert_features_flag_items_without_text_and_use_cache(tmp_path, params, demo_project):
    root = tmp_path / "p"
    shutil.copytree(demo_project / "processed", root)
    params = sbert_params(params)
    first = features.run("demo", "sbert", params, root)
    items = read_parquet(root / "demo/items.parquet").to_pylist()
    no_text = [not any(r[k] for k in ("title", "brand", "categories", "description")) for r in items]
    matrix, has_input = read_features(root / "demo/features/sbert.parquet")
    assert matrix.shape == (len(items), 384) and matrix.dtype == np.float32
    assert (~has_input).tolist() == no_text and any(no_text)  # the demo plants items without metadata
    np.testing.assert_allclose(matrix[~has_input][0], matrix[has_input].mean(axis=0), rtol=1e-5)
    assert first["encoded"] == first["with_input"] - first["cache_hits"] and first["cache_hits"] == 0

    before = (root / "demo/features/sbert.parquet").read_bytes()
    again = features.run("demo", "sbert", params, root)
    assert again["encoded"] == 0 and again["cache_hits"] == again["with_input"]
    assert (root / "demo/features/sbert.parquet").read_bytes() == before

    params["features"]["sbert"]["max_tokens"] = 16  # new fingerprint: everything is encoded again
    third = features.run("demo", "sbert", params, root)
    assert third["fingerprint"] != first["fingerprint"] and third["encoded"] == first["encoded"]
    assert third["cache_entries"] == 2 * first["cache_entries"]

    params["features"]["fill"] = "zero"
    features.run("demo", "sbert", params, root)
    zero, _ = read_features(root / "demo/features/sbert.parquet")
    assert not zero[~has_input].any()


def test_text_cache_encodes_only_new_items(tmp_path, params, demo_project):
    root = tmp_path / "p"
    shutil.copytree(demo_project / "processed", root)
    params = sbert_params(params)
    table = read_parquet(root / "demo/items.parquet")
    full = table
    write_parquet(root / "demo/items.parquet", table.slice(0, 30))
    first = features.run("demo", "sbert", params, root)
    write_parquet(root / "demo/items.parquet", full)  # 'a k-core change' adds items
    second = features.run("demo", "sbert", params, root)
    assert second["cache_hits"] == first["with_input"]
    assert second["encoded"] == second["with_input"] - first["with_input"]


def test_clip_image_features_from_local_seeded_model(tmp_path, params, demo_project):
    root = tmp_path / "p"
    shutil.copytree(demo_project / "processed", root)
    params["features"]["clip_image"]["model"] = str(demo_project / "raw/encoders/demo-clip")
    stats = features.run("demo", "clip_image", params, root)
    report = read_json(root / "demo/images_report.json")
    assert stats["with_input"] == report["stored"] and stats["without_input"] == report["items"] - report["stored"]
    matrix, has_input = read_features(root / "demo/features/clip_image.parquet")
    assert matrix.shape[1] == params["encoders"]["demo_clip"]["projection_dim"] == stats["dim"]
    assert np.isfinite(matrix).all() and len(np.unique(matrix[has_input].round(5), axis=0)) > 1


def test_clip_output_object_and_tensor_are_both_read(demo_project, params):
    enc = features.ImageEncoderCLIP(
        "clip_image", {"model": str(demo_project / "raw/encoders/demo-clip"), "batch_size": 4}, False
    )
    pixels = torch.zeros(2, 3, 32, 32)
    from_object = enc.image_features(pixels)  # transformers 5: an output object
    assert from_object.shape == (2, params["encoders"]["demo_clip"]["projection_dim"])
    enc.model.get_image_features = lambda pixel_values: torch.ones(2, 16)  # transformers 4: a tensor
    assert torch.equal(enc.image_features(pixels), torch.ones(2, 16))


def test_unavailable_model_names_model_and_fix(demo_project, params, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(demo_project / "processed", root)
    params["features"]["clip_image"]["model"] = "openai/clip-vit-base-patch32"
    with pytest.raises(features.ModelUnavailable) as err:
        features.run("demo", "clip_image", params, root)
    msg = str(err.value)
    assert "openai/clip-vit-base-patch32" in msg and "features.clip_image.model" in msg and "local" in msg
    assert not (root / "demo/features/clip_image.parquet").exists()


def test_unknown_encoder_kind_is_rejected(params):
    params["features"]["sbert"]["kind"] = "word2vec"
    with pytest.raises(ValueError, match="known kinds"):
        features.run("demo", "sbert", params, Path("/nonexistent"))
