"""The Perceiver hypernetwork: document activations in, LoRA factors out, in one pass.

Shapes: ``S`` source layers, ``N`` chunks, ``T`` tokens per chunk, ``d`` base width,
``L`` target layers, ``W`` hypernetwork width, ``r`` rank per chunk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from doc2lora_rag.errors import AdapterFormatError, IncompatibleModelError
from doc2lora_rag.hypernetwork.config import HypernetConfig
from doc2lora_rag.hypernetwork.perceiver import CrossAttentionBlock, SwiGLU, TokenPositions
from doc2lora_rag.hypernetwork.pointer import TokenPointer

CONFIG_FILE = "hypernet_config.json"
WEIGHTS_FILE = "hypernet.safetensors"
FORMAT_VERSION = 1

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


class DocumentCentering(nn.Module):
    """Subtract each head feature's mean over documents (the batch's in training, a running
    mean at inference), so the heads see only how this document differs from others.

    What every document shares then reaches the adapter only through the biases and the bias
    block. Without it, a large document-independent vector grown upstream leaves the
    document's own signal a vanishing fraction of the normalised head input. Only the mean is
    removed: scaling each feature to unit spread would blow up features that barely vary.
    """

    def __init__(self, num_features: int, momentum: float = 0.05) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(h.shape[0], -1)
        if self.training and h.shape[0] > 1:
            mean = flat.mean(0)
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
        else:
            mean = self.running_mean.to(flat.dtype)
        return (flat - mean).view_as(h)


class LayerHeads(nn.Module):
    """Per-layer residual MLP and linear heads turning one latent into an A row and a B column."""

    def __init__(self, config: HypernetConfig) -> None:
        super().__init__()
        num_layers, width, head = len(config.target_layers), config.width, config.head_width
        self.scale = config.scale
        # The B head's output is multiplied by alpha. By default its gain is divided by alpha *
        # sqrt(head), so one optimiser step moves B about as much as A; see config.b_head_gain.
        self.b_gain = 1.0 / (config.scale * head**0.5) if config.b_head_gain is None else config.b_head_gain
        self.project = nn.Linear(width, head)
        self.mlp_norm = nn.RMSNorm(head)
        self.mlp_in = nn.Parameter(torch.randn(num_layers, head, 2 * head) / head**0.5)
        self.mlp_out = nn.Parameter(torch.zeros(num_layers, 2 * head, head))
        self.head_norm = nn.RMSNorm(head)
        self.centering = DocumentCentering(num_layers * config.rank * head) if config.head_norm == "document" else None
        self.a_weight, self.a_bias = nn.ParameterDict(), nn.ParameterDict()
        self.b_weight, self.b_bias = nn.ParameterDict(), nn.ParameterDict()
        self.rank_scale = nn.ParameterDict()
        for name, (in_features, out_features) in config.target_modules.items():
            # A rows start near unit norm; B starts at zero so the first delta is exactly zero.
            std = 1.0 / (head**0.5 * in_features**0.5)
            self.a_weight[name] = nn.Parameter(torch.randn(num_layers, head, in_features) * std)
            self.a_bias[name] = nn.Parameter(torch.zeros(num_layers, 1, in_features))
            self.b_weight[name] = nn.Parameter(torch.zeros(num_layers, head, out_features))
            self.b_bias[name] = nn.Parameter(torch.zeros(num_layers, 1, out_features))
            self.rank_scale[name] = nn.Parameter(torch.ones(num_layers, config.rank))

    def forward(self, name: str, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents ``[N, L, r, W]`` -> A ``[N, L, r, in]``, B ``[N, L, out, r]``."""
        h = self.project(latents)
        hidden = torch.einsum("nlrh,lhk->nlrk", self.mlp_norm(h), self.mlp_in)
        h = h + torch.einsum("nlrk,lkh->nlrh", nn.functional.silu(hidden), self.mlp_out)
        if self.centering is not None:
            h = self.centering(h)
        h = self.head_norm(h)
        a = torch.einsum("nlrh,lhi->nlri", h, self.a_weight[name]) + self.a_bias[name]
        b = torch.einsum("nlrh,lho->nlro", h, self.b_weight[name]) + self.b_bias[name]
        b = b * (self.b_gain * self.scale * self.rank_scale[name])[None, :, :, None]
        return a, b.transpose(-1, -2)


class HyperNetwork(nn.Module):
    """Maps the activations of a document chunk to a rank-r LoRA for every target layer."""

    def __init__(self, config: HypernetConfig) -> None:
        super().__init__()
        self.config = config
        num_sources, num_layers = len(config.source_layers), len(config.target_layers)
        width, modules = config.width, list(config.target_modules)
        # Per-dimension statistics of the source activations (see ``set_input_statistics``):
        # LLM residual streams have a few outlier dimensions that would otherwise drown the rest.
        self.register_buffer("input_mean", torch.zeros(num_sources, config.base_hidden_size))
        self.register_buffer("input_std", torch.ones(num_sources, config.base_hidden_size))
        self.source_norm = nn.Parameter(torch.ones(num_sources, config.base_hidden_size))
        self.input_projection = SwiGLU(config.base_hidden_size, 2 * width, width)
        self.position = TokenPositions(width) if config.position_encoding else None
        self.latents = nn.Parameter(torch.randn(num_layers, config.num_latents, width) * 0.02)
        block = lambda: CrossAttentionBlock(  # noqa: E731
            width, config.num_heads, config.num_kv_heads, config.mlp_ratio
        )
        self.encoder = nn.ModuleList(block() for _ in range(config.num_blocks))
        self.output_queries = nn.Parameter(torch.randn(len(modules) * config.rank, width) * 0.02)
        self.layer_embedding = nn.Parameter(torch.randn(num_layers, 1, width) * 0.02)
        self.decoder = block()
        self.heads = LayerHeads(config)
        self.pointer = TokenPointer(config) if config.pointer else None
        self.answer_head = nn.Linear(width, config.base_hidden_size, bias=False) if config.answer_head else None
        # The document-independent block is a learned constant; its B is learned at full scale.
        self.bias_a, self.bias_b = nn.ParameterDict(), nn.ParameterDict()
        if config.bias_rank:
            for name, (in_features, out_features) in config.target_modules.items():
                shape_a = (num_layers, config.bias_rank, in_features)
                self.bias_a[name] = nn.Parameter(torch.randn(shape_a) / in_features**0.5)
                self.bias_b[name] = nn.Parameter(torch.zeros(num_layers, out_features, config.bias_rank))
        self._fingerprint: str | None = None

    def forward(
        self,
        activations: torch.Tensor,
        mask: torch.Tensor,
        embeddings: torch.Tensor | None = None,
        return_summary: bool = False,
    ) -> Factors | tuple[Factors, torch.Tensor]:
        """activations ``[S, N, T, d]``, mask ``[N, T]``, the tokens' input embeddings
        ``[N, T, d]`` (needed with ``config.pointer``) -> per module (A ``[N, L, r, in]``, B).
        ``return_summary`` also returns each chunk's mean encoder latent ``[N, W]``."""
        config = self.config
        if self.pointer is not None and embeddings is None:
            raise ValueError("this hypernetwork points at token embeddings: pass the chunks' embeddings")
        num_sources, num_chunks, length, _ = activations.shape
        group = config.layers_per_source
        x = (activations - self.input_mean[:, None, None, :]) / self.input_std[:, None, None, :]
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        x = self.input_projection(x * self.source_norm[:, None, None, :])
        if self.position is not None:
            x = x + self.position(length)
        x = x.reshape(num_sources * num_chunks, length, config.width)
        x_mask = mask.bool().repeat(num_sources, 1)
        # Latents of the layers that share a source attend together: [S*N, G*latents, W].
        latents = (self.latents + self.layer_embedding).view(num_sources, 1, -1, config.width)
        latents = latents.expand(-1, num_chunks, -1, -1).reshape(num_sources * num_chunks, -1, config.width)
        for block in self.encoder:
            latents = block(latents, x, x_mask)
        summary = latents.view(num_sources, num_chunks, -1, config.width).mean((0, 2)) if return_summary else None
        # Back to one latent set per (chunk, layer): [N*L, latents, W].
        latents = latents.view(num_sources, num_chunks, group, config.num_latents, config.width)
        latents = latents.transpose(0, 1).reshape(-1, config.num_latents, config.width)
        queries = (self.output_queries[None] + self.layer_embedding).repeat(num_chunks, 1, 1)
        decoded = self.decoder(queries, latents, None)
        decoded = decoded.view(num_chunks, -1, len(config.target_modules), config.rank, config.width)
        factors = {name: self.heads(name, decoded[:, :, index]) for index, name in enumerate(config.target_modules)}
        if self.pointer is not None:
            tokens = x.view(num_sources, num_chunks, length, config.width).mean(0)
            for index, name in enumerate(config.target_modules):
                pointed = self.pointer(name, decoded[:, :, index], tokens, embeddings, mask)
                if pointed is not None:
                    a, b = factors[name]
                    factors[name] = (a, b + pointed)
        return (factors, summary) if return_summary else factors

    @torch.no_grad()
    def set_input_statistics(self, activations: list[torch.Tensor]) -> None:
        """Standardise inputs by the mean and spread of each dimension over real documents'
        tokens (``[S, T, d]`` each; the first token, an attention sink, is left out)."""
        tokens = torch.cat([a[:, 1:].float() for a in activations], dim=1)
        self.input_mean.copy_(tokens.mean(1))
        self.input_std.copy_(tokens.std(1).clamp(min=1e-3))
        self._fingerprint = None

    def assemble(self, chunk_factors: Factors) -> Factors:
        """Concatenate chunk LoRAs along the rank (no 1/K scaling) and append the bias block."""
        assembled = {}
        for name, (a, b) in chunk_factors.items():
            num_chunks, num_layers, rank, in_features = a.shape
            a = a.transpose(0, 1).reshape(num_layers, num_chunks * rank, in_features)
            b = b.permute(1, 2, 0, 3).reshape(num_layers, b.shape[2], num_chunks * rank)
            if self.config.bias_rank:
                a = torch.cat([a, self.bias_a[name].to(a.dtype)], dim=1)
                b = torch.cat([b, self.bias_b[name].to(b.dtype)], dim=2)
            assembled[name] = (a, b)
        return assembled

    def assemble_per_row(self, chunk_factors: Factors, owners: list[int], num_rows: int) -> Factors:
        """Differentiable per-row adapters for a training batch: chunk i belongs to row
        ``owners[i]``; rows with fewer chunks are zero-padded along the rank (adds nothing).
        Returns per module A ``[L, rows, R, in]`` and B ``[L, rows, out, R]``."""
        owner = torch.tensor(owners, device=next(iter(chunk_factors.values()))[0].device)
        slot = torch.zeros_like(owner)
        for index in range(1, len(owners)):
            slot[index] = slot[index - 1] + 1 if owners[index] == owners[index - 1] else 0
        if sorted(owners) != owners:
            raise ValueError("chunks must be grouped by row")
        max_chunks = int(slot.max()) + 1
        assembled = {}
        for name, (a, b) in chunk_factors.items():
            _, num_layers, rank, in_features = a.shape
            out_features = b.shape[2]
            full_a = a.new_zeros(num_rows, max_chunks, num_layers, rank, in_features)
            full_b = b.new_zeros(num_rows, max_chunks, num_layers, out_features, rank)
            full_a = full_a.index_put((owner, slot), a)
            full_b = full_b.index_put((owner, slot), b)
            full_a = full_a.permute(2, 0, 1, 3, 4).reshape(num_layers, num_rows, max_chunks * rank, in_features)
            full_b = full_b.permute(2, 0, 3, 1, 4).reshape(num_layers, num_rows, out_features, max_chunks * rank)
            if self.config.bias_rank:
                bias_a = self.bias_a[name][:, None].expand(-1, num_rows, -1, -1)
                bias_b = self.bias_b[name][:, None].expand(-1, num_rows, -1, -1)
                full_a = torch.cat([full_a, bias_a.to(a.dtype)], dim=2)
                full_b = torch.cat([full_b, bias_b.to(b.dtype)], dim=3)
            assembled[name] = (full_a, full_b)
        return assembled

    @property
    def fingerprint(self) -> str:
        """Hash of the weights, recorded in every adapter this network makes."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self.config.identity(), sort_keys=True).encode())
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, directory / WEIGHTS_FILE, metadata={"format_version": str(FORMAT_VERSION)})
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, base_fingerprint: str | None = None) -> HyperNetwork:
        """Load a saved hypernetwork; refuse it if it was trained for another base model."""
        directory = Path(directory)
        try:
            config = HypernetConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
            tensors = load_file(directory / WEIGHTS_FILE)
        except (OSError, ValueError, TypeError, SafetensorError) as error:
            raise AdapterFormatError(f"cannot read hypernetwork at {directory}: {error}") from error
        if base_fingerprint is not None and config.base_fingerprint != base_fingerprint:
            raise IncompatibleModelError(
                f"hypernetwork at {directory} was trained for base model "
                f"{config.base_model_name!r} (fingerprint {config.base_fingerprint}), "
                f"not for the loaded base model (fingerprint {base_fingerprint})"
            )
        network = cls(config)
        defaults = {"input_mean": network.input_mean, "input_std": network.input_std}
        tensors = {**defaults, **tensors}  # files saved before input statistics existed
        try:
            network.load_state_dict({k: v.float() for k, v in tensors.items()})
        except RuntimeError as error:
            raise AdapterFormatError(f"hypernetwork weights at {directory} do not fit its config") from error
        return network
