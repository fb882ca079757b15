"""The features stage on Ray: encoder actors on a cluster (or a local Ray), the stage's cache unchanged.

`features.engine: ray` hands the stage's work units (the chunks of items the local engine would encode
one after the other, in the same order) to Ray Data: `map_batches` over one row per chunk, with
`features.ray.workers` actors that each load the encoder once (`from_pretrained`, as the local engine)
and encode whole chunks with the same `Encoder.encode`. So the vectors are the local engine's, and
everything around them stays in the stage: cache keys, the LMDB cache and its journal (a chunk's
vectors are committed as soon as it comes back, so an interrupted run resumes), the fill, the Parquet
output. Each actor checks that its encoder's fingerprint is the driver's: a node with other weights
stops the stage instead of mixing vectors.

Where Ray runs: `features.ray.address` (a cluster's `ray://host:10001` or `auto`), else the
`RAY_ADDRESS` environment variable, else a local Ray started for the stage with `features.ray.workers`
x `cpus_per_worker` CPUs and stopped after it. Each node needs the project installed (`pip install -e
.`) and the encoder's files at the same path (or a hub name with `features.allow_download: true`).
Inputs travel in the rows (texts, or the JPEG bytes read from images.lmdb by the driver), so workers
need no access to the dataset's files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmpipe.config import Config, ParamsError, param
from mmpipe.log import get_logger

log = get_logger("features")


@dataclass(frozen=True)
class RayOptions(Config):
    """`features.ray`: where the encoder actors run and what each one gets."""

    address: str | None = param(None, doc="a Ray cluster (ray://host:10001, auto); null: RAY_ADDRESS or a local Ray")
    workers: int = param(2, ge=1, doc="encoder actors, each holding one copy of the model")
    cpus_per_worker: float = param(1.0, gt=0)
    gpus_per_worker: float = param(0.0, ge=0, doc="e.g. 1 for one GPU per actor on a GPU cluster")


class ChunkEncoder:
    """A Ray actor: loads the encoder once, encodes whole chunks (one row = one chunk of inputs)."""

    def __init__(self, kind: str, name: str, cfg: Any, allow_download: bool, fingerprint: str) -> None:
        from stages.encoders.kinds import ENCODERS

        device = "cuda" if _has_gpu() else "cpu"
        self.model = ENCODERS[kind](name, cfg, allow_download, device)
        mine = self.model.fingerprint
        if mine != fingerprint:
            raise RuntimeError(
                f"{name}: the encoder on Ray node {os.uname().nodename} has fingerprint {mine[:12]}, the driver's "
                f"is {fingerprint[:12]} (other weights or settings there); refusing to mix their vectors"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = [self.model.encode(list(inputs)) for inputs in batch["inputs"]]
        out = np.empty(len(vectors), dtype=object)
        out[:] = vectors
        return {"chunk": batch["chunk"], "vectors": out}


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def encode_chunks(
    model: Any, chunks: list[list[Any]], options: RayOptions, fingerprint: str
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (chunk index, vectors) for every chunk of inputs, encoded by Ray actors, as they finish."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a project dependency
        raise ParamsError("features.engine: ray needs the `ray[data]` package (pip install 'ray[data]')") from exc
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            cpus = options.workers * options.cpus_per_worker
            ray.init(num_cpus=max(1, int(np.ceil(cpus))), include_dashboard=False, log_to_driver=False)
    log.info(
        "%s on Ray (%s): %d chunks, %d actors x %g CPU, %g GPU",
        model.name, address or "local", len(chunks), options.workers, options.cpus_per_worker, options.gpus_per_worker,
    )  # fmt: skip
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        rows = [{"chunk": i, "inputs": inputs} for i, inputs in enumerate(chunks)]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
        encoded = dataset.map_batches(
            ChunkEncoder,
            fn_constructor_kwargs={
                "kind": model.kind, "name": model.name, "cfg": model.cfg,
                "allow_download": model.allow_download, "fingerprint": fingerprint,
            },
            batch_size=1, concurrency=options.workers, num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker or None, batch_format="numpy",
        )  # fmt: skip
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            for chunk, vectors in zip(batch["chunk"], batch["vectors"], strict=True):
                yield int(chunk), np.asarray(vectors, dtype=np.float32)
    finally:
        if started:
            ray.shutdown()
