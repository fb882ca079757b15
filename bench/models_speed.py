"""Per-epoch training time and full-ranking evaluation time of every model on the demo data.

    python -m bench.models_speed [--epochs 3] [--models bpr,lightgcn,...]

Builds the default demo dataset (download, ingest, images, features, coldstart, graphs) in a temporary
directory, then trains each model for a few epochs with the project's params (its own learning rate,
preset, trainer settings) and reports the mean seconds per training epoch and per full-ranking
evaluation of all validation users over all items.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmpipe.threads import use_threads
from models.core.data import load_train_data
from models.core.registry import all_models, get_model, model_config
from models.core.trainer import TrainConfig, fit
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", default=None, help="comma-separated (default: all registered)")
    args = parser.parse_args(argv)
    logging.getLogger("mmpipe").setLevel(logging.WARNING)
    params = load_params(ROOT / "params.yaml")
    use_threads(None)
    names = args.models.split(",") if args.models else sorted(all_models())
    tmp = Path(tempfile.mkdtemp(prefix="mmpipe-bench-models-"))
    try:
        dataset_dir = build_demo(tmp, params)
        print(f"{'model':10s} {'group':6s} {'s/epoch':>8s} {'eval s':>7s} {'valid R@20':>10s}  ({args.epochs} epochs, "
              f"{torch.get_num_threads()} threads)")  # fmt: skip
        for name in names:
            cls = get_model(name)
            hp, trainer = model_config(name, params["train"][name])
            epochs = 1 if not cls.trainable else args.epochs
            cfg = TrainConfig.from_params(params["train"]["common"], trainer, {"epochs": epochs, "patience": 10**6})
            data, split = load_train_data(dataset_dir, "warm", cls.reads, tuple(params["pipeline"]["modalities"]))
            torch.manual_seed(cfg.seed)
            model = cls(data, hp)
            start = time.perf_counter()
            result = fit(model, data, split.valid, cfg, logging.getLogger("bench"), progress=False)
            rows = result.history
            train_s = [r["train_seconds"] for r in rows if r.get("train_seconds")]
            eval_s = [r["eval_seconds"] for r in rows if r.get("eval_seconds") is not None]
            per_epoch = sum(train_s) / len(train_s) if train_s else 0.0
            total = time.perf_counter() - start
            recall = result.best_valid["recall@20"]
            mean_eval = sum(eval_s) / len(eval_s)
            print(f"{name:10s} {cls.reads:6s} {per_epoch:8.2f} {mean_eval:7.2f} {recall:10.4f}  (total {total:.1f} s)")
        users, items = data.n_users, data.n_items
        print(f"demo: {users} users, {items} items, {data.train.nnz} training interactions")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
