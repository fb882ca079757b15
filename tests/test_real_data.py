"""The real Amazon Baby data under shared/data, imported by the pipeline's own `download` (a local folder)
and `ingest` (the given split kept): counts as their SOURCE.md files state."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stages import download, ingest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MMREC_DIR = DATA / "amazon-baby-mmrec"
LATTICE_DIR = DATA / "amazon-baby-5core"


def import_dataset(params: dict, tmp_path: Path, name: str, cfg: dict) -> tuple[dict, dict]:
    """download (local source: files linked or copied into raw/<name>/, sha256 recorded) + ingest, as in the DAG."""
    params["datasets"][name] = cfg
    manifest = download.run(name, params, tmp_path / "raw")
    stats = ingest.run(name, params, tmp_path / "raw", tmp_path / "processed")
    assert manifest["origin"] == "local" and all(len(e["sha256"]) == 64 for e in manifest["files"])
    assert stats == json.loads((tmp_path / f"processed/{name}/ingest_stats.json").read_text())
    return manifest, stats


def test_amazon_baby_mmrec_split(tmp_path, params):
    src = MMREC_DIR / "baby.inter"
    if not src.is_file():
        pytest.skip(f"real data not present: {src} (see shared/data/amazon-baby-mmrec/SOURCE.md)")
    _, stats = import_dataset(
        params, tmp_path, "baby_mmrec", {"source": "mmrec", "name": "baby", "path": str(MMREC_DIR)}
    )
    processed = tmp_path / "processed/baby_mmrec"
    inter, items, users = (pq.read_table(processed / f"{t}.parquet") for t in ("interactions", "items", "users"))
    # SOURCE.md: 19,445 users, 7,050 items, 160,792 interactions = 118,551 train + 20,559 valid + 21,682 test.
    assert (stats["users"], stats["items"], stats["interactions"]) == (19445, 7050, 160792)
    assert stats["split"] == {"train": 118551, "valid": 20559, "test": 21682}
    assert inter.num_rows == 160792 and items.num_rows == 7050 and users.num_rows == 19445
    assert stats["malformed"]["interactions"]["count"] == 0
    assert stats["duplicates"]["repeated_pairs_kept_first"] == 0
    assert stats["users_without_interactions"]["count"] == 0 and stats["items_without_interactions"]["count"] == 0
    assert stats["users_without_train"] == 0


def test_amazon_baby_lattice_split(tmp_path, params):
    needed = [LATTICE_DIR / p for p in ("5-core/train.json", "5-core/val.json", "5-core/test.json")]
    needed += [LATTICE_DIR / "user2id.json", LATTICE_DIR / "item2id.json"]
    absent = [str(p) for p in needed if not p.is_file()]
    if absent:
        pytest.skip(f"real data not present: {absent} (see shared/data/amazon-baby-5core/SOURCE.md)")
    _, stats = import_dataset(params, tmp_path, "baby_5core", {"source": "lattice", "path": str(LATTICE_DIR)})
    processed = tmp_path / "processed/baby_5core"
    inter, items, users = (pq.read_table(processed / f"{t}.parquet") for t in ("interactions", "items", "users"))
    # SOURCE.md: 19,445 users (in all three files), 7,050 items, 160,792 = 119,674 + 20,559 + 20,559.
    assert (stats["users"], stats["items"], stats["interactions"]) == (19445, 7050, 160792)
    assert stats["split"] == {"train": 119674, "valid": 20559, "test": 20559}
    assert all(stats["rows_read"][role]["users"] == 19445 for role in ("train", "valid", "test"))
    assert stats["duplicates"] == {"repeated_in_split": 0, "in_several_splits_kept_earliest": 0}
    assert inter.num_rows == 160792
    # Ids come from the maps: Amazon ASINs and reviewer ids.
    assert items["item_id"][0].as_py() == "097293751X"
    assert users["user_id"][0].as_py().startswith("A")


@pytest.mark.parametrize(
    ("folder", "category", "counts", "with_image_url"),
    [
        # SOURCE.md: a strict iterative 5-core leaves 2,941 pairs, 453 users, 147 items; 116 of the 148 review
        # items have an image URL (in `image`: thumbnails only)
        ("amazon2018-gift-cards", "Gift_Cards", (453, 147, 2941), 115),
        ("amazon2018-magazine-subscriptions", "Magazine_Subscriptions", (294, 132, 2027), 111),
    ],
)
def test_amazon2018_categories_import_with_their_image_urls(tmp_path, params, folder, category, counts, with_image_url):
    src = DATA / folder
    if not (src / f"meta_{category}.json.gz").is_file():
        pytest.skip(f"real data not present: {src} (see shared/data/{folder}/SOURCE.md)")
    cfg = {"source": "local", "format": "amazon2018", "category": category, "path": str(src)}
    _, stats = import_dataset(params, tmp_path, "x", cfg)
    assert (stats["users"], stats["items"], stats["interactions"]) == counts
    items = pq.read_table(tmp_path / "processed/x/items.parquet").to_pylist()
    urls = [it["image_url"] for it in items if it["image_url"]]
    assert len(urls) == with_image_url == stats["items"] - stats["items_missing"]["image_url"]
    # the original image, not the 38x50 thumbnail the field holds
    assert all(u.startswith("https://images-na.ssl-images-amazon.com/images/I/") and "._" not in u for u in urls)
    assert not any(it["title"] and "<" in it["title"] for it in items)  # no HTML debris as a title
