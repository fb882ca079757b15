"""Stage `features`: encode every item's text or image into `features/<encoder>.parquet`, with an LMDB cache.

The cache (`features/<encoder>.lmdb`, `persist: true` in dvc.yaml) maps
sha256(encoder fingerprint, input content) -> float32 vector. A re-run after a k-core, split or
item-set change encodes only inputs it has not seen; a different model, weights or max tokens
changes the fingerprint and so re-encodes. Items without input (no text, no image) get the fill
chosen by `features.fill` (mean of the encoded items, or zeros) and `has_input = false`.

Encoders of kind `precomputed` encode nothing: they take the features a source ships with its raw
files (MMRec/LATTICE `image_feat.npy` / `text_feat.npy`, the Amazon 2014 `image_features_<Cat>.b`),
named by their role in `raw/<ds>/MANIFEST.json`, so published processed datasets enter the pipeline
with their own features.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from stages.common import lmdb_store
from stages.common.encoders import ENCODERS, ModelUnavailable
from stages.common.io import read_json, read_parquet, write_json, write_parquet
from stages.common.log import get_logger, progress_disabled
from stages.common.params import ParamsError, get, load_params, stage_args
from stages.common.threads import use_threads

log = get_logger("features")


def render_text(row: dict[str, Any], template: str) -> str:
    """Fill the text template from an item row; missing fields become empty, spaces collapse."""
    values = {
        key: (" ".join(value) if isinstance(value, list) else str(value)) if value else "" for key, value in row.items()
    }
    try:
        text = template.format_map(values)
    except KeyError as exc:
        raise ParamsError(
            f"params.yaml: features.text_template uses field {exc} that items.parquet does not have "
            f"(fields: {sorted(values)})"
        ) from None
    return " ".join(text.split())


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_key(fp: str, content: bytes) -> bytes:
    return hashlib.sha256(fp.encode() + b"\0" + hashlib.sha256(content).digest()).digest()


class ItemInputs:
    """Each item's input, by item_idx: rendered text or the item's JPEG in images.lmdb (or none).

    Images are not held in memory: their cache keys are computed in one pass over the LMDB, and the
    bytes of the ones to encode are read again chunk by chunk.
    """

    def __init__(self, modality: str, dataset_dir: Path, template: str, fp: str) -> None:
        items = read_parquet(dataset_dir / "items.parquet").to_pylist()
        self.modality = modality
        self.images = dataset_dir / "images.lmdb"
        self.texts: list[str | None] = []
        self.item_ids = [row["item_id"] for row in items]
        self.keys: list[bytes | None] = []
        if modality == "text":
            fields = [c for c in items[0] if c not in ("item_idx", "item_id")] if items else []
            self.texts = [render_text({k: row[k] for k in fields}, template) or None for row in items]
            self.keys = [cache_key(fp, t.encode("utf-8")) if t else None for t in self.texts]
        else:
            with lmdb_store.reading(self.images) as txn:
                for item_id in self.item_ids:
                    data = txn.get(item_id.encode("utf-8"))
                    self.keys.append(cache_key(fp, data) if data is not None else None)

    def fetch(self, indices: list[int]) -> list[str | bytes]:
        if self.modality == "text":
            return [self.texts[i] for i in indices]
        with lmdb_store.reading(self.images) as txn:
            return [txn.get(self.item_ids[i].encode("utf-8")) for i in indices]

    def size(self, i: int) -> int:
        """Batching order: text by length (similar lengths pad little); images keep item order."""
        return len(self.texts[i]) if self.modality == "text" else 0


def read_cached(cache_path: Path, keys: set[bytes]) -> dict[bytes, np.ndarray]:
    found: dict[bytes, np.ndarray] = {}
    if cache_path.is_file():
        with lmdb_store.reading(cache_path) as txn:
            for key in keys:
                value = txn.get(key)
                if value is not None:
                    found[key] = np.frombuffer(value, dtype="<f4")
    return found


AMAZON_CNN_DIM = 4096  # image_features_<Cat>.b: records of a 10-byte ASIN + 4096 little-endian float32


def read_amazon_image_features(path: Path, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stream the 2014 release's CNN features file, keeping the rows of our items (it covers far more)."""
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    matrix = np.zeros((len(item_ids), AMAZON_CNN_DIM), dtype=np.float32)
    found = np.zeros(len(item_ids), dtype=bool)
    record = 10 + 4 * AMAZON_CNN_DIM
    size = path.stat().st_size
    if size % record:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {record}-byte records (truncated download?)")
    with path.open("rb") as fh:
        for n in range(size // record):
            data = fh.read(record)
            asin = data[:10].decode("ascii", errors="replace").strip()
            i = index.get(asin)
            if i is not None and not found[i]:
                matrix[i] = np.frombuffer(data, dtype="<f4", offset=10)
                found[i] = True
            if n % 100_000 == 0 and n:
                log.info("%s: %d records read", path.name, n)
    return matrix, found


def run_precomputed(
    dataset: str, encoder: str, cfg: dict[str, Any], fill: str, raw_root: Path, out_root: Path
) -> dict[str, Any]:
    """Features a source ships: rows aligned to item_idx (npy) or keyed by ASIN (the 2014 .b file)."""
    from stages.sources import presplit

    start = time.perf_counter()
    role = cfg.get("role")
    if not role:
        raise ParamsError(f"params.yaml: features.{encoder}.role (the manifest role of the features file) is missing")
    raw_dir = raw_root / dataset
    manifest = read_json(raw_dir / "MANIFEST.json")
    entry = next((e for e in manifest.get("files", []) if e.get("role") == role), None)
    if entry is None:
        raise ValueError(
            f"{raw_dir / 'MANIFEST.json'}: no file with role '{role}' for precomputed encoder '{encoder}' "
            f"(dataset '{dataset}' does not ship these features; pick another encoder in pipeline.*_encoders)"
        )
    dataset_dir = out_root / dataset
    item_ids = read_parquet(dataset_dir / "items.parquet", columns=["item_id"])["item_id"].to_pylist()
    if entry.get("format") == "amazon2014-image-features":
        matrix, has_input = read_amazon_image_features(raw_dir / entry["path"], item_ids)
    else:
        # Checked there: a 2-D finite array with one row per item (row i = item i).
        matrix = presplit.precomputed_features(manifest, raw_dir, role.removesuffix("_feat"), n_items=len(item_ids))
        has_input = np.abs(matrix).sum(axis=1) > 0  # all-zero rows: the source had no input for the item
    if not has_input.any():
        raise ValueError(f"{raw_dir / entry['path']}: none of the {len(item_ids)} items has a feature row")
    fill_missing(matrix, has_input, fill)
    write_features_table(dataset_dir / "features" / f"{encoder}.parquet", matrix, has_input)
    cache_path = dataset_dir / "features" / f"{encoder}.lmdb"
    if not cache_path.exists():  # the stage's declared cache output; nothing is encoded, so it stays empty
        lmdb_store.write_store(cache_path, iter(()))
    stats = {
        "encoder": encoder,
        "kind": "precomputed",
        "source_file": entry["path"],
        "sha256": entry.get("sha256"),
        "dim": int(matrix.shape[1]),
        "items": len(item_ids),
        "with_input": int(has_input.sum()),
        "without_input": int((~has_input).sum()),
        "fill": fill,
        "encoded": 0,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(dataset_dir / "features" / f"{encoder}.json", stats)
    log.info(
        "%s/%s: %d items from %s (%d without a row, filled with %s), dim %d",
        dataset, encoder, len(item_ids), entry["path"], stats["without_input"], fill, stats["dim"],
    )  # fmt: skip
    return stats


def fill_missing(matrix: np.ndarray, has_input: np.ndarray, fill: str) -> None:
    """Rows of items without input, in place: the mean of the items with input (as MMRec), or zeros."""
    matrix[~has_input] = matrix[has_input].mean(axis=0) if fill == "mean" else 0.0


def write_features_table(path: Path, matrix: np.ndarray, has_input: np.ndarray) -> None:
    dim = int(matrix.shape[1])
    table = pa.table(
        {
            "item_idx": pa.array(np.arange(len(has_input), dtype=np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim),
            "has_input": pa.array(has_input),
        }
    )
    write_parquet(path, table)


def run(
    dataset: str,
    encoder: str,
    params: dict[str, Any],
    out_root: Path = Path("processed"),
    raw_root: Path = Path("raw"),
) -> dict[str, Any]:
    start = time.perf_counter()
    cfg = get(params, f"features.{encoder}")
    kind = cfg.get("kind", encoder)
    fill = get(params, "features.fill")
    if fill not in ("mean", "zero"):
        raise ParamsError(f"params.yaml: features.fill must be 'mean' or 'zero', got {fill!r}")
    if kind == "precomputed":
        return run_precomputed(dataset, encoder, cfg, fill, raw_root, out_root)
    if kind not in ENCODERS:
        raise ParamsError(
            f"params.yaml: features.{encoder}.kind = {kind!r}; known kinds: {sorted(ENCODERS)} and precomputed"
        )
    use_threads(get(params, "features.num_threads", 0))

    dataset_dir = out_root / dataset
    model = ENCODERS[kind](encoder, cfg, bool(get(params, "features.allow_download", False)))
    fp = fingerprint(model.fingerprint_parts)
    inputs = ItemInputs(model.modality, dataset_dir, str(get(params, "features.text_template")), fp)
    cache_path = dataset_dir / "features" / f"{encoder}.lmdb"
    vectors = read_cached(cache_path, {k for k in inputs.keys if k is not None})
    hits = sum(1 for k in inputs.keys if k is not None and k in vectors)

    # One item per distinct missing key (identical inputs are encoded once), in batching order.
    todo: dict[bytes, int] = {}
    for i, key in enumerate(inputs.keys):
        if key is not None and key not in vectors and key not in todo:
            todo[key] = i
    order = sorted(todo, key=lambda k: (inputs.size(todo[k]), todo[k]))
    encode_start = time.perf_counter()
    chunk = max(256, model.batch_size * 8)
    with tqdm(total=len(order), desc=f"features {encoder}", disable=progress_disabled()) as bar:
        for s in range(0, len(order), chunk):
            keys = order[s : s + chunk]
            emb = model.encode(inputs.fetch([todo[k] for k in keys]), progress=bar.update)
            for k, v in zip(keys, emb, strict=True):
                vectors[k] = np.ascontiguousarray(v, dtype="<f4")
    encode_seconds = time.perf_counter() - encode_start
    if order:
        lmdb_store.write_store(cache_path, ((k, vectors[k].tobytes()) for k in order), base=cache_path)

    has_input = np.array([k is not None for k in inputs.keys])
    if not has_input.any():
        raise ValueError(f"{dataset_dir}: no item has {model.modality} input; cannot build {encoder} features")
    present = np.stack([vectors[k] for k in inputs.keys if k is not None])
    matrix = np.zeros((len(has_input), present.shape[1]), dtype=np.float32)
    matrix[has_input] = present
    fill_missing(matrix, has_input, fill)
    dim = int(present.shape[1])
    write_features_table(dataset_dir / "features" / f"{encoder}.parquet", matrix, has_input)
    stats = {
        "encoder": encoder,
        "kind": kind,
        "model": str(cfg["model"]),
        "fingerprint": fp,
        "dim": dim,
        "items": len(has_input),
        "with_input": int(has_input.sum()),
        "without_input": int((~has_input).sum()),
        "fill": fill,
        "cache_hits": hits,
        "encoded": len(order),
        "cache_entries": lmdb_store.count(cache_path) if cache_path.is_file() else 0,
        "encode_items_per_s": round(len(order) / encode_seconds, 1) if order else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(dataset_dir / "features" / f"{encoder}.json", stats)
    log.info(
        "%s/%s: %d items (%d without input, filled with %s); cache: %d hits, %d misses encoded (%s items/s); "
        "dim %d, %.1f s",
        dataset, encoder, stats["items"], stats["without_input"], fill, hits, len(order),
        stats["encode_items_per_s"], dim, stats["seconds"],
    )  # fmt: skip
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = stage_args(__doc__.splitlines()[0], extra=[("--encoder", {"required": True})])
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    params = load_params(args.params)
    if not get(params, "features.allow_download", False):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        run(args.dataset, args.encoder, params)
    except ModelUnavailable as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
