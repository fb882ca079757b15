"""What every recommender gets and must provide.

A model is built from a `TrainData` (the training interactions plus, for content and graph models,
item features per modality and the graphs stage's matrices) and its own hyperparameters. It
provides a BPR-style `loss(users, pos, neg)` and a `scorer()` for full ranking. Each model
declares which inputs it reads (`group`), so dvc.yaml can track exactly those files.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

# What a model reads, and so which dvc.yaml stage group (train_<group>) must run it:
#   id    - training interactions only
#   feat  - + item features per modality
#   graph - + item features + the graphs stage's kNN and co-occurrence matrices
GROUPS = ("id", "feat", "graph")


@dataclass
class TrainData:
    """Everything a model may read; the train stage fills only what the model's group needs."""

    n_users: int
    n_items: int
    train: sp.csr_matrix  # users x items, 1 where the user interacted in the training split
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> [n_items, d]
    knn: dict[str, sp.csr_matrix] = field(default_factory=dict)  # modality -> item-item top-k cosine
    user_co: sp.csr_matrix | None = None  # user-user co-occurrence counts (top-k)
    item_co: sp.csr_matrix | None = None  # item-item co-occurrence counts (top-k)
    user_knn: dict[str, sp.csr_matrix] = field(default_factory=dict)  # modality -> user-user top-k cosine

    @property
    def seen_items(self) -> np.ndarray:
        """Items with at least one training interaction (cold items have none)."""
        return np.asarray(self.train.sum(axis=0)).ravel() > 0


Scorer = Callable[[torch.Tensor], torch.Tensor]


class Recommender(nn.Module):
    """Base class: subclasses set `group`, build parameters in __init__, implement loss and scorer."""

    group: ClassVar[str] = "id"
    trainable: ClassVar[bool] = True
    # Whether the model can rank items that had no training interaction (from their content).
    scores_cold_items: ClassVar[bool] = False

    def __init__(self, data: TrainData, hp: dict[str, Any]) -> None:
        super().__init__()
        self.n_users, self.n_items = data.n_users, data.n_items
        self.hp = dict(hp)
        # A model may set its own learning rate (and decay per 50 epochs) where its paper does.
        self.lr: float | None = float(hp["lr"]) if "lr" in hp else None
        self.lr_decay = float(hp.get("lr_decay", 1.0))

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Adam without weight decay, as MMRec; a model overrides this where its paper differs."""
        return torch.optim.Adam(self.parameters(), lr=lr)

    def on_epoch_start(self, epoch: int, rng: np.random.Generator) -> None:
        """Called before every training epoch (MMRec's pre_epoch_processing): resample, rebuild."""

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not trained with a loss")

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item representations whose dot product is the score."""
        raise NotImplementedError

    @torch.no_grad()
    def scorer(self) -> Scorer:
        """Compute representations once, return users -> scores over all items."""
        users_emb, items_emb = self.final_embeddings()
        return lambda users: users_emb[users] @ items_emb.T


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(pos - neg), averaged (MMRec's BPRLoss, with its 1e-10 guard)."""
    return -torch.log(1e-10 + torch.sigmoid(pos_scores - neg_scores)).mean()


def emb_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec's EmbLoss: sum of the L2 norms of the batch embeddings, divided by the batch size.

    Kept as MMRec defines it (norms, not squared norms) so `reg_weight` values transfer.
    """
    total = sum(torch.linalg.vector_norm(e, ord=2) for e in embeddings)
    return total / embeddings[-1].shape[0]


def sparse_tensor(matrix: sp.spmatrix) -> torch.Tensor:
    """A scipy matrix as a torch sparse CSR tensor (float32)."""
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    csr.sum_duplicates()  # also sorts the column indices, which torch's CSR tensors require
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(csr.data),
            size=csr.shape,
            check_invariants=True,
        )
