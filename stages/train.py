"""Stage `train`: fit one model on one setting's training split; keep the best checkpoint by validation.

One stage per (dataset, model, setting[, feature set]). Writes, under `runs/<ds>/<model>/[<set>/]<setting>/`:
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
its run folder is `runs/<ds>/<model>/e2e/<setting>/`. A kNN-based model (LATTICE) gets its item graph
from the encoder's initial features.

`train.processes: N` (N > 1) runs the stage as N torchrun processes with DistributedDataParallel (gloo
on the CPU, NCCL with one GPU each): the stage relaunches itself under torchrun, so dvc.yaml's command is
the same; each process trains on 1/N of every batch (`models/core/trainer.py`), rank 0 writes.
"""

from __future__ import annotations

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
from mmpipe.distributed import (
    finish_distributed,
    init_distributed,
    local_device,
    relaunch_under_torchrun,
    under_torchrun,
)
from mmpipe.io import csv_text, write_bytes, write_json, write_text
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import PROCESSED, RUNS, DatasetDir, RunFiles, run_dir
from mmpipe.threads import use_threads
from models.core.base import HParams, Recommender, TrainData
from models.core.data import Split, load_train_data
from models.core.dual_encoder import (
    freeze_below_top,
    load_dual_encoder,
    pads_to_max_length,
    prepare_items,
    set_gradient_checkpointing,
)
from models.core.end_to_end import EncoderTowers, EndToEnd, EndToEndConfig, knn_graph
from models.core.registry import get_model, model_config
from models.core.trainer import TrainConfig, fit
from stages.common import pipeline
from stages.common.params import declared, load_params, run_stage, stage_parser

log = get_logger("train")

FLAGS = ("dataset", "model", "setting", "group")
OPTIONAL_FLAGS = ("feature_set",)
E2E = "e2e"  # the stage group (and run folder) of the models trained end to end with their encoder
E2E_KEYS = ["train.e2e", "features.allow_download"]


def param_keys(dataset: str, model: str, setting: str, group: str, feature_set: str | None = None) -> list[str]:
    keys = ["train.common", "train.datasets", "train.num_threads", "train.device", "train.processes", f"train.{model}"]
    return keys + (E2E_KEYS if group == E2E else []) + (["pipeline.modalities"] if group != "id" else [])


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
    pipeline.check_group(model, cls.reads, group, cls.end_to_end)
    if group == E2E:
        if feature_set is not None:
            raise ParamsError(f"model '{model}' (group e2e) reads no feature set: its encoder is train.e2e.model")
        feature_set = E2E
    elif (group == "id") != (feature_set is None):
        raise ParamsError(
            f"model '{model}' (group {group}): a feature set is given exactly when the model reads features"
        )
    if setting == "cold" and not cls.scores_cold_items:
        raise ParamsError(f"model '{model}' cannot score cold items; it runs in the warm setting only")
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
    hp, trainer_overrides = model_config(spec.model, train.get(spec.model), spec.setting)
    per_dataset = train.get("datasets") or {}
    if not isinstance(per_dataset, Mapping):
        raise ParamsError(
            f"params.yaml: train.datasets = {per_dataset!r}: expected a mapping of dataset -> train.common keys"
        )
    where = f"train.common (+ train.datasets.{spec.dataset}, train.{spec.model}.trainer)"
    blocks = [train.get("common"), per_dataset.get(spec.dataset), trainer_overrides]
    if spec.group == E2E:
        where = where[:-1] + ", train.e2e.trainer)"
        blocks.append((train.get("e2e") or {}).get("trainer"))
    return hp, TrainConfig.from_params(*blocks, where=where)


def load_data(spec: RunSpec, processed: Path = PROCESSED) -> tuple[TrainData, Split]:
    """The model's training data; an end-to-end model's features come from its encoder (`build_model`)."""
    reads = "id" if spec.group == E2E else spec.cls.reads
    return load_train_data(
        DatasetDir.of(spec.dataset, processed), spec.setting, reads, spec.modalities, spec.feature_set
    )


def e2e_config(params: dict[str, Any]) -> EndToEndConfig:
    """`train.e2e` without its `trainer:` overrides (which `training_config` applies)."""
    block = (params.get("train") or {}).get("e2e")
    if not isinstance(block, dict):
        raise ParamsError("params.yaml: key 'train.e2e' is missing (the encoder of pipeline.e2e_models)")
    trainer = block.get("trainer")
    if trainer is not None and not isinstance(trainer, dict):
        raise ParamsError(f"params.yaml: train.e2e.trainer = {trainer!r}: expected a mapping of train.common keys")
    return EndToEndConfig.parse({k: v for k, v in block.items() if k != "trainer"}, "train.e2e")


def build_model(
    spec: RunSpec, data: TrainData, hp: HParams, params: dict[str, Any], processed: Path = PROCESSED
) -> Recommender:
    """The model on the CPU; in group e2e wrapped with its encoder towers, `data` given their features."""
    if spec.group != E2E:
        return spec.cls(data, hp)
    cfg = e2e_config(params)
    allow_download = bool((params.get("features") or {}).get("allow_download", False))
    encoder, tokenizer, processor = load_dual_encoder(cfg.model, allow_download, key="train.e2e.model")
    trainable, frozen = freeze_below_top(encoder, cfg.n_trainable_layers)
    set_gradient_checkpointing(encoder, cfg.gradient_checkpointing)
    ds = DatasetDir.of(spec.dataset, processed)
    inputs = prepare_items(
        ds.items, ds.images, tokenizer, processor, cfg.template, cfg.max_tokens, cfg.workers, not progress_disabled(),
        pads_to_max_length(encoder),
    )  # fmt: skip
    log.info(
        "end-to-end encoder %s: %d parameters trained, %d frozen; %d items (%d without image, %d without text)",
        cfg.model, trainable, frozen, inputs.n_items, int((~inputs.has_image).sum()), int((~inputs.has_text).sum()),
    )  # fmt: skip
    towers = EncoderTowers(encoder, inputs, spec.modalities, cfg.normalize)
    data.features = towers.encode_all(cfg.encoder_batch_size)
    if spec.cls.reads == "graph":
        k = int(getattr(hp, "knn_k", 10))
        data.knn = {m: knn_graph(f, k) for m, f in data.features.items()}
    return EndToEnd(spec.cls(data, hp), towers, cfg)


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
    value = (load_params(args.params).get("train") or {}).get("processes", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamsError(f"params.yaml: train.processes = {value!r}: expected an integer >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    """With train.processes > 1, the stage relaunches itself as that many torchrun processes (DDP)."""
    argv = sys.argv[1:] if argv is None else argv
    processes = requested_processes(argv)
    if processes > 1 and not under_torchrun():
        return relaunch_under_torchrun(processes, "stages.train", argv)
    return run_stage(__doc__, run, FLAGS, argv, optional=OPTIONAL_FLAGS, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
