"""The shared trainer: BPR with sampled negatives, early stopping on a validation metric, fixed seeds.

Each epoch shuffles the training pairs, draws one negative per pair uniformly from the items that
have training interactions (so an unseen, cold item is never pushed down as a negative), rejects
negatives the user has interacted with, and takes Adam steps on the model's loss. After every
`eval_every` epochs the model ranks all items for the validation users; the best state by
`valid_metric` is kept, and training stops at the (patience + 1)-th evaluation in a row without
improvement (MMRec's `stopping_step`, `EarlyStopping`).

Under torchrun (N processes, `train.processes`), the model is wrapped in DistributedDataParallel: every
process draws the same permutation (and the same per-epoch resampling, e.g. FREEDOM's pruning), takes
its 1/N share of each batch with its own negatives, and the gradients are averaged before each step; so
one step still covers one batch and a process sees 1/N of it. Every process validates the same model
and takes the same early-stopping decision, without communication. One process is byte-identical to
the code before DDP existed.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from mmpipe.allocator import keep_freed_memory
from mmpipe.config import Config, ParamsError, param
from mmpipe.devices import autocast
from mmpipe.distributed import distributed
from mmpipe.threads import use_threads
from models.core.base import Recommender, TrainData
from models.core.evaluator import METRICS, check_cutoffs, evaluate


@dataclass(frozen=True)
class TrainConfig(Config):
    """train.common, with the dataset's `train:` and the model's `trainer:` overrides applied on top."""

    seed: int = param(2026)
    epochs: int = param(1000, ge=1, doc="MMRec's protocol: 1000 epochs")
    patience: int = param(
        20, ge=1, doc="evaluations without improvement tolerated; the next one stops (MMRec's stopping_step)"
    )
    batch_size: int = param(2048, ge=1)
    lr: float = param(1e-3, gt=0)
    eval_every: int = param(1, ge=1)
    valid_metric: str = param("recall@20")
    valid_ks: tuple[int, ...] = param([10, 20], ge=1)
    eval_batch_users: int = param(2048, ge=1)
    precision: Literal["float32", "bfloat16"] = param(
        "float32", doc="bfloat16: mixed precision on a GPU (autocast); the CPU always computes in float32"
    )

    def check(self, where: str) -> None:
        name, _, k = self.valid_metric.partition("@")
        if name not in METRICS or not k.isdigit() or int(k) < 1:
            raise ParamsError(
                f"params.yaml: {where}.valid_metric = {self.valid_metric!r}: expected <metric>@<k> with metric one "
                f"of {', '.join(METRICS)}"
            )

    @property
    def ks(self) -> list[int]:
        """The validation cut-offs, including the valid_metric's."""
        return sorted({*self.valid_ks, int(self.valid_metric.split("@")[1])})

    @classmethod
    def from_params(cls, *blocks: dict[str, Any] | None, where: str = "train.common") -> TrainConfig:
        """Merge blocks left to right (train.common, then overrides) and validate the result."""
        merged: dict[str, Any] = {}
        for block in blocks:
            merged.update(block or {})
        return cls.parse(merged, where)


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, float]]


@dataclass
class EarlyStopping:
    """The best value so far, its epoch, and MMRec's stopping rule, one home for every training loop here
    (recommenders, PMMRec, the encoder fine-tuning).

    MMRec's `early_stopping` counts evaluations without improvement in `cur_step` and stops when
    `cur_step > stopping_step`, as the official MICRO and REARM code: `patience` such evaluations are
    tolerated and the next one stops. Ties are not improvements (the earlier epoch stays the best).
    """

    patience: int
    higher_is_better: bool = True
    best: float | None = None
    best_epoch: int = 0
    stale: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an evaluation; True when it is the best so far (the caller keeps its weights)."""
        better = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if better:
            self.best, self.best_epoch, self.stale = value, epoch, 0
        else:
            self.stale += 1
        return better

    @property
    def stop(self) -> bool:
        return self.stale > self.patience


@dataclass
class Epoch:
    """What one epoch of a training loop reports: its history row, and when it was validated, the
    selection value and the validation metrics kept with the best state."""

    row: dict[str, Any]
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def epoch_loop(
    epochs: int,
    stopping: EarlyStopping,
    run_epoch: Callable[[int], Epoch],
    snapshot: Callable[[], dict[str, torch.Tensor]],
    log: logging.Logger,
    what: str,
    progress: bool = True,
    num_threads: int | None = None,
    on_epoch: Callable[[int, Epoch, bool], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], dict[str, float]]:
    """The training protocol, one home for every loop here (recommenders, PMMRec, the encoder
    fine-tuning): epochs 1..`epochs`, torch's threads recounted before each (`num_threads`, see
    `mmpipe.threads`), the epoch's selection value into `stopping`, a snapshot of the weights at each
    new best, early stopping. `run_epoch` trains one epoch and validates it when due; `on_epoch` logs it.
    Returns (history rows, best state, best validation metrics); the state is `snapshot()` of the start
    when no epoch improved on what `stopping` held. Freed tensor memory stays in the process while it
    trains (`mmpipe.allocator`)."""
    keep_freed_memory()
    history: list[dict[str, Any]] = []
    best_state, best_valid = snapshot(), {}
    bar = tqdm(range(1, epochs + 1), desc="epochs", disable=not progress)
    for epoch in bar:
        if num_threads is not None:
            use_threads(num_threads)
        result = run_epoch(epoch)
        history.append(result.row)
        improved = result.value is not None and stopping.update(result.value, epoch)
        if improved:
            best_valid, best_state = result.metrics, snapshot()
        if result.value is not None:
            bar.set_postfix({what: f"{result.value:.4f}"})
        if on_epoch is not None:
            on_epoch(epoch, result, improved)
        if stopping.stop:
            log.info("early stop at epoch %d: no better %s for %d evaluations", epoch, what, stopping.stale)
            break
    bar.close()
    return history, best_state, best_valid


def seed_everything(seed: int, device: torch.device | None = None) -> np.random.Generator:
    """Seed torch and numpy, and make torch pick deterministic kernels.

    Without the latter, gradient accumulation into repeated embedding rows runs in parallel in an
    arbitrary order on CPU, and two runs differ in the 7th digit (measured: 1e-7 on LightGCN weights).
    On a GPU some sparse kernels have no deterministic version: torch then warns instead of stopping,
    and cuBLAS gets the workspace setting its deterministic mode needs.
    """
    torch.manual_seed(seed)
    if device is not None and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)
    return np.random.default_rng(seed)


class NegativeSampler:
    """Uniform negatives among items with training interactions, excluding the user's own items."""

    def __init__(self, train: sp.csr_matrix) -> None:
        coo = train.tocoo()
        self.n_items = train.shape[1]
        self.positive_keys = np.sort(coo.row.astype(np.int64) * self.n_items + coo.col)
        self.candidates = np.flatnonzero(np.asarray(train.sum(axis=0)).ravel() > 0)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users.astype(np.int64) * self.n_items + items
        pos = np.searchsorted(self.positive_keys, keys)
        pos = np.minimum(pos, len(self.positive_keys) - 1)
        return self.positive_keys[pos] == keys

    def sample(self, rng: np.random.Generator, users: np.ndarray, max_rounds: int = 100) -> np.ndarray:
        neg = self.candidates[rng.integers(0, len(self.candidates), len(users))]
        for _ in range(max_rounds):
            clash = np.flatnonzero(self.is_positive(users, neg))
            if len(clash) == 0:
                return neg
            neg[clash] = self.candidates[rng.integers(0, len(self.candidates), len(clash))]
        raise RuntimeError("could not draw negatives: some user has interacted with (almost) every item")


def fit(
    model: Recommender,
    data: TrainData,
    valid: sp.csr_matrix,
    cfg: TrainConfig,
    log: logging.Logger,
    progress: bool = True,
    num_threads: int | None = None,
) -> FitResult:
    """Train `model` on data.train; select the best epoch on `valid` (users x items relevance).

    With `num_threads` 0, torch's threads are this process's fair share of the cores, recounted every
    epoch (`mmpipe.threads`); a positive value is used as is; None leaves them alone.
    """
    check_cutoffs(cfg.ks, data.n_items, "train.common.valid_ks (with valid_metric)")
    rng = seed_everything(cfg.seed, model.device)
    rank, world = distributed()
    neg_rng = rng if world == 1 else np.random.default_rng([cfg.seed, rank])  # negatives differ per process
    history: list[dict[str, float]] = []

    def validate() -> tuple[dict[str, float], float]:
        start = time.perf_counter()
        model.eval()
        metrics, _ = evaluate(model.scorer(), data.train, valid, cfg.ks, cfg.eval_batch_users, model.device)
        model.train()
        return metrics, time.perf_counter() - start

    if not model.trainable:
        metrics, eval_s = validate()
        history.append(
            {"epoch": 0, "loss": math.nan, **_prefixed(metrics), "train_seconds": 0.0, "eval_seconds": round(eval_s, 3)}
        )
        return FitResult(state_on_cpu(model), 0, metrics, history)

    coo = data.train.tocoo()
    users_all, items_all = coo.row.astype(np.int64), coo.col.astype(np.int64)
    sampler = NegativeSampler(data.train)
    optimizer = model.make_optimizer(model.lr if model.lr is not None else cfg.lr)
    step_loss = model.loss if world == 1 else _ddp_loss(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: model.lr_decay ** (e / 50))
    stopping = EarlyStopping(cfg.patience)
    device = model.device
    model.train()

    def run_epoch(epoch: int) -> Epoch:
        start = time.perf_counter()
        model.on_epoch_start(epoch, rng)
        order = rng.permutation(len(users_all))
        total, batches = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size][rank::world]
            users, pos = users_all[idx], items_all[idx]
            neg = sampler.sample(neg_rng, users)
            with autocast(device, cfg.precision):
                loss = step_loss(*(torch.from_numpy(a).to(device) for a in (users, pos, neg)))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}; lower train.common.lr")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        scheduler.step()
        train_s = time.perf_counter() - start
        row: dict[str, Any] = {"epoch": epoch, "loss": round(total / max(batches, 1), 6)}
        result = Epoch(row)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            metrics, eval_s = validate()
            row.update(_prefixed(metrics))
            row["eval_seconds"] = round(eval_s, 3)
            result = Epoch(row, metrics[cfg.valid_metric], metrics)
        row["train_seconds"] = round(train_s, 3)
        return result

    def on_epoch(epoch: int, result: Epoch, improved: bool) -> None:
        if epoch % 10 == 0 or epoch == 1:
            log.info(
                "epoch %d: loss %.4f, best valid %s %.4f at epoch %d",
                epoch, result.row["loss"], cfg.valid_metric, stopping.best, stopping.best_epoch,
            )  # fmt: skip

    history, best_state, best_valid = epoch_loop(
        cfg.epochs, stopping, run_epoch, lambda: state_on_cpu(model), log, f"valid {cfg.valid_metric}",
        progress=progress and rank == 0, num_threads=num_threads, on_epoch=on_epoch,
    )  # fmt: skip
    return FitResult(best_state, stopping.best_epoch, best_valid, history)


class _LossModule(torch.nn.Module):
    """The model's loss as `forward`, which is what DistributedDataParallel wraps and hooks."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return self.model.loss(users, pos, neg)


def _ddp_loss(model: Recommender):
    """DDP around the model's loss: gradients averaged over the processes in backward. Parameters a step
    does not use (LATTICE's projections after an epoch's first step) are allowed."""
    from torch.nn.parallel import DistributedDataParallel

    device = model.device
    return DistributedDataParallel(
        _LossModule(model), device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


def state_on_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights on the CPU (where checkpoints are written; the best state of every
    training loop)."""
    state = model.state_dict()
    if all(v.device.type == "cpu" for v in state.values()):
        return copy.deepcopy(state)
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _prefixed(metrics: dict[str, float]) -> dict[str, float]:
    return {f"valid_{k}": round(v, 6) for k, v in metrics.items()}
