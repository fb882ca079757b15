"""PMMRec's loss ablation on the demo target: each of NICL, NID and RCL switched off, from scratch.

Runs the transfer stage's code for the variants `scratch`, `no_nicl`, `no_nid`, `no_rcl`,
`next_item_only` of params.yaml (seq.variants) on `pipeline.transfer_targets[0]`, writing into a
temporary folder (the workspace's runs/ are not touched), and prints test HR/NDCG@10 and s/epoch, the
mean and the standard deviation over `--seeds` seeds (the demo target is small: one seed's differences
are mostly noise).
Needs the target's processed data and the demo encoders: run `dvc repro` first.

    python -m bench.pmmrec_ablation
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from mmpipe.io import read_json
from mmpipe.paths import RunFiles, run_dir
from profiles.apply import with_profile
from stages import transfer

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("scratch", "no_nicl", "no_nid", "no_rcl", "next_item_only")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    logging.getLogger("mmpipe").setLevel(logging.WARNING)
    params = with_profile(yaml.safe_load((ROOT / "params.yaml").read_text()), "full")
    target = params["pipeline"]["transfer_targets"][0]
    print(f"{target}, from scratch, seq.train as in params.yaml")
    print(f"{'variant':15s} {'losses':20s} {'HR@10':>15s} {'NDCG@10':>15s} {'s/epoch':>8s}   ({args.seeds} seeds)")
    base_seed = params["pipeline"]["seeds"][0]
    for variant in args.variants.split(","):
        hr, ndcg, speed = [], [], []
        for seed in range(base_seed, base_seed + args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                summary = transfer.run(target, "pmmrec", variant, seed, params, ROOT / "processed", Path(tmp))
                result = read_json(RunFiles(run_dir(target, "pmmrec", variant, seed, runs=Path(tmp))).evaluation)
            hr.append(result["test"]["hr@10"])
            ndcg.append(result["test"]["ndcg@10"])
            speed.append(summary["seconds_per_epoch"])
        weights = {**params["train"]["pmmrec"], **params["seq"]["variants"][variant].get("overrides", {})}
        keys = (("next", "next_item_weight"), ("NICL", "nicl_weight"), ("NID", "nid_weight"), ("RCL", "rcl_weight"))
        losses = "+".join(name for name, key in keys if weights[key] > 0)
        print(
            f"{variant:15s} {losses:20s} {np.mean(hr):7.4f}+-{np.std(hr):.4f} {np.mean(ndcg):7.4f}+-{np.std(ndcg):.4f} "
            f"{np.mean(speed):8.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
