"""The fresh start that benchmarks/refine_start.py refines as its control: the adapter's shape
and document-independent block, nothing the hypernetwork read."""

from __future__ import annotations

import torch

from doc2lora_rag.training.refine import refine_adapter
from tests.benchmark_loader import load_benchmark

refine_start = load_benchmark("refine_start")

TEXT = "The harbour of Veltrano was rebuilt in granite. Its lighthouse keeper was named Oriel Paske."


def test_a_fresh_start_keeps_the_shape_and_the_shared_block_and_forgets_the_chunks(tiny_engine) -> None:
    made = tiny_engine.internalize(TEXT)
    fresh = refine_start.fresh_start(made)
    assert made.bias_rank > 0 and fresh.rank == made.rank and fresh.num_chunks == made.num_chunks
    assert fresh.metadata["fresh_start"] and "fresh_start" not in made.metadata
    read = made.rank - made.bias_rank
    for name, (a, b) in made.factors.items():
        fa, fb = fresh.factors[name]
        assert fa.shape == a.shape and fb.shape == b.shape and fa.dtype == a.dtype
        assert torch.equal(fa[:, read:], a[:, read:]) and torch.equal(fb[:, :, read:], b[:, :, read:])
        assert not fb[:, :, :read].any()  # the chunk blocks add nothing until they are fitted
        assert abs(fa[:, :read].float().pow(2).mean().item() * a.shape[2] - 1.0) < 0.2
        for layer in made.layers:  # so the delta is the shared block's alone
            index = made.layers.index(layer)
            assert torch.allclose(fresh.delta(name, layer), b[index][:, read:] @ a[index][read:], atol=1e-6)


def test_refinement_moves_a_fresh_start_away_from_zero(tiny_engine) -> None:
    made = tiny_engine.internalize(TEXT)
    texts = tiny_engine._chunk_texts(TEXT, made.chunking)
    fitted = refine_adapter(tiny_engine, refine_start.fresh_start(made), texts, steps=3, lr=1e-2)
    read = made.rank - made.bias_rank
    assert any(b[:, :, :read].abs().max() > 0 for _, b in fitted.factors.values())
