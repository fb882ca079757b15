"""Per-epoch training time, evaluation time and the model's own arithmetic ("bound") of every model.

    python -m bench.models_speed [--epochs 3] [--models bpr,lightgcn,...] [--threads 1,2]
                                 [--baby ../shared/data/amazon-baby-mmrec/baby.inter]
                                 [--mmrec PATH [--reference-python PYTHON]] [--spmm-only] [--skip-demo]

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

With `--baby`, the sparse product of the normalised Baby adjacency (64 columns) is timed last: the
project's kernel (`models/core/spmm.py`) against torch's CSR product, alternating, beside its physical
bound (its bytes over the measured gather bandwidth). With `--mmrec PATH` (a local checkout of MMRec),
MMRec's own BPR and LightGCN run on the same Baby split with the same hyperparameters at each thread
count, right after the project's (`bench/references.py`), and the table gains their s/epoch and the
ratio; without it, the last measured reference figures are printed with their date.
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
import scipy.sparse as sp
import torch

from bench.mmrec_baby import import_through_pipeline
from bench.physical_bound import Machine, _sparse_product_bytes, epoch_work, measure_machine
from bench.references import LAST_MEASURED, run_mmrec
from models.core.base import TrainData
from models.core.data import load_train_data
from models.core.graph import bipartite_adjacency, sparse_tensor, sym_normalize
from models.core.registry import all_models, get_model, model_config
from models.core.spmm import matmul_into
from models.core.trainer import NegativeSampler, TrainConfig, fit
from profiles.apply import with_profile
from stages import coldstart, demo_encoder, download, features, graphs, images, ingest
from stages.common.params import load_params

ROOT = Path(__file__).resolve().parents[1]


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


def sparse_product_table(train, threads: list[int], rounds: int = 5, repeats: int = 50) -> None:
    """The normalised user-item adjacency times a [nodes, 64] matrix: the kernel against torch's CSR
    product, alternating rounds (median of each round's mean), beside the product's physical bound."""
    adj = sparse_tensor(sym_normalize(bipartite_adjacency(train)))
    x = torch.randn(adj.shape[0], 64, generator=torch.Generator().manual_seed(0))
    out = torch.empty_like(x)
    print(f"\nsparse product: {adj.shape[0]} x {adj.shape[1]}, {adj._nnz()} nonzeros, 64 columns")
    print(f"{'threads':>7s} {'kernel ms':>9s} {'torch ms':>9s} {'bound ms':>9s} {'kernel x bound':>14s} "
          f"{'torch / kernel':>14s}")  # fmt: skip
    for n in threads:
        torch.set_num_threads(n)
        machine = measure_machine(adj.shape[0], 64, adj._nnz())
        bound_ms = _sparse_product_bytes(adj, x, out) / (machine.gather_gbps * 1e9) * 1e3
        ours, theirs = [], []
        for _ in range(rounds):
            for timings, fn in ((ours, lambda: matmul_into(adj, x, out)), (theirs, lambda: adj @ x)):
                fn()
                start = time.perf_counter()
                for _ in range(repeats):
                    fn()
                timings.append((time.perf_counter() - start) / repeats * 1e3)
        k, t = float(np.median(ours)), float(np.median(theirs))
        print(f"{n:7d} {k:9.2f} {t:9.2f} {bound_ms:9.2f} {k / bound_ms:14.2f} {t / k:14.2f}   ({machine.describe()})")


def print_table(
    title: str, names: list[str], params: dict, data: TrainData, valid, threads: list[int], epochs: int,
    reference=None,
) -> None:  # fmt: skip
    """One row per model and thread count; `reference(name, threads)` runs a reference code's epochs
    right after the project's (None where it has no such model)."""
    print(f"\n{title}: {data.n_users} users, {data.n_items} items, {data.train.nnz} training interactions; "
          f"median of {epochs} epochs")  # fmt: skip
    machines = {}
    for n in threads:
        torch.set_num_threads(n)
        machines[n] = measure_machine(data.n_users + data.n_items, 64, 2 * data.train.nnz)
        print(f"machine, {machines[n].describe()}")
    last = f"1->{threads[-1]} threads"
    ref_columns = f" {'ref s/ep':>8s} {'ref/ours':>8s}" if reference else ""
    print(f"{'model':10s} {'threads':>7s} {'s/epoch':>8s} {'eval s':>7s} {'bound s':>8s} {'x bound':>8s} "
          f"{'phys s':>8s} {'x phys':>7s} {'det. cost':>9s} {'R@20':>7s} {last:>12s}{ref_columns}")  # fmt: skip
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
            ref = ""
            if reference:
                run = reference(name, n)
                ref = f" {run.median:8.2f} {run.median / row.epoch_s:8.2f}" if run else f" {'-':>8s} {'-':>8s}"
            print(f"{name:10s} {n:7d} {row.epoch_s:8.3f} {row.eval_s:7.3f} {row.bound_s:8.3f} {ratio} "
                  f"{row.physical_s:8.3f} {phys} {det} {row.recall:7.4f} {speedup}{ref}", flush=True)  # fmt: skip


def print_last_measured(with_mmrec: bool) -> None:
    print("reference codes, last measured (not run in this call):" if not with_mmrec else "reference codes:")
    for (family, model), figure in LAST_MEASURED.items():
        if not (with_mmrec and family == "mmrec"):
            print(f"  {family} {model}: {figure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", default=None, help="comma-separated (default: all registered but PMMRec)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--baby", type=Path, default=None, help="MMRec's baby.inter: ID models on real Baby too")
    parser.add_argument("--mmrec", type=Path, default=None, help="a local MMRec checkout, run beside on Baby")
    parser.add_argument("--reference-python", default=sys.executable, help="the interpreter for the reference code")
    parser.add_argument("--spmm-only", action="store_true", help="only the sparse-product table (needs --baby)")
    parser.add_argument("--skip-demo", action="store_true", help="no demo tables (with --baby: Baby only)")
    args = parser.parse_args(argv)
    logging.getLogger("mmpipe").setLevel(logging.WARNING)
    params = with_profile(load_params(ROOT / "params.yaml"), "full")
    threads = [int(t) for t in args.threads.split(",")]
    names = args.models.split(",") if args.models else [m for m in sorted(all_models()) if get_model(m).reads != "seq"]
    if args.mmrec is not None and args.baby is None:
        parser.error("--mmrec runs MMRec on the Baby split: give --baby too")
    if args.spmm_only and args.baby is None:
        parser.error("--spmm-only times the Baby adjacency: give --baby")
    print_last_measured(args.mmrec is not None)
    # load the compiled product kernel now, so that the first graph model's epochs do not include it
    matmul_into(sparse_tensor(sp.identity(2, dtype=np.float32, format="csr")), torch.ones(2, 1))
    tmp = Path(tempfile.mkdtemp(prefix="mmpipe-bench-models-"))
    try:
        if args.baby is not None:
            n_users, n_items, (train, valid, _) = import_through_pipeline(args.baby, tmp / "baby")
            if args.spmm_only:
                sparse_product_table(train, threads)
                return 0
        dataset_dir = None if args.skip_demo else build_demo(tmp, params)
        for group in () if dataset_dir is None else ("id", "feat", "graph"):
            in_group = [m for m in names if get_model(m).reads == group]
            if not in_group:
                continue
            data, split = load_train_data(dataset_dir, "warm", group, tuple(params["pipeline"]["modalities"]))
            print_table(f"demo ({group} models)", in_group, params, data, split.valid, threads, args.epochs)
        if args.baby is not None:
            ids = [m for m in names if get_model(m).reads == "id"]
            data = TrainData(n_users=n_users, n_items=n_items, train=train)

            def mmrec(name: str, n: int):
                if name not in ("bpr", "lightgcn"):
                    return None
                hp = params["train"][name]
                return run_mmrec(args.mmrec, args.baby, name, hp, n, args.epochs + 1, args.reference_python)

            reference = mmrec if args.mmrec is not None else None
            title = "Amazon Baby, MMRec's split (ID models)"
            print_table(title, ids, params, data, valid, threads, args.epochs, reference=reference)
            # last: run before the tables, its products slowed the epochs after it in this process 1.4-1.5x
            # (LightGCN on Baby, one thread; cause not found), which a fresh process does not show
            sparse_product_table(train, threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
