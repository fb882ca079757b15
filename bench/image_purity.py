"""How well each feature set's image vectors separate the items' categories: kNN purity.

`python -m bench.image_purity [--dataset demo] [--k 10]` reads the pipeline's outputs
(`processed/<ds>/items.parquet` and `processed/<ds>/features/<set>/image.parquet` of every feature set
built) and prints, per set, the share of each item's k nearest neighbours (cosine, itself excluded) that
share its category (the second level of `categories`, e.g. Baby > Toys), over the items that have an
image and a category, beside chance (the sum of squared category shares). On the demo, whose images are
drawn shapes and colours per category, it tells whether an image encoder sees those at all.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mmpipe.io import read_parquet
from mmpipe.paths import DatasetDir
from mmpipe.schemas import read_features


def knn_purity(matrix: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean share of each row's k nearest rows (cosine, itself excluded) with the row's own label."""
    x = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    neighbours = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return float((labels[neighbours] == labels[:, None]).mean())


def category_labels(categories: list) -> np.ndarray:
    """The second level of each item's category path ('' when it has none)."""
    return np.array([str(c[1]) if c is not None and len(c) > 1 else "" for c in categories])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    ds = DatasetDir.of(args.dataset)
    root = ds.root
    labels = category_labels(read_parquet(ds.items, columns=["categories"])["categories"].to_pylist())
    sets = sorted(p.parent.name for p in (root / "features").glob("*/image.parquet"))
    if not sets:
        print(f"no image features under {root / 'features'}: run the pipeline first (dvc repro)", file=sys.stderr)
        return 1
    print(f"{args.dataset}: kNN purity of the image features by category (k = {args.k})")
    for name in sets:
        matrix, has_input = read_features(root / "features" / name / "image.parquet")
        keep = has_input & (labels != "")
        _, counts = np.unique(labels[keep], return_counts=True)
        chance = float(((counts / counts.sum()) ** 2).sum())
        purity = knn_purity(matrix[keep], labels[keep], args.k)
        items = int(keep.sum())
        print(f"  {name:10s} dim {matrix.shape[1]:5d}  items {items}  purity {purity:.3f}  (chance {chance:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
