"""Perceiver building blocks: latent queries cross-attending into token activations.

There is no self-attention over the document tokens, so the cost grows linearly with the
document, and the same blocks serve every layer (layers are folded into the query axis).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """Gated MLP: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(in_dim, hidden_dim, bias=False)
        self.up = nn.Linear(in_dim, hidden_dim, bias=False)
        self.down = nn.Linear(hidden_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class CrossAttention(nn.Module):
    """Multi-head attention from queries into a context, with grouped key/value heads."""

    def __init__(self, width: int, num_heads: int, num_kv_heads: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = width // num_heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * num_kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        """queries ``[B, Q, W]``, context ``[B, T, W]``, mask ``[B, T]`` (True = attend)."""
        batch, num_queries, width = queries.shape
        q = self.q(queries).view(batch, num_queries, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).view(batch, -1, 2, self.num_kv_heads, self.head_dim).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        mask = None if context_mask is None else context_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.out(attended.transpose(1, 2).reshape(batch, num_queries, width))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention then MLP, both residual, applied to the queries only."""

    def __init__(self, width: int, num_heads: int, num_kv_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.query_norm = nn.RMSNorm(width)
        self.context_norm = nn.RMSNorm(width)
        self.attention = CrossAttention(width, num_heads, num_kv_heads)
        self.mlp_norm = nn.RMSNorm(width)
        self.mlp = SwiGLU(width, mlp_ratio * width, width)

    def forward(self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        queries = queries + self.attention(self.query_norm(queries), self.context_norm(context), context_mask)
        return queries + self.mlp(self.mlp_norm(queries))
