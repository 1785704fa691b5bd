"""Weight interpolation between two hypernetworks trained from the same start.

A continuation that specialises (say, on needles) can lose some of what its start knew. The
network part of the way along the straight line between the two keeps much of the new skill
and more of the old: weights fine-tuned from one start stay in one basin, where averaging them
does not break the network as it would two unrelated ones.
"""

from __future__ import annotations

import torch

from doc2lora_rag.hypernetwork.model import HyperNetwork


def interpolate(first: HyperNetwork, second: HyperNetwork, weight: float) -> HyperNetwork:
    """``(1 - weight) * first + weight * second``, parameter by parameter.

    Both must share a config; buffers (the input statistics) are measured, not learned, so
    they must be equal rather than averaged: networks whose inputs were standardised
    differently do not share a basin."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], not {weight}")
    if first.config.to_dict() != second.config.to_dict():
        raise ValueError("the two hypernetworks have different configs: only networks from one start interpolate")
    parameters = {name for name, _ in first.named_parameters()}
    second_state = second.state_dict()
    merged = {}
    for name, tensor in first.state_dict().items():
        other = second_state[name]
        if name in parameters:
            merged[name] = torch.lerp(tensor.float(), other.float(), weight)
        elif torch.equal(tensor.float(), other.float()):
            merged[name] = tensor
        else:
            raise ValueError(f"buffer {name} differs between the two networks: they did not start from one network")
    network = HyperNetwork(first.config)
    network.load_state_dict(merged)
    return network
