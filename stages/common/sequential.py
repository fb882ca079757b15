"""What the `pretrain` and `transfer` stages share for any model of the sequential family (`reads =
"seq"`, models/seq/base.py; PMMRec is one): its params, a dataset's sequences and the item content its
tower reads, and the files a sequential run writes.

Params: `train.<model>` (the model's HParams, declared in models/<model>.py), `seq.train` (the training
protocol, `SeqTrainConfig`), `seq.pretrain` (its changes for pre-training), `seq.variants.<name>` (a
transfer setting: `pretrain_part` none | full | item_encoder | user_encoder, `overrides` of the model's
hyperparameters, `train` changes to seq.train), `train.device`, `train.num_threads`,
`features.allow_download` (whether encoders may come from the hub).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mmpipe.config import Config, ParamsError, param
from mmpipe.hf import hub_errors, resolve_model
from mmpipe.io import csv_text, read_parquet, write_bytes, write_json, write_text
from mmpipe.log import get_logger
from mmpipe.paths import DatasetDir, RunFiles
from mmpipe.schemas import ITEM_FIELDS, item_text
from models.core.registry import get_model, model_config
from models.core.trainer import FitResult
from models.seq.base import SeqData, SequentialRecommender
from models.seq.data import Sequences, concat_sequences, load_sequences
from models.seq.towers import decode_images, load_image_model, load_text_model, read_item_images, tokenize
from models.seq.trainer import SeqTrainConfig
from stages.common import pipeline
from stages.common.params import allow_download
from stages.common.run import TrainRuntime

log = get_logger("sequential")


@dataclass(frozen=True)
class Variant(Config):
    """`seq.variants.<name>`: how a target run starts and what it changes."""

    pretrain_part: Literal["none", "full", "item_encoder", "user_encoder"] = param(
        "none", doc="none: from scratch; else the part of the pre-trained model loaded (PMMRec's three)"
    )
    overrides: Mapping[str, Any] = param({}, doc="train.<model> keys changed for this variant, e.g. item_tower")
    train: Mapping[str, Any] = param({}, doc="seq.train keys changed for this variant")


def read_variant(params: dict[str, Any], variant: str) -> Variant:
    variants = (params.get("seq") or {}).get("variants") or {}
    if variant not in variants:
        raise ValueError(f"params.yaml: key 'seq.variants.{variant}' is missing (pipeline.transfer_variants lists it)")
    spec = Variant.parse(variants[variant], f"seq.variants.{variant}")
    pipeline.refuse_seed(spec.train, f"seq.variants.{variant}.train")
    return spec


def model_class(model: str, where: str = "pipeline.pretrain_models") -> type[SequentialRecommender]:
    """The sequential model named `model` (its file models/<model>.py); another family's is an error."""
    cls = get_model(model)
    if not issubclass(cls, SequentialRecommender):
        raise ParamsError(
            f"params.yaml: {where} lists '{model}', which reads '{cls.reads}', not 'seq': only the sequential "
            f"family (models/seq/base.py) pre-trains and transfers"
        )
    return cls


def common_keys(model: str) -> list[str]:
    return [f"train.{model}", "seq.train", "train.device", "train.num_threads", "features.allow_download"]


def model_hparams(params: dict[str, Any], model: str, overrides: Mapping[str, Any] | None = None) -> Any:
    block = dict((params.get("train") or {}).get(model) or {})
    block.update(overrides or {})
    hp, _ = model_config(model, block)
    return hp


def train_config(
    params: dict[str, Any], *changes: Mapping[str, Any] | None, where: str, seed: int | None = None
) -> SeqTrainConfig:
    """`seq.train` with `changes` on top. `seed`: a transfer run's, one of pipeline.seeds; None for
    pre-training, whose seed is `seq.pretrain.seed` (a change seq.pretrain may carry)."""
    base = (params.get("seq") or {}).get("train")
    pipeline.refuse_seed(base, "seq.train", also="; pre-training's is seq.pretrain.seed")
    merged: dict[str, Any] = dict(base or {})
    for change in changes:
        merged.update(change or {})
    cfg = SeqTrainConfig.parse(merged, where)
    return cfg if seed is None else replace(cfg, seed=seed)


def runtime(params: dict[str, Any]) -> tuple[torch.device, int, bool]:
    """(device, torch threads, downloads allowed) of the pretrain and transfer stages."""
    run = TrainRuntime.of(params)
    return run.torch_device, run.num_threads, allow_download(params)


def _load(key: str, ref: str, allow_download: bool, loader):
    path, local = resolve_model(ref)
    if not allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with hub_errors(key, ref, local):
        return loader(path, not allow_download)


def load_dataset(
    ds: DatasetDir, model: str, hp: Any, max_seq_len: int, allow_download: bool
) -> tuple[Sequences, SeqData, dict[str, Any]]:
    """Sequences and the item content the model's tower reads (texts tokenised, images decoded), plus counts."""
    return load_datasets([ds], model, hp, max_seq_len, allow_download)


def load_datasets(
    dirs: list[DatasetDir], model: str, hp: Any, max_seq_len: int, allow_download: bool
) -> tuple[Sequences, SeqData, dict[str, Any]]:
    """`load_dataset` of several datasets as one catalogue (`concat_sequences`): pre-training on sources.

    The encoders are loaded once; each dataset's texts and images are prepared as for one dataset and
    stacked in the same order as the items. Counts are summed over the datasets.
    """
    start = time.perf_counter()
    parts = []
    for ds in dirs:
        seqs = load_sequences(ds, max_seq_len)
        if not len(seqs):
            raise ValueError(f"{ds.interactions}: no user with at least 3 interactions: no sequence to learn from")
        parts.append(seqs)
    seqs = concat_sequences(parts)
    items = [row for ds in dirs for row in read_parquet(ds.items).to_pylist()]
    data = SeqData(n_users=len(seqs), n_items=seqs.n_items, popularity=seqs.popularity)
    info: dict[str, Any] = {"users": len(seqs), "items": seqs.n_items, "users_dropped_short": seqs.dropped_short}
    encoders = {e.modality: e for e in model_class(model).item_encoders(hp)}
    if "text" in encoders:
        text = encoders["text"]
        encoder, tokenizer = _load(f"train.{model}.{text.key}", text.ref, allow_download, load_text_model)
        texts = [item_text({k: row.get(k) for k in ITEM_FIELDS}, text.template) for row in items]
        data.text_ids, data.text_mask = tokenize(tokenizer, texts, text.max_tokens)
        data.text_encoder = encoder
        info["items_without_text"] = sum(1 for t in texts if not t)
    if "image" in encoders:
        image = encoders["image"]
        encoder = _load(f"train.{model}.{image.key}", image.ref, allow_download, load_image_model)
        size = int(encoder.config.image_size)
        decoded = [decode_images(read_item_images(ds.images, [r["item_id"] for r in rows]), size)
                   for ds, rows in zip(dirs, _split(items, [p.n_items for p in parts]), strict=True)]  # fmt: skip
        for ds, (_, has) in zip(dirs, decoded, strict=True):
            if len(has) and not has.any():  # the tower would learn from blank images only
                raise ValueError(
                    f"{ds.images}: none of the {len(has)} items of {ds.name} has an image, and {model}'s item "
                    f"tower ({image.key} {image.ref}) reads them: rebuild the images (dvc repro "
                    f"pipelines/data/dvc.yaml:images@{ds.name}) or train a tower without images"
                )
        data.pixels = decoded[0][0] if len(decoded) == 1 else torch.cat([px for px, _ in decoded])
        data.image_encoder = encoder
        info["items_without_image"] = int(sum((~has).sum() for _, has in decoded))
    info["prepare_seconds"] = round(time.perf_counter() - start, 2)
    log.info(
        "%s: %d sequences (%d users with < 3 items dropped), %d items%s",
        "+".join(ds.name for ds in dirs), len(seqs), seqs.dropped_short, seqs.n_items,
        "".join(f", {v} {k.replace('_', ' ')}" for k, v in info.items() if k.startswith("items_without")),
    )  # fmt: skip
    return seqs, data, info


def _split(rows: list, sizes: list[int]) -> list[list]:
    out, at = [], 0
    for n in sizes:
        out.append(rows[at : at + n])
        at += n
    return out


def check_params(pipeline_cfg: Any, params: dict[str, Any]) -> list[tuple[str, Any, str | None]]:
    """Validate every sequential block the pipeline will use; return each setting's model, hyperparameters
    and the transfer variant whose overrides made them (None: pre-training's, train.<model> alone)."""
    if not (pipeline_cfg.pretrain_sources or pipeline_cfg.transfer_targets):
        return []
    train_config(params, (params.get("seq") or {}).get("pretrain"), where="seq.train (+ seq.pretrain)")
    settings: list[tuple[str, Any, str | None]] = []
    for model in pipeline_cfg.pretrain_models:
        model_class(model)
        settings.append((model, model_hparams(params, model), None))
        for name in pipeline_cfg.transfer_variants:
            spec = read_variant(params, name)
            settings.append((model, model_hparams(params, model, spec.overrides), name))
            train_config(
                params, spec.train, where=f"seq.train (+ seq.variants.{name}.train)", seed=pipeline_cfg.seeds[0]
            )
    return settings


def checkpoint_bytes(
    state: dict[str, torch.Tensor], hp: Any, best_epoch: int, max_seq_len: int, sources: list[str] | None
) -> bytes:
    """torch.save into memory (a fixed inner name, nothing run-specific inside): byte-identical for equal weights.
    `sources`: the datasets a pre-trained checkpoint learned from (None for a target's run)."""
    buf = io.BytesIO()
    checkpoint = {"state_dict": state, "hp": hp.as_dict(), "best_epoch": best_epoch, "max_seq_len": max_seq_len}
    if sources is not None:
        checkpoint["sources"] = sources
    torch.save(checkpoint, buf)
    return buf.getvalue()


def write_run(out_dir: Path, result: FitResult, hp: Any, cfg: SeqTrainConfig, summary: dict) -> None:
    epochs = [r["train_seconds"] for r in result.history]
    summary.update(
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        best_valid={k: round(v, 6) for k, v in result.best_valid.items()},
        seconds_per_epoch=round(float(np.mean(epochs)), 3) if epochs else 0.0,
    )
    checkpoint = checkpoint_bytes(result.best_state, hp, result.best_epoch, cfg.max_seq_len, summary.get("sources"))
    files = RunFiles(out_dir)
    write_bytes(files.checkpoint, checkpoint)
    write_text(files.history, csv_text(result.history))
    write_json(files.train_summary, summary)
