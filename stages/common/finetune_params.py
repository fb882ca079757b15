"""The typed `finetune` block (LMM4Rec's fine-tuning of a dual encoder on a dataset's item pairs).

Read by the finetune_encoder stage and by the check stage, here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mmpipe.config import Config, ParamsError, param
from mmpipe.schemas import ITEM_FIELDS
from stages.common.params import allow_download, declared

MMREC_TEMPLATE = "{title} {brand} {categories} {description}"


def finetune_keys() -> list[str]:
    return ["finetune", "features.allow_download"]


@dataclass(frozen=True)
class FinetuneConfig(Config):
    """The `finetune` block."""

    model: str = param("raw/encoders/demo-clip", doc="base dual encoder: hub name or local directory")
    n_trainable_layers: int = param(1, ge=0, doc="top transformer blocks of each tower that train (0: none)")
    epochs: int = param(5, ge=1)
    patience: int = param(2, ge=1, doc="epochs without a lower valid loss tolerated; the next one stops")
    batch_size: int = param(64, ge=2, doc="pairs per step (the other pairs of a batch are the negatives)")
    lr: float = param(1.0e-4, gt=0)
    weight_decay: float = param(0.0, ge=0)
    valid_ratio: float = param(0.1, gt=0, lt=1, doc="share of the pairs held out for early stopping")
    seed: int = param(0)
    max_tokens: int = param(77, ge=2)
    template: str = param(MMREC_TEMPLATE, doc="item fields in braces: title, brand, categories, description")
    device: str = param("auto", doc="auto (a GPU when visible), cpu, cuda or cuda:N")
    precision: Literal["float32", "bfloat16"] = param("float32", doc="bfloat16 autocast (GPU only)")
    gradient_checkpointing: bool = param(False, doc="recompute activations in the backward pass (less memory)")
    workers: int = param(2, ge=1, doc="image decoding threads")
    num_threads: int = param(0, ge=0, doc="torch threads (0: a fair share of the cores)")

    def check(self, where: str) -> None:
        try:
            self.template.format_map(dict.fromkeys(ITEM_FIELDS, ""))
        except KeyError as exc:
            raise ParamsError(
                f"params.yaml: {where}.template uses field {exc} that items.parquet does not have "
                f"(fields: {', '.join(ITEM_FIELDS)})"
            ) from None
        except (ValueError, IndexError) as exc:
            raise ParamsError(f"params.yaml: {where}.template = {self.template!r}: {exc}") from None


def finetune_config(params: dict[str, Any]) -> tuple[FinetuneConfig, bool]:
    params = declared(params, finetune_keys())
    if "finetune" not in params:
        raise ParamsError("params.yaml: key 'finetune' is missing (the finetune_encoder stage's block)")
    cfg = FinetuneConfig.parse(params["finetune"], "finetune")
    return cfg, allow_download(params)
