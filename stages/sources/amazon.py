"""The Amazon review and metadata releases (2014, 2018, 2023): their files and where each keeps its fields.

One `ReviewSpec` per reviews format (the JSON keys of user, item, rating, time) and one item mapper
per meta format (the keys of title, description, brand, categories, image URL), with the `MetaSpec`
that tells the meta reader how to find an item's id on a line; one `Source` per release (its
per-category files and URLs, its readers).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from mmpipe.config import ParamsError
from stages.sources.fields import _first_url, clean_categories, clean_text
from stages.sources.meta_lines import MetaSpec, _meta_reader
from stages.sources.records import ReviewSpec, _reviews_reader
from stages.sources.source import FILE_KEYS, FileSpec, Source

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

AMAZON2014_REVIEWS = ReviewSpec("reviewerID", "asin", "overall", "unixReviewTime")
AMAZON2018_REVIEWS = AMAZON2014_REVIEWS
AMAZON2023_REVIEWS = ReviewSpec("user_id", "parent_asin", "rating", "timestamp", time_divisor=1000)

# --------------------------------------------------------------------------------------------------- meta


def _amazon2014_item(rec: dict[str, Any], fix: Counter) -> dict[str, Any]:
    return {
        "title": clean_text(rec.get("title"), fix),
        "description": clean_text(rec.get("description"), fix),
        "brand": clean_text(rec.get("brand"), fix),
        "categories": clean_categories(rec.get("categories"), fix),
        "image_url": clean_text(rec.get("imUrl"), fix),
    }


# Amazon image URLs carry size modifiers before the extension (`/images/I/317ZQtCvFzL._SX38_SY50_.jpg`);
# without them the image server returns the original picture.
_SIZE_MODIFIERS = re.compile(r"^(https?://[^?#]*/images/I/[^/.]+)\.[^/]*_\.(jpe?g|png|gif)$", re.IGNORECASE)


def full_size(url: str | None) -> str | None:
    """The original-size image for an Amazon image URL with size modifiers; other URLs unchanged."""
    if not url:
        return url
    match = _SIZE_MODIFIERS.match(url)
    return f"{match.group(1)}.{match.group(2)}" if match else url


def _amazon2018_item(rec: dict[str, Any], fix: Counter) -> dict[str, Any]:
    # The releases keep image URLs in different fields by category: imageURLHighRes (large) and imageURL,
    # or only `image` (38x50 thumbnails, e.g. Gift Cards, Magazine Subscriptions): the largest is kept.
    image = _first_url(rec.get("imageURLHighRes")) or _first_url(rec.get("imageURL")) or _first_url(rec.get("image"))
    return {
        "title": clean_text(rec.get("title"), fix),
        "description": clean_text(rec.get("description"), fix) or clean_text(rec.get("feature"), fix),
        "brand": clean_text(rec.get("brand"), fix),
        "categories": clean_categories(rec.get("category"), fix),
        "image_url": full_size(image),
    }


def _image_2023(images: Any) -> str | None:
    """The MAIN image's hi_res, else its large, else the same from the other images, else any thumb."""
    if isinstance(images, dict):  # the column-wise form some converted copies use: {hi_res: [...], ...}
        keys = [k for k in ("hi_res", "large", "thumb", "variant") if isinstance(images.get(k), list)]
        n = max((len(images[k]) for k in keys), default=0)
        images = [{k: images[k][i] if i < len(images[k]) else None for k in keys} for i in range(n)]
    if not isinstance(images, list):
        return None
    entries = [im for im in images if isinstance(im, dict)]
    ordered = [im for im in entries if im.get("variant") == "MAIN"] + [
        im for im in entries if im.get("variant") != "MAIN"
    ]
    for keys in (("hi_res", "large"), ("thumb",)):
        for im in ordered:
            for key in keys:
                url = _first_url(im.get(key))
                if url:
                    return url
    return None


def _amazon2023_item(rec: dict[str, Any], fix: Counter) -> dict[str, Any]:
    categories = clean_categories(rec.get("categories"), fix)
    if categories is None and rec.get("main_category"):
        categories = clean_categories([rec.get("main_category")], fix)
    return {
        "title": clean_text(rec.get("title"), fix),
        "description": clean_text(rec.get("description"), fix) or clean_text(rec.get("features"), fix),
        "brand": clean_text(rec.get("store"), fix),
        "categories": categories,
        "image_url": _image_2023(rec.get("images")),
    }


AMAZON2014_META = MetaSpec("asin", b"'\"", _amazon2014_item)
AMAZON2018_META = MetaSpec("asin", b'"', _amazon2018_item)
AMAZON2023_META = MetaSpec("parent_asin", b'"', _amazon2023_item)


# --------------------------------------------------------------------------------------------------- files


def _category(source: str, cfg: Mapping[str, Any], known: tuple[str, ...]) -> str:
    category = cfg.get("category")
    if not category:
        raise ParamsError(f"params.yaml: datasets.<ds>.category is required for source {source!r}")
    if category not in known and not cfg.get("urls"):
        raise ParamsError(
            f"params.yaml: category {category!r} has no per-category file in {source} (known: {', '.join(known)}); "
            f"check the spelling, or give the files' URLs under datasets.<ds>.urls"
        )
    return category


def amazon2014_files(cfg: Mapping[str, Any]) -> list[FileSpec]:
    cat = _category("amazon2014", cfg, AMAZON2014_CATEGORIES)
    return [
        FileSpec(
            "reviews", f"reviews_{cat}_5.json.gz", "amazon2014-reviews", f"{AMAZON2014_BASE}/reviews_{cat}_5.json.gz"
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


def amazon2018_files(cfg: Mapping[str, Any]) -> list[FileSpec]:
    cat = _category("amazon2018", cfg, AMAZON2018_CATEGORIES)
    return [
        FileSpec(
            "reviews", f"{cat}_5.json.gz", "amazon2018-reviews", f"{AMAZON2018_BASE}/categoryFilesSmall/{cat}_5.json.gz"
        ),
        FileSpec("meta", f"meta_{cat}.json.gz", "amazon2018-meta", f"{AMAZON2018_BASE}/metaFiles2/meta_{cat}.json.gz"),
    ]


def amazon2023_files(cfg: Mapping[str, Any]) -> list[FileSpec]:
    cat = _category("amazon2023", cfg, AMAZON2023_CATEGORIES)
    return [
        FileSpec(
            "reviews", f"{cat}.jsonl.gz", "amazon2023-reviews", f"{AMAZON2023_BASE}/review_categories/{cat}.jsonl.gz"
        ),
        FileSpec(
            "meta", f"meta_{cat}.jsonl.gz", "amazon2023-meta", f"{AMAZON2023_BASE}/meta_categories/meta_{cat}.jsonl.gz"
        ),
    ]


AMAZON2014 = Source(
    "amazon2014",
    keys=(*FILE_KEYS, "category", "image_features"),
    files=amazon2014_files,
    review_readers={"amazon2014-reviews": _reviews_reader(AMAZON2014_REVIEWS)},
    meta_readers={"amazon2014-meta": _meta_reader(AMAZON2014_META)},
)
AMAZON2018 = Source(
    "amazon2018",
    keys=(*FILE_KEYS, "category"),
    files=amazon2018_files,
    review_readers={"amazon2018-reviews": _reviews_reader(AMAZON2018_REVIEWS)},
    meta_readers={"amazon2018-meta": _meta_reader(AMAZON2018_META)},
)
AMAZON2023 = Source(
    "amazon2023",
    keys=(*FILE_KEYS, "category"),
    files=amazon2023_files,
    review_readers={"amazon2023-reviews": _reviews_reader(AMAZON2023_REVIEWS)},
    meta_readers={"amazon2023-meta": _meta_reader(AMAZON2023_META)},
)
