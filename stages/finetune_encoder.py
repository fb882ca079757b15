"""Stage `finetune_encoder`: fine-tune a CLIP-like image-text encoder on a dataset's own item image/text pairs.

LMM4Rec's "fine-tuned" paradigm: a pre-trained dual encoder (CLIP, SigLIP) knows web images and
captions, not this catalogue's product photos and titles. Training its top blocks with CLIP's symmetric
contrastive loss on the items that have both an image and a text aligns the two towers on the domain;
the features stage then encodes the items with the fine-tuned weights (`features.<set>.<modality>.model:
processed/<ds>/finetuned/encoder`), frozen, exactly as it does a downloaded model.

`python -m stages.finetune_encoder --dataset <ds>` reads the `finetune` block: the base model (hub name
or local directory, loaded with transformers' AutoModel), how many top blocks of each tower train
(`n_trainable_layers`; embeddings and lower blocks stay frozen), and the optimiser and early-stopping
settings. The pairs are split, seeded, into train and valid; the valid loss of the un-tuned model is
epoch 0, so a fine-tuning that never improves on it writes the original weights back. The best epoch's
model, tokenizer and image processor are written with `save_pretrained` to
`processed/<ds>/finetuned/encoder/` (byte-identical for the same params and inputs, so the DVC lock
hash is stable), and a summary to `processed/<ds>/finetune_stats.json`.
"""

from __future__ import annotations

import math
import stat
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mmpipe.config import ParamsError
from mmpipe.devices import autocast, resolve_device
from mmpipe.hf import CONFIG_FILE, freeze_below_top
from mmpipe.io import atomic_dir, write_json
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import PROCESSED, DatasetDir
from mmpipe.threads import use_threads
from models.core.dual_encoder import (
    TOWERS,
    ItemInputs,
    contrastive_loss,
    image_features,
    load_dual_encoder,
    pads_to_max_length,
    prepare_items,
    set_gradient_checkpointing,
    text_features,
)
from models.core.optim import adam
from models.core.trainer import EarlyStopping, Epoch, epoch_loop, state_on_cpu
from stages.common.finetune_params import FinetuneConfig, finetune_config, finetune_keys
from stages.common.params import run_stage

log = get_logger("finetune_encoder")


def param_keys(dataset: str) -> list[str]:
    return finetune_keys()


def split_pairs(pairs: np.ndarray, cfg: FinetuneConfig, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, valid) item indices; at least 2 pairs on each side (a batch needs a negative)."""
    n_valid = int(round(cfg.valid_ratio * len(pairs)))
    if n_valid < 2 or len(pairs) - n_valid < 2:
        raise ValueError(
            f"{dataset}: {len(pairs)} items with both an image and a text, split with finetune.valid_ratio = "
            f"{cfg.valid_ratio} into {len(pairs) - n_valid} train and {n_valid} valid pairs; fine-tuning needs "
            f"at least 2 of each"
        )
    order = np.random.default_rng(cfg.seed).permutation(len(pairs))
    return np.sort(pairs[order[n_valid:]]), np.sort(pairs[order[:n_valid]])


def train_batches(train: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches; a last batch of one pair (no negative) is dropped."""
    shuffled = train[rng.permutation(len(train))]
    batches = [shuffled[s : s + batch_size] for s in range(0, len(shuffled), batch_size)]
    return [b for b in batches if len(b) >= 2]


def valid_batches(valid: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Fixed batches; a last batch of one pair joins the one before it."""
    batches = [valid[s : s + batch_size] for s in range(0, len(valid), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def batch_loss(model: nn.Module, inputs: ItemInputs, items: np.ndarray, device: torch.device) -> torch.Tensor:
    ids, mask = inputs.text(items, device)
    return contrastive_loss(
        image_features(model, inputs.pixel_values(items, device)), text_features(model, ids, mask), model.logit_scale
    )


def valid_loss(
    model: nn.Module, inputs: ItemInputs, batches: list[np.ndarray], cfg: FinetuneConfig, device: torch.device
) -> float:
    """Mean contrastive loss over the valid batches (weighted by their sizes)."""
    model.eval()
    total = 0.0
    with torch.no_grad(), autocast(device, cfg.precision):
        for items in batches:
            total += float(batch_loss(model, inputs, items, device)) * len(items)
    return total / sum(len(b) for b in batches)


def run(dataset: str, params: dict[str, Any], processed: Path = PROCESSED) -> dict[str, Any]:
    start = time.perf_counter()
    cfg, allow_download = finetune_config(params)
    device = resolve_device(cfg.device, "finetune.device")
    threads = use_threads(cfg.num_threads)
    ds = DatasetDir.of(dataset, processed)
    progress = not progress_disabled()

    model, tokenizer, processor = load_dual_encoder(cfg.model, allow_download, key="finetune.model")
    try:  # before the images are decoded: a wrong layer count fails at once
        trainable, frozen = freeze_below_top(model, cfg.n_trainable_layers, towers=TOWERS, heads=True)
    except ValueError as exc:
        raise ParamsError(f"params.yaml: finetune.n_trainable_layers: {exc}") from None
    inputs = prepare_items(
        ds.items,
        ds.images,
        tokenizer,
        processor,
        cfg.template,
        cfg.max_tokens,
        cfg.workers,
        progress=progress,
        full_padding=pads_to_max_length(model),
    )
    has_pair = inputs.has_text & inputs.has_image
    no_text, no_image = int((~inputs.has_text).sum()), int((~inputs.has_image).sum())
    pairs = np.flatnonzero(has_pair)
    log.info(
        "%s: %d of %d items have an image and a text (%d without text, %d without image are left out)",
        dataset, len(pairs), inputs.n_items, no_text, no_image,
    )  # fmt: skip
    if len(pairs):
        train, valid = split_pairs(pairs, cfg, dataset)
    else:  # a one-modality dataset: the clip_ft features of its one modality are the base encoder's
        log.warning("%s: no item has both an image and a text: nothing to fine-tune on; base encoder written", dataset)
        train = valid = pairs

    torch.manual_seed(cfg.seed)
    set_gradient_checkpointing(model, cfg.gradient_checkpointing)
    model.to(device)
    params_to_train = [p for p in model.parameters() if p.requires_grad]
    optimizer = (
        adam(params_to_train, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled=True)
        if params_to_train and len(train)
        else None
    )
    rng = np.random.default_rng(cfg.seed)
    valid_b = valid_batches(valid, cfg.batch_size)

    stopping = EarlyStopping(cfg.patience, higher_is_better=False)
    untuned = valid_loss(model, inputs, valid_b, cfg, device) if len(valid) else math.nan
    stopping.update(untuned, 0)
    history: list[dict[str, Any]] = [{"epoch": 0, "train_loss": None, "valid_loss": _rounded(untuned), "seconds": 0.0}]
    log.info("%s: epoch 0 (un-tuned %s) valid loss %.4f", dataset, cfg.model, untuned)
    if optimizer is None and len(train):
        log.warning("%s: finetune.n_trainable_layers = 0 freezes every parameter: the base model is written", dataset)
    trained_pairs = 0

    def run_epoch(epoch: int) -> Epoch:
        nonlocal trained_pairs
        t0 = time.perf_counter()
        model.train()
        losses: list[float] = []
        batches = train_batches(train, cfg.batch_size, rng)
        for items in tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, cfg.precision):
                loss = batch_loss(model, inputs, items, device)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()) * len(items))
            trained_pairs += len(items)
        train_loss = sum(losses) / sum(len(b) for b in batches)
        seconds = time.perf_counter() - t0
        loss_v = valid_loss(model, inputs, valid_b, cfg, device)
        row = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "valid_loss": round(loss_v, 6),
            "seconds": round(seconds, 3),
        }
        return Epoch(row, loss_v, {"loss": loss_v})

    def on_epoch(epoch: int, result: Epoch, improved: bool) -> None:
        log.info(
            "%s: epoch %d train loss %.4f valid loss %.4f%s (%.1f s)",
            dataset, epoch, result.row["train_loss"], result.value, " *" if improved else "", result.row["seconds"],
        )  # fmt: skip

    epochs = cfg.epochs if optimizer is not None else 0
    tuned, best_state, _ = epoch_loop(
        epochs, stopping, run_epoch, lambda: state_on_cpu(model), log, "valid loss", progress, on_epoch=on_epoch
    )
    history += tuned
    train_seconds = sum(row["seconds"] for row in tuned)

    model.load_state_dict(best_state)
    model.to("cpu").eval()
    out = ds.finetuned_encoder
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        mode = stat.S_IMODE((tmp / CONFIG_FILE).stat().st_mode)  # open()'s mode under this umask
        for file in tmp.iterdir():
            file.chmod(mode)  # transformers 5 writes model.safetensors 0600; readable like every other output

    epochs_run = len(history) - 1
    summary = {
        "dataset": dataset,
        "base_model": cfg.model,
        "n_trainable_layers": cfg.n_trainable_layers,
        "trainable_params": trainable,
        "frozen_params": frozen,
        "items": inputs.n_items,
        "pairs": len(pairs),
        "dropped_no_text": no_text,
        "dropped_no_image": no_image,
        "dropped": int(inputs.n_items - len(pairs)),
        "train_pairs": len(train),
        "valid_pairs": len(valid),
        "best_epoch": stopping.best_epoch,
        "best_valid_loss": _rounded(stopping.best),
        "epochs_run": epochs_run,
        "history": history,
        "seconds_per_epoch": round(train_seconds / epochs_run, 4) if epochs_run else 0.0,
        "items_per_second": round(trained_pairs / train_seconds, 2) if train_seconds else 0.0,
        "device": str(device),
        "precision": cfg.precision,
        "num_threads": threads,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(ds.finetune_stats, summary)
    log.info(
        "%s: fine-tuned %s, best valid loss %.4f at epoch %d of %d (%.2f s/epoch, %.0f pairs/s); saved to %s",
        dataset, cfg.model, stopping.best, stopping.best_epoch, epochs_run, summary["seconds_per_epoch"],
        summary["items_per_second"], out,
    )  # fmt: skip
    return summary


def _rounded(loss: float) -> float | None:
    """A loss for the JSON report; None where there was nothing to compute it on."""
    return None if math.isnan(loss) else round(loss, 6)


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("dataset",), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
