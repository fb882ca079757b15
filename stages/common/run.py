"""One model run, as the train and evaluate stages share it: which model on which data and device
(`RunSpec`), its training data, the model built from its params (an end-to-end model with its encoder),
and the checkpoint's format (written by train, read by evaluate).

Kept below the stages so that evaluate does not import the train stage: an edit of `stages/train.py`
re-runs the training stages only, and evaluate re-runs when a checkpoint or this contract changes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmpipe.config import Config, ParamsError, param
from mmpipe.devices import resolve_device
from mmpipe.hf import freeze_below_top
from mmpipe.log import get_logger, progress_disabled
from mmpipe.paths import PROCESSED, RUNS, DatasetDir, RunFiles, run_dir
from models.core.base import HParams, Recommender, TrainData
from models.core.data import Split, load_train_data
from models.core.dual_encoder import (
    TOWERS,
    load_dual_encoder,
    pads_to_max_length,
    prepare_items,
    set_gradient_checkpointing,
)
from models.core.end_to_end import EncoderTowers, EndToEnd, EndToEndConfig, knn_graph
from models.core.registry import get_model
from stages.common import pipeline
from stages.common.params import allow_download

log = get_logger("run")

FLAGS = ("dataset", "model", "setting", "group", "seed")
OPTIONAL_FLAGS = ("feature_set",)
E2E = "e2e"  # the stage group (and run folder) of the models trained end to end with their encoder
E2E_KEYS = ["train.e2e", "features.allow_download"]


@dataclass(frozen=True)
class TrainRuntime(Config):
    """How every training stage runs (train, evaluate, pretrain, transfer), read in one place."""

    num_threads: int = param(0, ge=0, doc="torch threads; 0: this process's fair share of the cores")
    device: str = param("auto", doc="auto, cpu, cuda or cuda:N")
    processes: int = param(1, ge=1, doc="> 1: that many torchrun processes (DDP)")

    @classmethod
    def of(cls, params: dict[str, Any]) -> TrainRuntime:
        train, known = params.get("train") or {}, cls.keys()
        return cls.parse({k: v for k, v in train.items() if k in known}, "train")

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device, "train.device")


@dataclass(frozen=True)
class RunSpec:
    """One model run: which model, on which data, with which settings (what train and evaluate share)."""

    dataset: str
    model: str
    setting: str
    group: str
    seed: int  # one of pipeline.seeds: the run's folder and its trainer's seed
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
        return run_dir(self.dataset, self.model, self.setting, self.seed, self.feature_set, self.runs)

    @property
    def label(self) -> str:
        return (
            "/".join(p for p in (self.dataset, self.model, self.feature_set, self.setting) if p) + f" seed {self.seed}"
        )


def run_spec(
    dataset: str,
    model: str,
    setting: str,
    group: str,
    seed: int,
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
    runtime = TrainRuntime.of(params)
    return RunSpec(
        dataset,
        model,
        setting,
        group,
        pipeline.seed_arg(seed),
        feature_set,
        cls,
        modalities,
        runtime.num_threads,
        runtime.torch_device,
        Path(runs),
    )


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
    encoder, tokenizer, processor = load_dual_encoder(cfg.model, allow_download(params), key="train.e2e.model")
    trainable, frozen = freeze_below_top(encoder, cfg.n_trainable_layers, towers=TOWERS, heads=True)
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
