"""The user encoder of SASRec and PMMRec: a causal Transformer over the item representations of a sequence.

As PMMRec's: learned position embeddings over `max_seq_len` positions, LayerNorm(item + position),
dropout, then `n_layers` post-LayerNorm Transformer blocks (`n_heads` heads, feed-forward 4 x dim, ReLU,
dropout) where position j attends to positions <= j that are not padding. The state at position j
represents the sequence up to item j and is matched against item j + 1.
"""

from __future__ import annotations

import torch
from torch import nn


class UserEncoder(nn.Module):
    def __init__(self, dim: int, max_seq_len: int, n_layers: int = 2, n_heads: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.positions = nn.Embedding(max_seq_len, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=n_heads, dim_feedforward=4 * dim, dropout=dropout, activation="relu",
            batch_first=True, norm_first=False, layer_norm_eps=1e-6,
        )  # fmt: skip
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.max_seq_len = max_seq_len
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def forward(self, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """items [B, L, dim] (left-padded), valid [B, L] bool -> states [B, L, dim]."""
        length = items.shape[1]
        positions = torch.arange(length, device=items.device) + (self.max_seq_len - length)
        x = self.dropout(self.norm(items + self.positions(positions)))
        # One mask per sequence: causal and key padding together. A padded query (left of the first item)
        # would see no key at all: it may see itself, and its output is never used.
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=items.device), diagonal=1)
        blocked = causal.unsqueeze(0) | ~valid.unsqueeze(1)  # [B, L(query), L(key)]
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=x.device).unsqueeze(0)
        mask = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device).masked_fill(blocked, float("-inf"))
        heads = self.blocks.layers[0].self_attn.num_heads
        mask = mask.repeat_interleave(heads, dim=0)  # [B * heads, L, L], as nn.MultiheadAttention wants
        return self.blocks(x, mask=mask)
