"""The embedded demo dataset: synthetic raw files in the Amazon 2014 formats, deterministic from a seed.

No real dataset can be downloaded offline, so this generator writes what the `amazon2014` source
would give: a gzip JSON-lines reviews file, a gzip meta file with one Python-literal dict per line,
and one JPEG per product. It plants structure a multimodal model can find:

* every item belongs to a latent category; the category shows in the title/description words and
  in the image (background colour and shape);
* users prefer a few categories; item popularity is heavy-tailed; each user's timestamps increase;
* some items lack an image, a description or any metadata, some JPEGs are corrupt, and a few lines
  are malformed or duplicated, so the robust paths of ingest/images/features run on every repro.
"""

from __future__ import annotations

import gzip
import io
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from stages.sources.source import Source

REVIEWS_FILE = "reviews_Demo_5.json.gz"
META_FILE = "meta_Demo.json.gz"
IMAGES_DIR = "images"
IMAGE_URL = "http://demo.invalid/images/I/{asin}.jpg"


@dataclass(frozen=True)
class Category:
    name: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    color: tuple[int, int, int]
    shape: str


CATEGORIES: tuple[Category, ...] = (
    Category(
        "Strollers",
        ("stroller", "pram", "jogger", "pushchair"),
        ("foldable", "lightweight", "all-terrain"),
        (200, 40, 40),
        "circle",
    ),
    Category(
        "Car Seats",
        ("car seat", "booster", "infant seat", "seat base"),
        ("rear-facing", "padded", "crash-tested"),
        (40, 40, 200),
        "square",
    ),
    Category(
        "Feeding",
        ("bottle", "nipple", "sippy cup", "bib"),
        ("anti-colic", "bpa-free", "spill-proof"),
        (40, 170, 60),
        "triangle",
    ),
    Category(
        "Diapering",
        ("diaper", "wipes", "changing pad", "diaper bag"),
        ("hypoallergenic", "absorbent", "scented"),
        (230, 200, 40),
        "stripes",
    ),
    Category(
        "Nursery",
        ("crib", "mobile", "night light", "bassinet"),
        ("convertible", "glowing", "wooden"),
        (150, 60, 190),
        "ring",
    ),
    Category(
        "Toys",
        ("rattle", "teether", "play mat", "stacking rings"),
        ("colorful", "musical", "soft"),
        (240, 130, 30),
        "cross",
    ),
    Category(
        "Bathing",
        ("bath tub", "hooded towel", "bath toy", "wash cloth"),
        ("non-slip", "quick-dry", "floating"),
        (30, 190, 200),
        "circle",
    ),
    Category(
        "Safety",
        ("baby gate", "outlet cover", "monitor", "cabinet lock"),
        ("childproof", "wireless", "secure"),
        (110, 110, 110),
        "square",
    ),
    Category(
        "Clothing",
        ("onesie", "sleeper", "mittens", "beanie"),
        ("organic cotton", "snap-front", "cozy"),
        (240, 150, 190),
        "triangle",
    ),
    Category(
        "Health",
        ("thermometer", "nasal aspirator", "grooming kit", "gum massager"),
        ("digital", "gentle", "accurate"),
        (120, 200, 120),
        "stripes",
    ),
    Category(
        "Carriers",
        ("baby carrier", "sling", "wrap", "hip seat"),
        ("ergonomic", "breathable", "adjustable"),
        (140, 90, 40),
        "ring",
    ),
    Category(
        "Activity",
        ("bouncer", "swing", "walker", "activity gym"),
        ("vibrating", "portable", "interactive"),
        (90, 60, 160),
        "cross",
    ),
)

# Categories only a demo that names them uses (`datasets.<ds>.categories`): a second demo domain shares
# some categories with the default one and has some of its own, so what is learned on one transfers to
# the other in part. The default demo (all of CATEGORIES) is unchanged by them.
EXTRA_CATEGORIES: tuple[Category, ...] = (
    Category(
        "Books",
        ("board book", "picture book", "cloth book", "lullaby book"),
        ("illustrated", "rhyming", "touch-and-feel"),
        (200, 120, 80),
        "square",
    ),
    Category(
        "Outdoor",
        ("sun hat", "splash pad", "sandbox", "wagon"),
        ("waterproof", "uv-blocking", "sturdy"),
        (60, 140, 60),
        "triangle",
    ),
    Category(
        "Travel",
        ("travel cot", "car mirror", "stroller fan", "diaper backpack"),
        ("compact", "clip-on", "packable"),
        (70, 110, 180),
        "ring",
    ),
    Category(
        "Keepsakes",
        ("photo frame", "handprint kit", "memory box", "milestone cards"),
        ("personalized", "engraved", "heirloom"),
        (210, 180, 140),
        "cross",
    ),
)

GENERIC_WORDS = ("baby", "infant", "toddler", "newborn", "premium", "classic", "value pack", "deluxe", "essential")
BRANDS = (
    "Sunbeam Kids",
    "Little Oak",
    "Nestly",
    "Babbo",
    "Cuddle Co",
    "Tiny Steps",
    "Moonpie",
    "Bloom & Co",
    "Pebble",
    "Hushaby",
    "Kindred",
    "Wawa Baby",
)
FILLER = (
    "Great for everyday use.",
    "Easy to clean.",
    "Parents love it.",
    "Makes a wonderful gift.",
    "Designed with safety in mind.",
    "Comes in a reusable box.",
    "Tested by families.",
)
REVIEW_LINES = (
    "Works as described.",
    "My little one loves it.",
    "Good quality for the price.",
    "Would buy again.",
    "Not bad, a bit smaller than expected.",
    "Arrived quickly.",
)


def categories_of(cfg: dict[str, Any]) -> tuple[Category, ...]:
    """The categories a demo draws from: all of CATEGORIES, or those `cfg["categories"]` names."""
    names = cfg.get("categories")
    if not names:
        return CATEGORIES
    known = {c.name: c for c in (*CATEGORIES, *EXTRA_CATEGORIES)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"demo categories {unknown} unknown; known: {', '.join(known)}")
    return tuple(known[n] for n in names)


def vocabulary_texts() -> list[str]:
    """Every phrase the generator can write, to train the demo CLIP's tokenizer on."""
    texts = [" ".join((c.name, *c.nouns, *c.adjectives)) for c in CATEGORIES]
    return texts + list(GENERIC_WORDS) + list(BRANDS) + list(FILLER) + list(REVIEW_LINES)


def _ids(rng: np.random.Generator, n: int, prefix: str, length: int) -> list[str]:
    alphabet = np.array(list(string.ascii_uppercase + string.digits))
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        s = prefix + "".join(rng.choice(alphabet, length))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _draw_image(rng: np.random.Generator, cat: Category) -> bytes:
    """A product photo stand-in: category colour and shape, item-specific accent, noise."""
    w, h = 160, 120
    base = np.clip(np.array(cat.color) + rng.normal(0, 18, 3), 0, 255).astype(int)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in (base * 0.35 + 160).clip(0, 255)))
    draw = ImageDraw.Draw(img)
    fg = tuple(int(c) for c in base)
    cx, cy = w // 2 + int(rng.integers(-12, 13)), h // 2 + int(rng.integers(-10, 11))
    r = int(rng.integers(28, 42))
    if cat.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif cat.shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif cat.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif cat.shape == "stripes":
        for x in range(0, w, 20):
            draw.rectangle([x, 0, x + 9, h], fill=fg)
    elif cat.shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=10)
    else:  # cross
        draw.rectangle([cx - r, cy - 8, cx + r, cy + 8], fill=fg)
        draw.rectangle([cx - 8, cy - r, cx + 8, cy + r], fill=fg)
    accent = tuple(int(c) for c in rng.integers(0, 256, 3))
    ax, ay = int(rng.integers(5, w - 25)), int(rng.integers(5, h - 25))
    draw.rectangle([ax, ay, ax + 16, ay + 16], fill=accent)
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=85)
    return out.getvalue()


def _item_text(rng: np.random.Generator, cat: Category, brand: str) -> tuple[str, str]:
    noun = str(rng.choice(cat.nouns))
    adj = str(rng.choice(cat.adjectives))
    title = f"{brand} {adj.title()} {noun.title()} - {rng.choice(GENERIC_WORDS)}"
    other = str(rng.choice([a for a in cat.adjectives if a != adj] or [adj]))
    desc = (
        f"This {adj} {noun} is {other} and made for your {rng.choice(GENERIC_WORDS)}. "
        f"A must-have in {cat.name.lower()}. {rng.choice(FILLER)} {rng.choice(FILLER)}"
    )
    return title, desc


def generate(out_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Write the demo raw files into `out_dir`; return counts of what was planted (for the manifest)."""
    seed = int(cfg.get("seed", 0))
    n_users = int(cfg["n_users"])
    n_items = int(cfg["n_items"])
    mean_len = float(cfg.get("mean_interactions", 12.0))
    rng = np.random.default_rng(seed)
    CATEGORIES = categories_of(cfg)  # noqa: N806 (the module's tuple, or the chosen ones)

    # Items: category (skewed sizes), heavy-tailed popularity, text and image.
    cat_weights = rng.dirichlet(np.full(len(CATEGORIES), 3.0))
    item_cat = rng.choice(len(CATEGORIES), size=n_items, p=cat_weights)
    popularity = rng.lognormal(0.0, float(cfg.get("popularity_sigma", 1.0)), n_items)
    asins = _ids(rng, n_items, "B00", 7)
    users = _ids(rng, n_users, "A", 13)

    by_cat = [np.flatnonzero(item_cat == c) for c in range(len(CATEGORIES))]
    cat_prob = [popularity[idx] / popularity[idx].sum() for idx in by_cat]
    global_prob = popularity / popularity.sum()

    # Robustness cases, chosen deterministically from the seed.
    n_missing_meta = max(1, n_items // 500)
    n_no_image = max(2, n_items // 25)
    n_corrupt = max(1, n_items // 500)
    perm = rng.permutation(n_items)
    no_meta = set(perm[:n_missing_meta].tolist())
    no_image = set(perm[n_missing_meta : n_missing_meta + n_no_image].tolist())
    corrupt = set(perm[n_missing_meta + n_no_image : n_missing_meta + n_no_image + n_corrupt].tolist())
    no_desc = set(rng.choice(n_items, size=max(1, n_items // 12), replace=False).tolist()) - no_meta

    images_dir = out_dir / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    meta_lines: list[str] = []
    for i in range(n_items):
        cat = CATEGORIES[item_cat[i]]
        brand = BRANDS[int(rng.integers(len(BRANDS)))]
        title, desc = _item_text(rng, cat, brand)
        image = _draw_image(rng, cat)
        if i in no_meta:
            continue
        record: dict[str, Any] = {
            "asin": asins[i],
            "title": title,
            "price": round(float(rng.uniform(4, 120)), 2),
            "imUrl": IMAGE_URL.format(asin=asins[i]),
            "brand": brand,
            "categories": [["Baby", cat.name, str(rng.choice(cat.nouns)).title()]],
            "salesRank": {"Baby": int(rng.integers(1, 200000))},
        }
        if i not in no_desc:
            record["description"] = desc
        meta_lines.append(repr(record))  # Python literal, as the real 2014 meta files are
        if i in corrupt:
            (images_dir / f"{asins[i]}.jpg").write_bytes(image[: len(image) // 3])  # truncated JPEG
        elif i not in no_image:
            (images_dir / f"{asins[i]}.jpg").write_bytes(image)

    # Users: a few preferred categories, a chronological sequence of picks.
    review_lines: list[str] = []
    start = 1262304000  # 2010-01-01
    for u, uid in enumerate(users):
        k = int(rng.integers(1, 4))
        prefs = rng.choice(len(CATEGORIES), size=k, replace=False, p=cat_weights)
        pref_w = rng.dirichlet(np.ones(k))
        length = 3 + int(rng.geometric(1.0 / max(mean_len - 2.0, 1.0)))
        length = min(length, n_items // 2)
        chosen: set[int] = set()
        t = start + int(rng.integers(0, 3 * 365 * 86400))
        for _ in range(length * 3):
            if len(chosen) >= length:
                break
            if rng.random() < float(cfg.get("preference_strength", 0.85)):
                c = prefs[rng.choice(k, p=pref_w)]
                item = int(by_cat[c][rng.choice(len(by_cat[c]), p=cat_prob[c])]) if len(by_cat[c]) else 0
            else:
                item = int(rng.choice(n_items, p=global_prob))
            if item in chosen:
                continue
            chosen.add(item)
            t += int(rng.exponential(20 * 86400)) + 3600
            liked = item_cat[item] in prefs
            rating = float(rng.choice([4, 5], p=[0.4, 0.6]) if liked else rng.choice([1, 2, 3, 4, 5]))
            cat = CATEGORIES[item_cat[item]]
            rec = {
                "reviewerID": uid,
                "asin": asins[item],
                "reviewerName": f"Parent {u}",
                "helpful": [int(rng.integers(0, 5)), int(rng.integers(5, 10))],
                "reviewText": f"{rng.choice(REVIEW_LINES)} The {rng.choice(cat.nouns)} fits our needs.",
                "overall": rating,
                "summary": str(rng.choice(REVIEW_LINES)),
                "unixReviewTime": t,
                "reviewTime": "",
            }
            review_lines.append(json.dumps(rec))

    # Duplicates and malformed lines, at fixed positions.
    n_dup = max(2, len(review_lines) // 2000)
    for j in rng.choice(len(review_lines), size=n_dup, replace=False):
        review_lines.insert(int(j) + 1, review_lines[int(j)])  # exact duplicate line
    for j in rng.choice(len(review_lines), size=n_dup, replace=False):
        again = json.loads(review_lines[int(j)])  # the same user reviews the same item later
        again["unixReviewTime"] += 86400 * int(rng.integers(30, 300))
        again["overall"] = 5.0
        review_lines.append(json.dumps(again))
    malformed_reviews = [
        '{"reviewerID": "ATRUNCATED", "asin": "B00TRUNC", "overall": 5.0, "unixReview',
        "this line is not JSON at all",
        json.dumps({"reviewerID": users[0], "overall": 3.0, "unixReviewTime": start}),  # no asin
    ]
    for k, bad in enumerate(malformed_reviews):
        review_lines.insert((k + 1) * len(review_lines) // (len(malformed_reviews) + 1), bad)
    malformed_meta = ["{'asin': 'B00BROKEN1', 'title': 'Half a record", "<html>502 Bad Gateway</html>"]
    for k, bad in enumerate(malformed_meta):
        meta_lines.insert((k + 1) * len(meta_lines) // (len(malformed_meta) + 1), bad)

    _write_gzip_lines(out_dir / REVIEWS_FILE, review_lines)
    _write_gzip_lines(out_dir / META_FILE, meta_lines)
    return {
        "users": n_users,
        "items": n_items,
        "review_lines": len(review_lines),
        "meta_lines": len(meta_lines),
        "planted": {
            "malformed_review_lines": len(malformed_reviews),
            "malformed_meta_lines": len(malformed_meta),
            "duplicate_review_lines": int(n_dup),
            "repeated_user_item_pairs": int(n_dup),
            "items_without_meta": len(no_meta),
            "items_without_image": len(no_image),
            "corrupt_images": len(corrupt),
            "items_without_description": len(no_desc),
        },
        "item_category": {asins[i]: CATEGORIES[item_cat[i]].name for i in range(n_items)},
    }


def _write_gzip_lines(path: Path, lines: list[str]) -> None:
    # mtime=0 keeps the gzip header free of the wall-clock time: same seed, same bytes.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for line in lines:
            gz.write(line.encode("utf-8") + b"\n")


# generated offline by the download stage (no files to fetch); its params are the generator's
DEMO = Source(
    "demo",
    keys=("seed", "n_users", "n_items", "mean_interactions", "popularity_sigma", "preference_strength", "categories"),
)
