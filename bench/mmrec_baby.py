"""BPR and LightGCN on the real Amazon Baby dataset in MMRec's own split, against MMRec's published table.

    python -m bench.mmrec_baby [--inter ../shared/data/amazon-baby-mmrec/baby.inter] [--models bpr,lightgcn]

Imports an MMRec `.inter` file (userID, itemID, x_label) with the pipeline's own `download` (a local
`mmrec` source) and `ingest` (the given split kept), then trains with the project's trainer and params
(`train.common`, `train.<model>`, but up to 400 epochs with MMRec's patience of 20) and reports test
metrics beside MMRec's published Baby numbers. The same import runs in the DAG with
`datasets.baby_mmrec` (see the README's "Real datasets"). Takes about 1 minute for BPR and 10 minutes
for LightGCN on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import scipy.sparse as sp
import torch

from mmpipe.paths import PUBLISHED
from mmpipe.threads import use_threads
from models.core.base import TrainData
from models.core.data import load_split
from models.core.evaluator import evaluate
from models.core.registry import get_model, model_config
from models.core.trainer import TrainConfig, fit
from stages import download, ingest
from stages.common.params import load_params
from stages.report import load_published

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INTER = ROOT.parent / "shared/data/amazon-baby-mmrec/baby.inter"


def import_through_pipeline(inter: Path, work: Path) -> tuple[int, int, list[sp.csr_matrix]]:
    """Run the pipeline's own `download` (local mmrec source) and `ingest` (split kept) on the file."""
    params = load_params(ROOT / "params.yaml")
    params["datasets"]["baby_mmrec"] = {"source": "mmrec", "name": inter.stem, "path": str(inter.parent)}
    download.run("baby_mmrec", params, work / "raw")
    ingest.run("baby_mmrec", params, work / "raw", work / "processed")
    split = load_split(work / "processed/baby_mmrec", "warm")
    return split.n_users, split.n_items, [split.train, split.valid, split.test]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inter", type=Path, default=DEFAULT_INTER)
    parser.add_argument("--models", default="bpr,lightgcn")
    args = parser.parse_args(argv)
    if not args.inter.is_file():
        raise SystemExit(f"{args.inter}: not found; pass --inter with the path of MMRec's baby.inter")
    logging.basicConfig(level=logging.WARNING)
    use_threads(None)
    with tempfile.TemporaryDirectory() as work:
        n_users, n_items, (train, valid, test) = import_through_pipeline(args.inter, Path(work))
    print(f"{args.inter}: {n_users} users, {n_items} items, train/valid/test {train.nnz}/{valid.nnz}/{test.nnz}")
    params = load_params(ROOT / "params.yaml")
    published_table = load_published(ROOT / PUBLISHED)["mmrec-baby"].results
    print(f"{'model':9s} {'R@20':>7s} {'N@20':>7s} {'published':>16s} {'best epoch':>10s} {'s/epoch':>8s}")
    for name in args.models.split(","):
        cls = get_model(name)
        hp, trainer = model_config(name, params["train"][name])
        cfg = TrainConfig.from_params(params["train"]["common"], trainer, {"epochs": 400, "patience": 20})
        data = TrainData(n_users=n_users, n_items=n_items, train=train)
        torch.manual_seed(cfg.seed)
        model = cls(data, hp)
        start = time.perf_counter()
        result = fit(model, data, valid, cfg, logging.getLogger("bench"), progress=False)
        model.load_state_dict(result.best_state)
        model.eval()
        metrics, _ = evaluate(model.scorer(), train, test, [20])
        per_epoch = (time.perf_counter() - start) / len(result.history)
        pub = published_table.get(name)
        published = f"{pub['recall@20']:.4f}/{pub['ndcg@20']:.4f}" if pub else "-"
        print(f"{name:9s} {metrics['recall@20']:7.4f} {metrics['ndcg@20']:7.4f} {published:>16s} "
              f"{result.best_epoch:10d} {per_epoch:8.2f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
