"""Shared fixtures: tiny random engines (no weights on disk) and the real embedded model."""

from __future__ import annotations

import string

import pytest
import torch

from doc2lora_rag import Doc2LoRA, HypernetConfig, HyperNetwork
from doc2lora_rag.testing import tiny_base_model

TINY_HYPERNET = dict(width=32, num_blocks=2, num_heads=4, num_kv_heads=2, head_width=16, chunk_size=48)


def make_tiny_engine(seed: int = 0, *, randomize_b: bool = True, **options) -> Doc2LoRA:
    """A tiny engine; with ``randomize_b`` the B heads get random weights so that adapters
    actually change the model (a fresh hypernetwork's delta is exactly zero)."""
    base = tiny_base_model(seed=seed, max_positions=options.pop("max_positions", 256))
    config = HypernetConfig.for_base_model(base, **{**TINY_HYPERNET, **options})
    torch.manual_seed(seed)
    network = HyperNetwork(config)
    if randomize_b:
        with torch.no_grad():
            for name in network.heads.b_weight:
                network.heads.b_weight[name].normal_(0, 0.02)
            for name in network.bias_b:
                network.bias_b[name].normal_(0, 0.001)
    return Doc2LoRA(base, network)


VISIBLE = set(string.ascii_letters + string.digits)


def make_text_engine(seed: int = 0, *, max_positions: int = 1024) -> Doc2LoRA:
    """A tiny engine whose generations are visible text: a random tiny model mostly emits
    whitespace or end-of-turn, so its output logits are masked to letters, digits and spaces,
    and its B heads scaled up tenfold so that adapters visibly change what it writes."""
    engine = make_tiny_engine(seed, max_positions=max_positions, source_layers="all")
    with torch.no_grad():
        for weight in engine.hypernet.heads.b_weight.values():
            weight.mul_(10)
    tokenizer = engine.tokenizer
    allowed = [i for t, i in tokenizer.get_vocab().items() if t in VISIBLE or t == "Ġ"]
    mask = torch.full((len(tokenizer),), float("-inf"))
    mask[allowed] = 0.0

    def visible_only(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + mask.to(output.dtype)

    engine.model.lm_head.register_forward_hook(visible_only)
    return engine


@pytest.fixture(scope="session")
def tiny_engine() -> Doc2LoRA:
    return make_tiny_engine(source_layers="all")


@pytest.fixture(scope="session")
def real_engine() -> Doc2LoRA:
    """The embedded SmolLM2-135M-Instruct default (converted once into the user cache)."""
    return Doc2LoRA.from_pretrained()
