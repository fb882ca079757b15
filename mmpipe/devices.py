"""Which device a stage computes on: `auto` (the GPU when one is visible, else the CPU), `cpu`, `cuda`,
`cuda:N`; and the floating-point precision of mixed-precision work on it.

The choice is a params value (`features.device`, `train.device`), so it is tracked like any other; `auto`
lets the same params run on a laptop and on a GPU server. Asking for a GPU that is not there is an error
naming the key, never a silent fallback to the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mmpipe.config import ParamsError

DEVICES = ("auto", "cpu", "cuda")  # plus cuda:N
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(spec: str, key: str = "device") -> torch.device:
    """The torch device for a params value; `key` names it in errors."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ParamsError(
                f"params.yaml: {key} = {spec!r}, but no CUDA GPU is visible to torch; use 'auto' or 'cpu'"
            )
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ParamsError(
                f"params.yaml: {key} = {spec!r}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0.."
            )
        return torch.device(spec)
    raise ParamsError(f"params.yaml: {key} = {spec!r}: expected auto, cpu, cuda or cuda:N")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision on a GPU (`bfloat16` or `float16`); on the CPU, and for `float32`, nothing changes."""
    dtype = PRECISIONS[precision]
    if dtype is None or device.type != "cuda":
        yield
        return
    with torch.autocast(device_type="cuda", dtype=dtype):
        yield


def to_device(value: object, device: torch.device) -> object:
    """Tensors (dense or sparse), and lists, tuples and dicts of them, moved to `device`; the rest as is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list | tuple):
        moved = [to_device(v, device) for v in value]
        return type(value)(moved) if isinstance(value, tuple) else moved
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
