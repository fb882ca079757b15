"""Stage `encoders`: build the offline demo CLIP (random weights from a fixed seed) and save it locally.

No pretrained CLIP can be downloaded here, so the demo's image features come from a small CLIP
whose weights are drawn from `encoders.demo_clip.seed`. It is NOT a pretrained model: its features
carry only what a random vision transformer preserves of colours and shapes. It is saved with
`save_pretrained`, so the features stage loads it through the same `CLIPModel.from_pretrained`
call that loads real weights when `features.clip_image.model` names them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from stages.common.io import atomic_dir
from stages.common.log import get_logger
from stages.common.params import get, load_params, stage_args

log = get_logger("encoders")

OUT_DIR = Path("raw/encoders/demo-clip")


def build_tiny_clip(cfg: dict[str, Any], out_dir: Path) -> None:
    """A CLIP with the given sizes and seeded random weights, saved as a transformers model dir."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    image_size = int(cfg["image_size"])
    config = CLIPConfig(
        text_config={
            "hidden_size": int(cfg["hidden_size"]),
            "intermediate_size": 2 * int(cfg["hidden_size"]),
            "num_hidden_layers": int(cfg["layers"]),
            "num_attention_heads": int(cfg["heads"]),
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": int(cfg["hidden_size"]),
            "intermediate_size": 2 * int(cfg["hidden_size"]),
            "num_hidden_layers": int(cfg["layers"]),
            "num_attention_heads": int(cfg["heads"]),
            "image_size": image_size,
            "patch_size": int(cfg["patch_size"]),
        },
        projection_dim=int(cfg["projection_dim"]),
    )
    torch.manual_seed(int(cfg["seed"]))
    model = CLIPModel(config).eval()
    model.save_pretrained(out_dir)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out_dir)


def run(params: dict[str, Any], out_dir: Path = OUT_DIR) -> Path:
    start = time.perf_counter()
    cfg = get(params, "encoders.demo_clip")
    with atomic_dir(out_dir) as tmp:
        build_tiny_clip(cfg, tmp)
    log.info(
        "demo CLIP (random weights, seed %s, image %s px, %s-d projection) saved to %s in %.1f s",
        cfg["seed"],
        cfg["image_size"],
        cfg["projection_dim"],
        out_dir,
        time.perf_counter() - start,
    )
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__.splitlines()[0], dataset=False).parse_args(argv)
    run(load_params(args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
