"""Where each real source's files live: one table of URLs, file names, roles and formats.

`download` reads this table to know what to fetch (or, with `path:`, what to expect in a local
folder) and writes each file's role and format into MANIFEST.json, so `ingest` never guesses.
Any URL can be overridden per dataset in params (`datasets.<ds>.urls.<role>`), e.g. for a mirror.

Roles: `reviews` / `meta` (raw Amazon files), `image_features` (the 2014 release's 4096-d CNN
features), `interactions` / `items` (Bilibili), `interactions` + `image_feat` / `text_feat`
(MMRec), `train` / `valid` / `test` + `user_map` / `item_map` (LATTICE/MICRO layout).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmpipe.paths import MMREC_ITEM_MAP, MMREC_USER_MAP, feature_file
from stages.common.params import ParamsError

AMAZON2014_BASE = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
AMAZON2018_BASE = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
AMAZON2023_BASE = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw"

# Categories with a per-category file in each release (as named in the file names).
AMAZON2014_CATEGORIES = (
    "Amazon_Instant_Video", "Apps_for_Android", "Automotive", "Baby", "Beauty", "Books", "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics",
    "Grocery_and_Gourmet_Food", "Health_and_Personal_Care", "Home_and_Kitchen", "Kindle_Store",
    "Movies_and_TV", "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies",
    "Sports_and_Outdoors", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)  # fmt: skip
AMAZON2018_CATEGORIES = (
    "AMAZON_FASHION", "All_Beauty", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Books",
    "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics",
    "Gift_Cards", "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Industrial_and_Scientific", "Kindle_Store",
    "Luxury_Beauty", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments", "Office_Products",
    "Patio_Lawn_and_Garden", "Pet_Supplies", "Prime_Pantry", "Software", "Sports_and_Outdoors",
    "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)  # fmt: skip
AMAZON2023_CATEGORIES = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Baby_Products",
    "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food",
    "Handmade_Products", "Health_and_Household", "Health_and_Personal_Care", "Home_and_Kitchen",
    "Industrial_and_Scientific", "Kindle_Store", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments",
    "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Software", "Sports_and_Outdoors",
    "Subscription_Boxes", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games", "Unknown",
)  # fmt: skip


@dataclass(frozen=True)
class FileSpec:
    """One file of a source: its role for ingest, its name in raw/<ds>/, its format, and where it comes from."""

    role: str
    path: str
    format: str
    url: str | None  # None: no public direct link (the user gives `path:` or `urls:`)
    optional: bool = False  # fetched only when the dataset asks for it (e.g. image_features: true)


SOURCES = ("amazon2014", "amazon2018", "amazon2023", "bilibili", "mmrec", "lattice")
# Sources whose meta carries product image URLs that `download` can fetch.
IMAGE_URL_SOURCES = ("amazon2014", "amazon2018", "amazon2023")
NO_DIRECT_LINK = {
    "bilibili": "PMMRec's Bilibili data is shared through cloud drives, not direct links",
    "mmrec": "MMRec's processed datasets are shared through Google Drive, not direct links",
    "lattice": "LATTICE/MICRO processed datasets are made by their build scripts or shared through cloud drives",
}


def _category(source: str, cfg: dict, known: tuple[str, ...]) -> str:
    category = cfg.get("category")
    if not category:
        raise ParamsError(f"params.yaml: datasets.<ds>.category is required for source {source!r}")
    if category not in known and not cfg.get("urls"):
        raise ParamsError(
            f"params.yaml: category {category!r} has no per-category file in {source} (known: {', '.join(known)}); "
            f"check the spelling, or give the files' URLs under datasets.<ds>.urls"
        )
    return category


def file_specs(source: str, cfg: dict) -> list[FileSpec]:
    """The files of one dataset, from its params block (source, category, name, image_features)."""
    if source == "amazon2014":
        cat = _category(source, cfg, AMAZON2014_CATEGORIES)
        return [
            FileSpec(
                "reviews",
                f"reviews_{cat}_5.json.gz",
                "amazon2014-reviews",
                f"{AMAZON2014_BASE}/reviews_{cat}_5.json.gz",
            ),
            FileSpec("meta", f"meta_{cat}.json.gz", "amazon2014-meta", f"{AMAZON2014_BASE}/meta_{cat}.json.gz"),
            FileSpec(
                "image_features",
                f"image_features_{cat}.b",
                "amazon2014-image-features",
                f"{AMAZON2014_BASE}/image_features_{cat}.b",
                optional=True,
            ),
        ]
    if source == "amazon2018":
        cat = _category(source, cfg, AMAZON2018_CATEGORIES)
        return [
            FileSpec(
                "reviews",
                f"{cat}_5.json.gz",
                "amazon2018-reviews",
                f"{AMAZON2018_BASE}/categoryFilesSmall/{cat}_5.json.gz",
            ),
            FileSpec(
                "meta", f"meta_{cat}.json.gz", "amazon2018-meta", f"{AMAZON2018_BASE}/metaFiles2/meta_{cat}.json.gz"
            ),
        ]
    if source == "amazon2023":
        cat = _category(source, cfg, AMAZON2023_CATEGORIES)
        return [
            FileSpec(
                "reviews",
                f"{cat}.jsonl.gz",
                "amazon2023-reviews",
                f"{AMAZON2023_BASE}/review_categories/{cat}.jsonl.gz",
            ),
            FileSpec(
                "meta",
                f"meta_{cat}.jsonl.gz",
                "amazon2023-meta",
                f"{AMAZON2023_BASE}/meta_categories/meta_{cat}.jsonl.gz",
            ),
        ]
    if source == "bilibili":
        # PMMRec's layout (see stages/sources/bilibili.py): `name: bili_food` -> bilibili_food_users.tsv, ...
        from stages.sources import bilibili

        names = bilibili.pmmrec_files(cfg.get("name", "bili_food"))
        return [
            FileSpec("interactions", names["interactions"], bilibili.INTERACTIONS_FORMAT, None),
            FileSpec("items", names["items"], bilibili.ITEMS_FORMAT, None),
        ]
    if source == "mmrec":
        name = cfg.get("name")
        if not name:
            raise ParamsError("params.yaml: datasets.<ds>.name (the MMRec dataset name, e.g. baby) is required")
        return [
            FileSpec("interactions", f"{name}.inter", "mmrec-inter", None),
            FileSpec("user_map", MMREC_USER_MAP, "mmrec-map", None, optional=True),
            FileSpec("item_map", MMREC_ITEM_MAP, "mmrec-map", None, optional=True),
            FileSpec("image_feat", feature_file("image"), "npy", None, optional=True),
            FileSpec("text_feat", feature_file("text"), "npy", None, optional=True),
        ]
    if source == "lattice":
        return [
            FileSpec("train", "5-core/train.json", "lattice-split", None),
            FileSpec("valid", "5-core/val.json", "lattice-split", None),
            FileSpec("test", "5-core/test.json", "lattice-split", None),
            FileSpec("user_map", "user2id.json", "lattice-map", None, optional=True),
            FileSpec("item_map", "item2id.json", "lattice-map", None, optional=True),
            FileSpec("image_feat", feature_file("image"), "npy", None, optional=True),
            FileSpec("text_feat", feature_file("text"), "npy", None, optional=True),
        ]
    raise ParamsError(f"params.yaml: source {source!r} is not in the catalog (known: {', '.join(SOURCES)})")
