"""Stage `train`: fit one model on one setting's training split; keep the best checkpoint by validation.

Writes `runs/<ds>/<model>/<setting>/model.pt` (best state, hyperparameters, best epoch) and
`history.csv` (one row per epoch: loss, validation metrics, seconds) for `dvc plots`.
The `--group` flag is the dvc.yaml stage group that runs the model; it must match what the model
reads, or DVC would not track the model's inputs.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models.data import load_train_data
from models.registry import get_model
from models.trainer import TrainConfig, fit
from stages.common.io import atomic_path, write_text
from stages.common.log import get_logger, progress_disabled
from stages.common.params import ParamsError, get, load_params, stage_args
from stages.common.threads import use_threads

log = get_logger("train")

GROUP_LISTS = {
    "id": "pipeline.id_models",
    "feat": "pipeline.feature_models / pipeline.cold_feature_models",
    "graph": "pipeline.graph_models / pipeline.cold_graph_models",
}


def model_hparams(params: dict[str, Any], model: str) -> dict[str, Any]:
    """A model's hyperparameters: its block in params.yaml, with a named preset applied.

    `train.<model>.preset: sports` takes every key of `train.<model>.presets.sports` (a paper's
    per-dataset setting), then `train.<model>.overrides` on top, so `dvc exp run -S
    train.rearm.preset=sports` gives exactly the published setting and a tweak stays explicit.
    """
    block = get(params, f"train.{model}", None)
    if block is None:
        raise ParamsError(f"params.yaml: no hyperparameters for model '{model}' (add a train.{model} block)")
    hp = dict(block)
    presets, preset, overrides = hp.pop("presets", {}), hp.pop("preset", None), hp.pop("overrides", {})
    if preset is not None:
        if preset not in presets:
            raise ParamsError(f"params.yaml: train.{model}.preset = {preset!r}; presets: {sorted(presets)}")
        hp.update(presets[preset])
    hp.update(overrides or {})
    return hp


def trainer_config(params: dict[str, Any], hp: dict[str, Any]) -> TrainConfig:
    """train.common, with the model's own `trainer:` overrides (epochs, patience, batch_size, ...)."""
    return TrainConfig.from_params({**get(params, "train.common"), **hp.get("trainer", {})})


def model_for_stage(model: str, setting: str, group: str, params: dict[str, Any]) -> type:
    """The model class, after checking it may run in this stage group and setting; sets torch threads."""
    cls = get_model(model)
    check_group(model, cls.group, group)
    if setting == "cold" and not cls.scores_cold_items:
        raise ParamsError(f"model '{model}' cannot score cold items; it runs in the warm setting only")
    use_threads(get(params, "train.num_threads", 0))
    return cls


def check_group(model: str, cls_group: str, group: str) -> None:
    if cls_group != group:
        raise ParamsError(
            f"params.yaml: model '{model}' reads {cls_group!r} inputs, so it must be listed in "
            f"{GROUP_LISTS[cls_group]}, not {GROUP_LISTS[group]} (dvc.yaml tracks each list's inputs)"
        )


def run_dir(dataset: str, model: str, setting: str, runs_root: Path = Path("runs")) -> Path:
    return runs_root / dataset / model / setting


def history_csv(rows: list[dict[str, float]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


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
    hp = model_hparams(params, model_name)
    cfg = trainer_config(params, hp)
    data, split = load_train_data(out_root / dataset, setting, cls.group, dict(get(params, "features.modalities")))

    torch.manual_seed(cfg.seed)
    model = cls(data, hp)
    result = fit(model, data, split.valid, cfg, log, progress=not progress_disabled())
    out_dir = run_dir(dataset, model_name, setting, runs_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [r for r in result.history if r.get("train_seconds")]
    summary = {
        "model": model_name,
        "setting": setting,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "best_valid": result.best_valid,
        "seconds_per_epoch": round(sum(r["train_seconds"] for r in epochs) / len(epochs), 4) if epochs else 0.0,
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save({"state_dict": result.best_state, "hp": hp, "summary": summary}, tmp)
    write_text(out_dir / "history.csv", history_csv(result.history))
    log.info(
        "%s/%s/%s: best valid %s %.4f at epoch %d of %d (%.3f s/epoch), %.1f s",
        dataset,
        model_name,
        setting,
        cfg.valid_metric,
        result.best_valid.get(cfg.valid_metric, float("nan")),
        result.best_epoch,
        len(result.history),
        summary["seconds_per_epoch"],
        summary["train_seconds"],
    )
    return summary


def model_stage_main(doc: str, run_fn, argv: list[str] | None) -> int:
    """The command line of the train and evaluate stages: dataset, model, setting, group."""
    parser = stage_args(
        doc.splitlines()[0],
        extra=[
            ("--model", {"required": True}),
            ("--setting", {"required": True, "choices": ["warm", "cold"]}),
            ("--group", {"required": True, "choices": sorted(GROUP_LISTS)}),
        ],
    )
    args = parser.parse_args(argv)
    run_fn(args.dataset, args.model, args.setting, args.group, load_params(args.params))
    return 0


def main(argv: list[str] | None = None) -> int:
    return model_stage_main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
