"""Presplit sources (MMRec `.inter`, LATTICE JSON splits), the PMMRec Bilibili readers and the export stage."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from mmpipe import schemas
from mmpipe.io import write_parquet
from stages import export
from stages.sources import bilibili, presplit
from stages.sources.malformed import Malformed


def mmrec_manifest(inter: str = "toy.inter", **extra: str) -> dict:
    files = [{"role": "interactions", "path": inter, "format": "mmrec-inter"}]
    for role, path in extra.items():
        files.append({"role": role, "path": path, "format": "mmrec-map" if path.endswith(".csv") else "npy"})
    return {"source": "mmrec", "files": files}


def lattice_manifest(maps: bool = True) -> dict:
    files = [
        {"role": "train", "path": "5-core/train.json", "format": "lattice-split"},
        {"role": "valid", "path": "5-core/val.json", "format": "lattice-split"},
        {"role": "test", "path": "5-core/test.json", "format": "lattice-split"},
    ]
    if maps:
        files += [
            {"role": "user_map", "path": "user2id.json", "format": "lattice-map"},
            {"role": "item_map", "path": "item2id.json", "format": "lattice-map"},
        ]
    return {"source": "lattice", "files": files}


def write_lattice(raw: Path, train: dict, valid: dict, test: dict, users: dict | None, items: dict | None) -> None:
    (raw / "5-core").mkdir(parents=True, exist_ok=True)
    for name, data in (("train", train), ("val", valid), ("test", test)):
        (raw / "5-core" / f"{name}.json").write_text(json.dumps(data))
    if users is not None:
        (raw / "user2id.json").write_text(json.dumps(users))
    if items is not None:
        (raw / "item2id.json").write_text(json.dumps(items))


# ------------------------------------------------------------------------------------------------ mmrec


MMREC_TOY = (
    "userID\titemID\tx_label\n"  # line 1
    "1\t0\t0\n"  # 2
    "0\t1\t0\n"  # 3
    "0\t0\t2\n"  # 4
    "x\t1\t0\n"  # 5: non-integer user
    "0\t3\t1\n"  # 6
    "1\t1\t7\n"  # 7: bad x_label
    "1\t3\n"  # 8: missing field
    "\n"  # 9: blank, ignored
    "0\t1\t2\n"  # 10: duplicate (0, 1): first kept (train)
    "1\t3\t2\n"  # 11
    "2\t-1\t0\n"  # 12: negative index
)


def test_mmrec_good_and_bad_rows(tmp_path):
    (tmp_path / "toy.inter").write_text(MMREC_TOY)
    inter, items, users, stats = presplit.load(mmrec_manifest(), tmp_path)

    assert list(inter.columns) == schemas.INTERACTIONS.names
    assert inter.dtypes.astype(str).tolist() == ["int32", "int32", "float32", "int64", "int8"]
    rows = list(zip(inter["user_idx"], inter["item_idx"], inter["split"], strict=True))
    assert rows == [(0, 1, 0), (0, 3, 1), (0, 0, 2), (1, 0, 0), (1, 3, 2)]  # by user, split, item
    assert (inter["rating"] == 1.0).all() and (inter["timestamp"] == 0).all()

    bad = stats["malformed"]["interactions"]
    assert bad["count"] == 4
    assert [b["line"] for b in bad["first"]] == [5, 7, 8, 12]
    assert "x_label 7" in bad["first"][1]["reason"]
    assert stats["duplicates"] == {"repeated_pairs_kept_first": 1}
    assert stats["source_split_kept"] is True
    # Indices are kept: item 2 has no interaction but is still an item (feature row 2 is item 2).
    assert stats["items"] == 4 and stats["users"] == 2
    assert stats["items_without_interactions"] == {"count": 1, "first": [2]}
    assert any("no timestamp column" in n for n in stats["notes"])
    assert stats["split"] == {"train": 2, "valid": 1, "test": 2}
    assert items.schema == schemas.ITEMS and users.schema == schemas.USERS
    assert items["item_id"].to_pylist() == ["0", "1", "2", "3"]
    assert items["title"].null_count == 4
    assert users["user_id"].to_pylist() == ["0", "1"]


def test_mmrec_missing_column_is_a_stop_error(tmp_path):
    (tmp_path / "toy.inter").write_text("userID\titemID\tlabel\n0\t0\t0\n")
    with pytest.raises(ValueError, match=r"toy\.inter.*\['x_label'\].*found \['userID', 'itemID', 'label'\]"):
        presplit.load(mmrec_manifest(), tmp_path)


def test_mmrec_optional_columns_and_maps(tmp_path):
    (tmp_path / "toy.inter").write_text(
        "userID\titemID\trating\ttimestamp\tx_label\n0\t1\t4.5\t100\t0\n1\t0\t3\t50\t2\n1\t1\tbad\t5\t0\n"
    )
    (tmp_path / "u.csv").write_text("user_id\tuserID\nalice\t0\nbob\t1\n")
    (tmp_path / "i.csv").write_text("asin\titemID\nB001\t0\nB002\t1\n")
    manifest = mmrec_manifest(user_map="u.csv", item_map="i.csv")
    inter, items, users, stats = presplit.load(manifest, tmp_path)
    assert inter["rating"].tolist() == [4.5, 3.0]
    assert inter["timestamp"].tolist() == [100, 50]
    assert stats["malformed"]["interactions"]["first"][0]["line"] == 4
    assert items["item_id"].to_pylist() == ["B001", "B002"]
    assert users["user_id"].to_pylist() == ["alice", "bob"]

    (tmp_path / "i.csv").write_text("asin\titemID\nB001\t0\n")  # item 1 is beyond the map
    with pytest.raises(ValueError, match=r"toy\.inter: line 2: item index 1 is out of range for .*i\.csv"):
        presplit.load(manifest, tmp_path)


def test_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="toy.inter"):
        presplit.load(mmrec_manifest(), tmp_path)
    with pytest.raises(ValueError, match="no file with role 'interactions'"):
        presplit.load({"source": "mmrec", "files": []}, tmp_path)
    with pytest.raises(ValueError, match="not a presplit source"):
        presplit.load({"source": "amazon2014", "files": []}, tmp_path)


# ---------------------------------------------------------------------------------------------- lattice


def test_lattice_keeps_earliest_split_and_maps_ids(tmp_path):
    users = {"U_b": 1, "U_a": 0}
    items = {"I0": 0, "I1": 1, "I2": 2, "I3": 3}
    train = {"0": [2, 0, 0], "1": [1]}  # (0, 0) twice in train
    valid = {"0": [1], "1": [3]}
    test = {"0": [3, 2], "1": [0]}  # (0, 2) is in train too: kept in train
    write_lattice(tmp_path, train, valid, test, users, items)
    inter, items_t, users_t, stats = presplit.load(lattice_manifest(), tmp_path)
    rows = list(zip(inter["user_idx"], inter["item_idx"], inter["split"], strict=True))
    assert rows == [(0, 0, 0), (0, 2, 0), (0, 1, 1), (0, 3, 2), (1, 1, 0), (1, 3, 1), (1, 0, 2)]
    assert stats["duplicates"] == {"repeated_in_split": 1, "in_several_splits_kept_earliest": 1}
    assert stats["split"] == {"train": 3, "valid": 2, "test": 2}
    assert stats["rows_read"]["train"] == {"users": 2, "pairs": 4}
    assert users_t["user_id"].to_pylist() == ["U_a", "U_b"]
    assert items_t["item_id"].to_pylist() == ["I0", "I1", "I2", "I3"]
    assert (inter["timestamp"] == 0).all()


def test_lattice_out_of_range_and_bad_entries(tmp_path):
    write_lattice(tmp_path, {"0": [0]}, {"0": [1]}, {"0": [5]}, {"u": 0}, {"a": 0, "b": 1})
    with pytest.raises(ValueError, match=r"test\.json: key '0': item index 5 is out of range for .*item2id\.json"):
        presplit.load(lattice_manifest(), tmp_path)

    write_lattice(tmp_path, {"0": [0]}, {"1": [1]}, {"0": [1]}, {"u": 0}, {"a": 0, "b": 1})
    with pytest.raises(ValueError, match=r"val\.json: key '1': user index 1 is out of range for .*user2id\.json"):
        presplit.load(lattice_manifest(), tmp_path)

    write_lattice(tmp_path, {"0": "7"}, {}, {}, None, None)
    with pytest.raises(ValueError, match=r"train\.json: key '0': expected a list"):
        presplit.load(lattice_manifest(maps=False), tmp_path)

    write_lattice(tmp_path, {"x": [0]}, {}, {}, None, None)
    with pytest.raises(ValueError, match=r"train\.json: key 'x': user 'x' is not an integer index"):
        presplit.load(lattice_manifest(maps=False), tmp_path)

    write_lattice(tmp_path, {"0": [0]}, {}, {}, {"u": 0, "v": 0}, None)
    with pytest.raises(ValueError, match=r"user2id\.json: key 'v': index 0 is given to both 'u' and 'v'"):
        presplit.load(lattice_manifest(), tmp_path)


def test_lattice_without_maps_counts_idle_users(tmp_path):
    write_lattice(tmp_path, {"0": [0], "2": [1]}, {"2": [0]}, {}, None, None)
    inter, items, users, stats = presplit.load(lattice_manifest(maps=False), tmp_path)
    assert stats["users"] == 3 and stats["users_without_interactions"]["first"] == [1]
    assert users["user_id"].to_pylist() == ["0", "1", "2"]
    assert stats["split"]["test"] == 0


# --------------------------------------------------------------------------------------------- features


def test_precomputed_features(tmp_path):
    (tmp_path / "toy.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t2\t2\n")  # 3 items
    feat = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "image_feat.npy", feat)
    manifest = mmrec_manifest(image_feat="image_feat.npy")
    got = presplit.precomputed_features(manifest, tmp_path, "image")
    assert got.dtype == np.float32 and np.array_equal(got, feat.astype(np.float32))
    assert presplit.precomputed_features(manifest, tmp_path, "text") is None

    with pytest.raises(ValueError, match=r"image_feat\.npy: shape \(3, 4\) has 3 rows, but the dataset has 5 items"):
        presplit.precomputed_features(manifest, tmp_path, "image", n_items=5)
    np.save(tmp_path / "image_feat.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"image_feat\.npy: expected a 2-D array .* got shape \(3,\)"):
        presplit.precomputed_features(manifest, tmp_path, "image")
    bad = feat.copy()
    bad[1, 2] = np.nan
    np.save(tmp_path / "image_feat.npy", bad)
    with pytest.raises(ValueError, match=r"1 rows have NaN"):
        presplit.precomputed_features(manifest, tmp_path, "image")


# -------------------------------------------------------------------------------------------- bilibili


BILI_USERS = (
    "u100\tv11 v12 v13\n"  # line 1
    "u200\tv13 v11 v14 v11\n"  # 2: v11 twice (ingest keeps the earliest position)
    "u300 v11 v12\n"  # 3: no tab
    "u400\t\n"  # 4: empty sequence
    "u100\tv14\n"  # 5: user again
    "\tv11\n"  # 6: empty user
)
BILI_TEXTS = "v11\t家常 红烧肉  做法\nv12\t\nv13\t草莓蛋糕\nv13\tdup\nno-tab-here\nv14\tHotpot\n"


def test_bilibili_sequences_and_titles(tmp_path):
    users_path = tmp_path / bilibili.USERS_FILE.format(name="food")
    texts_path = tmp_path / bilibili.TEXTS_FILE.format(name="food")
    users_path.write_text(BILI_USERS, encoding="utf-8")
    texts_path.write_text(BILI_TEXTS, encoding="utf-8")
    assert bilibili.pmmrec_files("bili_food") == {
        "interactions": users_path.name,
        "items": texts_path.name,
        "covers_lmdb": "bilibili_food_items_images.lmdb",
    }
    assert users_path.name == "bilibili_food_users.tsv" and texts_path.name == "bilibili_food_items_texts.tsv"

    bad = Malformed(users_path.name)
    frame = bilibili.read_interactions(users_path, bad)
    assert list(frame.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert frame["user_id"].tolist() == ["u100"] * 3 + ["u200"] * 4
    assert frame["item_id"].tolist() == ["v11", "v12", "v13", "v13", "v11", "v14", "v11"]
    assert frame["timestamp"].tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert frame["timestamp"].dtype == np.int64 and frame["rating"].dtype == np.float32
    assert [b["line"] for b in bad.lines] == [3, 4, 5, 6]
    assert "line 1" in bad.lines[2]["reason"]

    bad = Malformed(texts_path.name)
    items = list(bilibili.iter_items(texts_path, bad, None))
    assert [i["item_id"] for i in items] == ["v11", "v12", "v13", "v14"]
    assert items[0]["title"] == "家常 红烧肉 做法" and items[1]["title"] is None
    assert items[2] == {
        "item_id": "v13",
        "title": "草莓蛋糕",
        "description": None,
        "brand": None,
        "categories": None,
        "image_url": None,
    }
    assert [b["line"] for b in bad.lines] == [4, 5]
    wanted = list(bilibili.iter_items(texts_path, Malformed("x"), {"v14", "v99"}))
    assert [i["item_id"] for i in wanted] == ["v14"]


class LMDB_Image:  # noqa: N801  -- the class name PMMRec pickles into its LMDB
    def __init__(self, image: np.ndarray, id: str) -> None:  # noqa: A002
        self.channels = image.shape[2]
        self.size = image.shape[:2]
        self.image = image.tobytes()
        self.id = id


def test_bilibili_lmdb_covers(tmp_path):
    assert bilibili.cover_key("v0123") == b"123" and bilibili.cover_key("42") == b"42"
    with pytest.raises(ValueError, match="no PMMRec cover key"):
        bilibili.cover_key("BV1xx")
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[:, :3] = (255, 0, 0)
    db = tmp_path / "bilibili_food_items_images.lmdb"
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"11", pickle.dumps(LMDB_Image(pixels, "11")))
        txn.put(b"12", pickle.dumps(LMDB_Image(pixels, "12"), protocol=0))
        txn.put(b"13", pickle.dumps(Path("/etc/passwd")))  # any other object is refused, not loaded
    env.close()

    out = tmp_path / "images"
    counts = bilibili.extract_lmdb_covers(db, ["v11", "v12", "v13", "v14"], out)
    assert (counts["written"], counts["missing"], counts["corrupt"]) == (2, 1, 1)
    assert sorted(p.name for p in out.iterdir()) == ["v11.png", "v12.png"]
    with Image.open(out / "v11.png") as img:
        assert img.size == (6, 4) and img.getpixel((0, 0)) == (255, 0, 0) and img.getpixel((5, 3)) == (0, 0, 0)
    assert [p["item_id"] for p in counts["first_problems"]] == ["v13", "v14"]
    assert "pathlib" in counts["first_problems"][0]["reason"] and "not allowed" in counts["first_problems"][0]["reason"]


# ----------------------------------------------------------------------------------------------- export


def make_processed(root: Path, ds: str) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    rows = [
        (u, i, float(1 + (u + i) % 5), 1000 + 10 * u + i, int(rng.integers(0, 3)))
        for u in range(6)
        for i in (0, 2, 3, 5)
    ]
    frame = pd.DataFrame(rows, columns=schemas.INTERACTIONS.names).sample(frac=1.0, random_state=1)
    frame = frame.astype(
        {"user_idx": "int32", "item_idx": "int32", "rating": "float32", "timestamp": "int64", "split": "int8"}
    )
    ds_dir = root / ds
    write_parquet(
        ds_dir / "interactions.parquet", pa.Table.from_pandas(frame, schema=schemas.INTERACTIONS, preserve_index=False)
    )
    write_parquet(
        ds_dir / "users.parquet",
        pa.table(
            {"user_idx": np.arange(6, dtype=np.int32), "user_id": [f"U{u}" for u in range(6)]}, schema=schemas.USERS
        ),
    )
    items = pa.Table.from_pylist([{"item_idx": i, "item_id": f"B00{i}"} for i in range(6)], schema=schemas.ITEMS)
    write_parquet(ds_dir / "items.parquet", items)
    emb = rng.normal(size=(6, 3)).astype(np.float32)
    features = pa.table(
        {
            "item_idx": pa.array(np.arange(6, dtype=np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 3),
            "has_input": pa.array([True, False, True, True, False, True]),
        }
    )
    write_parquet(ds_dir / "features" / "default" / "image.parquet", features)
    return frame, emb


def test_export_round_trip(tmp_path):
    processed = tmp_path / "processed"
    frame, emb = make_processed(processed, "toy")
    params = {"pipeline": {"modalities": ["image"]}}
    stats = export.run("toy", "default", params, processed)
    out = processed / "toy" / "export" / "default"
    assert sorted(p.name for p in out.iterdir()) == [
        "export_stats.json", "i_id_mapping.csv", "image_feat.npy", "test.npy", "toy.inter", "train.npy",
        "u_id_mapping.csv", "valid.npy",
    ]  # fmt: skip
    assert stats["features"]["image"]["items_without_input"] == 2 and set(stats["features"]) == {"image"}
    lines = (out / "toy.inter").read_text().splitlines()
    assert lines[0] == "userID\titemID\trating\ttimestamp\tx_label"
    keys = [tuple(int(x) for x in (f[0], f[4], f[1])) for f in (line.split("\t") for line in lines[1:])]
    assert keys == sorted(keys) and len(keys) == len(frame)
    assert (out / "i_id_mapping.csv").read_text().splitlines()[:2] == ["asin\titemID", "B000\t0"]
    assert np.array_equal(np.load(out / "image_feat.npy"), emb)
    train = np.load(out / "train.npy")
    assert train.shape == (2, stats["split"]["train"]) and train.dtype == np.int64

    # Read back as an MMRec dataset: same interactions, split, ratings, times and ids.
    manifest = mmrec_manifest("toy.inter", user_map="u_id_mapping.csv", item_map="i_id_mapping.csv")
    del manifest["files"][1]["format"]  # a map without a format: .csv is read as mmrec-map
    manifest["files"].append({"role": "image_feat", "path": "image_feat.npy", "format": "npy"})
    inter, items, users, back = presplit.load(manifest, out)
    expected = frame.sort_values(["user_idx", "split", "item_idx"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(inter, expected)
    assert back["split"] == stats["split"] and back["malformed"]["interactions"]["count"] == 0
    assert users["user_id"].to_pylist() == [f"U{u}" for u in range(6)]
    assert items["item_id"].to_pylist() == [f"B00{i}" for i in range(6)]
    assert back["items_without_interactions"] == {"count": 2, "first": [1, 4]}
    assert np.array_equal(presplit.precomputed_features(manifest, out, "image"), emb)

    # Deterministic bytes, and a re-run replaces the folder as a whole.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "stale.txt").write_text("x")
    export.run("toy", "default", params, processed)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in (processed / "toy" / "export").iterdir() if p.name.startswith(".")]


def test_export_cli_and_errors(tmp_path, monkeypatch):
    make_processed(tmp_path / "processed", "toy")
    (tmp_path / "params.yaml").write_text("pipeline:\n  modalities: [image]\n")
    monkeypatch.chdir(tmp_path)
    assert export.main(["--dataset", "toy", "--feature-set", "default"]) == 0
    assert (tmp_path / "processed/toy/export/default/image_feat.npy").is_file()
    with pytest.raises(FileNotFoundError, match="interactions.parquet"):
        export.run("nope", "default", {"pipeline": {"modalities": ["image"]}}, tmp_path / "processed")

    # Features with the wrong row count stop the export and leave the previous folder in place.
    emb = pa.table(
        {
            "item_idx": pa.array(np.arange(2, dtype=np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4, dtype=np.float32)), 2),
            "has_input": pa.array([True, True]),
        }
    )
    write_parquet(tmp_path / "processed/toy/features/default/image.parquet", emb)
    with pytest.raises(ValueError, match="2 rows, but items.parquet has 6 items"):
        export.run("toy", "default", {"pipeline": {"modalities": ["image"]}}, tmp_path / "processed")
    assert np.load(tmp_path / "processed/toy/export/default/image_feat.npy").shape == (6, 3)
