"""Training and full-ranking evaluation of sequential recommenders (PMMRec, SASRec), on one process or
many (torchrun + DistributedDataParallel: gloo on the CPU, NCCL on GPUs).

An epoch shuffles the users (seeded) and takes AdamW steps on the model's weighted losses over batches
of `batch_size` sequences; under DDP each process takes every world_size-th user of the shuffled order
and the gradients are averaged. Learning rates: `encoder_lr` for the pre-trained text and image encoders
(weight decay 0, as PMMRec), `lr` for everything else (`weight_decay`). After every epoch all item
representations are computed without gradients and every user's validation target is ranked against
all items, the user's history masked; the best epoch by `valid_metric` is kept (patience). HR@K equals
Recall@K with one target per user, so the shared evaluator gives both HR and NDCG.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mmpipe.config import Config, ParamsError, param
from mmpipe.devices import autocast
from mmpipe.distributed import distributed
from models.core.evaluator import check_cutoffs, evaluate
from models.core.optim import adam
from models.core.trainer import EarlyStopping, Epoch, FitResult, epoch_loop, seed_everything, state_on_cpu
from models.seq.data import Sequences, left_pad, training_batch


@dataclass(frozen=True)
class SeqTrainConfig(Config):
    """`seq.train`: the training protocol of the sequential models (PMMRec's where it has one)."""

    seed: int = param(2026)
    epochs: int = param(20, ge=1)
    patience: int = param(5, ge=1, doc="epochs without a better validation metric tolerated; the next one stops")
    batch_size: int = param(64, ge=2, doc="sequences per step (PMMRec: 32 per GPU)")
    max_seq_len: int = param(20, ge=2, doc="items per sequence (PMMRec: 20)")
    lr: float = param(1e-3, gt=0, doc="user encoder, fusion, projections, heads (PMMRec: 1e-4)")
    encoder_lr: float = param(1e-4, gt=0, doc="the trainable blocks of the pre-trained encoders")
    weight_decay: float = param(0.1, ge=0, doc="AdamW, all but the pre-trained encoders (PMMRec: 0.1)")
    valid_metric: str = param("hr@10", doc="hr@K or ndcg@K (PMMRec: HR@10)")
    ks: tuple[int, ...] = param([5, 10, 20, 50], ge=1, doc="cut-offs of HR/NDCG@K")
    eval_batch_users: int = param(256, ge=1)
    precision: Literal["float32", "bfloat16"] = param("float32", doc="bfloat16: autocast on a GPU")

    def check(self, where: str) -> None:
        name, _, k = self.valid_metric.partition("@")
        if name not in ("hr", "ndcg") or not k.isdigit() or int(k) not in self.ks:
            raise ParamsError(
                f"params.yaml: {where}.valid_metric = {self.valid_metric!r}: expected hr@K or ndcg@K with K in ks"
            )


def hr_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Recall@K of one target is HR@K: the evaluator's metrics under their sequential names."""
    return {k.replace("recall@", "hr@"): v for k, v in metrics.items() if k.split("@")[0] in ("recall", "ndcg")}


def rank_users(model: nn.Module, seqs: Sequences, stage: str, ks: list[int], batch_users: int):
    """Full ranking of every user's `stage` target ('valid' or 'test'); (HR/NDCG metrics, Ranking)."""
    module = model.module if hasattr(model, "module") else model
    was_training = module.training
    module.eval()
    histories = left_pad([seqs.history(u, stage, module.max_seq_len) for u in range(len(seqs))], module.max_seq_len)
    histories = torch.from_numpy(histories).to(module.device)
    item_table = module.all_item_embeddings()
    mask, truth = seqs.eval_matrices(stage, module.max_seq_len)
    with torch.no_grad():
        metrics, ranking = evaluate(
            lambda users: module.scores(histories[users], item_table), mask, truth, ks, batch_users, module.device
        )
    module.train(was_training)
    return hr_metrics(metrics), ranking


def param_groups(model: nn.Module, cfg: SeqTrainConfig) -> list[dict[str, Any]]:
    """The pre-trained encoders' trainable blocks at encoder_lr without decay, the rest at lr with decay."""
    module = model.module if hasattr(model, "module") else model
    encoder_ids = {id(p) for encoder in module.pretrained_encoders() for p in encoder.parameters()}
    encoders = [p for p in module.parameters() if p.requires_grad and id(p) in encoder_ids]
    rest = [p for p in module.parameters() if p.requires_grad and id(p) not in encoder_ids]
    groups = [{"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if encoders:
        groups.append({"params": encoders, "lr": cfg.encoder_lr, "weight_decay": 0.0})
    return groups


def fit_sequential(
    model: nn.Module,
    seqs: Sequences,
    cfg: SeqTrainConfig,
    log: logging.Logger,
    progress: bool = True,
    num_threads: int | None = None,
) -> FitResult:
    """Train on the sequences; keep the best state by the validation metric (on every process alike)."""
    import torch.distributed as dist

    rank, world = distributed()
    rng = seed_everything(cfg.seed, module_device(model))
    generator = torch.Generator().manual_seed(cfg.seed + rank)
    module = model
    device = module.device
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    optimizer = adam(param_groups(module, cfg), decoupled=True)
    ks = sorted(set(cfg.ks))
    check_cutoffs(ks, module.n_items, "seq.train.ks")
    stopping = EarlyStopping(cfg.patience)

    def run_epoch(epoch: int) -> Epoch:
        start = time.perf_counter()
        model.train()
        # the same permutation on every process, cut to a multiple of the world size so that every process
        # takes the same number of steps (DDP synchronises each one)
        order = rng.permutation(len(seqs))
        order = order[: len(order) - len(order) % world][rank::world]
        n_batches = max(1, math.ceil(len(order) / cfg.batch_size))
        sums: dict[str, float] = {}
        for b in range(n_batches):
            users = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(users) < 2:  # in-batch negatives and RCL need at least two sequences
                continue
            inputs, targets = (torch.from_numpy(t).to(device) for t in training_batch(seqs, users, cfg.max_seq_len))
            with autocast(device, cfg.precision):
                losses = model(inputs, targets, generator)
            loss = losses["total"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}; lower seq.train.lr")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        train_s = time.perf_counter() - start
        eval_start = time.perf_counter()
        metrics, _ = rank_users(module, seqs, "valid", ks, cfg.eval_batch_users)
        row = {
            "epoch": epoch,
            **{f"loss_{k}" if k != "total" else "loss": round(v / n_batches, 6) for k, v in sums.items()},
            **{f"valid_{k}": round(v, 6) for k, v in metrics.items()},
            "train_seconds": round(train_s, 3),
            "eval_seconds": round(time.perf_counter() - eval_start, 3),
        }
        return Epoch(row, metrics[cfg.valid_metric], metrics)

    def on_epoch(epoch: int, result: Epoch, improved: bool) -> None:
        if rank == 0:
            log.info(
                "epoch %d: loss %.4f, valid %s %.4f (best %.4f at epoch %d), %.1f s",
                epoch, result.row.get("loss", math.nan), cfg.valid_metric, result.value, stopping.best,
                stopping.best_epoch, result.row["train_seconds"],
            )  # fmt: skip

    history, best_state, best_valid = epoch_loop(
        cfg.epochs, stopping, run_epoch, lambda: state_on_cpu(module), log, f"valid {cfg.valid_metric}",
        progress=progress and rank == 0, num_threads=num_threads, on_epoch=on_epoch,
    )  # fmt: skip
    if world > 1:
        dist.barrier()
    return FitResult(best_state, stopping.best_epoch, best_valid, history)


def module_device(model: nn.Module) -> torch.device:
    return (model.module if hasattr(model, "module") else model).device
