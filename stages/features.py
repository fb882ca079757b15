"""Stage `features`: encode every item's text or image into `features/<set>/<modality>.parquet`, with a cache.

One stage per (dataset, feature set, modality); its encoder is the `features.<set>.<modality>` block
(see `stages/encoders/kinds.py`). A feature set (`pipeline.feature_sets`) is one choice of encoder per
modality (`pipeline.modalities`: one, two or more): the models and graphs read the folder
`features/<set>/`, so DVC re-runs exactly what depends on the encoders that changed.

The cache (`feature_cache/<set>-<modality>.lmdb`, `persist: true` in dvc.yaml) maps
sha256(encoder fingerprint, input content) -> float32 vector. A re-run after a k-core, split or item
change encodes only inputs it has not seen; a different model, weights, dtype or max tokens changes the
fingerprint and so re-encodes. While encoding, vectors are committed to a journal beside the cache every
`COMMIT_ITEMS` items or `COMMIT_SECONDS` seconds, so a stage killed after hours resumes where its last
commit stopped; at the end the journal is merged into the cache (bytes depend only on the content, so
an interrupted and an uninterrupted run give identical outputs). Items without input (no text, no
image) get the fill chosen by `features.fill` (mean of the encoded items, or zeros) and
`has_input = false`. Hits and misses are counted in items in `feature_stats/<set>-<modality>.json`.

An encoder's `model` may contain `{dataset}`, replaced by the stage's dataset: LMM4Rec's fine-tuned
paradigm names `processed/{dataset}/finetuned/encoder`, the `finetune_encoder` stage's output, whose
weights enter the fingerprint like any local model's (a new fine-tune re-encodes, an unchanged one hits).

`features.engine: ray` encodes the same chunks on Ray actors instead of in this process
(`stages/encoders/ray_engine.py`: a cluster from `features.ray.address` or RAY_ADDRESS, else a local
Ray); the cache, the journal and the output are the local engine's, and so are the bytes.

Kind `precomputed` encodes nothing: it takes the features a source ships (MMRec/LATTICE
`image_feat.npy` / `text_feat.npy`, the Amazon 2014 CNN features), which ingest wrote to
`shipped/<role>.parquet`, and applies the same fill.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mmpipe import lmdb_store
from mmpipe.devices import resolve_device
from mmpipe.io import read_parquet, write_json
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import PROCESSED, DatasetDir
from mmpipe.schemas import ITEM_FIELDS, item_text, read_features, write_features
from mmpipe.threads import use_threads
from stages.common.params import run_stage
from stages.encoders import ray_engine
from stages.encoders.features_block import DATASET_SLOT, FeaturesOptions, features_config, features_keys
from stages.encoders.kinds import ENCODERS, EncoderConfig

log = get_logger("features")

COMMIT_ITEMS = 2048  # encoded vectors per journal commit ...
COMMIT_SECONDS = 60.0  # ... or after this long, whichever comes first


def param_keys(dataset: str, feature_set: str, modality: str) -> list[str]:
    return features_keys(feature_set, modality)


def cache_key(fp: str, content: bytes) -> bytes:
    return hashlib.sha256(fp.encode() + b"\0" + hashlib.sha256(content).digest()).digest()


class EncoderInputs:
    """Each item's input, by item_idx: rendered text or the item's JPEG in images.lmdb (or none).

    Images are not held in memory: their cache keys are computed in one pass over the LMDB, and the
    bytes of the ones to encode are read again chunk by chunk.
    """

    def __init__(self, modality: str, ds: DatasetDir, template: str, fp: str) -> None:
        items = read_parquet(ds.items).to_pylist()
        self.modality = modality
        self.images = ds.images
        self.source = ds.images if modality == "image" else ds.items  # what errors name
        self.texts: list[str | None] = []
        self.item_ids = [row["item_id"] for row in items]
        self.keys: list[bytes | None] = []
        if modality == "text":
            self.texts = [item_text({k: row.get(k) for k in ITEM_FIELDS}, template) or None for row in items]
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


def encode_chunk(model: Any, inputs: EncoderInputs, indices: list[int], progress: Any) -> np.ndarray:
    """The vectors of the items at `indices`; an input the encoder cannot read (damaged image bytes) is an
    error naming the input file and the chunk's items."""
    try:
        return model.encode(inputs.fetch(indices), progress=progress)
    except ValueError as exc:
        items = ", ".join(inputs.item_ids[i] for i in indices[:5]) + (" ..." if len(indices) > 5 else "")
        raise ValueError(f"{inputs.source}: encoding items {items} failed: {exc}") from None


def read_cached(cache_path: Path, journal: lmdb_store.Journal, keys: set[bytes]) -> dict[bytes, np.ndarray]:
    """Vectors of `keys` found in the cache or in the journal an interrupted run left."""
    found: dict[bytes, np.ndarray] = {}
    if cache_path.is_file():
        with lmdb_store.reading(cache_path) as txn:
            for key in keys:
                value = txn.get(key)
                if value is not None:
                    found[key] = np.frombuffer(value, dtype="<f4")
    for key, value in journal.items():
        if key in keys and key not in found:
            found[key] = np.frombuffer(value, dtype="<f4")
    return found


def fill_missing(matrix: np.ndarray, has_input: np.ndarray, fill: str) -> None:
    """Rows of items without input, in place: the mean of the items with input (as MMRec), or zeros."""
    matrix[~has_input] = matrix[has_input].mean(axis=0) if fill == "mean" else 0.0


def run_precomputed(
    ds: DatasetDir, feature_set: str, modality: str, encoder: EncoderConfig, options: FeaturesOptions
) -> dict[str, Any]:
    """Features a source ships, as ingest wrote them (`shipped/<role>.parquet`), with the fill applied."""
    start = time.perf_counter()
    role = str(encoder.role)
    path = ds.shipped_features(role)
    if not path.is_file():
        shipped = sorted(p.stem for p in ds.shipped.glob("*.parquet")) if ds.shipped.is_dir() else []
        raise ValueError(
            f"{path}: dataset '{ds.name}' ships no features with role '{role}' (it ships: {shipped or 'none'}); "
            f"choose another encoder for features.{feature_set}.{modality}"
        )
    matrix, has_input = read_features(path)
    if not has_input.any():
        raise ValueError(f"{path}: none of the {len(has_input)} items has a feature row")
    fill_missing(matrix, has_input, options.fill)
    write_features(ds.features(feature_set, modality), matrix, has_input)
    cache_path = ds.feature_cache(feature_set, modality)
    if not cache_path.exists():  # the stage's declared cache output; nothing is encoded, so it stays empty
        lmdb_store.write_store(cache_path, iter(()))
    stats = {
        "feature_set": feature_set,
        "modality": modality,
        "kind": "precomputed",
        "source_file": str(path),
        "dim": int(matrix.shape[1]),
        "items": len(has_input),
        "with_input": int(has_input.sum()),
        "without_input": int((~has_input).sum()),
        "fill": options.fill,
        "cache_hits": 0,
        "encoded": 0,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(ds.feature_stats(feature_set, modality), stats)
    log.info(
        "%s/%s/%s: %d items from %s (%d without a row, filled with %s), dim %d",
        ds.name, feature_set, modality, len(has_input), path.name, stats["without_input"], options.fill, stats["dim"],
    )  # fmt: skip
    return stats


def encode_missing(
    model: Any,
    inputs: EncoderInputs,
    todo: dict[bytes, int],
    journal: lmdb_store.Journal,
    label: str,
    options: FeaturesOptions | None = None,
    fp: str = "",
) -> dict[bytes, np.ndarray]:
    """Encode one item per missing key, in batching order, committing to the journal as it goes.

    The work is cut into chunks (inputs fetched, images read, at a time); the local engine encodes them
    one after the other, the Ray engine on its actors, the same chunks with the same encoder code."""
    order = sorted(todo, key=lambda k: (inputs.size(todo[k]), todo[k]))
    out: dict[bytes, np.ndarray] = {}
    size = min(COMMIT_ITEMS, max(256, model.batch_size * 8))
    chunks = [order[s : s + size] for s in range(0, len(order), size)]
    pending: list[bytes] = []
    last_commit = time.perf_counter()
    with tqdm(total=len(order), desc=f"features {label}", disable=progress_disabled()) as bar:
        if options is not None and options.engine == "ray" and chunks:
            payloads = [inputs.fetch([todo[k] for k in keys]) for keys in chunks]
            results = ((chunks[i], emb) for i, emb in ray_engine.encode_chunks(model, payloads, options.ray, fp))
        else:
            results = ((keys, encode_chunk(model, inputs, [todo[k] for k in keys], bar.update)) for keys in chunks)
        for keys, emb in results:
            if options is not None and options.engine == "ray":
                bar.update(len(keys))
            for k, v in zip(keys, emb, strict=True):
                out[k] = np.ascontiguousarray(v, dtype="<f4")
            pending += keys
            if len(pending) >= COMMIT_ITEMS or time.perf_counter() - last_commit >= COMMIT_SECONDS:
                journal.add((k, out[k].tobytes()) for k in pending)
                pending, last_commit = [], time.perf_counter()
    if pending:
        journal.add((k, out[k].tobytes()) for k in pending)
    return out


def run(
    dataset: str, feature_set: str, modality: str, params: dict[str, Any], processed: Path = PROCESSED
) -> dict[str, Any]:
    start = time.perf_counter()
    encoder, options = features_config(params, feature_set, modality)
    if encoder.model and DATASET_SLOT in encoder.model:  # e.g. the dataset's fine-tuned encoder
        encoder = dataclasses.replace(encoder, model=encoder.model.replace(DATASET_SLOT, dataset))
    ds = DatasetDir.of(dataset, processed)
    if encoder.kind == "precomputed":
        return run_precomputed(ds, feature_set, modality, encoder, options)
    if not options.allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub when transformers is imported
    use_threads(options.num_threads)
    label = f"{dataset}/{feature_set}/{modality}"
    name = f"features.{feature_set}.{modality}"
    device = resolve_device(options.device, "features.device")
    model = ENCODERS[encoder.kind](name, encoder, options.allow_download, device)
    fp = model.fingerprint
    inputs = EncoderInputs(model.modality, ds, encoder.template, fp)
    cache_path = ds.feature_cache(feature_set, modality)
    journal = lmdb_store.Journal(cache_path.with_name(cache_path.name + ".journal"))
    wanted = {k for k in inputs.keys if k is not None}
    vectors = read_cached(cache_path, journal, wanted)
    resumed = len(journal)

    todo: dict[bytes, int] = {}  # one item per distinct missing key: identical inputs are encoded once
    for i, key in enumerate(inputs.keys):
        if key is not None and key not in vectors and key not in todo:
            todo[key] = i
    encode_start = time.perf_counter()
    vectors.update(encode_missing(model, inputs, todo, journal, label, options, fp))
    encode_seconds = time.perf_counter() - encode_start
    journal_entries = journal.items()
    if journal_entries or not cache_path.exists():
        lmdb_store.write_store(cache_path, journal_entries, base=cache_path)
    journal.remove()

    has_input = np.array([k is not None for k in inputs.keys])
    if not has_input.any():
        raise ValueError(f"{ds.items}: no item has {model.modality} input; cannot build {name}")
    present = np.stack([vectors[k] for k in inputs.keys if k is not None])
    matrix = np.zeros((len(has_input), present.shape[1]), dtype=np.float32)
    matrix[has_input] = present
    fill_missing(matrix, has_input, options.fill)
    write_features(ds.features(feature_set, modality), matrix, has_input)
    missing_keys = set(todo)
    encoded_items = sum(1 for k in inputs.keys if k is not None and k in missing_keys)
    stats = {
        "feature_set": feature_set,
        "modality": modality,
        "kind": encoder.kind,
        "model": str(encoder.model),
        "fingerprint": fp,
        "dim": int(present.shape[1]),
        "items": len(has_input),
        "with_input": int(has_input.sum()),
        "without_input": int((~has_input).sum()),
        "fill": options.fill,
        "cache_hits": int(has_input.sum()) - encoded_items,  # items whose vector came from the cache
        "encoded": encoded_items,  # items whose vector was computed in this run
        "distinct_inputs_encoded": len(todo),
        "resumed_from_journal": resumed,
        "cache_entries": lmdb_store.count(cache_path),
        "encode_items_per_s": round(len(todo) / encode_seconds, 1) if todo else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(ds.feature_stats(feature_set, modality), stats)
    rate = f"{stats['encode_items_per_s']} items/s" if todo else "nothing to encode"
    log.info(
        "%s: %d items (%d without input, filled with %s); cache: %d items hit, %d encoded (%s%s); dim %d, %.1f s",
        label, stats["items"], stats["without_input"], options.fill, stats["cache_hits"], encoded_items, rate,
        f", {resumed} resumed from an interrupted run" if resumed else "", stats["dim"], stats["seconds"],
    )  # fmt: skip
    return stats


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_stage(__doc__, run, ("dataset", "feature_set", "modality"), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
