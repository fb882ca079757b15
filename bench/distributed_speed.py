"""The distributed engines on this machine: feature extraction on Ray, training under torchrun (DDP).

1. Features: the demo's `clip` image features (the demo CLIP, every item encoded: the cache is emptied
   before each run) with the local engine and on a local Ray with 1 and 2 encoder actors, once with the
   stage starting Ray itself and once joining a Ray already running (as on a cluster); prints items/s of
   the stage and the ratios to the local engine.
2. Training: LightGCN on the demo through the train stage (`python -m stages.train`, as dvc runs it) with
   `train.processes` 1 and 2 (torchrun, DDP over gloo), `--epochs` epochs; prints s/epoch, the ratio,
   and best valid Recall@20 of each.
Needs the demo's processed data and encoders: run `dvc repro` first. Both write into a temporary folder.

    python -m bench.distributed_speed [--epochs 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mmpipe.io import read_json
from mmpipe.paths import PROCESSED, RUNS, DatasetDir, RunFiles, run_dir
from profiles.apply import with_profile
from stages import features

ROOT = Path(__file__).resolve().parents[1]


def feature_run(params: dict, processed: Path, engine: str, workers: int) -> tuple[float, int]:
    """(seconds, items encoded) of the clip image features with an empty cache."""
    params["features"].update(engine=engine, ray={**params["features"]["ray"], "workers": workers})
    cache = processed / "demo/feature_cache/clip-image.lmdb"
    if cache.exists():
        cache.unlink()
    start = time.perf_counter()
    stats = features.run("demo", "clip", "image", params, processed)
    return time.perf_counter() - start, stats["encoded"]


def train_run(params: dict, work: Path, processes: int) -> dict:
    """The train stage's train.json and train_times.json for LightGCN with `processes` processes."""
    params["train"]["processes"] = processes
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MMPIPE_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    seed = params["pipeline"]["seeds"][0]
    command = [sys.executable, "-m", "stages.train", "--dataset", "demo", "--model", "lightgcn", "--setting",
               "warm", "--group", "id", "--seed", str(seed)]  # fmt: skip
    subprocess.run(command, cwd=work, env=env, check=True, stderr=subprocess.DEVNULL)
    run = RunFiles(run_dir("demo", "lightgcn", "warm", seed, runs=work / RUNS))
    return {**read_json(run.train_summary), **read_json(run.train_times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    logging.getLogger("mmpipe").setLevel(logging.WARNING)
    params = with_profile(yaml.safe_load((ROOT / "params.yaml").read_text()), "full")
    with tempfile.TemporaryDirectory() as tmp:
        processed = Path(tmp) / "processed"
        (processed / "demo").mkdir(parents=True)
        demo, copy = DatasetDir.of("demo", ROOT / PROCESSED), DatasetDir.of("demo", processed)
        for source, target in ((demo.items, copy.items), (demo.images, copy.images)):
            shutil.copy(source, target)
        print(f"{'features (demo clip, image)':32s} {'seconds':>8s} {'items/s':>8s} {'vs local':>9s}")
        local_rate = None
        for engine, workers in (("local", 1), ("ray", 1), ("ray", 2)):
            seconds, items = feature_run(params, processed, engine, workers)
            rate = items / seconds
            local_rate = local_rate or rate
            label = "local engine (1 process)" if engine == "local" else f"ray, {workers} actor(s), started"
            print(f"{label:32s} {seconds:8.1f} {rate:8.1f} {rate / local_rate:8.2f}x", flush=True)
        import ray  # a Ray already running (as on a cluster): the stage joins it, no start-up in the timing

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        for workers in (1, 2):
            seconds, items = feature_run(params, processed, "ray", workers)
            rate = items / seconds
            print(f"{f'ray, {workers} actor(s), running':32s} {seconds:8.1f} {rate:8.1f} {rate / local_rate:8.2f}x")
        ray.shutdown()

        params["train"]["common"].update(epochs=args.epochs, patience=args.epochs)
        params["train"]["datasets"] = {"demo": {}}
        print(f"\n{'LightGCN on the demo':32s} {'s/epoch':>8s} {'vs 1':>8s} {'valid R@20':>11s}")
        base = None
        for processes in (1, 2):
            work = Path(tmp) / f"train{processes}"
            work.mkdir()
            (work / "processed").symlink_to(ROOT / "processed")
            summary = train_run(params, work, processes)
            s_epoch = summary["seconds_per_epoch"]
            base = base or s_epoch
            label = f"{processes} process(es) (DDP, gloo)" if processes > 1 else "1 process"
            print(f"{label:32s} {s_epoch:8.3f} {base / s_epoch:7.2f}x {summary['best_valid']['recall@20']:11.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
