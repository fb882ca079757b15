"""The typed `features` block: one encoder per (feature set, modality), and the options beside them.

`features.<set>.<modality>` is parsed by `EncoderConfig` (kinds.py); the keys beside the sets are
`FeaturesOptions`. Read by the features stage and by the check stage, here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mmpipe.config import Config, ParamsError, param
from stages.common.params import declared
from stages.encoders.kinds import EncoderConfig
from stages.encoders.ray_engine import RayOptions

DATASET_SLOT = "{dataset}"  # in an encoder's `model`: replaced by the dataset's name


def features_keys(feature_set: str, modality: str) -> list[str]:
    return [
        f"features.{feature_set}.{modality}", "features.fill", "features.allow_download", "features.device",
        "features.engine", "features.ray", "features.num_threads",
    ]  # fmt: skip


@dataclass(frozen=True)
class FeaturesOptions(Config):
    """The keys of `features` every feature stage reads beside its encoder block."""

    fill: Literal["mean", "zero"] = param("mean", doc="vector of items without input")
    allow_download: bool = param(False, doc="let transformers fetch models from the hub")
    device: str = param("auto", doc="auto (a GPU when visible), cpu, cuda or cuda:N")
    engine: Literal["local", "ray"] = param("local", doc="encode in this process, or on Ray actors")
    ray: RayOptions = param(RayOptions(), doc="features.ray: where and how many encoder actors")
    num_threads: int = param(
        2,
        ge=0,
        doc="torch threads (local engine); 0: a fair share of the cores, but then the bytes of some "
        "encoders (SBERT's) depend on the machine's load",
    )


def features_config(params: dict[str, Any], feature_set: str, modality: str) -> tuple[EncoderConfig, FeaturesOptions]:
    features = declared(params, features_keys(feature_set, modality)).get("features", {})
    where = f"features.{feature_set}.{modality}"
    block = (features.get(feature_set) or {}).get(modality)
    if block is None:
        raise ParamsError(
            f"params.yaml: key '{where}' is missing (the encoder of modality '{modality}' in feature set "
            f"'{feature_set}')"
        )
    encoder = EncoderConfig.parse(block, where)
    if encoder.kind != "precomputed" and encoder.modality != modality:
        raise ParamsError(f"params.yaml: {where}: kind {encoder.kind!r} encodes {encoder.modality}, not {modality}")
    known = FeaturesOptions.keys()
    options = FeaturesOptions.parse({k: v for k, v in features.items() if k in known}, "features")
    return encoder, options
