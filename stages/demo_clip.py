"""Stage `demo_clip`: build the offline demo's CLIP (random weights from a fixed seed) and save it locally.

No pretrained CLIP can be downloaded here, so the demo's image (and CLIP text) features come from a
small CLIP whose weights are drawn from `demo_clip.seed`, with a BPE tokenizer trained on the demo
generator's vocabulary. It is NOT a pretrained model: its features carry only what a random
transformer preserves of colours, shapes and words. It is saved with `save_pretrained`, so the features
stage loads it through the same `CLIPModel.from_pretrained` call that loads real weights when
`features.clip_image.model` names them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpipe.config import Config, ParamsError, param
from mmpipe.io import atomic_dir
from mmpipe.log import get_logger
from stages.common.params import declared, run_stage
from stages.encoders.builders import build_clip
from stages.sources import demo

log = get_logger("demo_clip")

OUT_DIR = Path("raw/encoders/demo-clip")


def param_keys() -> list[str]:
    return ["demo_clip"]


@dataclass(frozen=True)
class DemoClipConfig(Config):
    """`demo_clip`: the size of the random-weight CLIP and the seed its weights are drawn from."""

    seed: int = param(0)
    hidden_size: int = param(64, ge=1)
    layers: int = param(2, ge=1)
    heads: int = param(2, ge=1)
    image_size: int = param(64, ge=8)
    patch_size: int = param(8, ge=1)
    projection_dim: int = param(64, ge=1)
    vocab_size: int = param(1000, ge=300, doc="BPE vocabulary (the 256 byte symbols plus merges)")

    def check(self, where: str) -> None:
        if self.hidden_size % self.heads:
            raise ParamsError(
                f"params.yaml: {where}.hidden_size = {self.hidden_size} is not divisible by heads = {self.heads}"
            )
        if self.image_size % self.patch_size:
            raise ParamsError(
                f"params.yaml: {where}.image_size = {self.image_size} is not divisible by "
                f"patch_size = {self.patch_size}"
            )


def run(params: dict[str, Any], out_dir: Path = OUT_DIR) -> Path:
    start = time.perf_counter()
    cfg = DemoClipConfig.parse(declared(params, param_keys()).get("demo_clip"), "demo_clip")
    with atomic_dir(out_dir) as tmp:
        build_clip(tmp, cfg.as_dict(), demo.vocabulary_texts())
    log.info(
        "demo CLIP (random weights, seed %s, image %s px, %s-d projection) saved to %s in %.1f s",
        cfg.seed, cfg.image_size, cfg.projection_dim, out_dir, time.perf_counter() - start,
    )  # fmt: skip
    return out_dir


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, (), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
