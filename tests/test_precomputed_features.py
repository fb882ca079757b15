"""Encoders of kind `precomputed`: features a source ships (MMRec npy, Amazon 2014 CNN .b) become encoder outputs."""

from __future__ import annotations

import numpy as np
import pytest

from stages import download, features
from stages.common.io import read_features, read_json, write_parquet
from stages.sources import presplit


def mmrec_folder(tmp_path, image_feat: np.ndarray | None):
    src = tmp_path / "mmrec"
    src.mkdir()
    rows = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{int(i == 2)}" for u in range(3) for i in range(3)]
    (src / "toy.inter").write_text("\n".join(rows) + "\n")
    if image_feat is not None:
        np.save(src / "image_feat.npy", image_feat)
    return src


def import_dataset(tmp_path, params, src):
    """download (local mmrec) + the pre-split import, as ingest runs it."""
    params["datasets"]["toy"] = {"source": "mmrec", "name": "toy", "path": str(src)}
    manifest = download.run("toy", params, tmp_path / "raw")
    _, items, _, _ = presplit.load(manifest, tmp_path / "raw/toy")
    write_parquet(tmp_path / "processed/toy/items.parquet", items)
    return manifest


def test_mmrec_npy_rows_become_the_encoder_output(tmp_path, params):
    feat = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)  # item 1: no features (zero row)
    manifest = import_dataset(tmp_path, params, mmrec_folder(tmp_path, feat))
    assert {e["role"] for e in manifest["files"]} == {"interactions", "image_feat"}
    stats = features.run("toy", "mmrec_image", params, tmp_path / "processed", tmp_path / "raw")
    matrix, has_input = read_features(tmp_path / "processed/toy/features/mmrec_image.parquet")
    assert has_input.tolist() == [True, False, True]
    np.testing.assert_array_equal(matrix[[0, 2]], feat[[0, 2]])
    np.testing.assert_allclose(matrix[1], [2.0, 3.0])  # features.fill: mean of the items that have a row
    assert stats["without_input"] == 1 and stats["encoded"] == 0
    assert read_json(tmp_path / "processed/toy/features/mmrec_image.json")["source_file"] == "image_feat.npy"
    assert (tmp_path / "processed/toy/features/mmrec_image.lmdb").is_file()  # the declared (empty) cache output


def test_a_dataset_without_the_features_file_says_so(tmp_path, params):
    import_dataset(tmp_path, params, mmrec_folder(tmp_path, None))
    with pytest.raises(ValueError, match=r"no file with role 'text_feat'.*does not ship these features"):
        features.run("toy", "mmrec_text", params, tmp_path / "processed", tmp_path / "raw")


def test_feature_rows_must_match_the_items(tmp_path, params):
    import_dataset(tmp_path, params, mmrec_folder(tmp_path, np.ones((5, 2), dtype=np.float32)))
    with pytest.raises(ValueError, match="image_feat.npy"):
        features.run("toy", "mmrec_image", params, tmp_path / "processed", tmp_path / "raw")


def test_amazon_2014_cnn_features_file_is_streamed_by_asin(tmp_path):
    rng = np.random.default_rng(0)
    vectors = {asin: rng.random(features.AMAZON_CNN_DIM, dtype=np.float32) for asin in ("B000000001", "B000000003")}
    vectors["B000000009"] = rng.random(features.AMAZON_CNN_DIM, dtype=np.float32)  # an item not in our set
    path = tmp_path / "image_features_Baby.b"
    path.write_bytes(b"".join(a.encode() + v.astype("<f4").tobytes() for a, v in vectors.items()))
    matrix, found = features.read_amazon_image_features(path, ["B000000001", "B000000002", "B000000003"])
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(matrix[0], vectors["B000000001"])
    np.testing.assert_array_equal(matrix[2], vectors["B000000003"])
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="not a whole number of 16394-byte records"):
        features.read_amazon_image_features(path, ["B000000001"])
