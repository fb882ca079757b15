"""Building blocks several models share, written once: ID embeddings, the BPR and regularisation
losses, and the per-epoch cache of a learned graph (graph propagation: `models.core.spmm`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def id_embedding(n: int, dim: int) -> nn.Parameter:
    """An [n, dim] embedding table, Xavier-uniform initialised (MMRec's default for ID embeddings)."""
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(n, dim)))


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(pos - neg), averaged (MMRec's BPRLoss, with its 1e-10 guard)."""
    return -torch.log(1e-10 + torch.sigmoid(pos_scores - neg_scores)).mean()


def emb_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec's EmbLoss: sum of the L2 norms of the batch embeddings, divided by the batch size.

    Kept as MMRec defines it (norms, not squared norms) so `reg_weight` values transfer.
    """
    total = sum(torch.linalg.vector_norm(e, ord=2) for e in embeddings)
    return total / embeddings[-1].shape[0]


def squared_l2(*embeddings: torch.Tensor) -> torch.Tensor:
    """(sum of squared entries) / (2 * batch): LATTICE's and MICRO's regulariser on final embeddings."""
    return sum(e.pow(2).sum() for e in embeddings) / (2 * len(embeddings[0]))


class EpochCache(Generic[T]):
    """A value (a learned graph) rebuilt once per training epoch, as LATTICE and MICRO do.

    The first training call of an epoch builds it with gradients (they reach the parameters it is
    built from); later calls in the epoch reuse a detached copy; scoring (eval mode or no grad) always
    builds a fresh one and leaves the cache alone.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self.build = build
        self.value: T | None = None
        self.stale = True

    def invalidate(self) -> None:
        self.stale = True

    def get(self, training: bool) -> T:
        if not training or not torch.is_grad_enabled():
            return self.build()
        if self.stale or self.value is None:
            self.stale = False
            value = self.build()
            self.value = _detached(value)
            return value
        return self.value


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: v.detach() for k, v in value.items()}
    if isinstance(value, list):
        return [v.detach() for v in value]
    raise TypeError(f"cannot detach {type(value).__name__}")
