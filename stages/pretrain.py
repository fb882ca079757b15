"""Stage `pretrain`: pre-train PMMRec on a source dataset; its checkpoint is what `transfer` starts from.

`python -m stages.pretrain --source <ds>` trains on the source's sequences (`seq.train`, changed by
`seq.pretrain`) with every loss of `train.pmmrec`, keeps the best epoch by the source's own validation
metric, and writes `runs/<ds>/pmmrec/pretrain/`: `model.pt` (state, hyperparameters, best epoch),
`history.csv`, `train.json`. Runs on one process, or under `torchrun --nproc_per_node N -m
stages.pretrain ...` with DistributedDataParallel (gloo on the CPU, NCCL on GPUs); only rank 0 writes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from mmpipe.distributed import finish_distributed, init_distributed
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import PROCESSED, RUNS, DatasetDir, run_dir
from mmpipe.threads import use_threads
from models.pmmrec import PMMRec
from models.seq.trainer import fit_sequential
from stages.common import sequential
from stages.common.params import declared, run_stage

log = get_logger("pretrain")


def param_keys(source: str) -> list[str]:
    return [*sequential.common_keys(), "seq.pretrain"]


def run(source: str, params: dict[str, Any], processed: Path = PROCESSED, runs: Path = RUNS) -> dict[str, Any]:
    start = time.perf_counter()
    params = declared(params, param_keys(source))
    hp = sequential.model_hparams(params)
    cfg = sequential.train_config(params, (params.get("seq") or {}).get("pretrain"), where="seq.train (+ seq.pretrain)")
    device, threads, allow_download = sequential.runtime(params)
    use_threads(threads)
    rank, world = init_distributed(device)
    seqs, data, info = sequential.load_dataset(DatasetDir.of(source, processed), hp, cfg.max_seq_len, allow_download)
    torch.manual_seed(cfg.seed)  # the same initial weights whatever ran before in this process
    model = PMMRec(data, hp, cfg.max_seq_len).move_to(device)
    result = fit_sequential(model, seqs, cfg, log, progress=not progress_disabled(), num_threads=threads)
    summary = {"source": source, "device": str(device), "processes": world, **info, **sequential.encoder_params(model)}
    summary["train_seconds"] = round(time.perf_counter() - start, 2)
    if rank == 0:
        sequential.write_run(run_dir(source, sequential.MODEL, "pretrain", runs=runs), result, hp, cfg, summary)
        log.info(
            "%s: pre-trained %d epochs (best %d, valid %s %.4f), %.1f s",
            source, len(result.history), result.best_epoch, cfg.valid_metric,
            result.best_valid.get(cfg.valid_metric, float("nan")), summary["train_seconds"],
        )  # fmt: skip
    finish_distributed()  # every process waits for rank 0 to have written
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("source",), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
