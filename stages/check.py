"""Stage `check`: validate params.yaml against what the code declares, before any other stage runs.

DVC looks a stage's params up only when it reaches the stage, so a typo in a `pipeline:` list
(`id_models: [lightgnc]`) would surface as DVC's bare "Parameters 'train.lightgnc' are missing", after
hours of upstream work. Every `download` stage depends on this stage's output, so `dvc repro` runs it
first; it checks, with messages naming the key, the value and what is allowed:

* the `pipeline:` lists: known datasets, feature sets with an encoder for every modality, known models
  in the list of the group they read, only cold-capable models in the cold lists;
* every enabled dataset's `datasets.<ds>` block, every encoder block, every listed model's
  `train.<model>` block (unknown keys, types, ranges) and the training protocol per dataset;
* that a model asking for a modality (`train.<model>.modalities`) gets one the pipeline has;
* the `finetune` block (its stage runs for every train dataset), `train.e2e` (with its `trainer:`
  changes) when e2e_models run, and the `evaluate` block;
* PMMRec's blocks (`train.pmmrec`, `seq.train`, `seq.pretrain`, every listed `seq.variants.<v>`) when
  pre-training or transfer is enabled;
* that no encoder is asked to train more top blocks than it has (`finetune.n_trainable_layers`,
  `train.e2e.n_trainable_layers`, PMMRec's `text_trainable_layers` / `image_trainable_layers`), where the
  depth is known before any stage runs: a demo encoder's `layers`, or a local checkpoint's config.json;
* that `pipeline.demo_encoders` lists exactly the demo models (raw/encoders/<name>) that enabled
  encoders and models use, so the demo CLIP is built only when something reads it.

Its output `processed/params.checked` never changes (it only says the check passed), so a params
edit re-runs this stage but nothing downstream because of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mmpipe.config import ParamsError
from mmpipe.hf import CONFIG_FILE
from mmpipe.io import write_text
from mmpipe.log import get_logger
from mmpipe.paths import ENCODERS, PARAMS_CHECKED
from models.core.evaluator import EvaluateConfig
from models.core.registry import get_model, model_config, model_names
from models.core.trainer import TrainConfig
from stages.common import pipeline, sequential
from stages.common.datasets import dataset_config
from stages.common.finetune_params import finetune_config
from stages.common.params import allow_download, declared, run_stage
from stages.common.run import TrainRuntime, e2e_config
from stages.encoders.features_block import features_config

log = get_logger("check")

OUT = PARAMS_CHECKED
CONTENT = "params.yaml passed `python -m stages.check`\n"


def param_keys() -> list[str]:
    return ["pipeline", "datasets", "features", "train", "demo_encoders", "seq", "finetune", "evaluate"]


def demo_models_used(blocks: list[Any], demo_names: set[str]) -> set[str]:
    """Names of demo encoders that any string in the given params blocks points at (raw/encoders/<name>)."""
    used: set[str] = set()
    todo = list(blocks)
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            todo.extend(node.values())
        elif isinstance(node, list | tuple):
            todo.extend(node)
        elif isinstance(node, str) and node.startswith(f"{ENCODERS}/"):
            name = node[len(f"{ENCODERS}/") :].strip("/")
            if name in demo_names:
                used.add(name)
    return used


def check_demo_encoders(cfg: pipeline.PipelineConfig, params: dict[str, Any], seq_refs: set[str]) -> None:
    """pipeline.demo_encoders must be exactly the demo models that enabled encoders and models use."""
    demo_blocks = params.get("demo_encoders") or {}
    features = params.get("features") or {}
    train = params.get("train") or {}
    blocks = [features.get(s) for s in cfg.feature_sets] + [train.get(m) for m in cfg.models()] + sorted(seq_refs)
    if cfg.train_datasets:  # the finetune_encoder stage runs for every train dataset
        blocks.append(params.get("finetune"))
    if cfg.e2e_models:
        blocks.append(train.get("e2e"))
    used = demo_models_used(blocks, set(demo_blocks))
    listed = set(cfg.demo_encoders)
    for name in sorted(listed - set(demo_blocks)):
        raise ParamsError(f"params.yaml: pipeline.demo_encoders lists {name!r}, but demo_encoders.{name} is missing")
    if used - listed:
        missing = sorted(used - listed)
        raise ParamsError(
            f"params.yaml: an enabled encoder or model uses {', '.join(f'{ENCODERS}/{n}' for n in missing)}; add "
            f"{', '.join(missing)} to pipeline.demo_encoders so the demo_encoder stage builds it"
        )
    if listed - used:
        raise ParamsError(
            f"params.yaml: pipeline.demo_encoders lists {', '.join(sorted(listed - used))}, which no enabled encoder "
            f"or model uses; remove it (nothing would read what the demo_encoder stage builds)"
        )


def check_models(cfg: pipeline.PipelineConfig, params: dict[str, Any]) -> int:
    """Every listed model: known, in its group's list, cold-capable where cold, its params block valid."""
    train = params.get("train") or {}
    per_dataset = train.get("datasets") or {}
    pipeline.refuse_seed(train.get("common"), "train.common")  # the blocks every run shares, once each
    for dataset in cfg.datasets:
        pipeline.refuse_seed(per_dataset.get(dataset), f"train.datasets.{dataset}")
    if cfg.e2e_models:
        pipeline.refuse_seed((train.get("e2e") or {}).get("trainer"), "train.e2e.trainer")
    checked = 0
    for list_name, (group, setting) in pipeline.MODEL_LISTS.items():
        for name in getattr(cfg, list_name):
            if name not in model_names():
                raise ParamsError(
                    f"params.yaml: pipeline.{list_name} names model {name!r}, which does not exist; "
                    f"models: {', '.join(model_names())}"
                )
            cls = get_model(name)
            pipeline.check_group(name, cls.reads, group, cls.end_to_end)
            if setting == "cold" and not cls.scores_cold_items:
                raise ParamsError(
                    f"params.yaml: pipeline.{list_name} names {name!r}, which cannot score cold items "
                    f"(it reads item IDs only); list it in the warm lists only"
                )
            if name not in train:
                raise ParamsError(
                    f"params.yaml: model {name!r} is listed in pipeline.{list_name} but has no train.{name} block"
                )
            hp, trainer = model_config(name, train[name], setting)
            wanted = getattr(hp, "modalities", None) or ()
            missing = [m for m in wanted if m not in cfg.modalities]
            if group != "id" and missing:
                raise ParamsError(
                    f"params.yaml: train.{name}.modalities asks for {', '.join(missing)}, which pipeline.modalities "
                    f"({', '.join(cfg.modalities)}) does not have"
                )
            # the end-to-end runs add train.e2e.trainer on top, as the train stage does
            e2e_trainer = [(train.get("e2e") or {}).get("trainer")] if group == "e2e" else []
            pipeline.refuse_seed(trainer, f"train.{name}.trainer")
            for dataset in cfg.datasets:
                where = f"train (for {dataset}/{name}{', end to end' if e2e_trainer else ''})"
                blocks = (train.get("common"), per_dataset.get(dataset), trainer, *e2e_trainer)
                TrainConfig.from_params(*blocks, where=where)
            checked += 1
    return checked


def encoder_depth(ref: str, params: dict[str, Any]) -> int | None:
    """Blocks per tower of the encoder `ref` names: a demo encoder's `layers`, a local checkpoint's
    config.json (the shallower tower of a dual encoder); None for a hub name (its stage checks it)."""
    demo = params.get("demo_encoders") or {}
    name = ref[len(f"{ENCODERS}/") :].strip("/") if ref.startswith(f"{ENCODERS}/") else None
    if name in demo and isinstance(demo[name], dict) and isinstance(demo[name].get("layers"), int):
        return demo[name]["layers"]
    config = Path(ref) / CONFIG_FILE
    if not config.is_file():
        return None
    try:
        document = json.loads(config.read_text())
    except ValueError:
        return None  # the stage that loads it says what is wrong
    towers = [document.get(k) for k in ("text_config", "vision_config") if isinstance(document.get(k), dict)]
    depths = [t.get("num_hidden_layers") for t in towers or [document]]
    depths = [d for d in depths if isinstance(d, int)]
    return min(depths) if depths else None


def check_encoder_depths(uses: list[tuple[str, int, str, str]], params: dict[str, Any]) -> None:
    """Each (key, trainable top blocks, the key naming the encoder, the encoder) asks for at most the
    encoder's depth; otherwise the stage would stop only after everything upstream of it ran."""
    for key, n, model_key, ref in uses:
        depth = encoder_depth(ref, params)
        if depth is not None and n > depth:
            raise ParamsError(
                f"params.yaml: {key} = {n}, but {model_key} ({ref}) has {depth} blocks per tower; use at most {depth}"
            )


def run(params: dict[str, Any], out: Path = OUT) -> Path:
    params = declared(params, param_keys())
    cfg = pipeline.PipelineConfig.parse(params.get("pipeline"), "pipeline")
    for dataset in cfg.datasets:
        dataset_config(params, dataset)
    encoders = 0
    for feature_set in cfg.feature_sets:
        for modality in cfg.modalities:
            features_config(params, feature_set, modality)
            encoders += 1
    models = check_models(cfg, params)
    EvaluateConfig.parse(params.get("evaluate"), "evaluate")
    depths: list[tuple[str, int, str, str]] = []
    if cfg.train_datasets:
        tune, _ = finetune_config(params)
        depths.append(("finetune.n_trainable_layers", tune.n_trainable_layers, "finetune.model", tune.model))
    if cfg.e2e_models:
        e2e = e2e_config(params)
        depths.append(("train.e2e.n_trainable_layers", e2e.n_trainable_layers, "train.e2e.model", e2e.model))
    seq_refs = set()
    for model, hp, variant in sequential.check_params(cfg, params):
        where = f" (with seq.variants.{variant}.overrides)" if variant else ""
        for enc in sequential.model_class(model).item_encoders(hp):
            key = f"train.{model}"
            depths.append((f"{key}.{enc.layers_key}{where}", enc.trainable_layers, f"{key}.{enc.key}", enc.ref))
            seq_refs.add(enc.ref)
    check_encoder_depths(depths, params)
    check_demo_encoders(cfg, params, seq_refs)
    TrainRuntime.of(params)  # train.num_threads, train.device, train.processes: types and ranges
    allow_download(params)
    write_text(out, CONTENT)
    log.info(
        "params.yaml: %d datasets, %d feature sets x %d modalities (%d encoders), %d model runs per dataset: valid",
        len(cfg.datasets), len(cfg.feature_sets), len(cfg.modalities), encoders, models,
    )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, (), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
