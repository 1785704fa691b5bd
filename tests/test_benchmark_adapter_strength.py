"""The reweighting that benchmarks/adapter_strength.py measures: each setting gives the delta
its docstring promises, so the benchmark's table measures what it says."""

from __future__ import annotations

import math

import pytest
import torch

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.training.data import synthetic_fact_records
from tests.benchmark_loader import load_benchmark

adapter_strength = load_benchmark("adapter_strength")


@pytest.fixture(scope="module")
def adapters(tiny_engine) -> tuple[LoRAAdapter, LoRAAdapter]:
    made = tuple(
        tiny_engine.internalize(text)
        for text in ("The harbour master's cat is called Pepper.", "Trains to the coast leave from platform nine.")
    )
    assert all(adapter.bias_rank > 0 for adapter in made)  # both parts present, so both are tested
    return made


def _parts(adapter: LoRAAdapter, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense deltas of the chunk blocks and of the bias block of one layer."""
    a, b = adapter.factors["down_proj"]
    index, read = adapter.layers.index(layer), adapter.rank - adapter.bias_rank
    return b[index][:, :read] @ a[index][:read], b[index][:, read:] @ a[index][read:]


@pytest.mark.parametrize(("chunk", "bias"), [(1.0, 1.0), (0.5, 1.0), (1.0, 0.0), (1.5, 0.5)])
def test_scales_the_read_part_and_the_bias_block_apart(adapters, chunk: float, bias: float) -> None:
    adapter, other = adapters
    scaled = adapter_strength.reweighted(adapter, [other], chunk, bias, 0.0)
    assert scaled.rank == adapter.rank
    for layer in adapter.layers:
        read, shared = _parts(adapter, layer)
        assert torch.allclose(scaled.delta("down_proj", layer), chunk * read + bias * shared, atol=1e-6)


def test_guidance_moves_the_adapter_away_from_the_references(adapters) -> None:
    adapter, other = adapters
    guided = adapter_strength.reweighted(adapter, [other], 1.0, 1.0, 2.0)
    # With itself as the only reference, guidance changes nothing: 3 x read - 2 x read.
    unchanged = adapter_strength.reweighted(adapter, [adapter], 1.0, 1.0, 2.0)
    for layer in adapter.layers:
        read, shared = _parts(adapter, layer)
        reference, _ = _parts(other, layer)
        assert torch.allclose(guided.delta("down_proj", layer), 3 * read - 2 * reference + shared, atol=1e-5)
        assert torch.allclose(unchanged.delta("down_proj", layer), adapter.delta("down_proj", layer), atol=1e-5)
    assert not torch.allclose(
        guided.delta("down_proj", adapter.layers[0]), adapter.delta("down_proj", adapter.layers[0]), atol=1e-5
    )


def test_measure_scores_every_source_and_the_general_questions(tiny_engine, adapters) -> None:
    records = synthetic_fact_records(2, seed=11)[:3]
    made = {r.context: tiny_engine.internalize(r.context) for r in records}
    row = adapter_strength.measure(
        tiny_engine, {"facts": records}, made, [("What is two plus two?", ["four", "4"])],
        [records[0].context], [adapters[1]], (1.0, 1.0, 0.5),
    )
    assert set(row) == {"facts", "general"}
    assert set(row["facts"]) == {"f1", "contains", "nll", "nll_other"}
    assert all(math.isfinite(value) and value > 0 for value in (row["facts"]["nll"], row["facts"]["nll_other"]))
    assert 0.0 <= row["general"]["contains"] <= 1.0
