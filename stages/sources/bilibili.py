"""Readers for the Bilibili datasets of PMMRec (`bili_food`, `bili_movie`, `bili_cartoon`, ...).

The format, as PMMRec's own loading code reads it (https://github.com/ICDE24/PMMRec, `src/setup.py`,
`src/data_utils/tools.py` (`read_texts`, `read_images`, `read_behaviors_*`) and `src/data_utils/dataset.py`,
commit 1df8d1f20268c155fba7b8c16c53fb08b3d88b2e; the same Bilibili data as the NineRec suite,
https://github.com/anonymous-ninerec/NineRec, whose `get_behaviour.py` writes the sequence file):

* `bilibili_<name>_users.tsv` (PMMRec's `--behaviors`), no header, one line per user:
  `<user id>\\t<item id> <item id> ...`: the user's items separated by single spaces, oldest first (NineRec's
  `get_behaviour.py` sorts the (video, user, timestamp) pairs by timestamp before writing them). The times
  themselves are not in the file. PMMRec drops users with fewer than `min_seq_len` (3) items and keeps the
  last `max_seq_len + 3` of each sequence; the last item is test, the one before it valid.
* `bilibili_<name>_items_texts.tsv` (`--texts`), no header, one line per item: `<item id>\\t<title>`; the
  title is the video title (Chinese for Bilibili; PMMRec lower-cases it and feeds xlm-roberta-base). PMMRec
  also uses this file as the item list for images.
* `bilibili_<name>_items_images.lmdb` (`--lmdb_data`): the cover images, built by PMMRec's `lmdb_build.py`
  (named in its README but not published) from the downloaded cover files. Key: the item id without its `v`
  prefix, as an ASCII decimal string (`str(int(item_id.replace('v', '')))`); value: a pickled `LMDB_Image`
  object holding the raw decoded pixels (uint8 height x width x channels bytes, plus `size` and `channels`).
  Item ids are written `v<digits>` or plain digits.

How this project uses it:

* `read_interactions`: one row per (user, item) occurrence, `rating` 1.0 and `timestamp` = the 0-based
  position of the item in the user's sequence. Sequences carry order, not times, so positions stand in for
  times: ingest's chronological split then keeps the sequence order (the last items are valid/test, as in
  PMMRec) and its (user, item) de-duplication keeps the earliest position. Filtering is left to ingest's
  k-core (PMMRec's `min_seq_len` / `max_seq_len` truncation is a training choice, not part of the data).
* `iter_items`: `item_id` as written in the file (`v123` stays `v123`), `title` from the texts file; the
  format has no description, brand, categories or image URL (None).
* Cover images: the `images` stage looks for `raw/<ds>/images/<item_id>.<jpg|png|...>`, i.e. the cover files
  named by the same item id as the `.tsv` files. Where only PMMRec's LMDB is at hand,
  `extract_lmdb_covers` writes its covers there as PNG files (decoding PMMRec's pickles with a restricted
  unpickler that accepts only the `LMDB_Image` record, never arbitrary objects). There are no image URLs, so
  the images stage counts an absent cover as `no_url`.

Files may be plain or gzip, UTF-8 (a BOM is ignored, undecodable bytes are replaced). Malformed lines are
skipped and counted with their line numbers: a line without a tab, an empty user/item id or sequence, a
user or item given a second time (the first is kept).
"""

from __future__ import annotations

import gzip
import io
import pickle
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpipe.io import write_bytes
from mmpipe.log import get_logger
from stages.sources.malformed import Malformed
from stages.sources.source import FILE_KEYS, FileSpec, Source

log = get_logger("ingest")

USERS_FILE = "bilibili_{name}_users.tsv"
TEXTS_FILE = "bilibili_{name}_items_texts.tsv"
LMDB_FILE = "bilibili_{name}_items_images.lmdb"
INTERACTIONS_FORMAT = "bilibili-users"  # manifest format names for the ingest registry
ITEMS_FORMAT = "bilibili-texts"
COVERS_FORMAT = "pmmrec-image-lmdb"
DEFAULT_NAME = "bili_food"  # datasets.<ds>.name when a bilibili block gives none


def pmmrec_files(dataset: str) -> dict[str, str]:
    """PMMRec's file names for a Bilibili dataset folder: `bili_food` -> `bilibili_food_users.tsv`, ..."""
    name = dataset.removeprefix("bili_").removeprefix("bilibili_")
    return {
        "interactions": USERS_FILE.format(name=name),
        "items": TEXTS_FILE.format(name=name),
        "covers_lmdb": LMDB_FILE.format(name=name),
    }


_ITEM_ID = re.compile(r"v?(\d+)")


def _lines(path: Path) -> Iterator[str]:
    """Lines of a plain or gzip UTF-8 file, without line endings."""
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as fh:
        for line in fh:
            yield line.rstrip("\r\n")


def read_interactions(path: Path, bad: Malformed) -> pd.DataFrame:
    """`<user>\\t<item> <item> ...` lines -> user_id, item_id, rating (1.0), timestamp (position in sequence)."""
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    first_line: dict[str, int] = {}
    line_no = 0
    for line_no, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        user, sep, seq = line.partition("\t")
        user = user.strip()
        if not sep:
            bad.add(line_no, "no tab between the user id and the item sequence")
            continue
        if not user:
            bad.add(line_no, "empty user id")
            continue
        seq_items = seq.split()
        if not seq_items:
            bad.add(line_no, f"user {user!r} has an empty item sequence")
            continue
        if user in first_line:
            bad.add(line_no, f"user {user!r} already has a sequence at line {first_line[user]}; kept that one")
            continue
        first_line[user] = line_no
        users.extend([user] * len(seq_items))
        items.extend(seq_items)
        positions.extend(range(len(seq_items)))
    frame = pd.DataFrame(
        {
            "user_id": pd.array(users, dtype="string"),
            "item_id": pd.array(items, dtype="string"),
            "rating": np.ones(len(users), dtype=np.float32),
            "timestamp": np.asarray(positions, dtype=np.int64),
        }
    )
    frame.attrs["lines"] = line_no  # physical lines read, for ingest's counts
    return frame


def iter_items(path: Path, bad: Malformed, wanted: set[str] | None) -> Iterator[dict[str, Any]]:
    """`<item>\\t<title>` lines -> item records (only those in `wanted`, when given), first line per item."""
    seen: dict[str, int] = {}
    for line_no, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        item_id, sep, title = line.partition("\t")
        item_id = item_id.strip()
        if not sep:
            bad.add(line_no, "no tab between the item id and the title")
            continue
        if not item_id:
            bad.add(line_no, "empty item id")
            continue
        if item_id in seen:
            bad.add(line_no, f"item {item_id!r} already listed at line {seen[item_id]}; kept that one")
            continue
        seen[item_id] = line_no
        if wanted is not None and item_id not in wanted:
            continue
        yield {
            "item_id": item_id,
            "title": " ".join(title.split()) or None,
            "description": None,
            "brand": None,
            "categories": None,
            "image_url": None,
        }


def cover_key(item_id: str) -> bytes:
    """PMMRec's LMDB key of an item's cover: the digits of the id without its `v` prefix, as ASCII."""
    match = _ITEM_ID.fullmatch(item_id.strip())
    if match is None:
        raise ValueError(f"item id {item_id!r} is not 'v<digits>' or '<digits>', so it has no PMMRec cover key")
    return str(int(match.group(1))).encode("ascii")


class _Cover:
    """Stand-in for PMMRec's pickled `LMDB_Image`: only its attributes are restored, no code runs."""

    image: bytes
    size: tuple[int, int]
    channels: int

    def pixels(self) -> np.ndarray:
        height, width = (int(v) for v in self.size)
        return np.frombuffer(self.image, dtype=np.uint8).reshape(height, width, int(self.channels))


class _CoverUnpickler(pickle.Unpickler):
    """Resolves `LMDB_Image` (from whatever module pickled it) to `_Cover`; any other global is refused."""

    _ALLOWED = {  # what protocols 0-1 need besides the record (Python 2 module names included)
        ("copyreg", "_reconstructor"),
        ("copy_reg", "_reconstructor"),
        ("builtins", "object"),
        ("__builtin__", "object"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if name == "LMDB_Image":
            return _Cover
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in ("scalar", "dtype"):
            return super().find_class(module, name)  # a numpy scalar as LMDB_Image.id
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a PMMRec cover record")


def decode_cover(value: bytes) -> np.ndarray:
    """The uint8 pixel array (H x W x C) of one PMMRec LMDB value."""
    record = _CoverUnpickler(io.BytesIO(value)).load()
    if not isinstance(record, _Cover):
        raise ValueError(f"expected an LMDB_Image record, got {type(record).__name__}")
    return record.pixels()


def extract_lmdb_covers(lmdb_path: Path, item_ids: Iterable[str], out_dir: Path) -> dict[str, Any]:
    """Write each item's cover from PMMRec's LMDB as `out_dir/<item_id>.png`; count missing and corrupt ones."""
    from PIL import Image

    from mmpipe.lmdb_store import open_lmdb

    if not lmdb_path.exists():
        raise FileNotFoundError(f"{lmdb_path}: PMMRec cover LMDB not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Any] = {"written": 0, "missing": 0, "corrupt": 0, "first_problems": []}
    env = open_lmdb(lmdb_path, subdir=lmdb_path.is_dir(), readahead=False)
    try:
        with env.begin() as txn:
            for item_id in item_ids:
                try:
                    value = txn.get(cover_key(item_id))
                    if value is None:
                        counts["missing"] += 1
                        problem = "no cover in the LMDB"
                    else:
                        pixels = decode_cover(value)
                        mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(pixels.shape[2])
                        if mode is None:
                            raise ValueError(f"{pixels.shape[2]} channels")
                        img = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode=mode)
                        buf = io.BytesIO()
                        img.save(buf, format="PNG")
                        write_bytes(out_dir / f"{item_id}.png", buf.getvalue())
                        counts["written"] += 1
                        continue
                except (ValueError, pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
                    counts["corrupt"] += 1
                    problem = f"corrupt: {exc}"
                if len(counts["first_problems"]) < 20:
                    counts["first_problems"].append({"item_id": item_id, "reason": problem})
    finally:
        env.close()
    log.info(
        "%s: %d covers written to %s, %d missing, %d corrupt",
        lmdb_path.name, counts["written"], out_dir, counts["missing"], counts["corrupt"],
    )  # fmt: skip
    return counts


def bilibili_files(cfg: Mapping[str, Any]) -> list[FileSpec]:
    """PMMRec's layout: `name: bili_food` -> bilibili_food_users.tsv, bilibili_food_items_texts.tsv."""
    names = pmmrec_files(cfg.get("name") or DEFAULT_NAME)
    return [
        FileSpec("interactions", names["interactions"], INTERACTIONS_FORMAT, None),
        FileSpec("items", names["items"], ITEMS_FORMAT, None),
    ]


BILIBILI = Source(
    "bilibili",
    keys=(*FILE_KEYS, "name"),
    files=bilibili_files,
    review_readers={INTERACTIONS_FORMAT: read_interactions},  # user -> item sequence lines
    meta_readers={ITEMS_FORMAT: iter_items},  # item -> title lines
    no_direct_link="PMMRec's Bilibili data is shared through cloud drives, not direct links",
)
