"""Stage `evaluate`: full-ranking test metrics of a trained model -> `metrics.json`, `evaluation.json`,
`topk.parquet` (each user's ranked list) and `per_user.parquet` (each user's metrics, for paired tests).

Warm setting: test users of interactions.parquet, ranked over all items with their training items
masked. Cold setting: the MICRO protocol, test interactions are those with cold items (never seen
in training), ranked over all items with training items masked. ID-only models cannot rank unseen
items; their evaluation.json says so instead of reporting zeros for cold-start.

Before the test split is scored, the loaded checkpoint is scored on the validation split and must give
the best validation metrics train.json recorded: the test numbers are then those of the epoch that was
selected, not of whatever weights the file holds.

`metrics.json` holds the headline numbers only (test and best-validation Recall@20 / NDCG@20, or
whatever `train.common.valid_metric` names), so `dvc metrics show` and `dvc exp show` stay readable;
choose experiments on `valid`, report `test`. `evaluation.json` beside it has every metric at every
cut-off of `evaluate.topk`, the user counts and the timings.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mmpipe.io import read_json, write_json, write_parquet
from mmpipe.log import get_logger
from mmpipe.paths import PROCESSED, RUNS
from mmpipe.threads import use_threads
from models.core.evaluator import EvaluateConfig, check_cutoffs, evaluate, per_user_metrics
from stages.common.params import declared, run_stage
from stages.common.run import E2E, E2E_KEYS, FLAGS, OPTIONAL_FLAGS, build_model, load_checkpoint, load_data, run_spec

log = get_logger("evaluate")

HEADLINE = ("recall@20", "ndcg@20")  # the metrics published tables give; always in metrics.json
# train.json rounds to 6 digits; a re-scored value may differ by that rounding, no more.
RESCORE_TOLERANCE = 1.5e-6


def check_best_weights(recomputed: dict[str, float], recorded: dict[str, float], where: str) -> None:
    """The saved weights must reproduce the best validation metrics train.json recorded.

    The trainer keeps a copy of the weights of its best epoch; if the checkpoint held another epoch's
    weights (or a model scored differently after loading), the test numbers would belong to a model that
    was never selected. Every recorded metric is compared, so a near-tie on the selection metric alone
    does not hide it.
    """
    wrong = {
        k: (recorded[k], round(recomputed[k], 6))
        for k in recorded
        if abs(recorded[k] - recomputed[k]) > RESCORE_TOLERANCE
    }
    if wrong:
        shown = ", ".join(f"{k} recorded {a} vs {b} now" for k, (a, b) in sorted(wrong.items()))
        raise RuntimeError(
            f"{where}: the saved weights do not reproduce the best validation metrics of train.json ({shown}); "
            f"the checkpoint is not the selected epoch's: re-run its train stage (dvc repro -f <train stage>)"
        )


def param_keys(
    dataset: str, model: str, setting: str, group: str, seed: str, feature_set: str | None = None
) -> list[str]:
    keys = ["evaluate", "train.num_threads", "train.device"]
    return keys + (E2E_KEYS if group == E2E else []) + (["pipeline.modalities"] if group != "id" else [])


def headline(test: dict[str, float], valid: dict[str, float]) -> dict[str, dict[str, float]]:
    """The few numbers metrics.json carries: test and validation values of the headline metrics."""
    keys = [k for k in HEADLINE if k in test] or sorted(test)[:2]
    return {
        "test": {k: round(test[k], 6) for k in keys},
        "valid": {k: round(valid[k], 6) for k in HEADLINE if k in valid},
    }


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
    declared_params = declared(params, param_keys(dataset, model, setting, group, str(seed), feature_set))
    cfg = EvaluateConfig.parse(declared_params.get("evaluate"), "evaluate")
    spec = run_spec(dataset, model, setting, group, seed, feature_set, declared_params, runs)
    use_threads(spec.num_threads)
    files = spec.files
    checkpoint = load_checkpoint(spec)
    summary = read_json(files.train_summary)

    data, split = load_data(spec, processed)
    check_cutoffs(cfg.topk, split.n_items, "evaluate.topk")
    hp = spec.cls.HParams.parse(checkpoint["hp"], f"{files.checkpoint} hp")
    net = build_model(spec, data, hp, declared_params, processed)
    net.load_state_dict(checkpoint["state_dict"])
    net.move_to(spec.device).eval()
    scorer = net.scorer()
    recorded = summary["best_valid"]
    valid_ks = sorted({int(k.partition("@")[2]) for k in recorded})
    rescored, _ = evaluate(scorer, split.train, split.valid, valid_ks, cfg.batch_users, spec.device)
    check_best_weights(rescored, recorded, str(files.checkpoint))
    ks = sorted(set(cfg.topk))
    metrics, ranking = evaluate(scorer, split.train, split.test, ks, cfg.batch_users, spec.device)
    per_user = per_user_metrics(ranking.hits, ranking.n_relevant, ks)

    test_users = np.flatnonzero(np.diff(split.test.indptr) > 0)
    result: dict[str, Any] = {
        "model": model,
        "setting": setting,
        "seed": spec.seed,
        "feature_set": spec.feature_set,
        "test": {k: round(v, 6) for k, v in metrics.items()},
        "valid": summary["best_valid"],
        "users_evaluated": len(ranking.users),
        "users_skipped_no_train": int(len(test_users) - len(ranking.users)),
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "encoder_params_trained": summary.get("encoder_params_trained", 0),
        "eval_seconds": 0.0,
        "scores_cold_items": spec.cls.scores_cold_items,
        "dataset_stats": {
            "users": split.n_users,
            "items": split.n_items,
            "train": int(split.train.nnz),
            "valid": int(split.valid.nnz),
            "test": int(split.test.nnz),
        },
    }
    if not spec.cls.scores_cold_items:
        result["cold_start"] = "not supported (ID-only model: cannot rank items unseen in training)"

    n, k = ranking.topk.shape
    write_parquet(
        files.topk,
        pa.table(
            {
                "user_idx": pa.array(np.repeat(ranking.users, k).astype(np.int32)),
                "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int16), n)),
                "item_idx": pa.array(ranking.topk.reshape(-1).astype(np.int32)),
                "score": pa.array(ranking.scores.reshape(-1).astype(np.float32)),
            }
        ),
    )
    write_parquet(
        files.per_user,
        pa.table(
            {
                "user_idx": pa.array(ranking.users.astype(np.int32)),
                **{name: pa.array(values.astype(np.float32)) for name, values in sorted(per_user.items())},
            }
        ),
    )
    result["eval_seconds"] = round(time.perf_counter() - start, 2)
    write_json(files.evaluation, result)
    write_json(files.metrics, headline(result["test"], result["valid"]))
    log.info(
        "%s: %d users, recall@20 %.4f, ndcg@20 %.4f (%.1f s)",
        spec.label, len(ranking.users), metrics.get("recall@20", float("nan")), metrics.get("ndcg@20", float("nan")),
        result["eval_seconds"],
    )  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, FLAGS, argv, optional=OPTIONAL_FLAGS, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
