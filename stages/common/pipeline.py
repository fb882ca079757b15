"""The `pipeline:` section of params.yaml: the lists dvc.yaml expands over (`foreach` / `matrix`).

Stages that read one of its keys parse it here, so the shape and the rules of each list live in one
place: names unique, modalities non-empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmpipe.config import Config, ParamsError, coerce, param

# The model lists, by the dvc.yaml stage group that runs them: (group, setting) per list. A model's
# group is what it reads (`reads` in its file); dvc.yaml's train_<group>[_cold] stages track exactly
# that group's inputs.
MODEL_LISTS = {
    "id_models": ("id", "warm"),
    "feature_models": ("feat", "warm"),
    "graph_models": ("graph", "warm"),
    "cold_feature_models": ("feat", "cold"),
    "cold_graph_models": ("graph", "cold"),
}
SETTINGS = ("warm", "cold")


def lists_of(group: str) -> list[str]:
    """The `pipeline.*` lists that run models of `group`."""
    return [f"pipeline.{name}" for name, (g, _) in MODEL_LISTS.items() if g == group]


def check_group(model: str, reads: str, group: str) -> None:
    """A model must run in the stage group of what it reads, or DVC would not track its inputs."""
    if reads != group:
        raise ParamsError(
            f"params.yaml: model '{model}' reads {reads!r} inputs, so it belongs in {' or '.join(lists_of(reads))}, "
            f"not in a list of group {group!r} (dvc.yaml tracks each list's inputs)"
        )


@dataclass(frozen=True)
class PipelineConfig(Config):
    datasets: tuple[str, ...] = param(doc="keys of `datasets`: downloaded, ingested, images prepared")
    train_datasets: tuple[str, ...] = param([], doc="of `datasets`: features, graphs and the listed models")
    pretrain_sources: tuple[str, ...] = param([], doc="of `datasets`: PMMRec's pre-training data (one, or none)")
    transfer_targets: tuple[str, ...] = param([], doc="of `datasets`: PMMRec's transfer targets")
    transfer_variants: tuple[str, ...] = param([], doc="keys of `seq.variants`")
    demo_encoders: tuple[str, ...] = param([], doc="keys of `demo_encoders`: seeded random models to build")
    feature_sets: tuple[str, ...] = param(["default"], doc="keys of `features` holding one encoder per modality")
    modalities: tuple[str, ...] = param(["text", "image"], doc="the modalities of every feature set")
    id_models: tuple[str, ...] = param([])
    feature_models: tuple[str, ...] = param([])
    graph_models: tuple[str, ...] = param([])
    cold_feature_models: tuple[str, ...] = param([])
    cold_graph_models: tuple[str, ...] = param([])

    def check(self, where: str) -> None:
        for name in self.keys():
            values = getattr(self, name)
            if not isinstance(values, tuple):
                continue
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ParamsError(f"params.yaml: {where}.{name} lists {', '.join(twice)} more than once")
        if not self.modalities:
            raise ParamsError(f"params.yaml: {where}.modalities is empty; name at least one modality (text, image)")
        outside = [
            d for d in (*self.train_datasets, *self.pretrain_sources, *self.transfer_targets) if d not in self.datasets
        ]
        if outside:
            raise ParamsError(
                f"params.yaml: {where}: {', '.join(outside)} must also be in {where}.datasets (which are ingested)"
            )
        if len(self.pretrain_sources) > 1:
            raise ParamsError(
                f"params.yaml: {where}.pretrain_sources = {list(self.pretrain_sources)}: one pre-training dataset "
                f"(dvc.yaml's transfer stages depend on its checkpoint), or none"
            )
        if self.transfer_targets and (not self.pretrain_sources or not self.transfer_variants):
            raise ParamsError(f"params.yaml: {where}.transfer_targets needs pretrain_sources and transfer_variants")

    def models(self) -> list[str]:
        """Every model of every list, once, in list order."""
        out: list[str] = []
        for name in MODEL_LISTS:
            out += [m for m in getattr(self, name) if m not in out]
        return out


def modalities(params: dict[str, Any]) -> tuple[str, ...]:
    """`pipeline.modalities` alone (for stages that depend on that key only)."""
    value = (params.get("pipeline") or {}).get("modalities")
    if value is None:
        raise ParamsError("params.yaml: key 'pipeline.modalities' is missing")
    found = coerce(value, tuple[str, ...], "pipeline.modalities")
    if not found or len(set(found)) != len(found):
        raise ParamsError(f"params.yaml: pipeline.modalities = {list(found)}: name each modality once, at least one")
    return found
