"""The Amazon review and metadata releases (2014, 2018, 2023): where each keeps its fields.

One `ReviewSpec` per reviews format (the JSON keys of user, item, rating, time) and one item mapper
per meta format (the keys of title, description, brand, categories, image URL), with the `MetaSpec`
that tells the meta reader how to find an item's id on a line.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from stages.sources.fields import _first_url, clean_categories, clean_text
from stages.sources.meta_lines import MetaSpec
from stages.sources.records import ReviewSpec

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
