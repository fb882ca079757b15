"""The `pipeline:` section of params.yaml: the lists dvc.yaml expands over (`foreach` / `matrix`).

Stages that read one of its keys parse it here, so the shape and the rules of each list live in one
place: names unique, modalities non-empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmpipe.config import Config, ParamsError, coerce, param
from mmpipe.paths import PRETRAIN

# The model lists, by the dvc.yaml stage group that runs them: (group, setting) per list. A model's
# group is what it reads (`reads` in its file); dvc.yaml's train_<group>[_cold] stages track exactly
# that group's inputs.
MODEL_LISTS = {
    "id_models": ("id", "warm"),
    "feature_models": ("feat", "warm"),
    "graph_models": ("graph", "warm"),
    "cold_feature_models": ("feat", "cold"),
    "cold_graph_models": ("graph", "cold"),
    "lmm4rec_models": ("lmm", "warm"),  # LMM4Rec's frozen paradigms: on pipeline.lmm4rec_feature_sets
    "e2e_models": ("e2e", "warm"),  # LMM4Rec's end-to-end paradigm: trained with the encoder of train.e2e
}
SETTINGS = ("warm", "cold")
LMM_READS = ("feat", "graph")  # what the lmm group's stages track: features and graphs of the set


def lists_of(group: str) -> list[str]:
    """The `pipeline.*` lists that run models of `group`."""
    return [f"pipeline.{name}" for name, (g, _) in MODEL_LISTS.items() if g == group]


def check_group(model: str, reads: str, group: str, end_to_end: bool = False) -> None:
    """A model must run in the stage group of what it reads, or DVC would not track its inputs; group e2e
    takes the models that read their features through an encoder (`end_to_end = True` in their file)."""
    if group == "e2e":
        if not end_to_end:
            raise ParamsError(
                f"params.yaml: pipeline.e2e_models lists '{model}', which has no end-to-end variant (a model with "
                f"end_to_end = True in its file reads its item features through the encoder)"
            )
        return
    if group == "lmm" and reads in LMM_READS:
        return
    if reads != group:
        raise ParamsError(
            f"params.yaml: model '{model}' reads {reads!r} inputs, so it belongs in {' or '.join(lists_of(reads))}, "
            f"not in a list of group {group!r} (dvc.yaml tracks each list's inputs)"
        )


@dataclass(frozen=True)
class PipelineConfig(Config):
    datasets: tuple[str, ...] = param(doc="keys of `datasets`: downloaded, ingested, images prepared")
    train_datasets: tuple[str, ...] = param([], doc="of `datasets`: features, graphs and the listed models")
    pretrain_sources: tuple[str, ...] = param(
        [], doc="of `datasets`: pre-trained on together, as one catalogue (one or several; none: no pre-training)"
    )
    pretrain_models: tuple[str, ...] = param(
        [], doc="sequential models (reads seq) pre-trained on pretrain_sources and transferred: [pmmrec], or none"
    )
    transfer_targets: tuple[str, ...] = param([], doc="of `datasets`: PMMRec's transfer targets")
    transfer_variants: tuple[str, ...] = param([], doc="keys of `seq.variants`")
    demo_encoders: tuple[str, ...] = param([], doc="keys of `demo_encoders`: seeded random models to build")
    feature_sets: tuple[str, ...] = param(
        ["default"], doc="keys of `features` holding one encoder per modality: encoded, graphs built"
    )
    model_feature_sets: tuple[str, ...] = param(["default"], doc="of feature_sets: the feature/graph models run on")
    lmm4rec_feature_sets: tuple[str, ...] = param([], doc="of feature_sets: lmm4rec_models run on each")
    modalities: tuple[str, ...] = param(["text", "image"], doc="the modalities of every feature set")
    seeds: tuple[int, ...] = param(
        [2026], ge=0, doc="every model and transfer runs once per seed (runs/.../seed-<n>/); the report: mean ± sd"
    )
    id_models: tuple[str, ...] = param([])
    feature_models: tuple[str, ...] = param([])
    graph_models: tuple[str, ...] = param([])
    cold_feature_models: tuple[str, ...] = param([])
    cold_graph_models: tuple[str, ...] = param([])
    lmm4rec_models: tuple[str, ...] = param([])
    e2e_models: tuple[str, ...] = param([])

    def check(self, where: str) -> None:
        for name in self.keys():
            values = getattr(self, name)
            if not isinstance(values, tuple):
                continue
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ParamsError(f"params.yaml: {where}.{name} lists {', '.join(map(str, twice))} more than once")
        if not self.seeds:
            raise ParamsError(f"params.yaml: {where}.seeds is empty; name at least one seed (e.g. [2026])")
        if not self.modalities:
            raise ParamsError(f"params.yaml: {where}.modalities is empty; name at least one modality (text, image)")
        outside = [
            d for d in (*self.train_datasets, *self.pretrain_sources, *self.transfer_targets) if d not in self.datasets
        ]
        if outside:
            raise ParamsError(
                f"params.yaml: {where}: {', '.join(outside)} must also be in {where}.datasets (which are ingested)"
            )
        for name in ("model_feature_sets", "lmm4rec_feature_sets"):
            extra = [s for s in getattr(self, name) if s not in self.feature_sets]
            if extra:
                raise ParamsError(
                    f"params.yaml: {where}.{name} lists {', '.join(extra)}, which {where}.feature_sets does not "
                    f"(only feature_sets are encoded and get graphs)"
                )
        both = sorted(set(self.model_feature_sets) & set(self.lmm4rec_feature_sets))
        shared = sorted(set(self.lmm4rec_models) & {*self.feature_models, *self.graph_models})
        if both and shared:
            raise ParamsError(
                f"params.yaml: {where}: {', '.join(shared)} would run twice on feature set {', '.join(both)} (from "
                f"model_feature_sets and lmm4rec_feature_sets); list each set in one of the two"
            )
        if bool(self.pretrain_models) != bool(self.pretrain_sources):
            raise ParamsError(
                f"params.yaml: {where}.pretrain_models and pretrain_sources go together: both empty (no "
                f"pre-training) or both set"
            )
        if PRETRAIN in self.datasets:
            raise ParamsError(
                f"params.yaml: {where}.datasets: '{PRETRAIN}' is where pre-training writes (runs/"
                f"{PRETRAIN}/); name the dataset otherwise"
            )
        if self.transfer_targets and (not self.pretrain_models or not self.transfer_variants):
            raise ParamsError(f"params.yaml: {where}.transfer_targets needs pretrain_models and transfer_variants")

    def models(self) -> list[str]:
        """Every model of every list, once, in list order."""
        out: list[str] = []
        for name in MODEL_LISTS:
            out += [m for m in getattr(self, name) if m not in out]
        return out


SEED_HOME = "pipeline.seeds"


def seed_arg(value: int | str) -> int:
    """A model stage's `--seed` (dvc.yaml passes one of pipeline.seeds) as an int, or a clear error."""
    if not str(value).isdigit():
        raise ParamsError(f"--seed {value!r}: expected a non-negative integer (one of {SEED_HOME})")
    return int(value)


def refuse_seed(block: Mapping[str, Any] | None, where: str, also: str = "") -> None:
    """A run's seed has one home, `pipeline.seeds` (one run per seed); a training block naming `seed` would
    be a second one that the stage's seed silently overrides, so it stops with where to put it instead."""
    if isinstance(block, Mapping) and "seed" in block:
        raise ParamsError(
            f"params.yaml: {where}.seed: a run's seed is one of {SEED_HOME} (each model runs once per seed); "
            f"remove this key and list the seeds there{also}"
        )


def modalities(params: dict[str, Any]) -> tuple[str, ...]:
    """`pipeline.modalities` alone (for stages that depend on that key only)."""
    value = (params.get("pipeline") or {}).get("modalities")
    if value is None:
        raise ParamsError("params.yaml: key 'pipeline.modalities' is missing")
    found = coerce(value, tuple[str, ...], "pipeline.modalities")
    if not found or len(set(found)) != len(found):
        raise ParamsError(f"params.yaml: pipeline.modalities = {list(found)}: name each modality once, at least one")
    return found
