"""Perceiver building blocks: latent queries cross-attending into token activations.

There is no self-attention over the document tokens, so the cost grows linearly with the
document, and the same blocks serve every layer (layers are folded into the query axis).
"""

from __future__ import annotations

import math

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


class TokenPositions(nn.Module):
    """Where each token sits in its chunk, as a vector to add to the token's context entry.

    Cross-attention alone sees the chunk as a set: "4827" and "4287" give the same latents
    unless the activations themselves carry the order. Sinusoids of the token index, mapped
    by a linear layer that starts at zero, add the order without changing what a network
    trained without them computes at the start.
    """

    # The projection's output is multiplied by this: Adam moves a weight by about the learning
    # rate per step, and the token features are ~3 RMS in the SmolLM2 default, so without a
    # gain positions would need thousands of steps to reach their scale. (Even so, they stayed
    # small in the one CPU continuation that tried them: docs/training.md.)
    gain = 4.0

    def __init__(self, width: int, num_frequencies: int = 32, longest_wavelength: float = 4096.0) -> None:
        super().__init__()
        self.num_frequencies, self.longest_wavelength = num_frequencies, longest_wavelength
        self.project = nn.Linear(2 * num_frequencies, width, bias=False)
        nn.init.zeros_(self.project.weight)

    def forward(self, length: int) -> torch.Tensor:
        """``[length, width]`` for token indices ``0 .. length - 1``."""
        # Computed in float32 every call: a low-precision copy of the angles would blur
        # neighbouring positions within a few hundred tokens.
        device = self.project.weight.device
        # Wavelengths from 2 tokens (neighbours differ) to the longest, evenly on a log scale.
        exponents = torch.arange(self.num_frequencies, device=device) / max(self.num_frequencies - 1, 1)
        wavelengths = 2.0 * (self.longest_wavelength / 2.0) ** exponents
        angles = torch.arange(length, device=device)[:, None] * (2 * math.pi / wavelengths)
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.project.weight.dtype)
        return self.gain * self.project(features)
