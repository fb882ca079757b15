"""ItemKNN-CBF: content-based item kNN, the MMRec baseline (Dacrema et al., RecSys'19).

score(u, i) = sum over the user's training items j of sim(j, i), with sim the graphs stage's top-k
cosine kNN graph, summed over the chosen modalities (MMRec builds one kNN on concatenated features
with a shrink term; here the shared per-modality graphs are reused so the model builds no graph).
Nothing is trained. Cold items are scored through their content neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import scipy.sparse as sp
import torch

from mmpipe.config import param
from models.core.base import HParams, Recommender, Scorer, TrainData


class ItemKNN(Recommender):
    name = "itemknn"
    reads = "graph"
    trainable = False
    scores_cold_items = True

    @dataclass(frozen=True)
    class HParams(HParams):
        modalities: tuple[str, ...] | None = param(None, doc="modalities whose kNN graphs are summed; null: all")

    def __init__(self, data: TrainData, hp: ItemKNN.HParams) -> None:
        super().__init__(data, hp)
        modalities = data.modalities(self.name, hp.modalities, graphs=True)
        sim = sum((data.knn[m] for m in modalities), sp.csr_matrix((self.n_items, self.n_items)))
        self.score_matrix = (sp.csr_matrix(data.train) @ sim).tocsr()

    @torch.no_grad()
    def scorer(self) -> Scorer:
        return lambda users: torch.from_numpy(self.score_matrix[users.cpu().numpy()].toarray()).to(users.device)
