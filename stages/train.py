"""Stage `train`: fit one model on one setting's training split; keep the best checkpoint by validation.

One stage per (dataset, model, setting[, feature set], seed of `pipeline.seeds`). Writes, under
`runs/<ds>/<model>/[<set>/]<setting>/seed-<n>/`:
`model.pt` (best state, hyperparameters, best epoch; byte-identical for equal weights, so a colleague's
re-run matches the remote's hash), `history.csv` (one row per epoch: loss, validation metrics,
seconds, for `dvc plots`), `train.json` (best epoch, best validation metrics: what evaluate reads, the
same bytes for the same training) and `train_times.json` (seconds; the report reads them).

The training protocol is `train.common` (MMRec's: 1000 epochs, patience 20), changed per dataset by
`train.datasets.<ds>` (the demo's short budget) and per model by `train.<model>.trainer`. The
`--group` flag is the dvc.yaml stage group that runs the model; it must match what the model reads
(`reads` in its file), or DVC would not track the model's inputs.

Group `e2e` (LMM4Rec's end-to-end paradigm, `pipeline.e2e_models`) trains a model with `end_to_end =
True` together with the dual encoder of `train.e2e` (`models/core/end_to_end.py`): the model reads the
items' text (items.parquet) and images (images.lmdb) through the encoder instead of a feature set, and
its run folder is `runs/<ds>/<model>/e2e/<setting>/seed-<n>/`. A kNN-based model (LATTICE) gets its item graph
from the encoder's initial features.

`train.processes: N` (N > 1) runs the stage as N torchrun processes with DistributedDataParallel (gloo
on the CPU, NCCL with one GPU each): the stage relaunches itself under torchrun, so dvc.yaml's command is
the same; each process trains on 1/N of every batch (`models/core/trainer.py`), rank 0 writes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mmpipe.config import ParamsError
from mmpipe.distributed import (
    finish_distributed,
    init_distributed,
    local_device,
    relaunch_under_torchrun,
    under_torchrun,
)
from mmpipe.io import csv_text, write_bytes, write_json, write_text
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import PROCESSED, RUNS
from mmpipe.threads import use_threads
from models.core.base import HParams
from models.core.end_to_end import EndToEnd
from models.core.registry import model_config
from models.core.trainer import TrainConfig, fit
from stages.common import pipeline
from stages.common.params import declared, load_params, run_stage, stage_parser
from stages.common.run import (
    E2E,
    E2E_KEYS,
    FLAGS,
    OPTIONAL_FLAGS,
    RunSpec,
    TrainRuntime,
    build_model,
    checkpoint_bytes,
    load_data,
    run_spec,
)

log = get_logger("train")


def param_keys(
    dataset: str, model: str, setting: str, group: str, seed: str, feature_set: str | None = None
) -> list[str]:
    keys = ["train.common", "train.datasets", "train.num_threads", "train.device", "train.processes", f"train.{model}"]
    return keys + (E2E_KEYS if group == E2E else []) + (["pipeline.modalities"] if group != "id" else [])


def training_config(spec: RunSpec, params: dict[str, Any]) -> tuple[HParams, TrainConfig]:
    """The model's validated hyperparameters and the trainer settings for this dataset and model."""
    train = (
        declared(params, param_keys(spec.dataset, spec.model, spec.setting, spec.group, str(spec.seed))).get("train")
        or {}
    )
    hp, trainer_overrides = model_config(spec.model, train.get(spec.model), spec.setting)
    per_dataset = train.get("datasets") or {}
    if not isinstance(per_dataset, Mapping):
        raise ParamsError(
            f"params.yaml: train.datasets = {per_dataset!r}: expected a mapping of dataset -> train.common keys"
        )
    blocks = {
        "train.common": train.get("common"),
        f"train.datasets.{spec.dataset}": per_dataset.get(spec.dataset),
        f"train.{spec.model}.trainer": trainer_overrides,
    }
    if spec.group == E2E:
        blocks["train.e2e.trainer"] = (train.get("e2e") or {}).get("trainer")
    for key, block in blocks.items():
        pipeline.refuse_seed(block, key)
    where = f"{next(iter(blocks))} (+ {', '.join(list(blocks)[1:])})"
    cfg = TrainConfig.from_params(*blocks.values(), where=where)
    return hp, replace(cfg, seed=spec.seed)


def run(
    dataset: str,
    model: str,
    setting: str,
    group: str,
    seed: int,
    params: dict[str, Any],
    feature_set: str | None = None,
    processed: Path = PROCESSED,
    runs: Path = RUNS,
) -> dict[str, Any]:
    start = time.perf_counter()
    spec = run_spec(dataset, model, setting, group, seed, feature_set, params, runs)
    hp, cfg = training_config(spec, params)
    use_threads(spec.num_threads)
    data, split = load_data(spec, processed)

    device = local_device(spec.device)
    rank, world = init_distributed(device)
    torch.manual_seed(cfg.seed)
    net = build_model(spec, data, hp, params, processed).move_to(device)
    result = fit(net, data, split.valid, cfg, log, progress=not progress_disabled(), num_threads=spec.num_threads)
    files = spec.files
    epochs = [r for r in result.history if r.get("train_seconds")]
    summary = {
        "model": model,
        "setting": setting,
        "seed": spec.seed,
        "feature_set": spec.feature_set,
        "device": str(spec.device),
        "processes": world,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "best_valid": {k: round(v, 6) for k, v in result.best_valid.items()},
        "encoder_params_trained": net.trained_encoder_params() if isinstance(net, EndToEnd) else 0,
    }
    times = {
        "seconds_per_epoch": round(sum(r["train_seconds"] for r in epochs) / len(epochs), 4) if epochs else 0.0,
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    if rank != 0:  # every process holds the same weights and history; one writes them
        finish_distributed()
        return summary
    write_bytes(files.checkpoint, checkpoint_bytes(result.best_state, hp, result.best_epoch))
    write_text(files.history, csv_text(result.history))
    write_json(files.train_summary, summary)
    write_json(files.train_times, times)
    finish_distributed()
    log.info(
        "%s: best valid %s %.4f at epoch %d of %d (%.3f s/epoch), %.1f s",
        spec.label, cfg.valid_metric, result.best_valid.get(cfg.valid_metric, float("nan")), result.best_epoch,
        len(result.history), times["seconds_per_epoch"], times["train_seconds"],
    )  # fmt: skip
    return {**summary, **times}


def requested_processes(argv: list[str]) -> int:
    """`train.processes` of the params file the command line names (1 when unset)."""
    args, _ = stage_parser("", optional=FLAGS + OPTIONAL_FLAGS).parse_known_args(argv)
    return TrainRuntime.of(load_params(args.params)).processes


def main(argv: list[str] | None = None) -> int:
    """With train.processes > 1, the stage relaunches itself as that many torchrun processes (DDP)."""
    argv = sys.argv[1:] if argv is None else argv
    processes = requested_processes(argv)
    if processes > 1 and not under_torchrun():
        return relaunch_under_torchrun(processes, "stages.train", argv)
    return run_stage(__doc__, run, FLAGS, argv, optional=OPTIONAL_FLAGS, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
