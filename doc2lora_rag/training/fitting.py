"""Fitting LoRA factors by gradient descent on a frozen model: the loop that context
distillation and adapter refinement share."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from doc2lora_rag.adapters.runtime import attached
from doc2lora_rag.base_model.locking import model_lock
from doc2lora_rag.training.objective import StudentBatch, distillation_loss, response_logits

# module name -> (A [L, R, in], B [L, out, R]), stacked over the target layers
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def fresh_lora(
    layers: int, rank: int, in_features: int, out_features: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A new LoRA's start, stacked over ``layers``: A Gaussian of variance 1 / in_features, B
    zero, so it adds nothing until it is fitted."""
    a = torch.randn(layers, rank, in_features, generator=generator) / in_features**0.5
    return a, torch.zeros(layers, out_features, rank)


def fit_lora(
    model: torch.nn.Module,
    paths: dict[str, list[str]],
    trainable: Factors,
    batches: Sequence[StudentBatch],
    *,
    steps: int,
    lr: float,
    frozen: Factors | None = None,
) -> list[float]:
    """Adam on the ``trainable`` factors, in place; step ``i`` fits the targets of
    ``batches[i % len(batches)]``.

    ``paths[name][i]`` is the module that layer ``i`` of factor ``name`` attaches to;
    ``frozen`` factors ride along, rank-concatenated, and stay as they are. Returns the loss
    before each step."""
    optimizer = torch.optim.Adam([t for pair in trainable.values() for t in pair], lr=lr)
    frozen = frozen or {}
    if not batches:
        raise ValueError("fitting needs at least one batch")
    losses = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        hooked = {}
        for name, (a, b) in trainable.items():
            if name in frozen:
                a, b = torch.cat([a, frozen[name][0]], dim=1), torch.cat([b, frozen[name][1]], dim=2)
            hooked.update({path: (a[i], b[i]) for i, path in enumerate(paths[name])})
        # Under the model's lock: a query in another thread must not run with these hooks.
        with model_lock(model), torch.enable_grad(), attached(model, hooked):
            loss = distillation_loss(response_logits(model, batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
