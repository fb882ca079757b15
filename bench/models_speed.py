"""Per-epoch training time, evaluation time and the model's own arithmetic ("bound") of every model.

    python -m bench.models_speed [--epochs 3] [--models bpr,lightgcn,...] [--threads 1,2]
                                 [--baby ../shared/data/amazon-baby-mmrec/baby.inter]

Builds the default demo dataset (download, ingest, images, features, coldstart, graphs) in a temporary
directory and, with `--baby`, imports MMRec's Amazon Baby split (ID models only: its features are not
built here). For each thread count and model it trains a few epochs with the project's trainer and
params and prints:

- s/epoch: the trainer's epoch (permutation, negative sampling, loss, backward, step, bookkeeping);
- eval s: one full-ranking evaluation of all validation users over all items;
- bound: the same epoch's arithmetic alone: the model's per-epoch work (`on_epoch_start`) and, for
  batches drawn beforehand, loss forward, backward and the optimiser step; `x bound` = s/epoch / bound,
  what the trainer adds on top of the model's own sparse and dense products (goal: <= 1.5);
- phys s: the epoch's physical bound (`bench/physical_bound.py`): the bytes its sparse products, row
  gathers/scatters and Adam must move and the FLOPs of its dense products, over the gather and copy
  bandwidth and matmul throughput measured on this machine at this thread count; `x phys` = s/epoch over
  it (element-wise work is left out: a lower bound);
- det. cost: the bound measured with `torch.use_deterministic_algorithms(True)` (the default) over the
  bound without it;
- 1->2 threads: the speed-up of s/epoch from the first to the last thread count.

MMRec's own figures on Baby, measured on this kind of machine, are printed as the anchors: LightGCN
(2 layers, 64-d, batch 2048) 2.7 s/epoch and 2.1 s per validation pass on 2 cores, BPR about 1.1 s/epoch
on 1 thread.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.mmrec_baby import import_through_pipeline
from bench.physical_bound import Machine, epoch_work, measure_machine
from models.core.base import TrainData
from models.core.data import load_train_data
from models.core.registry import all_models, get_model, model_config
from models.core.trainer import NegativeSampler, TrainConfig, fit
from profiles.apply import with_profile
from stages import coldstart, demo_encoder, download, features, graphs, images, ingest
from stages.common.params import load_params

ROOT = Path(__file__).resolve().parents[1]
MMREC_ANCHORS = (
    "MMRec on Baby (anchors): LightGCN 2.7 s/epoch and 2.1 s/validation on 2 cores; BPR ~1.1 s/epoch, 1 thread"
)


def build_demo(tmp: Path, params: dict) -> Path:
    download.run("demo", params, tmp / "raw")
    ingest.run("demo", params, tmp / "raw", tmp / "processed")
    images.run("demo", params, tmp / "raw", tmp / "processed")
    demo_encoder.run("demo-clip", params, tmp / "raw/encoders/demo-clip")
    for modality, block in params["features"]["default"].items():
        if block.get("model") == "raw/encoders/demo-clip":
            block["model"] = str(tmp / "raw/encoders/demo-clip")
        features.run("demo", "default", modality, params, tmp / "processed")
    coldstart.run("demo", params, tmp / "processed")
    graphs.run("demo", "default", params, tmp / "processed")
    return tmp / "processed/demo"


@dataclass
class Row:
    epoch_s: float
    eval_s: float
    bound_s: float
    bound_nondet_s: float
    physical_s: float
    recall: float


def draw_batches(data: TrainData, cfg: TrainConfig, rng: np.random.Generator) -> list[tuple[torch.Tensor, ...]]:
    """One epoch's (users, positives, negatives) batches, drawn as the trainer draws them."""
    coo = data.train.tocoo()
    users_all, items_all = coo.row.astype(np.int64), coo.col.astype(np.int64)
    sampler = NegativeSampler(data.train)
    order = rng.permutation(len(users_all))
    batches = []
    for s in range(0, len(order), cfg.batch_size):
        idx = order[s : s + cfg.batch_size]
        neg = sampler.sample(rng, users_all[idx])
        batches.append(tuple(torch.from_numpy(a) for a in (users_all[idx], items_all[idx], neg)))
    return batches


def run_batches(model, batches: list[tuple[torch.Tensor, ...]], cfg: TrainConfig, rng: np.random.Generator) -> int:
    """The epoch's arithmetic: the model's per-epoch work, then loss, backward and Adam per batch."""
    optimizer = model.make_optimizer(model.lr if model.lr is not None else cfg.lr)
    model.train()
    model.on_epoch_start(2, rng)
    for users, pos, neg in batches:
        loss = model.loss(users, pos, neg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return len(batches)


def bound_epoch(model, data: TrainData, cfg: TrainConfig, rng: np.random.Generator, deterministic: bool) -> float:
    """Seconds of one epoch of the model's own arithmetic, the batches (and negatives) drawn beforehand."""
    torch.use_deterministic_algorithms(deterministic)
    batches = draw_batches(data, cfg, rng)
    start = time.perf_counter()
    run_batches(model, batches, cfg, rng)
    seconds = time.perf_counter() - start
    torch.use_deterministic_algorithms(True)
    return seconds


def physical_epoch(model, data: TrainData, cfg: TrainConfig, rng: np.random.Generator, machine: Machine) -> float:
    """The epoch's physical bound on `machine` (bench/physical_bound.py)."""
    batches = draw_batches(data, cfg, rng)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return epoch_work(lambda: run_batches(model, batches, cfg, rng), trained).seconds(machine)


def measure(name: str, params: dict, data: TrainData, valid, epochs: int, machine: Machine) -> Row:
    cls = get_model(name)
    hp, trainer = model_config(name, params["train"][name])
    cfg = TrainConfig.from_params(params["train"]["common"], trainer, {"epochs": epochs, "patience": 10**6})
    torch.manual_seed(cfg.seed)
    model = cls(data, hp)
    result = fit(model, data, valid, cfg, logging.getLogger("bench"), progress=False)
    rows = result.history
    train_s = [r["train_seconds"] for r in rows if r.get("train_seconds")]
    eval_s = [r["eval_seconds"] for r in rows if r.get("eval_seconds") is not None]
    epoch_s = float(np.median(train_s)) if train_s else 0.0
    bound = nondet = physical = 0.0
    if cls.trainable:
        rng = np.random.default_rng(cfg.seed)
        runs = [(bound_epoch(model, data, cfg, rng, True), bound_epoch(model, data, cfg, rng, False))
                for _ in range(epochs)]  # fmt: skip
        bound = float(np.median([a for a, _ in runs]))
        nondet = float(np.median([b for _, b in runs]))
        physical = physical_epoch(model, data, cfg, rng, machine)
    return Row(epoch_s, float(np.median(eval_s)), bound, nondet, physical, result.best_valid["recall@20"])


def print_table(title: str, names: list[str], params: dict, data: TrainData, valid, threads: list[int], epochs: int):
    print(f"\n{title}: {data.n_users} users, {data.n_items} items, {data.train.nnz} training interactions; "
          f"median of {epochs} epochs")  # fmt: skip
    machines = {}
    for n in threads:
        torch.set_num_threads(n)
        machines[n] = measure_machine(data.n_users + data.n_items, 64, 2 * data.train.nnz)
        print(f"machine, {machines[n].describe()}")
    last = f"1->{threads[-1]} threads"
    print(f"{'model':10s} {'threads':>7s} {'s/epoch':>8s} {'eval s':>7s} {'bound s':>8s} {'x bound':>8s} "
          f"{'phys s':>8s} {'x phys':>7s} {'det. cost':>9s} {'R@20':>7s} {last:>12s}")  # fmt: skip
    for name in names:
        first = None
        for n in threads:
            torch.set_num_threads(n)
            row = measure(name, params, data, valid, epochs, machines[n])
            first = first or row
            ratio = f"{row.epoch_s / row.bound_s:8.2f}" if row.bound_s else f"{'-':>8s}"
            phys = f"{row.epoch_s / row.physical_s:7.1f}" if row.physical_s else f"{'-':>7s}"
            det = f"{row.bound_s / row.bound_nondet_s:9.2f}" if row.bound_nondet_s else f"{'-':>9s}"
            speedup = f"{first.epoch_s / row.epoch_s:12.2f}" if n == threads[-1] and row.epoch_s else f"{'':12s}"
            print(f"{name:10s} {n:7d} {row.epoch_s:8.3f} {row.eval_s:7.3f} {row.bound_s:8.3f} {ratio} "
                  f"{row.physical_s:8.3f} {phys} {det} {row.recall:7.4f} {speedup}", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", default=None, help="comma-separated (default: all registered but PMMRec)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--baby", type=Path, default=None, help="MMRec's baby.inter: ID models on real Baby too")
    args = parser.parse_args(argv)
    logging.getLogger("mmpipe").setLevel(logging.WARNING)
    params = with_profile(load_params(ROOT / "params.yaml"), "full")
    threads = [int(t) for t in args.threads.split(",")]
    names = args.models.split(",") if args.models else [m for m in sorted(all_models()) if get_model(m).reads != "seq"]
    print(MMREC_ANCHORS)
    tmp = Path(tempfile.mkdtemp(prefix="mmpipe-bench-models-"))
    try:
        dataset_dir = build_demo(tmp, params)
        modalities = tuple(params["pipeline"]["modalities"])
        for group in ("id", "feat", "graph"):
            in_group = [m for m in names if get_model(m).reads == group]
            if not in_group:
                continue
            data, split = load_train_data(dataset_dir, "warm", group, modalities)
            print_table(f"demo ({group} models)", in_group, params, data, split.valid, threads, args.epochs)
        if args.baby is not None:
            ids = [m for m in names if get_model(m).reads == "id"]
            n_users, n_items, (train, valid, _) = import_through_pipeline(args.baby, tmp / "baby")
            data = TrainData(n_users=n_users, n_items=n_items, train=train)
            print_table("Amazon Baby, MMRec's split (ID models)", ids, params, data, valid, threads, args.epochs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
