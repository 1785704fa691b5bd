"""A copy path for the B side: each rank's B column may point at the document's tokens.

The answer to a question about a document is mostly made of the document's own tokens, and
in a model whose input and output embeddings are tied, adding a token's embedding to the
residual stream is a vote for that token. So, for target modules that write into the
residual stream (``out_features`` equal to the base width, e.g. ``down_proj``), a softmax
over the chunk's tokens picks which token embeddings each B column carries, scaled by a
learned per-layer, per-rank gain that starts at zero (the first delta stays exactly zero).
"""

from __future__ import annotations

import torch
from torch import nn

from doc2lora_rag.hypernetwork.config import HypernetConfig

# Gains are learned in units of this many: Adam moves a parameter by about the learning rate
# per step, and a useful gain is tens (a token embedding has norm ~3 against a residual of
# norm ~100-300 in SmolLM2's upper layers).
GAIN_UNIT = 100.0


class TokenPointer(nn.Module):
    def __init__(self, config: HypernetConfig) -> None:
        super().__init__()
        num_layers = len(config.target_layers)
        self.key_width = config.head_width
        self.query = nn.Linear(config.width, self.key_width)
        self.key = nn.Linear(config.width, self.key_width)
        self.gain = nn.ParameterDict(
            {
                name: nn.Parameter(torch.zeros(num_layers, config.rank))
                for name, (_, out_features) in config.target_modules.items()
                if out_features == config.base_hidden_size
            }
        )

    def forward(
        self,
        name: str,
        decoded: torch.Tensor,
        tokens: torch.Tensor,
        embeddings: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor | None:
        """decoded ``[N, L, r, W]``, tokens ``[N, T, W]``, embeddings ``[N, T, d]``, mask
        ``[N, T]`` -> the pointed part of B, ``[N, L, d, r]`` (None for other modules)."""
        if name not in self.gain:
            return None
        scores = torch.einsum("nlrk,ntk->nlrt", self.query(decoded), self.key(tokens)) / self.key_width**0.5
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        pointed = torch.einsum("nlrt,ntd->nlrd", scores.softmax(-1), embeddings.to(scores.dtype))
        pointed = pointed * (GAIN_UNIT * self.gain[name])[None, :, :, None]
        return pointed.transpose(-1, -2)
