"""Models by name. A model class registers itself when its file is imported; `get_model` imports only
the file it needs (`models/<name>.py`), so a train stage loads (and DVC tracks) one model file.

`model_config` turns a `train.<name>` params block into the model's validated `HParams` plus the
trainer overrides it carries: `preset:` (a paper's named setting, declared on the class), `overrides:`
(keys changed on top of the preset) and `trainer:` (keys of train.common changed for this model).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmpipe.config import ParamsError

if TYPE_CHECKING:
    from models.core.base import HParams, Recommender

MODELS: dict[str, type[Recommender]] = {}
MODELS_DIR = Path(__file__).resolve().parents[1]
BLOCK_KEYS = ("preset", "overrides", "trainer")  # what a train.<name> block may hold beside HParams


def register(cls: type[Recommender]) -> None:
    from models.core.base import READS, HParams

    name = cls.name
    module_file = cls.__module__.rsplit(".", 1)[-1]
    if cls.__module__.startswith("models.") and module_file != name:
        raise TypeError(f"model {name!r} is declared in models/{module_file}.py; its file must be models/{name}.py")
    if name in MODELS and MODELS[name] is not cls:
        raise ValueError(f"model name {name!r} registered twice")
    if cls.reads not in READS:
        raise ValueError(f"model {name!r}: reads {cls.reads!r} is not one of {READS}")
    if not (isinstance(getattr(cls, "HParams", None), type) and issubclass(cls.HParams, HParams)):
        raise TypeError(f"model {name!r} must declare its hyperparameters as an HParams subclass")
    MODELS[name] = cls


def model_names() -> list[str]:
    """Every model file in models/ (one model per file, named as the file)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(MODELS_DIR)]) if not m.ispkg and m.name != "__init__")


def get_model(name: str) -> type[Recommender]:
    if name not in MODELS:
        if name not in model_names():
            raise ParamsError(f"unknown model {name!r}; models: {', '.join(model_names())}")
        importlib.import_module(f"models.{name}")
        if name not in MODELS:
            raise TypeError(f"models/{name}.py defines no Recommender with name = {name!r}")
    return MODELS[name]


def all_models() -> dict[str, type[Recommender]]:
    """Import every model file; {name: class}."""
    for name in model_names():
        get_model(name)
    return dict(sorted(MODELS.items()))


def model_config(name: str, block: Mapping[str, Any] | None, setting: str = "warm") -> tuple[HParams, dict[str, Any]]:
    """(validated hyperparameters, trainer overrides) of the `train.<name>` block for a setting.

    With `preset: <p>`, the class's PRESETS[p] gives the values of its keys; `overrides:` changes keys on
    top of it. A key set both directly and by the preset is an error (say it under `overrides:`), so no
    value is ever silently replaced. `cold:` changes keys for the cold-start setting only, last (MICRO's
    official cold-start runs train at another lr than its warm ones).
    """
    cls = get_model(name)
    where = f"train.{name}"
    block = dict(block or {})
    preset, overrides, trainer = block.pop("preset", None), block.pop("overrides", None), block.pop("trainer", None)
    cold = block.pop("cold", None)
    if cold is not None and not isinstance(cold, Mapping):
        raise ParamsError(f"params.yaml: {where}.cold = {cold!r}: expected a mapping of {name}'s keys")
    values = dict(block)
    if preset is not None:
        if preset not in cls.PRESETS:
            known = ", ".join(cls.PRESETS) or "none"
            raise ParamsError(f"params.yaml: {where}.preset = {preset!r}; presets of {name}: {known}")
        clash = sorted(set(values) & set(cls.PRESETS[preset]))
        if clash:
            raise ParamsError(
                f"params.yaml: {where} sets {', '.join(clash)} beside preset {preset!r}, which sets them too; "
                f"change them under {where}.overrides"
            )
        values.update(cls.PRESETS[preset])
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise ParamsError(f"params.yaml: {where}.overrides = {overrides!r}: expected a mapping")
        values.update(overrides)
    if setting == "cold" and cold:
        values.update(cold)
        where = f"{where} (with {where}.cold)"
    hp = cls.HParams.parse(values, where)
    if trainer is not None and not isinstance(trainer, Mapping):
        raise ParamsError(f"params.yaml: {where}.trainer = {trainer!r}: expected a mapping of train.common keys")
    return hp, dict(trainer or {})
