"""Encoders of kind `precomputed`: features a source ships (MMRec npy, Amazon 2014 CNN .b) are read by ingest
into `shipped/<role>.parquet` (raw formats stay in download/ingest) and become a feature set's modality."""

from __future__ import annotations

import numpy as np
import pytest

from mmpipe.io import read_json
from mmpipe.schemas import read_features
from stages import download, features, ingest
from stages.sources import reading


def mmrec_folder(tmp_path, image_feat: np.ndarray | None):
    src = tmp_path / "mmrec"
    src.mkdir()
    rows = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{int(i == 2)}" for u in range(3) for i in range(3)]
    (src / "toy.inter").write_text("\n".join(rows) + "\n")
    if image_feat is not None:
        np.save(src / "image_feat.npy", image_feat)
    return src


def import_dataset(tmp_path, params, src):
    """download (local mmrec) + ingest (the pre-split import, which also reads the shipped features)."""
    params["datasets"]["toy"] = {"source": "mmrec", "name": "toy", "path": str(src)}
    params["features"]["shipped"] = {"image": {"kind": "precomputed", "role": "image_feat"},
                                     "text": {"kind": "precomputed", "role": "text_feat"}}  # fmt: skip
    manifest = download.run("toy", params, tmp_path / "raw")
    ingest.run("toy", params, tmp_path / "raw", tmp_path / "processed")
    return manifest


def test_mmrec_npy_rows_become_the_encoder_output(tmp_path, params):
    feat = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)  # item 1: no features (zero row)
    manifest = import_dataset(tmp_path, params, mmrec_folder(tmp_path, feat))
    assert {e["role"] for e in manifest["files"]} == {"interactions", "image_feat"}
    assert read_json(tmp_path / "processed/toy/shipped/index.json") == {
        "image_feat": {"items_with_features": 2, "dim": 2}
    }
    stats = features.run("toy", "shipped", "image", params, tmp_path / "processed")
    matrix, has_input = read_features(tmp_path / "processed/toy/features/shipped/image.parquet")
    assert has_input.tolist() == [True, False, True]
    np.testing.assert_array_equal(matrix[[0, 2]], feat[[0, 2]])
    np.testing.assert_allclose(matrix[1], [2.0, 3.0])  # features.fill: mean of the items that have a row
    assert stats["without_input"] == 1 and stats["encoded"] == 0
    source = read_json(tmp_path / "processed/toy/feature_stats/shipped-image.json")["source_file"]
    assert source.endswith("shipped/image_feat.parquet")
    assert (tmp_path / "processed/toy/feature_cache/shipped-image.lmdb").is_file()  # the declared (empty) cache


def test_a_dataset_without_the_features_file_says_so(tmp_path, params):
    import_dataset(tmp_path, params, mmrec_folder(tmp_path, None))
    with pytest.raises(ValueError, match=r"dataset 'toy' ships no features with role 'text_feat' \(it ships: none\)"):
        features.run("toy", "shipped", "text", params, tmp_path / "processed")


def test_feature_rows_must_match_the_items(tmp_path, params):
    with pytest.raises(ValueError, match="image_feat.npy"):
        import_dataset(tmp_path, params, mmrec_folder(tmp_path, np.ones((5, 2), dtype=np.float32)))
    assert not (tmp_path / "processed/toy/interactions.parquet").exists()  # nothing half-written


def test_amazon_2014_cnn_features_file_is_streamed_by_asin(tmp_path):
    rng = np.random.default_rng(0)
    vectors = {asin: rng.random(reading.AMAZON_CNN_DIM, dtype=np.float32) for asin in ("B000000001", "B000000003")}
    vectors["B000000009"] = rng.random(reading.AMAZON_CNN_DIM, dtype=np.float32)  # an item not in our set
    path = tmp_path / "image_features_Baby.b"
    path.write_bytes(b"".join(a.encode() + v.astype("<f4").tobytes() for a, v in vectors.items()))
    matrix, found = reading.read_amazon_image_features(path, ["B000000001", "B000000002", "B000000003"])
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(matrix[0], vectors["B000000001"])
    np.testing.assert_array_equal(matrix[2], vectors["B000000003"])
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="not a whole number of 16394-byte records"):
        reading.read_amazon_image_features(path, ["B000000001"])
