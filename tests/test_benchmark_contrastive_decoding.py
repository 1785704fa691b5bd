"""The pieces benchmarks/contrastive_decoding.py measures with: the paired scores, the mean
reference adapter, and the paired generation agreeing with plain greedy decoding at weight 0."""

from __future__ import annotations

import math

import pytest
import torch

from doc2lora_rag.adapters.lora import LoRAAdapter
from tests.benchmark_loader import load_benchmark

contrastive_decoding = load_benchmark("contrastive_decoding")


@pytest.fixture(scope="module")
def adapters(tiny_engine) -> tuple[LoRAAdapter, LoRAAdapter]:
    return tuple(
        tiny_engine.internalize(text)
        for text in ("The lighthouse keeper's dog is called Biscuit.", "The ferry to the island leaves at noon.")
    )


def test_paired_scores_amplify_the_own_rows_over_the_reference_rows() -> None:
    torch.manual_seed(0)
    own, reference = torch.randn(3, 11), torch.randn(3, 11)
    mixed = contrastive_decoding.PairedContrast(3, 0.5, 0.1)(None, torch.cat([own, reference]))
    log_own, log_reference = own.log_softmax(-1), reference.log_softmax(-1)
    plausible = log_own >= log_own.max(-1, keepdim=True).values + math.log(0.1)
    expected = torch.where(plausible, 1.5 * log_own - 0.5 * log_reference, torch.tensor(float("-inf")))
    assert torch.equal(mixed[:3], mixed[3:])  # both rows of a pair pick the same token
    assert torch.allclose(mixed[:3], expected)
    assert (~plausible).any() and plausible.sum(-1).ge(1).all()  # the cut-off was exercised


def test_mean_adapter_averages_the_read_parts_and_keeps_one_bias_block(adapters) -> None:
    first, second = adapters
    assert first.bias_rank > 0
    mean = contrastive_decoding.mean_adapter([first, second])
    a, b = first.factors["down_proj"]
    read = first.rank - first.bias_rank
    for layer in first.layers:
        i = first.layers.index(layer)
        bias_block = b[i][:, read:] @ a[i][read:]
        reads = [ad.delta("down_proj", layer) - bias_block for ad in adapters]
        assert torch.allclose(mean.delta("down_proj", layer), (reads[0] + reads[1]) / 2 + bias_block, atol=1e-5)


def test_weight_zero_answers_as_plain_greedy_decoding(tiny_engine, adapters) -> None:
    questions = ["Who is Biscuit?", "When does the ferry leave?"]
    own = list(adapters)
    plain = [c.text for c in tiny_engine.generate_batch(questions, adapters=own, max_new_tokens=6)]
    paired = contrastive_decoding.contrastive_answers(
        tiny_engine, questions, own, [None, None], 0.0, 1e-9, max_new_tokens=6
    )
    assert paired == plain
