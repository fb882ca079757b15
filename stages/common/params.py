"""How a stage gets its params and its command line.

Every stage module declares `param_keys(**args)`: the dotted params keys it reads for one stage
instance (its dataset, model, feature set, ...), exactly the keys dvc.yaml lists under that stage's
`params:` (a test checks both agree). `declared()` hands the stage a copy of params.yaml holding only
those keys, so a stage cannot read a key that DVC does not track: it would fail the same way in the
tests and in `dvc repro`. Each stage then parses its blocks once into typed configs (`mmpipe.config`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from mmpipe.config import PARAMS_FILE, ParamsError, UserError

__all__ = ["PARAMS_FILE", "ParamsError", "declared", "load_params", "run_stage", "stage_parser"]


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


_MISSING = object()


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    """The value at `a.b.c`, or _MISSING."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def declared(params: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The part of `params` under the given dotted keys (absent keys stay absent), nothing else."""
    out: dict[str, Any] = {}
    for dotted in keys:
        value = _lookup(params, dotted)
        if value is _MISSING:
            continue
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def allow_download(params: dict[str, Any]) -> bool:
    """`features.allow_download`, read in one place for every stage that loads a pretrained model."""
    value = (params.get("features") or {}).get("allow_download", False)
    if not isinstance(value, bool):
        raise ParamsError(f"params.yaml: features.allow_download = {value!r}: expected true or false")
    return value


def stage_parser(description: str, *flags: str, optional: Iterable[str] = ()) -> argparse.ArgumentParser:
    """The command line of a stage: `--<flag> <value>` for each of its instance arguments, `--params`."""
    parser = argparse.ArgumentParser(description=description)
    for flag in flags:
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, required=True)
    for flag in optional:
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None)
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    return parser


# Errors a user causes (bad params, bad or missing input files): one clear line, no traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, ValueError)


def run_stage(
    doc: str,
    run: Callable[..., object],
    flags: Iterable[str],
    argv: list[str] | None = None,
    optional: Iterable[str] = (),
    *,
    param_keys: Callable[..., list[str]],
) -> int:
    """`python -m stages.<name> --dataset <ds> ...`: parse, load params, run; expected errors exit 2.

    `flags` are required instance arguments, `optional` ones default to None (e.g. the feature set of a
    model that reads no features). The stage gets only the params keys `param_keys(**instance args)`
    names, the keys dvc.yaml tracks for it, so reading any other key fails here exactly as in the tests.
    Set MMPIPE_DEBUG=1 to see the traceback of an expected error too.
    """
    startup = process_age() if os.environ.get(STAGE_TIMES) else 0.0
    entered = time.perf_counter()
    flags, optional = list(flags), list(optional)
    args = stage_parser(doc.strip().splitlines()[0], *flags, optional=optional).parse_args(argv)
    instance = {f: getattr(args, f) for f in flags + optional}
    try:
        params = declared(load_params(args.params), param_keys(**instance))
        run(**instance, params=params)
    except EXPECTED_ERRORS as exc:
        if os.environ.get("MMPIPE_DEBUG") == "1":
            raise
        message = str(exc).strip() or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    if os.environ.get(STAGE_TIMES):
        row = {"argv": sys.argv, "startup_s": round(startup, 3), "work_s": round(time.perf_counter() - entered, 3)}
        with open(os.environ[STAGE_TIMES], "a", encoding="utf-8") as out:  # stages run one at a time
            out.write(json.dumps(row) + "\n")
    return 0


# Set to a file path, each stage appends {"argv", "startup_s", "work_s"} to it: how long the process took
# to start Python and import the stage (the work-free cost every stage pays), and how long its run took.
# bench.pipeline_timing reads it to split a stage's wall time into DVC, start-up and work.
STAGE_TIMES = "MMPIPE_STAGE_TIMES"


def process_age() -> float:
    """Seconds since this process started (Linux: its start tick in /proc, against the boot clock), so the
    start of Python and the stage's imports are counted; 0.0 where /proc is not there."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started
