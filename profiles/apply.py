"""Sizes of the same DAG: params.yaml is the tour, a profile (profiles/<name>.yaml) the changes for
another size. `python -m profiles.apply full` writes profiles/full.yaml's changes into params.yaml.

A profile holds only the keys that differ: a mapping merges into the mapping at the same key, anything
else (a list, a number, a string) replaces the value there. A key the profile names must exist in
params.yaml, so a renamed param cannot be silently added beside the real one. The file is edited
round-trip (comments and order kept), so `dvc params diff` shows exactly the profile's changes.
"""

from __future__ import annotations

import copy
import io
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

from mmpipe.config import PARAMS_FILE, ParamsError
from mmpipe.io import write_text


def apply(base: MutableMapping[str, Any], changes: dict[str, Any], where: str = "") -> list[str]:
    """Apply `changes` to `base` in place; return the dotted keys whose values it set."""
    changed: list[str] = []
    for key, value in changes.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in base:
            raise ParamsError(f"profile key {dotted!r} is not in params.yaml (a profile only changes existing keys)")
        if isinstance(value, dict) and isinstance(base[key], MutableMapping):
            changed += apply(base[key], value, dotted)
        elif base[key] != value:
            base[key] = _like(base[key], value)
            changed.append(dotted)
    return changed


def _like(old: Any, new: Any) -> Any:
    """`new`, written as a list in the same (flow or block) style as the value it replaces."""
    if isinstance(new, list) and isinstance(old, CommentedSeq):
        seq = CommentedSeq(new)
        seq.fa.set_flow_style() if old.fa.flow_style() or not old else seq.fa.set_block_style()
        return seq
    return new


def _null(representer: Any, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


PROFILES = Path(__file__).resolve().parent


def edit_params(params: Path, changes: dict[str, Any]) -> list[str]:
    """Write `changes` (nested as in params.yaml) into the file `params`, round-trip: comments, order and
    quoting kept; return the dotted keys whose values changed."""
    yaml = YAML()
    yaml.width = 4096
    yaml.preserve_quotes = True
    yaml.representer.add_representer(type(None), _null)
    doc = yaml.load(params.read_text(encoding="utf-8"))
    changed = apply(doc, changes)
    out = io.StringIO()
    yaml.dump(doc, out)
    write_text(params, out.getvalue())
    return changed


def apply_profile(profile: Path, params: Path = Path(PARAMS_FILE)) -> list[str]:
    """Rewrite `params` with the changes of `profile`; return the keys it changed."""
    changes = YAML(typ="safe").load(profile.read_text(encoding="utf-8")) or {}
    if not isinstance(changes, dict):
        raise ParamsError(f"{profile}: expected a mapping of params keys")
    return edit_params(params, changes)


def with_profile(params: dict[str, Any], name: str) -> dict[str, Any]:
    """A copy of loaded params with profile `name` applied: the benchmarks measure the full-size demo."""
    out = copy.deepcopy(params)
    apply(out, YAML(typ="safe").load((PROFILES / f"{name}.yaml").read_text(encoding="utf-8")))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = sorted(p.stem for p in PROFILES.glob("*.yaml"))
    if len(args) != 1 or args[0] not in names:
        print(f"usage: python -m profiles.apply NAME (profiles: {', '.join(names)})", file=sys.stderr)
        return 2
    try:
        changed = apply_profile(PROFILES / f"{args[0]}.yaml")
    except (ParamsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{PARAMS_FILE}: {len(changed)} keys changed by profiles/{args[0]}.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
