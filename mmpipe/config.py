"""Typed params blocks: a block of params.yaml parsed once into a frozen dataclass, every value checked.

A stage (or a model's hyperparameters) declares its block as a `Config` subclass: one field per key,
with its type annotation, its default (or none: the key is required) and its allowed range
(`param(..., ge=1)`, `choices=...`). `Config.parse(block, "kcore")` then rejects, each with a message
that names the key, the value and what is allowed:

* an unknown key (a typo), listing the known ones;
* a missing key without a default;
* a value of the wrong type: `"five"` or `5.7` for an int (never truncated), a bool for a number,
  `1e-4` for a float (YAML reads it as text: write `1.0e-4`);
* a value out of range or not among the choices.

Lists come back as tuples and nested blocks as nested Configs, so a parsed config is immutable.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self, get_args, get_origin

PARAMS_FILE = "params.yaml"


class UserError(Exception):
    """A problem the user fixes (params, input files, network access); stages print it without a traceback."""


class ParamsError(UserError, ValueError):
    """A key is missing from params.yaml or has a value the stage cannot use."""


def param(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
) -> Any:
    """A config field with bounds (numbers) and a one-line meaning (shown in error messages)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(default_factory=lambda: _freeze(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(tp))
    if origin in (list, tuple):
        item = _describe(get_args(tp)[0])
        if item.startswith(("a ", "an ")):  # "an integer" -> "a list (of integers)"
            return f"a list (of {item.split(' ', 1)[1]}s)"
        return f"a list ({item})"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in get_args(tp) if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in get_args(tp) else "")
    if isinstance(tp, type) and issubclass(tp, Config):
        return "a mapping of " + tp.__name__
    return str(tp)


def _bad(where: str, value: Any, tp: Any, extra: str = "") -> ParamsError:
    return ParamsError(f"{PARAMS_FILE}: {where} = {value!r}: expected {_describe(tp)}{extra}")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (lists as tuples, blocks as Configs)."""
    origin = get_origin(tp)
    if tp is Any:
        return _freeze(value)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _bad(where, value, tp)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ParamsError as exc:
                errors.append(exc)
        raise _bad(where, value, tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(where, value, tp)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = " (no fractional part)" if isinstance(value, float) else ""
            raise _bad(where, value, tp, hint)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = ""
            if isinstance(value, str):
                try:
                    float(value)
                    hint = f" (YAML reads {value} as text; write it with a decimal point, e.g. 1.0e-4)"
                except ValueError:
                    pass
            raise _bad(where, value, tp, hint)
        if not math.isfinite(value):
            raise _bad(where, value, tp, " (finite)")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad(where, value, tp)
        return value
    if origin is Literal:
        if value not in get_args(tp) or isinstance(value, bool) != any(isinstance(c, bool) for c in get_args(tp)):
            raise _bad(where, value, tp)
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _bad(where, value, tp)
        item_tp = get_args(tp)[0]
        return tuple(coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _bad(where, value, tp)
        key_tp, value_tp = get_args(tp) or (str, Any)
        return types.MappingProxyType(
            {coerce(k, key_tp, f"{where} key"): coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
        )
    if isinstance(tp, type) and issubclass(tp, Config):
        return tp.parse(value, where)
    raise TypeError(f"config field {where}: unsupported annotation {tp!r}")


def _check_bounds(value: Any, meta: Mapping[str, Any], where: str) -> None:
    """A field's ge/gt/le/lt bounds; on a list, on each of its numbers (e.g. cut-offs >= 1)."""
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            _check_bounds(item, meta, f"{where}[{i}]")
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    for key, ok, text in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ParamsError(f"{PARAMS_FILE}: {where} = {value!r}: must be {text} {bound}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every typed params block; subclasses are frozen dataclasses."""

    # Keys a block may carry that the subclass handles itself (e.g. a model's `trainer` overrides).
    EXTRA_KEYS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def parse(cls, block: Mapping[str, Any] | None, where: str) -> Self:
        """Parse one params block (`where` is its dotted path, for messages)."""
        if block is None:
            block = {}
        if not isinstance(block, Mapping):
            raise ParamsError(f"{PARAMS_FILE}: {where} = {block!r}: expected a mapping of {', '.join(cls.keys())}")
        known = cls.keys()
        unknown = sorted(k for k in block if k not in known and k not in cls.EXTRA_KEYS)
        if unknown:
            raise ParamsError(
                f"{PARAMS_FILE}: {where} has unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(k) for k in unknown)} (known: {', '.join(known)})"
            )
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f"{where}.{f.name}"
            if f.name in block:
                value = coerce(block[f.name], hints[f.name], key)
            elif f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                doc = f.metadata.get("doc")
                raise ParamsError(f"{PARAMS_FILE}: key '{key}' is missing" + (f" ({doc})" if doc else ""))
            _check_bounds(value, f.metadata, key)
            values[f.name] = value
        cfg = cls(**values)
        cfg.check(where)
        return cfg

    def check(self, where: str) -> None:
        """Checks across fields; subclasses raise ParamsError naming the keys."""

    def as_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists, nested configs as dicts), e.g. to save beside a checkpoint."""

        def plain(v: Any) -> Any:
            if isinstance(v, Config):
                return v.as_dict()
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, Mapping):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
