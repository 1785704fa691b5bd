"""Attach LoRA factors to a frozen model with forward hooks: no weight copies, O(layers) detach.

A hook adds ``x @ A.T @ B.T`` to the output of each target linear. With per-row factors
(``A [batch, R, in]``), row i of the batch uses adapter i; ranks are zero-padded to the
largest, which adds exactly nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from doc2lora_rag.adapters.lora import LoRAAdapter

# module path -> (A, B): A [R, in] or [batch, R, in]; B [out, R] or [batch, out, R]
LayerFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _lora_hook(a: torch.Tensor, b: torch.Tensor):
    per_row = a.dim() == 3

    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0].to(a.dtype)
        if per_row:
            delta = torch.einsum("btr,bor->bto", torch.einsum("bti,bri->btr", x, a), b)
        else:
            delta = (x @ a.transpose(-1, -2)) @ b.transpose(-1, -2)
        return output + delta.to(output.dtype)

    return hook


@contextmanager
def attached(model: nn.Module, factors: LayerFactors) -> Iterator[None]:
    """Within the block, ``model`` runs with the LoRA deltas added; afterwards it is unchanged."""
    handles = [model.get_submodule(path).register_forward_hook(_lora_hook(a, b)) for path, (a, b) in factors.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def layer_factors(adapter: LoRAAdapter, device: torch.device, dtype: torch.dtype) -> LayerFactors:
    """Per-module-path factors of one adapter, moved to the model's device and dtype."""
    result = {}
    for name, (a, b) in adapter.factors.items():
        a, b = a.to(device, dtype), b.to(device, dtype)
        for index, layer in enumerate(adapter.layers):
            result[adapter.module_paths[name][layer]] = (a[index], b[index])
    return result


def per_row_factors(adapters: Sequence[LoRAAdapter | None], device: torch.device, dtype: torch.dtype) -> LayerFactors:
    """Stack one adapter per batch row (``None`` = base model for that row)."""
    present = [ad for ad in adapters if ad is not None]
    if not present:
        return {}
    template = present[0]
    max_rank = max(ad.rank for ad in present)
    result = {}
    for name, (a0, b0) in template.factors.items():
        _, _, in_features = a0.shape
        out_features = b0.shape[1]
        for index, layer in enumerate(template.layers):
            a = torch.zeros(len(adapters), max_rank, in_features, device=device, dtype=dtype)
            b = torch.zeros(len(adapters), out_features, max_rank, device=device, dtype=dtype)
            for row, adapter in enumerate(adapters):
                if adapter is None:
                    continue
                if adapter.layers != template.layers or name not in adapter.factors:
                    raise ValueError("per-row adapters must target the same layers and modules")
                ra, rb = adapter.factors[name]
                a[row, : adapter.rank] = ra[index]
                b[row, :, : adapter.rank] = rb[index]
            result[template.module_paths[name][layer]] = (a, b)
    return result


@contextmanager
def adapters_attached(
    model: nn.Module, adapters: LoRAAdapter | Sequence[LoRAAdapter | None] | None, *, per_row: bool = False
) -> Iterator[None]:
    """Attach one adapter, several (rank-concatenated) or one per batch row (``per_row``)."""
    parameter = next(model.parameters())
    if adapters is None or (not per_row and not isinstance(adapters, LoRAAdapter) and not adapters):
        yield
        return
    if per_row:
        factors = per_row_factors(list(adapters), parameter.device, parameter.dtype)
    else:
        combined = adapters if isinstance(adapters, LoRAAdapter) else LoRAAdapter.concat(list(adapters))
        factors = layer_factors(combined, parameter.device, parameter.dtype)
    with attached(model, factors):
        yield
