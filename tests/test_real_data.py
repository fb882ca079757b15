"""The real Amazon Baby data under shared/data, read through `presplit.load`: counts as their SOURCE.md files state."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.sources import presplit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MMREC_DIR = DATA / "amazon-baby-mmrec"
LATTICE_DIR = DATA / "amazon-baby-5core"


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def test_amazon_baby_mmrec_split(tmp_path):
    src = MMREC_DIR / "baby.inter"
    if not src.is_file():
        pytest.skip(f"real data not present: {src} (see shared/data/amazon-baby-mmrec/SOURCE.md)")
    raw = tmp_path / "baby_mmrec"
    link(src, raw / "baby.inter")
    manifest = {"source": "mmrec", "files": [{"role": "interactions", "path": "baby.inter", "format": "mmrec-inter"}]}
    inter, items, users, stats = presplit.load(manifest, raw)
    # SOURCE.md: 19,445 users, 7,050 items, 160,792 interactions = 118,551 train + 20,559 valid + 21,682 test.
    assert (stats["users"], stats["items"], stats["interactions"]) == (19445, 7050, 160792)
    assert stats["split"] == {"train": 118551, "valid": 20559, "test": 21682}
    assert len(inter) == 160792 and items.num_rows == 7050 and users.num_rows == 19445
    assert stats["malformed"]["interactions"]["count"] == 0
    assert stats["duplicates"]["repeated_pairs_kept_first"] == 0
    assert stats["users_without_interactions"]["count"] == 0 and stats["items_without_interactions"]["count"] == 0
    assert stats["users_without_train"] == 0


def test_amazon_baby_lattice_split(tmp_path):
    needed = [LATTICE_DIR / p for p in ("5-core/train.json", "5-core/val.json", "5-core/test.json")]
    needed += [LATTICE_DIR / "user2id.json", LATTICE_DIR / "item2id.json"]
    absent = [str(p) for p in needed if not p.is_file()]
    if absent:
        pytest.skip(f"real data not present: {absent} (see shared/data/amazon-baby-5core/SOURCE.md)")
    raw = tmp_path / "baby_5core"
    for src in needed:
        link(src, raw / src.relative_to(LATTICE_DIR))
    manifest = {
        "source": "lattice",
        "files": [
            {"role": "train", "path": "5-core/train.json", "format": "lattice-split"},
            {"role": "valid", "path": "5-core/val.json", "format": "lattice-split"},
            {"role": "test", "path": "5-core/test.json", "format": "lattice-split"},
            {"role": "user_map", "path": "user2id.json", "format": "lattice-map"},
            {"role": "item_map", "path": "item2id.json", "format": "lattice-map"},
        ],
    }
    inter, items, users, stats = presplit.load(manifest, raw)
    # SOURCE.md: 19,445 users (in all three files), 7,050 items, 160,792 = 119,674 + 20,559 + 20,559.
    assert (stats["users"], stats["items"], stats["interactions"]) == (19445, 7050, 160792)
    assert stats["split"] == {"train": 119674, "valid": 20559, "test": 20559}
    assert all(stats["rows_read"][role]["users"] == 19445 for role in ("train", "valid", "test"))
    assert stats["duplicates"] == {"repeated_in_split": 0, "in_several_splits_kept_earliest": 0}
    assert len(inter) == 160792
    # Ids come from the maps: Amazon ASINs and reviewer ids.
    assert items["item_id"][0].as_py() == "097293751X"
    assert users["user_id"][0].as_py().startswith("A")
