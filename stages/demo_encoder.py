"""Stage `demo_encoder`: build a seeded random-weight model for the offline demo and save it locally.

No pretrained weights can be downloaded here, so the demo's CLIP (image and CLIP-text features) and,
for text towers trained end to end, a small RoBERTa / XLM-RoBERTa are built from a config whose
weights are drawn from a fixed seed, with a BPE tokenizer trained on the demo generator's vocabulary.
They are NOT pretrained models: their features carry only what a random transformer preserves of
colours, shapes and words. Each is saved with `save_pretrained` under `raw/encoders/<name>/`, so the
code that uses it loads it through the same `from_pretrained` call that loads real weights.

One stage per name in `pipeline.demo_encoders`, configured by `demo_encoders.<name>`; the `check` stage
makes that list exactly the demo models an enabled encoder uses, so a dataset without images builds no
demo CLIP.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mmpipe.config import Config, ParamsError, param
from mmpipe.io import atomic_dir
from mmpipe.log import get_logger
from mmpipe.paths import ENCODERS
from stages.common.params import declared, run_stage
from stages.encoders.builders import build_clip, build_roberta
from stages.sources import demo

log = get_logger("demo_encoder")


def param_keys(name: str) -> list[str]:
    return [f"demo_encoders.{name}"]


@dataclass(frozen=True)
class DemoEncoderConfig(Config):
    """`demo_encoders.<name>`: which architecture, its size, and the seed its weights are drawn from."""

    kind: Literal["clip", "roberta", "xlm_roberta"] = param(doc="clip (image + text towers), roberta, xlm_roberta")
    seed: int = param(0)
    hidden_size: int = param(64, ge=1)
    layers: int = param(2, ge=1)
    heads: int = param(2, ge=1)
    vocab_size: int = param(1000, ge=300, doc="BPE vocabulary (the 256 byte symbols plus merges)")
    image_size: int = param(64, ge=8, doc="clip only")
    patch_size: int = param(8, ge=1, doc="clip only")
    projection_dim: int = param(64, ge=1, doc="clip only")

    def check(self, where: str) -> None:
        if self.hidden_size % self.heads:
            raise ParamsError(
                f"params.yaml: {where}.hidden_size = {self.hidden_size} is not divisible by heads = {self.heads}"
            )
        if self.kind == "clip" and self.image_size % self.patch_size:
            raise ParamsError(
                f"params.yaml: {where}.image_size = {self.image_size} is not divisible by "
                f"patch_size = {self.patch_size}"
            )


def read_config(params: dict[str, Any], name: str) -> DemoEncoderConfig:
    blocks = declared(params, param_keys(name)).get("demo_encoders") or {}
    if name not in blocks:
        raise ParamsError(f"params.yaml: key 'demo_encoders.{name}' is missing (pipeline.demo_encoders lists {name})")
    return DemoEncoderConfig.parse(blocks[name], f"demo_encoders.{name}")


def run(name: str, params: dict[str, Any], out_dir: Path | None = None) -> Path:
    start = time.perf_counter()
    cfg = read_config(params, name)
    out_dir = Path(out_dir) if out_dir is not None else ENCODERS / name
    with atomic_dir(out_dir) as tmp:
        if cfg.kind == "clip":
            build_clip(tmp, cfg.as_dict(), demo.vocabulary_texts())
        else:
            build_roberta(tmp, cfg.as_dict(), demo.vocabulary_texts(), xlm=cfg.kind == "xlm_roberta")
    log.info(
        "%s: demo %s (random weights, seed %d, hidden %d, %d layers) saved to %s in %.1f s",
        name, cfg.kind, cfg.seed, cfg.hidden_size, cfg.layers, out_dir, time.perf_counter() - start,
    )  # fmt: skip
    return out_dir


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("name",), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
