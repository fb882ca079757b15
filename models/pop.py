"""Pop: every user gets the items ranked by their number of training interactions (MMRec's `Pop`).

The floor any personalised model must clear: on data with a long-tailed popularity it is far from
random. Nothing is trained; an item without training interactions (a cold item) scores zero, so it
cannot rank cold items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.core.base import HParams, Recommender, Scorer, TrainData


class Pop(Recommender):
    name = "pop"
    reads = "id"
    trainable = False

    @dataclass(frozen=True)
    class HParams(HParams):
        pass

    def __init__(self, data: TrainData, hp: Pop.HParams) -> None:
        super().__init__(data, hp)
        counts = np.asarray(data.train.sum(axis=0), dtype=np.float32).ravel()
        self.register_buffer("popularity", torch.from_numpy(counts), persistent=False)

    @torch.no_grad()
    def scorer(self) -> Scorer:
        return lambda users: self.popularity.expand(len(users), -1)
