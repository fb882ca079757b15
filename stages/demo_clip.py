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
from pathlib import Path
from typing import Any

from stages.common.io import atomic_dir
from stages.common.log import get_logger
from stages.common.model_builders import build_clip
from stages.common.params import get, load_params, stage_args
from stages.sources import demo

log = get_logger("demo_clip")

OUT_DIR = Path("raw/encoders/demo-clip")


def run(params: dict[str, Any], out_dir: Path = OUT_DIR) -> Path:
    start = time.perf_counter()
    cfg = get(params, "demo_clip")
    with atomic_dir(out_dir) as tmp:
        build_clip(tmp, cfg, demo.vocabulary_texts())
    log.info(
        "demo CLIP (random weights, seed %s, image %s px, %s-d projection) saved to %s in %.1f s",
        cfg["seed"], cfg["image_size"], cfg["projection_dim"], out_dir, time.perf_counter() - start,
    )  # fmt: skip
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__.splitlines()[0], dataset=False).parse_args(argv)
    run(load_params(args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
