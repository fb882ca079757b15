"""Stage `evaluate`: full-ranking test metrics of a trained model -> `metrics.json` and `topk.parquet`.

Warm setting: test users of interactions.parquet, ranked over all items with their training items
masked. Cold setting: the MICRO protocol, test interactions are those with cold items (never seen
in training), ranked over all items with training items masked. ID-only models cannot rank unseen
items; their warm metrics.json says so instead of reporting zeros for cold-start.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from models.data import load_train_data
from models.evaluator import evaluate
from stages.common.io import write_json, write_parquet
from stages.common.log import get_logger
from stages.common.params import ParamsError, get
from stages.train import model_for_stage, model_stage_main, run_dir

log = get_logger("evaluate")


def run(
    dataset: str,
    model_name: str,
    setting: str,
    group: str,
    params: dict[str, Any],
    out_root: Path = Path("processed"),
    runs_root: Path = Path("runs"),
) -> dict[str, Any]:
    start = time.perf_counter()
    cls = model_for_stage(model_name, setting, group, params)
    ks = sorted(int(k) for k in get(params, "evaluate.topk"))
    if not ks or ks[0] < 1:
        raise ParamsError(f"params.yaml: evaluate.topk must be positive integers, got {ks}")
    out_dir = run_dir(dataset, model_name, setting, runs_root)
    checkpoint_path = out_dir / "model.pt"
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path}: no trained model (run train for {model_name}/{setting} first)")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)

    data, split = load_train_data(out_root / dataset, setting, cls.group, dict(get(params, "features.modalities")))
    model = cls(data, checkpoint["hp"])
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    metrics, ranking = evaluate(model.scorer(), split.train, split.test, ks, int(get(params, "evaluate.batch_users")))

    test_users = np.flatnonzero(np.diff(split.test.indptr) > 0)
    summary = checkpoint["summary"]
    result: dict[str, Any] = {
        "model": model_name,
        "setting": setting,
        "test": {k: round(v, 6) for k, v in metrics.items()},
        "users_evaluated": len(ranking.users),
        "users_skipped_no_train": int(len(test_users) - len(ranking.users)),
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "seconds_per_epoch": summary["seconds_per_epoch"],
        "eval_seconds": 0.0,
        "scores_cold_items": cls.scores_cold_items,
        "dataset_stats": {
            "users": split.n_users,
            "items": split.n_items,
            "train": int(split.train.nnz),
            "valid": int(split.valid.nnz),
            "test": int(split.test.nnz),
        },
    }
    if not cls.scores_cold_items:
        result["cold_start"] = "not supported (ID-only model: cannot rank items unseen in training)"

    n, k = ranking.topk.shape
    write_parquet(
        out_dir / "topk.parquet",
        pa.table(
            {
                "user_idx": pa.array(np.repeat(ranking.users, k).astype(np.int32)),
                "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int16), n)),
                "item_idx": pa.array(ranking.topk.reshape(-1).astype(np.int32)),
                "score": pa.array(ranking.scores.reshape(-1).astype(np.float32)),
            }
        ),
    )
    result["eval_seconds"] = round(time.perf_counter() - start, 2)
    write_json(out_dir / "metrics.json", result)
    log.info(
        "%s/%s/%s: %d users, recall@20 %.4f, ndcg@20 %.4f (%.1f s)",
        dataset,
        model_name,
        setting,
        len(ranking.users),
        metrics.get("recall@20", float("nan")),
        metrics.get("ndcg@20", float("nan")),
        result["eval_seconds"],
    )
    return result


def main(argv: list[str] | None = None) -> int:
    return model_stage_main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
