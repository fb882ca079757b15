"""The export read back as the official codes read it: numpy, pandas and json only, no mmpipe reader.

`stages/export.py` writes `processed/<ds>/export/<set>/` for MMRec (`<ds>.inter`, the id maps,
`<modality>_feat.npy`) and REARM (`train.npy`, `valid.npy`, `test.npy` and the same feature files). Here
the demo's features are built, the export is run once, and every exported file is loaded the way
MMRec's `RecDataset` / REARM's `BaseDataset` load it (`pd.read_csv(sep="\\t")`,
`np.load(allow_pickle=True)`), then compared with the processed Parquet files read with pandas: the same
ids, the same interactions in each split, feature row i = the features table's row of item i.

Each exported file has a checker in CHECKS; a file in the folder without a checker fails
`test_every_exported_file_has_a_checker`, so a new exported file cannot go unchecked.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import export, features
from tests.conftest import tiny_params

DS, FEATURE_SET = "demo", "default"
SPLITS = {"train": 0, "valid": 1, "test": 2}


@dataclass(frozen=True)
class Processed:
    """The processed dataset, read with pandas alone (not through mmpipe's readers)."""

    interactions: pd.DataFrame  # user_idx, item_idx, rating, timestamp, split
    user_ids: list[str]  # by user_idx
    item_ids: list[str]  # by item_idx
    features: dict[str, tuple[np.ndarray, np.ndarray]]  # modality -> (matrix by item_idx, has_input)

    def pairs(self, split: int) -> set[tuple[int, int]]:
        part = self.interactions[self.interactions["split"] == split]
        return set(zip(part["user_idx"].tolist(), part["item_idx"].tolist(), strict=True))


@dataclass(frozen=True)
class Export:
    folder: Path
    processed: Processed
    modalities: list[str]


def read_ids(path: Path, idx_col: str, id_col: str) -> list[str]:
    table = pd.read_parquet(path).sort_values(idx_col)
    assert table[idx_col].tolist() == list(range(len(table))), path
    return table[id_col].astype(str).tolist()


def read_feature_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(rows in item_idx order, has_input), from the Parquet columns as pandas gives them."""
    table = pd.read_parquet(path)
    table = table.sort_values("item_idx").reset_index(drop=True)
    assert table["item_idx"].tolist() == list(range(len(table))), path
    matrix = np.stack([np.asarray(row, dtype=np.float32) for row in table["embedding"]])
    return matrix, table["has_input"].to_numpy(dtype=bool)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo_project) -> Export:
    params = tiny_params()
    modalities = list(params["pipeline"]["modalities"])
    assert sorted(modalities) == ["image", "text"]  # REARM needs both
    processed = tmp_path_factory.mktemp("export_readback") / "processed"
    shutil.copytree(demo_project / "processed", processed)
    for modality in modalities:
        features.run(DS, FEATURE_SET, modality, params, processed)
    export.run(DS, FEATURE_SET, params, processed)
    root = processed / DS
    inter = pd.read_parquet(root / "interactions.parquet")
    data = Processed(
        interactions=inter[["user_idx", "item_idx", "rating", "timestamp", "split"]],
        user_ids=read_ids(root / "users.parquet", "user_idx", "user_id"),
        item_ids=read_ids(root / "items.parquet", "item_idx", "item_id"),
        features={m: read_feature_table(root / f"features/{FEATURE_SET}/{m}.parquet") for m in modalities},
    )
    return Export(root / "export" / FEATURE_SET, data, modalities)


# --- one checker per exported file ---------------------------------------------------------------------

CHECKS: dict[str, Callable[[Export, str], None]] = {}


def checks(*names: str) -> Callable:
    def register(fn: Callable[[Export, str], None]) -> Callable[[Export, str], None]:
        for name in names:
            CHECKS[name] = fn
        return fn

    return register


def read_map(path: Path, id_col: str, index_col: str) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", dtype={id_col: str})
    assert list(table.columns) == [id_col, index_col], path
    assert table[index_col].dtype == np.int64
    return table


@checks(f"{DS}.inter")
def check_inter(ex: Export, name: str) -> None:
    p = ex.processed
    inter = pd.read_csv(ex.folder / name, sep="\t")
    assert list(inter.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    ints = ["userID", "itemID", "timestamp", "x_label"]
    assert (inter[ints].dtypes == np.int64).all(), inter.dtypes
    assert inter["rating"].dtype.kind in "if"  # "%.7g": whole ratings are written as integers ("5")

    # MMRec's RecDataset: usecols, x_label 0/1/2 split, item_num / user_num = max id + 1
    mmrec = pd.read_csv(ex.folder / name, usecols=["userID", "itemID", "x_label"], sep="\t")
    for split, code in SPLITS.items():
        part = mmrec[mmrec["x_label"] == code]
        assert set(zip(part["userID"], part["itemID"], strict=True)) == p.pairs(code), split
    assert set(mmrec["x_label"]) == set(SPLITS.values())
    assert int(mmrec["userID"].max()) + 1 == len(p.user_ids) and int(mmrec["userID"].min()) == 0
    assert int(mmrec["itemID"].max()) + 1 == len(p.item_ids) and int(mmrec["itemID"].min()) == 0

    # every interaction with its rating, time and split, as a multiset
    mine = inter.rename(columns={"userID": "user_idx", "itemID": "item_idx", "x_label": "split"})
    order = ["user_idx", "item_idx", "split", "timestamp"]
    mine = mine[["user_idx", "item_idx", "rating", "timestamp", "split"]].astype({"rating": "float64"})
    mine = mine.sort_values(order).reset_index(drop=True)
    theirs = p.interactions.astype(
        {"user_idx": "int64", "item_idx": "int64", "rating": "float64", "timestamp": "int64", "split": "int64"}
    )
    theirs = theirs.sort_values(order).reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, theirs, check_exact=False, rtol=1e-6)

    # in source ids (through the exported maps): the same (user, item, split) triples as the Parquet files
    users = read_map(ex.folder / "u_id_mapping.csv", "user_id", "userID").set_index("userID")["user_id"]
    items = read_map(ex.folder / "i_id_mapping.csv", "asin", "itemID").set_index("itemID")["asin"]
    exported_ids = sorted(
        zip(users[inter["userID"]].tolist(), items[inter["itemID"]].tolist(), inter["x_label"].tolist(), strict=True)
    )
    src = p.interactions
    source_ids = sorted(
        zip(
            [p.user_ids[u] for u in src["user_idx"]],
            [p.item_ids[i] for i in src["item_idx"]],
            src["split"].astype(int).tolist(),
            strict=True,
        )
    )
    assert exported_ids == source_ids

    keys = list(zip(inter["userID"], inter["x_label"], inter["itemID"], strict=True))
    assert keys == sorted(keys)  # sorted by userID, x_label, itemID as the docstring says


@checks("u_id_mapping.csv")
def check_user_map(ex: Export, name: str) -> None:
    table = read_map(ex.folder / name, "user_id", "userID")
    assert table["userID"].tolist() == list(range(len(ex.processed.user_ids)))
    assert table["user_id"].tolist() == ex.processed.user_ids


@checks("i_id_mapping.csv")
def check_item_map(ex: Export, name: str) -> None:
    table = read_map(ex.folder / name, "asin", "itemID")
    assert table["itemID"].tolist() == list(range(len(ex.processed.item_ids)))
    assert table["asin"].tolist() == ex.processed.item_ids


@checks(*(f"{split}.npy" for split in SPLITS))
def check_split_array(ex: Export, name: str) -> None:
    """REARM's `load_all_data` + `processed_eval_data`: np.load, then (2, n) -> (n, 2) rows of (user, item)."""
    split = name.removesuffix(".npy")
    array = np.load(ex.folder / name, allow_pickle=True)
    assert array.dtype == np.int64 and array.ndim == 2 and array.shape[0] == 2, (array.dtype, array.shape)
    rows = array.transpose(1, 0).copy()
    pairs = [tuple(r) for r in rows.tolist()]
    assert len(pairs) == len(set(pairs))  # no interaction twice
    assert set(pairs) == ex.processed.pairs(SPLITS[split]), split


@checks("image_feat.npy", "text_feat.npy")
def check_feature_matrix(ex: Export, name: str) -> None:
    modality = name.removesuffix("_feat.npy")
    assert modality in ex.modalities
    matrix = np.load(ex.folder / name, allow_pickle=True)
    table, _ = ex.processed.features[modality]
    assert matrix.dtype == np.float32 and matrix.shape == table.shape == (len(ex.processed.item_ids), table.shape[1])
    assert np.isfinite(matrix).all()
    np.testing.assert_array_equal(matrix, table)  # row i = the features table's item_idx i
    # and row itemID = the feature row of the item the exported map names (asin -> item_idx -> row)
    asins = read_map(ex.folder / "i_id_mapping.csv", "asin", "itemID")
    where = {item_id: idx for idx, item_id in enumerate(ex.processed.item_ids)}
    for asin, item_id in zip(asins["asin"], asins["itemID"], strict=True):
        np.testing.assert_array_equal(matrix[item_id], table[where[asin]], err_msg=f"{name}: item {asin}")


@checks("export_stats.json")
def check_stats(ex: Export, name: str) -> None:
    p = ex.processed
    stats = json.loads((ex.folder / name).read_text())
    assert stats["dataset"] == DS and stats["feature_set"] == FEATURE_SET
    assert (stats["users"], stats["items"], stats["interactions"]) == (
        len(p.user_ids), len(p.item_ids), len(p.interactions)
    )  # fmt: skip
    assert stats["split"] == {split: len(p.pairs(code)) for split, code in SPLITS.items()}
    assert sorted(stats["features"]) == sorted(ex.modalities)
    for modality, entry in stats["features"].items():
        table, has_input = p.features[modality]
        assert entry == {
            "feature_set": FEATURE_SET,
            "file": f"{modality}_feat.npy",
            "dim": table.shape[1],
            "items_without_input": int((~has_input).sum()),
        }


# --- the tests -------------------------------------------------------------------------------------------


def test_every_exported_file_has_a_checker(exported):
    """The folder holds exactly the files CHECKS reads: a new exported file needs a checker here."""
    found = sorted(str(p.relative_to(exported.folder)) for p in exported.folder.rglob("*"))
    assert found == sorted(CHECKS), f"exported files without a checker: {sorted(set(found) - set(CHECKS))}"
    assert not [p for p in (exported.folder.parent).iterdir() if p.name.startswith(".")]  # no temporaries


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_exported_file_reads_back(exported, name):
    CHECKS[name](exported, name)


def test_rearm_sees_the_same_users_items_and_splits(exported):
    """REARM's BaseDataset counts users and items over the three arrays and shifts items by n_users: the
    counts must be the dataset's, the feature rows one per item, and valid/test disjoint from train."""
    p = exported.processed
    train, valid, test = (
        np.load(exported.folder / f"{s}.npy", allow_pickle=True).transpose(1, 0).copy() for s in SPLITS
    )
    n_users = len(set(train[:, 0]) | set(valid[:, 0]) | set(test[:, 0]))
    n_items = len(set(train[:, 1]) | set(valid[:, 1]) | set(test[:, 1]))
    assert (n_users, n_items) == (len(p.user_ids), len(p.item_ids))
    for modality in ("image", "text"):
        feat = np.load(exported.folder / f"{modality}_feat.npy", allow_pickle=True)
        assert feat.shape[0] == n_items
    assert (len(train), len(valid), len(test)) == tuple(len(p.pairs(code)) for code in SPLITS.values())
    train_pairs = {tuple(r) for r in train.tolist()}
    assert not train_pairs & {tuple(r) for r in valid.tolist()}
    assert not train_pairs & {tuple(r) for r in test.tolist()}
    # the official loader's item shift: items become n_users .. n_users + n_items - 1
    shifted = train[:, 1] + n_users
    assert shifted.min() >= n_users and shifted.max() < n_users + n_items
