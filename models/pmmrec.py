"""PMMRec (Li et al., ICDE'24, "Multi-Modality is All You Need for Transferable Recommender Systems").

Items are represented by their content only (no item IDs), user behaviour is a sequence, the item
encoders train end to end, and a model pre-trained on a source domain transfers to a target. Follows the
official ICDE24/PMMRec code where it exists; what it lacks (NID, RCL, a working NICL) is written from
the paper's description, with the formulas below.

Item tower (`item_tower`):
* `modal`: text tokens (a transformers encoder) and image patches (a CLIP vision encoder), each with all
  but its top `text_trainable_layers` / `image_trainable_layers` blocks frozen (the frozen part runs once
  per item, `models.seq.towers`), projected to `embedding_size`, then fused (`fusion`): `merged`
  (PMMRec's merged attention: one Transformer block over the concatenated text and image tokens, then
  the mean over the valid tokens), `sum` (pooled text + pooled image, each through a
  Linear) or `concat` (Linear over both pooled vectors);
* `text` / `image`: one modality, mean-pooled (PMMRec's single-modality transfer settings);
* `id`: an item ID embedding: SASRec, the baseline without content.
User encoder: `models.seq.user_encoder.UserEncoder` (causal Transformer, learned positions).

Losses (each weight 0 switches it off; all over a batch of B sequences of length L, C = the distinct
items of the batch, e_c their representations, h_{u,j} the user state at position j, tau temperatures):
* next item (`next_item_weight`): softmax cross-entropy of h_{u,j} . e_c over C, target = item j+1;
  the columns of the user's own other items (and padding) masked; logits minus log p(c), p the item's
  share of the training windows (the official log-popularity, logQ, correction; `logq_correction`).
* NICL (`nicl_weight`, `nicl_temperature` 0.1): with t_c, v_c the L2-normalised projection-head outputs
  of item c's pooled text and image, for each input position (item a followed by item b in the same
  sequence): -log[(exp(t_a.v_a/tau) + exp(t_a.v_b/tau)) / (sum_{c in C} exp(t_a.v_c/tau)
  + sum_{c in C, c != a} exp(t_a.t_c/tau))]: the text is pulled to its own image and to the next
  item's image, against the images (inter-modality) and texts (intra-modality) of the batch.
* NID (`nid_weight`, `nid_ratio` 0.2): a share of the valid input positions is replaced by items drawn
  uniformly from C; a Linear head on the user states of the noised sequence predicts which positions
  were replaced (binary cross-entropy over the valid positions).
* RCL (`rcl_weight`, `rcl_temperature` 0.1): s_u, s'_u the last user states of the sequence and of its
  noised copy (the NID noise), L2-normalised; -log[exp(s_u.s'_u/tau) / sum_w exp(s_u.s'_w/tau)],
  symmetrised: a sequence and its noised copy are positives against the other sequences of the batch.
Total = sum of weight x loss. NICL needs both modalities: single-modality towers skip it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmpipe.config import ParamsError, param
from models.core.base import HParams
from models.seq.base import ItemEncoder, SeqData, SequentialRecommender
from models.seq.data import PAD
from models.seq.towers import ImageTower, TextTower
from models.seq.user_encoder import UserEncoder

NEG = -1e4  # masked logits (as the official code), finite so a fully masked row stays defined


class PMMRec(SequentialRecommender):
    name = "pmmrec"
    scores_cold_items = True  # from content: items need no training interaction

    @dataclass(frozen=True)
    class HParams(HParams):
        item_tower: Literal["modal", "text", "image", "id"] = param("modal", doc="id: the SASRec baseline")
        fusion: Literal["merged", "sum", "concat"] = param("merged", doc="merged: PMMRec's merged attention")
        embedding_size: int = param(64, ge=8)
        text_model: str = param("raw/encoders/demo-xlmr", doc="transformers text encoder: hub name or path")
        image_model: str = param("raw/encoders/demo-clip", doc="CLIP checkpoint whose vision tower is used")
        text_trainable_layers: int = param(1, ge=0, doc="top blocks of the text encoder trained (PMMRec: 2 of 12)")
        image_trainable_layers: int = param(1, ge=0, doc="top blocks of the image encoder trained (PMMRec: 2 of 12)")
        max_tokens: int = param(32, ge=4, doc="text tokens per item (PMMRec: 50)")
        text_template: str = param("{title}", doc="item fields in braces (PMMRec: the title)")
        fusion_heads: int = param(2, ge=1)
        user_layers: int = param(2, ge=1)
        user_heads: int = param(2, ge=1)
        dropout: float = param(0.1, ge=0, lt=1)
        next_item_weight: float = param(1.0, ge=0)
        logq_correction: bool = param(True, doc="subtract log popularity from the in-batch logits")
        nicl_weight: float = param(0.4, ge=0, doc="PMMRec's UI_alpha")
        nicl_temperature: float = param(0.1, gt=0)
        nid_weight: float = param(0.1, ge=0)
        nid_ratio: float = param(0.2, gt=0, lt=1)
        rcl_weight: float = param(0.1, ge=0)
        rcl_temperature: float = param(0.1, gt=0)

        def check(self, where: str) -> None:
            if self.embedding_size % self.fusion_heads or self.embedding_size % self.user_heads:
                raise ParamsError(
                    f"params.yaml: {where}.embedding_size = {self.embedding_size} must be divisible by "
                    f"fusion_heads ({self.fusion_heads}) and user_heads ({self.user_heads})"
                )

    def __init__(self, data: SeqData, hp: PMMRec.HParams, max_seq_len: int) -> None:
        super().__init__(data, hp, max_seq_len)
        dim = hp.embedding_size
        self.uses_text = hp.item_tower in ("modal", "text")
        self.uses_image = hp.item_tower in ("modal", "image")
        if self.uses_text:
            if data.text_encoder is None or data.text_ids is None:
                raise ValueError(f"pmmrec: item_tower {hp.item_tower!r} needs item texts and a text encoder")
            self.text = TextTower(data.text_encoder, dim, hp.text_trainable_layers, data.text_ids, data.text_mask)
        if self.uses_image:
            if data.image_encoder is None or data.pixels is None:
                raise ValueError(f"pmmrec: item_tower {hp.item_tower!r} needs item images and an image encoder")
            self.image = ImageTower(data.image_encoder, dim, hp.image_trainable_layers, data.pixels)
        if hp.item_tower == "id":
            self.item_ids = nn.Embedding(data.n_items + 1, dim, padding_idx=PAD)
            nn.init.xavier_normal_(self.item_ids.weight)
        if hp.item_tower == "modal":
            if hp.fusion == "merged":
                self.fuse = nn.TransformerEncoderLayer(
                    d_model=dim, nhead=hp.fusion_heads, dim_feedforward=4 * dim, dropout=hp.dropout,
                    activation="gelu", batch_first=True,
                )  # fmt: skip
            elif hp.fusion == "sum":
                self.fuse_text, self.fuse_image = nn.Linear(dim, dim), nn.Linear(dim, dim)
            else:
                self.fuse_concat = nn.Linear(2 * dim, dim)
            self.nicl_head = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.user_encoder = UserEncoder(dim, max_seq_len, hp.user_layers, hp.user_heads, hp.dropout)
        self.nid_head = nn.Linear(dim, 1)
        log_p = np.log(np.maximum(data.popularity, 1) / max(1, int(data.popularity.sum())))
        self.register_buffer("log_popularity", torch.from_numpy(np.r_[0.0, log_p]).float(), persistent=False)

    @classmethod
    def item_tower(cls, hp: PMMRec.HParams) -> str:
        return hp.item_tower

    @classmethod
    def item_encoders(cls, hp: PMMRec.HParams) -> list[ItemEncoder]:
        """The text encoder of the `modal` and `text` towers, the CLIP vision tower of `modal` and `image`."""
        used = []
        if hp.item_tower in ("modal", "text"):
            used.append(
                ItemEncoder(
                    "text", "text_model", hp.text_model, "text_trainable_layers", hp.text_trainable_layers,
                    max_tokens=hp.max_tokens, template=hp.text_template,
                )
            )  # fmt: skip
        if hp.item_tower in ("modal", "image"):
            used.append(
                ItemEncoder("image", "image_model", hp.image_model, "image_trainable_layers", hp.image_trainable_layers)
            )
        return used

    def pretrained_encoders(self) -> list[nn.Module]:
        towers = (getattr(self, "text", None), getattr(self, "image", None))
        return [tower.encoder for tower in towers if tower is not None]

    # ------------------------------------------------------------------------------------------ items

    def parts(self) -> dict[str, list[nn.Module]]:
        """The modules PMMRec transfers by part: the item encoder (towers, fusion) and the user encoder."""
        names = ("text", "image", "item_ids", "fuse", "fuse_text", "fuse_image", "fuse_concat", "nicl_head")
        item = [m for m in (getattr(self, n, None) for n in names) if m is not None]
        return {"item_encoder": item, "user_encoder": [self.user_encoder, self.nid_head]}

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """The training losses (`losses`); a forward, so DistributedDataParallel syncs the gradients."""
        return self.losses(inputs, targets, generator)

    def encode_items(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Representations of items (item_idx + 1, PAD allowed): (fused [N, d], pooled text, pooled image)."""
        hp = self.hp
        if hp.item_tower == "id":
            return self.item_ids(items), None, None
        index = (items - 1).clamp(min=0)
        text_tokens = text_mask = image_tokens = None
        pooled_text = pooled_image = None
        if self.uses_text:
            text_tokens, text_mask = self.text(index)
            weights = text_mask.unsqueeze(-1).to(text_tokens.dtype)
            pooled_text = (text_tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
        if self.uses_image:
            image_tokens = self.image(index)
            pooled_image = image_tokens.mean(1)
        if hp.item_tower == "text":
            return pooled_text, pooled_text, None
        if hp.item_tower == "image":
            return pooled_image, None, pooled_image
        if hp.fusion == "merged":
            tokens = torch.cat([text_tokens, image_tokens], dim=1)
            valid = torch.cat([text_mask.bool(), torch.ones(image_tokens.shape[:2], dtype=torch.bool,
                                                            device=tokens.device)], dim=1)  # fmt: skip
            fused = self.fuse(tokens, src_key_padding_mask=~valid)
            weights = valid.unsqueeze(-1).to(fused.dtype)
            out = (fused * weights).sum(1) / weights.sum(1)
        elif hp.fusion == "sum":
            out = self.fuse_text(pooled_text) + self.fuse_image(pooled_image)
        else:
            out = self.fuse_concat(torch.cat([pooled_text, pooled_image], dim=1))
        return out, pooled_text, pooled_image

    @torch.no_grad()
    def all_item_embeddings(self, batch_size: int = 256) -> torch.Tensor:
        """[n_items + 1, d] (row 0: padding) for ranking; computed without gradients, in eval mode."""
        rows = [torch.zeros(1, self.hp.embedding_size, device=self.device)]
        items = torch.arange(1, self.n_items + 1, device=self.device)
        for start in range(0, self.n_items, batch_size):
            rows.append(self.encode_items(items[start : start + batch_size])[0].float())
        return torch.cat(rows)

    # ------------------------------------------------------------------------------------------ users

    def user_states(self, sequences: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """States [B, L, d] of left-padded sequences (item_idx + 1), item representations from `item_table`."""
        valid = sequences != PAD
        return self.user_encoder(item_table[sequences], valid)

    def scores(self, histories: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items] of every item (item_idx order) for the next position after each history."""
        last = self.user_states(histories, item_table)[:, -1]
        return last @ item_table[1:].T

    # ------------------------------------------------------------------------------------------ losses

    def losses(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """The weighted training losses of a batch: inputs/targets [B, L] of item_idx + 1 (PAD = 0)."""
        hp = self.hp
        candidates, inverse = torch.unique(torch.cat([inputs, targets], dim=1), return_inverse=True)
        reps, text, image = self.encode_items(candidates)
        reps = torch.where((candidates == PAD).unsqueeze(1), torch.zeros_like(reps), reps)
        n_in = inputs.shape[1]
        in_idx, tgt_idx = inverse[:, :n_in], inverse[:, n_in:]
        valid = inputs != PAD
        states = self.user_encoder(reps[in_idx], valid)
        out: dict[str, Any] = {}
        total = torch.zeros((), device=reps.device)

        if hp.next_item_weight > 0:
            loss = self.next_item_loss(states, valid, candidates, reps, in_idx, tgt_idx, inputs, targets)
            out["next_item"] = loss
            total = total + hp.next_item_weight * loss
        if hp.nicl_weight > 0 and text is not None and image is not None:
            loss = self.nicl_loss(text, image, in_idx, tgt_idx, valid, targets != PAD)
            out["nicl"] = loss
            total = total + hp.nicl_weight * loss
        if hp.nid_weight > 0 or hp.rcl_weight > 0:
            noised, replaced = self.noise(in_idx, valid, len(candidates), candidates, generator)
            noisy_states = self.user_encoder(reps[noised], valid)
            if hp.nid_weight > 0:
                logits = self.nid_head(noisy_states).squeeze(-1)
                loss = F.binary_cross_entropy_with_logits(logits[valid], replaced[valid].float())
                out["nid"] = loss
                total = total + hp.nid_weight * loss
            if hp.rcl_weight > 0:
                loss = self.rcl_loss(states[:, -1], noisy_states[:, -1])
                out["rcl"] = loss
                total = total + hp.rcl_weight * loss
        out["total"] = total
        return out

    def next_item_logits(self, states, candidates, reps, in_idx, tgt_idx) -> torch.Tensor:
        """[B, L, C] logits of every candidate at every position, log-popularity corrected and masked:
        the user's own items (anywhere in the sequence) and padding are never negatives; the target is
        always a candidate."""
        logits = states @ reps.T
        if self.hp.logq_correction:
            logits = logits - self.log_popularity[candidates]
        own = torch.zeros(in_idx.shape[0], len(candidates), dtype=torch.bool, device=logits.device)
        own.scatter_(1, in_idx, True)
        own.scatter_(1, tgt_idx, True)
        own[:, candidates == PAD] = True
        blocked = own.unsqueeze(1).expand_as(logits).clone()
        blocked.scatter_(2, tgt_idx.unsqueeze(-1), False)
        return logits.masked_fill(blocked, NEG)

    def next_item_loss(self, states, valid, candidates, reps, in_idx, tgt_idx, inputs, targets) -> torch.Tensor:
        logits = self.next_item_logits(states, candidates, reps, in_idx, tgt_idx)
        rows = valid & (targets != PAD)
        return F.cross_entropy(logits[rows], tgt_idx[rows])

    def nicl_loss(self, text, image, in_idx, tgt_idx, valid, next_valid) -> torch.Tensor:
        t = F.normalize(self.nicl_head(text), dim=-1)
        v = F.normalize(self.nicl_head(image), dim=-1)
        tau = self.hp.nicl_temperature
        rows = valid & next_valid
        a, b = in_idx[rows], tgt_idx[rows]  # item a, followed by item b
        to_images = t[a] @ v.T / tau  # [P, C]
        to_texts = t[a] @ t.T / tau
        to_texts = to_texts.masked_fill(F.one_hot(a, len(t)).bool(), float("-inf"))  # not the anchor itself
        positive = torch.logsumexp(torch.stack([to_images.gather(1, a[:, None]), to_images.gather(1, b[:, None])]), 0)
        denominator = torch.logsumexp(torch.cat([to_images, to_texts], dim=1), dim=1)
        same = a == b  # an item followed by itself: one positive, not two
        positive = torch.where(same[:, None], to_images.gather(1, a[:, None]), positive)
        return (denominator - positive.squeeze(1)).mean()

    def noise(self, in_idx, valid, n_candidates, candidates, generator):
        """Replace a share nid_ratio of the valid positions by random batch items (never padding)."""
        real = torch.nonzero(candidates != PAD).squeeze(1)
        draw = torch.rand(in_idx.shape, generator=generator).to(in_idx.device)
        replaced = (draw < self.hp.nid_ratio) & valid
        picks = real[torch.randint(len(real), in_idx.shape, generator=generator).to(in_idx.device)]
        return torch.where(replaced, picks, in_idx), replaced

    def rcl_loss(self, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        a, b = F.normalize(clean, dim=-1), F.normalize(noisy, dim=-1)
        logits = a @ b.T / self.hp.rcl_temperature
        labels = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    # ------------------------------------------------------------------------------------------ transfer
