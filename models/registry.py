"""Models by name: `@register("name")` on the class, `get_model("name")` to build one."""

from __future__ import annotations

from collections.abc import Callable

from models.base import GROUPS, Recommender

MODELS: dict[str, type[Recommender]] = {}


def register(name: str) -> Callable[[type[Recommender]], type[Recommender]]:
    def wrap(cls: type[Recommender]) -> type[Recommender]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} registered twice")
        if cls.group not in GROUPS:
            raise ValueError(f"model {name!r}: group {cls.group!r} is not one of {GROUPS}")
        MODELS[name] = cls
        return cls

    return wrap


def get_model(name: str) -> type[Recommender]:
    _load_all()
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name]


def _load_all() -> None:
    """Import every model module so its @register runs."""
    from models import bpr, freedom, itemknn, lattice, lightgcn, micro, rearm, vbpr  # noqa: F401
