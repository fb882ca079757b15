"""Stage `transfer`: fine-tune a sequential model (PMMRec, or its SASRec / single-modality variants) on a
target dataset, starting from its pre-trained checkpoint or from scratch, and evaluate it on the
target's test users.

`python -m stages.transfer --target <ds> --model <m> --variant <v> --seed <n>`; the variant (`seq.variants.<v>`)
sets `pretrain_part` (none: from scratch; full, item_encoder, user_encoder: PMMRec's three ways to
transfer from `runs/pretrain/<m>/model.pt`, loading only tensors whose name and shape match),
`overrides` of `train.<m>` (e.g. item_tower: id for SASRec, text or image for the single-modality
settings) and `train` changes to `seq.train`. Writes `runs/<target>/<m>/<variant>/seed-<n>/` (one run
per seed of pipeline.seeds, all from the one pre-trained model): `model.pt`, `history.csv`,
`train.json`, `evaluation.json` (HR and NDCG at every K, valid and test), `metrics.json` (the headline:
HR@10 and NDCG@10, test and best validation), `topk.parquet` and `per_user.parquet` (each test user's
HR and NDCG, for the report's paired tests).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from mmpipe.distributed import finish_distributed, init_distributed
from mmpipe.io import write_json, write_parquet
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import PROCESSED, RUNS, DatasetDir, RunFiles, pretrain_dir, run_dir
from mmpipe.threads import use_threads
from models.core.evaluator import per_user_metrics
from models.seq.trainer import fit_sequential, rank_users
from stages.common import pipeline, sequential
from stages.common.params import declared, run_stage

log = get_logger("transfer")

HEADLINE = ("hr@10", "ndcg@10")  # PMMRec's metrics


def param_keys(target: str, model: str, variant: str, seed: str) -> list[str]:
    return [*sequential.common_keys(model), f"seq.variants.{variant}"]


def run(
    target: str,
    model: str,
    variant: str,
    seed: int,
    params: dict[str, Any],
    processed: Path = PROCESSED,
    runs: Path = RUNS,
) -> dict[str, Any]:
    start = time.perf_counter()
    seed = pipeline.seed_arg(seed)
    cls = sequential.model_class(model, "pipeline.pretrain_models (transferred)")
    params = declared(params, param_keys(target, model, variant, str(seed)))
    spec = sequential.read_variant(params, variant)
    hp = sequential.model_hparams(params, model, spec.overrides)
    cfg = sequential.train_config(params, spec.train, where=f"seq.train (+ seq.variants.{variant}.train)", seed=seed)
    device, threads, allow_download = sequential.runtime(params)
    use_threads(threads)
    rank, world = init_distributed(device)
    ds = DatasetDir.of(target, processed)
    seqs, data, info = sequential.load_dataset(ds, model, hp, cfg.max_seq_len, allow_download)
    torch.manual_seed(cfg.seed)  # the same initial weights whatever ran before in this process
    net = cls(data, hp, cfg.max_seq_len)
    copied: list[str] = []
    sources = None
    if spec.pretrain_part != "none":
        path = RunFiles(pretrain_dir(model, runs)).checkpoint
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no pre-trained {model} (run the pretrain stage first)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        sources = checkpoint.get("sources")
        copied = net.load_pretrained(checkpoint["state_dict"], spec.pretrain_part)
    net.move_to(device)
    result = fit_sequential(net, seqs, cfg, log, progress=not progress_disabled(), num_threads=threads)
    net.load_state_dict(result.best_state)
    test, ranking = rank_users(net, seqs, "test", sorted(set(cfg.ks)), cfg.eval_batch_users)
    summary = {
        "target": target,
        "variant": variant,
        "seed": seed,
        "sources": sources,
        "pretrain_part": spec.pretrain_part,
        "item_tower": cls.item_tower(hp),
        "tensors_transferred": len(copied),
        "device": str(device),
        "processes": world,
        **info,
        **net.encoder_params(),
    }
    summary["train_seconds"] = round(time.perf_counter() - start, 2)
    if rank == 0:
        out = run_dir(target, model, variant, seed, runs=runs)
        files = RunFiles(out)
        sequential.write_run(out, result, hp, cfg, summary)
        evaluation = {**summary, "test": {k: round(v, 6) for k, v in test.items()}, "valid": summary["best_valid"]}
        write_json(files.evaluation, evaluation)
        write_json(files.metrics, {
            "test": {k: round(test[k], 6) for k in HEADLINE}, "valid": {k: summary["best_valid"][k] for k in HEADLINE},
        })  # fmt: skip
        n, k = ranking.topk.shape
        users = seqs.users[ranking.users].astype(np.int32)
        write_parquet(
            files.topk,
            pa.table({
                "user_idx": pa.array(np.repeat(users, k)),
                "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int16), n)),
                "item_idx": pa.array(ranking.topk.reshape(-1).astype(np.int32)),
                "score": pa.array(ranking.scores.reshape(-1).astype(np.float32)),
            }),
        )  # fmt: skip
        per_user = per_user_metrics(ranking.hits, ranking.n_relevant, sorted(set(cfg.ks)))
        columns = {"user_idx": pa.array(users)}  # HR@K of one target is its Recall@K
        for name, values in sorted(per_user.items()):
            if name.split("@")[0] in ("recall", "ndcg"):
                columns[name.replace("recall@", "hr@")] = pa.array(values.astype(np.float32))
        write_parquet(files.per_user, pa.table(columns))
        log.info(
            "%s/%s (%s): test HR@10 %.4f, NDCG@10 %.4f (best epoch %d of %d, %d tensors transferred), %.1f s",
            target, variant, spec.pretrain_part, test["hr@10"], test["ndcg@10"], result.best_epoch,
            len(result.history), len(copied), summary["train_seconds"],
        )  # fmt: skip
    finish_distributed()  # every process waits for rank 0 to have written
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("target", "model", "variant", "seed"), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
