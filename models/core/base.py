"""What every recommender declares, gets and provides.

A model file declares everything the pipeline needs to know about its model on the class:

* `name`: the registry key, which must equal the file name (`models/<name>.py`);
* `reads`: which inputs it trains on, and so which dvc.yaml stage group (`train_<reads>`) runs it:
  `id` (training interactions only), `feat` (+ item features per modality), `graph` (+ features and
  the graphs stage's kNN and co-occurrence matrices);
* `scores_cold_items`: whether it can rank items that had no training interaction (from content);
* `end_to_end`: whether it reads its item features only as `self.features[modality]`, so that
  `models.core.end_to_end` can train it with the encoder that produces them (LMM4Rec's third paradigm);
* `HParams`: its hyperparameters as a typed `Config` (types, defaults, ranges); the `train.<name>`
  block of params.yaml is validated against it (`models.core.registry.model_config`). A key the block
  gives wins over the default; a key it leaves out takes the default.

Defining such a class registers it (`__init_subclass__`); there is no second list to keep in step.
A model is built from a `TrainData` and its `HParams`, and provides a BPR-style `loss(users, pos,
neg)` and a `scorer()` for full ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmpipe.config import Config, ParamsError
from mmpipe.devices import to_device
from models.core.graph import top_k
from models.core.optim import adam

# What a model reads, and so which dvc.yaml stage group (train_<reads>) must run it.
READS = ("id", "feat", "graph", "seq")  # seq: sequential models, run by the pretrain/transfer stages
# The modality a feature slot carries decides how some models treat it (FREEDOM/REARM weigh "image").
IMAGE = "image"


@dataclass
class TrainData:
    """Everything a model may read; the train stage fills only what the model's `reads` needs."""

    n_users: int
    n_items: int
    train: sp.csr_matrix  # users x items, 1 where the user interacted in the training split
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> [n_items, d]
    knn: dict[str, sp.csr_matrix] = field(default_factory=dict)  # modality -> item-item top-k cosine
    user_co: sp.csr_matrix | None = None  # user-user co-occurrence counts (top-k)
    item_co: sp.csr_matrix | None = None  # item-item co-occurrence counts (top-k)
    user_knn: dict[str, sp.csr_matrix] = field(default_factory=dict)  # modality -> user-user top-k cosine
    paths: dict[str, str] = field(default_factory=dict)  # "knn/<modality>", "item_co", ... -> the file read

    def graph_path(self, name: str) -> str:
        """The file a graph was read from (errors name it), or the graph's name when it was built in memory."""
        return self.paths.get(name, name)

    def item_knn(self, modality: str, k: int) -> sp.csr_matrix:
        """The first k neighbours of each item in the modality's kNN graph (too few stored: an error naming it)."""
        return top_k(self.knn[modality], k, self.graph_path(f"knn/{modality}"))

    @property
    def seen_items(self) -> np.ndarray:
        """Items with at least one training interaction (cold items have none)."""
        return np.asarray(self.train.sum(axis=0)).ravel() > 0

    def modalities(self, model: str, wanted: tuple[str, ...] | None, graphs: bool = False) -> list[str]:
        """The modalities a model uses: `wanted` (its `modalities` hyperparameter) or all it was given.

        A wanted modality without features (or without a kNN graph) stops with an error naming it.
        """
        have = sorted(self.knn if graphs else self.features)
        chosen = list(wanted) if wanted else have
        missing = [m for m in chosen if m not in have]
        if missing or not chosen:
            what = "kNN graphs" if graphs else "features"
            raise ParamsError(
                f"model '{model}' needs {what} for modalities {missing or '(any)'}, but the dataset has "
                f"{have or 'none'} (pipeline.modalities; or set train.{model}.modalities)"
            )
        return chosen


Scorer = Callable[[torch.Tensor], torch.Tensor]


class HParams(Config):
    """Base of a model's hyperparameters; a model subclasses it as a frozen dataclass."""


class Recommender(nn.Module):
    """Base class: subclasses declare `name`, `reads`, `HParams`; build parameters; implement loss and scorer."""

    name: ClassVar[str]
    reads: ClassVar[str] = "id"
    trainable: ClassVar[bool] = True
    scores_cold_items: ClassVar[bool] = False
    end_to_end: ClassVar[bool] = False
    HParams: ClassVar[type[HParams]]
    # Named settings from a paper (e.g. REARM's per-dataset commands), chosen with `train.<name>.preset`.
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            from models.core import registry

            registry.register(cls)

    def __init__(self, data: TrainData, hp: HParams) -> None:
        super().__init__()
        if not isinstance(hp, self.HParams):
            raise TypeError(f"{self.name}: expected {self.HParams.__name__}, got {type(hp).__name__}")
        self.n_users, self.n_items = data.n_users, data.n_items
        self.hp = hp
        self.device = torch.device("cpu")  # models are built on the CPU; `move_to` sends them elsewhere

    def move_to(self, device: torch.device) -> Recommender:
        """Parameters, buffers and every tensor kept as a plain attribute (the sparse graphs, lists and
        dicts of them) onto `device`; tensors a model makes later use `self.device`."""
        self.to(device)
        for module in self.modules():
            for name, value in list(vars(module).items()):
                if name.startswith("_"):
                    continue
                moved = to_device(value, device)
                if moved is not value:
                    object.__setattr__(module, name, moved)
            if isinstance(module, Recommender):
                module.device = device
        return self

    @property
    def lr(self) -> float | None:
        """The model's own learning rate where its paper sets one (else the trainer's)."""
        return getattr(self.hp, "lr", None)

    @property
    def lr_decay(self) -> float:
        """lr is multiplied by lr_decay ** (epoch / 50), as MMRec's LATTICE/MICRO schedulers."""
        return float(getattr(self.hp, "lr_decay", 1.0))

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Adam without weight decay, as MMRec; a model overrides this where its paper differs."""
        return adam(self.parameters(), lr=lr)

    def on_epoch_start(self, epoch: int, rng: np.random.Generator) -> None:
        """Called before every training epoch (MMRec's pre_epoch_processing): resample, rebuild."""

    def set_item_features(self, features: dict[str, torch.Tensor]) -> None:
        """End-to-end training: the item features become the encoder's output (set before every step and
        before scoring); the model's own copy (fixed, or trainable as in MMRec's LATTICE and BM3) is dropped."""
        if not self.end_to_end:
            raise TypeError(f"model {self.name!r} has no end-to-end variant (end_to_end = False)")
        if "features" in self._modules:
            del self.features
        self.features = dict(features)

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
