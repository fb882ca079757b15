"""Reading `params.yaml`: one place that knows the file's shape and explains what is missing."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """A key is missing from params.yaml or has a value the stage cannot use."""


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run the stage from the project root)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def get(params: dict[str, Any], dotted: str, default: Any = ...) -> Any:
    """Look up `a.b.c`; without a default, a missing key is an error that names the key."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not ...:
                return default
            raise ParamsError(f"{PARAMS_FILE}: key '{dotted}' is missing")
        node = node[part]
    return node


def stage_args(description: str, *, dataset: bool = True, extra: list[tuple[str, dict]] | None = None):
    """The command line every stage shares: `--dataset <ds>` and `--params params.yaml`."""
    parser = argparse.ArgumentParser(description=description)
    if dataset:
        parser.add_argument("--dataset", required=True, help="dataset name, a key of `datasets` in params")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    for flag, kwargs in extra or []:
        parser.add_argument(flag, **kwargs)
    return parser


def dataset_stage_main(doc: str, run_fn: Callable[[str, dict[str, Any]], object], argv: list[str] | None) -> int:
    """`python -m stages.<name> --dataset <ds> [--params FILE]` for the per-dataset stages."""
    args = stage_args(doc.splitlines()[0]).parse_args(argv)
    run_fn(args.dataset, load_params(args.params))
    return 0


def dataset_params(params: dict[str, Any], name: str) -> dict[str, Any]:
    datasets = params.get("datasets") or {}
    if name not in datasets:
        raise ParamsError(f"{PARAMS_FILE}: dataset '{name}' is not defined under 'datasets' (have {sorted(datasets)})")
    return datasets[name]
