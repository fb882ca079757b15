"""Stage `train`: fit one model on one setting's training split; keep the best checkpoint by validation.

One stage per (dataset, model, setting[, feature set]). Writes, under `runs/<ds>/<model>/[<set>/]<setting>/`:
`model.pt` (best state, hyperparameters, best epoch; byte-identical for equal weights, so a colleague's
re-run matches the remote's hash), `history.csv` (one row per epoch: loss, validation metrics,
seconds, for `dvc plots`) and `train.json` (best epoch, best validation metrics, timings).

The training protocol is `train.common` (MMRec's: 1000 epochs, patience 20), changed per dataset by
`train.datasets.<ds>` (the demo's short budget) and per model by `train.<model>.trainer`. The
`--group` flag is the dvc.yaml stage group that runs the model; it must match what the model reads
(`reads` in its file), or DVC would not track the model's inputs.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmpipe.config import ParamsError
from mmpipe.devices import resolve_device
from mmpipe.io import write_bytes, write_json, write_text
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import PROCESSED, RUNS, DatasetDir, RunFiles, run_dir
from mmpipe.threads import use_threads
from models.core.base import HParams, Recommender, TrainData
from models.core.data import Split, load_train_data
from models.core.registry import get_model, model_config
from models.core.trainer import TrainConfig, fit
from stages.common import pipeline
from stages.common.params import declared, run_stage

log = get_logger("train")

FLAGS = ("dataset", "model", "setting", "group")
OPTIONAL_FLAGS = ("feature_set",)


def param_keys(dataset: str, model: str, setting: str, group: str, feature_set: str | None = None) -> list[str]:
    keys = ["train.common", "train.datasets", "train.num_threads", "train.device", f"train.{model}"]
    return keys + (["pipeline.modalities"] if group != "id" else [])


@dataclass(frozen=True)
class RunSpec:
    """One model run: which model, on which data, with which settings (what train and evaluate share)."""

    dataset: str
    model: str
    setting: str
    group: str
    feature_set: str | None
    cls: type[Recommender]
    modalities: tuple[str, ...]  # the feature set's modalities the model may read (none for ID models)
    num_threads: int
    device: torch.device
    runs: Path = RUNS

    @property
    def files(self) -> RunFiles:
        return RunFiles(self.root)

    @property
    def root(self) -> Path:
        return run_dir(self.dataset, self.model, self.setting, self.feature_set, self.runs)

    @property
    def label(self) -> str:
        return "/".join(p for p in (self.dataset, self.model, self.feature_set, self.setting) if p)


def run_spec(
    dataset: str,
    model: str,
    setting: str,
    group: str,
    feature_set: str | None,
    params: dict[str, Any],
    runs: Path = RUNS,
) -> RunSpec:
    """Check that the model may run in this stage group and setting; read what train and evaluate share."""
    if setting not in pipeline.SETTINGS:
        raise ParamsError(f"setting {setting!r}: expected one of {', '.join(pipeline.SETTINGS)}")
    cls = get_model(model)
    pipeline.check_group(model, cls.reads, group)
    if setting == "cold" and not cls.scores_cold_items:
        raise ParamsError(f"model '{model}' cannot score cold items; it runs in the warm setting only")
    if (group == "id") != (feature_set is None):
        raise ParamsError(
            f"model '{model}' (group {group}): a feature set is given exactly when the model reads features"
        )
    modalities = pipeline.modalities(params) if group != "id" else ()
    train = params.get("train") or {}
    threads = train.get("num_threads", 0)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ParamsError(f"params.yaml: train.num_threads = {threads!r}: expected an integer >= 0 (0: all cores)")
    device = train.get("device", "auto")
    if not isinstance(device, str):
        raise ParamsError(f"params.yaml: train.device = {device!r}: expected auto, cpu, cuda or cuda:N")
    device = resolve_device(device, "train.device")
    return RunSpec(dataset, model, setting, group, feature_set, cls, modalities, threads, device, Path(runs))


def training_config(spec: RunSpec, params: dict[str, Any]) -> tuple[HParams, TrainConfig]:
    """The model's validated hyperparameters and the trainer settings for this dataset and model."""
    train = declared(params, param_keys(spec.dataset, spec.model, spec.setting, spec.group)).get("train") or {}
    hp, trainer_overrides = model_config(spec.model, train.get(spec.model))
    per_dataset = train.get("datasets") or {}
    if not isinstance(per_dataset, Mapping):
        raise ParamsError(
            f"params.yaml: train.datasets = {per_dataset!r}: expected a mapping of dataset -> train.common keys"
        )
    where = f"train.common (+ train.datasets.{spec.dataset}, train.{spec.model}.trainer)"
    trainer = TrainConfig.from_params(
        train.get("common"), per_dataset.get(spec.dataset), trainer_overrides, where=where
    )
    return hp, trainer


def load_data(spec: RunSpec, processed: Path = PROCESSED) -> tuple[TrainData, Split]:
    return load_train_data(
        DatasetDir.of(spec.dataset, processed), spec.setting, spec.cls.reads, spec.modalities, spec.feature_set
    )


def history_csv(rows: list[dict[str, float]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def checkpoint_bytes(state: dict[str, torch.Tensor], hp: HParams, best_epoch: int) -> bytes:
    """torch.save into memory: the archive then has a fixed inner name (torch uses the file's name
    otherwise), and nothing that varies between runs (no timings) goes inside."""
    buf = io.BytesIO()
    torch.save({"state_dict": state, "hp": hp.as_dict(), "best_epoch": best_epoch}, buf)
    return buf.getvalue()


def load_checkpoint(spec: RunSpec) -> dict[str, Any]:
    path = spec.files.checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model (run train for {spec.label} first)")
    return torch.load(path, map_location="cpu", weights_only=True)


def run(
    dataset: str,
    model: str,
    setting: str,
    group: str,
    params: dict[str, Any],
    feature_set: str | None = None,
    processed: Path = PROCESSED,
    runs: Path = RUNS,
) -> dict[str, Any]:
    start = time.perf_counter()
    spec = run_spec(dataset, model, setting, group, feature_set, params, runs)
    hp, cfg = training_config(spec, params)
    use_threads(spec.num_threads)
    data, split = load_data(spec, processed)

    torch.manual_seed(cfg.seed)
    net = spec.cls(data, hp).move_to(spec.device)
    result = fit(net, data, split.valid, cfg, log, progress=not progress_disabled(), num_threads=spec.num_threads)
    files = spec.files
    epochs = [r for r in result.history if r.get("train_seconds")]
    summary = {
        "model": model,
        "setting": setting,
        "feature_set": feature_set,
        "device": str(spec.device),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "best_valid": {k: round(v, 6) for k, v in result.best_valid.items()},
        "seconds_per_epoch": round(sum(r["train_seconds"] for r in epochs) / len(epochs), 4) if epochs else 0.0,
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    write_bytes(files.checkpoint, checkpoint_bytes(result.best_state, hp, result.best_epoch))
    write_text(files.history, history_csv(result.history))
    write_json(files.train_summary, summary)
    log.info(
        "%s: best valid %s %.4f at epoch %d of %d (%.3f s/epoch), %.1f s",
        spec.label, cfg.valid_metric, result.best_valid.get(cfg.valid_metric, float("nan")), result.best_epoch,
        len(result.history), summary["seconds_per_epoch"], summary["train_seconds"],
    )  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, FLAGS, argv, optional=OPTIONAL_FLAGS, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
