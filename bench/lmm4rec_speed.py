"""LMM4Rec end-to-end training speed: items/s encoded with gradients, s/epoch per model, a ViT-B/32 projection.

1. On the demo (after `dvc repro`): for each of pipeline.e2e_models, builds the end-to-end model of the
   train stage (train.e2e's encoder, demo params) and times `--epochs` training epochs, printing s/epoch
   (the per-epoch feature table and the training steps, without validation) and the items/s the encoder
   handles with gradients in the steps and without in the table.
2. At real size: a randomly initialised CLIP with ViT-B/32's and its text tower's shapes (what
   `openai/clip-vit-base-patch32` loads into; the weights do not change the arithmetic), 224 px images
   and 77 tokens, top `--trainable` blocks per tower trainable; measures items/s forward+backward and
   forward only on this machine, then projects one end-to-end epoch on Amazon Baby (7,050 items,
   118,551 training interactions in MMRec's split, batch 2048, encoder_batch_size items per step) as
   steps x encoder_batch_size / (items/s with gradients) + 2 x 7,050 / (items/s without).

    python -m bench.lmm4rec_speed [--epochs 2] [--real-items 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import resource
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mmpipe.hf import freeze_below_top
from mmpipe.threads import use_threads
from models.core.dual_encoder import TOWERS, image_features, text_features
from models.core.trainer import fit
from profiles.apply import with_profile
from stages import train
from stages.common.run import build_model, load_data, run_spec

ROOT = Path(__file__).resolve().parents[1]
BABY_ITEMS, BABY_TRAIN, BATCH = 7050, 118_551, 2048  # MMRec's Baby split


def demo_epochs(params: dict, model: str, epochs: int) -> tuple[float, float, float]:
    """(s/epoch, items/s with gradients, items/s without) of `model` trained end to end on the demo, by the
    train stage's own loop (`fit`), its feature-table pass and its steps timed apart."""
    spec = run_spec("demo", model, "warm", "e2e", 2026, None, params)
    hp, cfg = train.training_config(spec, params)
    cfg = dataclasses.replace(cfg, epochs=epochs, eval_every=epochs, patience=epochs)
    data, split = load_data(spec)
    torch.manual_seed(cfg.seed)
    net = build_model(spec, data, hp, params).move_to(spec.device)
    table_seconds, grad_items = [], [0]
    start_epoch, loss = net.on_epoch_start, net.loss

    def timed_start(epoch: int, rng: np.random.Generator) -> None:
        start = time.perf_counter()
        start_epoch(epoch, rng)  # the feature table: every item encoded without gradients
        table_seconds.append(time.perf_counter() - start)

    def counted_loss(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        grad_items[0] += len(net.step_items(pos, neg))
        return loss(users, pos, neg)

    net.on_epoch_start, net.loss = timed_start, counted_loss
    result = fit(net, data, split.valid, cfg, logging.getLogger("bench"), progress=False)
    seconds = [row["train_seconds"] for row in result.history]  # an epoch: the table and the steps
    steps_seconds = sum(seconds) - sum(table_seconds)
    return float(np.mean(seconds)), grad_items[0] / steps_seconds, len(table_seconds) * net.n_items / sum(table_seconds)


def real_size_rates(n_items: int, trainable: int) -> tuple[float, float, float]:
    """(items/s forward+backward, items/s forward, peak RSS GiB of this process) of a ViT-B/32-sized CLIP,
    the image and the text of each item."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 32},
        projection_dim=512,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(config)
    freeze_below_top(model, trainable, towers=TOWERS, heads=True)
    pixels = torch.randn(n_items, 3, 224, 224)
    ids = torch.randint(0, config.text_config.vocab_size - 1, (n_items, 77))
    mask = torch.ones_like(ids)

    def step(grad: bool) -> float:
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            out = image_features(model, pixels).sum() + text_features(model, ids, mask).sum()
            if grad:
                out.backward()
        return time.perf_counter() - start

    step(True)  # warm-up
    return n_items / step(True), n_items / step(False), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--real-items", type=int, default=32, help="items per timed batch at real size")
    parser.add_argument("--trainable", type=int, default=1, help="top blocks per tower trained at real size")
    args = parser.parse_args(argv)
    logging.getLogger("mmpipe").setLevel(logging.WARNING)
    threads = use_threads(0)
    params = with_profile(yaml.safe_load((ROOT / "params.yaml").read_text()), "full")
    e2e = params["train"]["e2e"]
    print(f"torch threads: {threads}; encoder {e2e['model']}, top {e2e['n_trainable_layers']} blocks trained, "
          f"encoder_batch_size {e2e['encoder_batch_size']}")  # fmt: skip
    print(f"{'model':8s} {'s/epoch':>8s} {'items/s grad':>13s} {'items/s no grad':>16s}   (demo, {args.epochs} epochs; "
          "steps: items encoded with gradients per second of training steps; table: without)")  # fmt: skip
    for model in params["pipeline"]["e2e_models"]:
        s_epoch, grad_rate, nograd_rate = demo_epochs(params, model, args.epochs)
        print(f"{model:8s} {s_epoch:8.2f} {grad_rate:13.1f} {nograd_rate:16.1f}", flush=True)
    grad_rate, nograd_rate, peak_gib = real_size_rates(args.real_items, args.trainable)
    steps = math.ceil(BABY_TRAIN / BATCH)
    per_step = min(int(e2e["encoder_batch_size"]), BABY_ITEMS)
    projected = steps * per_step / grad_rate + 2 * BABY_ITEMS / nograd_rate
    print(f"ViT-B/32 + text tower at real size (random weights), top {args.trainable} blocks trained: "
          f"{grad_rate:.1f} items/s forward+backward, {nograd_rate:.1f} items/s forward; peak RSS {peak_gib:.2f} GiB "
          f"with {args.real_items} items a step")  # fmt: skip
    print(f"projected end-to-end epoch on Baby ({BABY_ITEMS} items, {steps} steps x {per_step} items encoded with "
          f"gradients + 2 x {BABY_ITEMS} without): {projected / 60:.1f} min/epoch on this machine's CPU")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
