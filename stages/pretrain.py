"""Stage `pretrain`: pre-train a sequential model (PMMRec) on the source datasets; its checkpoint is what
`transfer` starts from.

`python -m stages.pretrain --model pmmrec` (any model of `pipeline.pretrain_models`: the sequential
family, models/seq/base.py) trains on the sequences of every dataset of `pipeline.pretrain_sources`
together, as one catalogue (each source's items after the previous source's; PMMRec's multi-domain
pre-training), with `seq.train` changed by `seq.pretrain` and the model's `train.<model>` block, keeps the
best epoch by the sources' validation metric, and writes `runs/pretrain/<model>/`: `model.pt` (state,
hyperparameters, best epoch), `history.csv`, `train.json`. Before training it checks that each source's
files still have the hashes its `pretrain_input` stage recorded (dvc.yaml tracks the sources through
those records). Runs on one process, or under `torchrun --nproc_per_node N -m stages.pretrain ...` with
DistributedDataParallel; only rank 0 writes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from mmpipe.config import ParamsError, coerce
from mmpipe.distributed import finish_distributed, init_distributed
from mmpipe.io import read_json
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import PROCESSED, RUNS, DatasetDir, pretrain_dir, pretrain_input
from mmpipe.threads import use_threads
from models.seq.data import sequence_input_hashes
from models.seq.trainer import fit_sequential
from stages.common import sequential
from stages.common.params import declared, run_stage

log = get_logger("pretrain")


def param_keys(model: str) -> list[str]:
    return [*sequential.common_keys(model), "seq.pretrain", "pipeline.pretrain_sources"]


def sources(params: dict[str, Any]) -> tuple[str, ...]:
    found = coerce((params.get("pipeline") or {}).get("pretrain_sources"), tuple[str, ...], "pipeline.pretrain_sources")
    if not found:
        raise ParamsError("params.yaml: pipeline.pretrain_sources is empty: name the datasets to pre-train on")
    return found


def check_inputs(source: str, processed: Path, runs: Path) -> None:
    """Stop when a source's files are not those its pretrain_input record hashed (DVC tracks the record)."""
    record_path = pretrain_input(source, runs)
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: not found (run the pretrain_input stage for {source} first)")
    recorded = read_json(record_path).get("sha256", {})
    now = sequence_input_hashes(DatasetDir.of(source, processed))
    changed = [name for name in now if recorded.get(name) != now[name]]
    if changed:
        raise ValueError(
            f"{record_path}: {source}'s {', '.join(changed)} changed since it was recorded; run "
            f"`dvc repro pretrain_input@{source}` (or the whole pipeline) first"
        )


def run(model: str, params: dict[str, Any], processed: Path = PROCESSED, runs: Path = RUNS) -> dict[str, Any]:
    cls = sequential.model_class(model)
    start = time.perf_counter()
    params = declared(params, param_keys(model))
    names = sources(params)
    for source in names:
        check_inputs(source, processed, runs)
    hp = sequential.model_hparams(params, model)
    cfg = sequential.train_config(params, (params.get("seq") or {}).get("pretrain"), where="seq.train (+ seq.pretrain)")
    device, threads, allow_download = sequential.runtime(params)
    use_threads(threads)
    rank, world = init_distributed(device)
    dirs = [DatasetDir.of(s, processed) for s in names]
    seqs, data, info = sequential.load_datasets(dirs, model, hp, cfg.max_seq_len, allow_download)
    torch.manual_seed(cfg.seed)  # the same initial weights whatever ran before in this process
    net = cls(data, hp, cfg.max_seq_len).move_to(device)
    result = fit_sequential(net, seqs, cfg, log, progress=not progress_disabled(), num_threads=threads)
    summary = {"sources": list(names), "device": str(device), "processes": world, **info,
               **net.encoder_params()}  # fmt: skip
    summary["train_seconds"] = round(time.perf_counter() - start, 2)
    if rank == 0:
        sequential.write_run(pretrain_dir(model, runs), result, hp, cfg, summary)
        log.info(
            "%s: pre-trained %d epochs (best %d, valid %s %.4f), %.1f s",
            "+".join(names), len(result.history), result.best_epoch, cfg.valid_metric,
            result.best_valid.get(cfg.valid_metric, float("nan")), summary["train_seconds"],
        )  # fmt: skip
    finish_distributed()  # every process waits for rank 0 to have written
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("model",), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
