"""Run every benchmark in bench/, one after the other (`make bench`)."""

from __future__ import annotations

import sys

from bench import (
    distributed_speed,
    features_speed,
    graphs_knn,
    image_purity,
    ingest_scale,
    lmm4rec_speed,
    mmrec_baby,
    models_speed,
    pipeline_timing,
    pmmrec_ablation,
    pmmrec_real,
)
from mmpipe.paths import PROCESSED, DatasetDir

BENCHMARKS = [
    ("pipeline_timing: where `dvc repro` spends its time, tour and full size (about 20 minutes)", pipeline_timing.main),
    ("features_speed: items/s per encoder, batched vs naive; cache counters", features_speed.main),
    (
        "image_purity: kNN purity of each feature set's image vectors by category (the tour's outputs)",
        image_purity.main,
    ),
    ("models_speed: seconds per training epoch and per full-ranking evaluation", models_speed.main),
    ("ingest_scale: ingest of 10M review + 1M meta lines (2014 format, gzip); lines/s, peak RSS", ingest_scale.main),
    ("graphs_knn: blockwise kNN on 200,000 x 512 vs dense N x N (about 8 minutes)", graphs_knn.main),
    (
        "distributed_speed: features on Ray (1, 2 actors) vs local; LightGCN with 1 and 2 DDP processes",
        distributed_speed.main,
    ),
    ("lmm4rec_speed: end-to-end training s/epoch and items/s; ViT-B/32 projection on Baby", lmm4rec_speed.main),
]
ABLATION = "pmmrec_ablation: PMMRec's losses off one at a time on demo_b, 3 seeds (about 5 minutes)"
REAL_DATA = ("mmrec_baby: BPR and LightGCN on real Amazon Baby vs MMRec's table (about 12 minutes)", mmrec_baby.main)


def main() -> int:
    for title, run in BENCHMARKS:
        print(f"\n== {title} ==", flush=True)
        run([])
    print(f"\n== {ABLATION} ==", flush=True)
    if DatasetDir.of("demo_b", pmmrec_ablation.ROOT / PROCESSED).interactions.is_file():
        pmmrec_ablation.main([])
    else:
        print("not run: the workspace has no processed/demo_b yet (run `dvc repro` first)")
    title, run = REAL_DATA
    print(f"\n== {title} ==", flush=True)
    if mmrec_baby.DEFAULT_INTER.is_file():
        run([])
    else:
        print(f"not run: {mmrec_baby.DEFAULT_INTER} is not here (real data, not shipped with the project)")
    for dataset, minutes in (("scientific", 17), ("beauty", 4)):
        print(f"\n== pmmrec_real {dataset}: SASRec / PMMRec on real sequences (about {minutes} minutes) ==", flush=True)
        if pmmrec_real.DATA.is_dir():
            pmmrec_real.main(["--dataset", dataset])
        else:
            print(f"not run: {pmmrec_real.DATA} is not here (real data, not shipped with the project)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
