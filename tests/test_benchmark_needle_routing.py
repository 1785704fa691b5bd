"""benchmarks/needle_routing.py finds the needle's whole sentence, so its "cut" column counts
only needles that a chunk boundary really splits, and rebuilds the haystacks the eval drew."""

from __future__ import annotations

from doc2lora_rag.evaluation.evaluate import niah_records
from doc2lora_rag.training.data import needle_records
from tests.benchmark_loader import load_benchmark

needle_routing = load_benchmark("needle_routing")


def test_needle_sentence_is_the_whole_sentence_with_the_number() -> None:
    for record in needle_records(5, 200, lambda text: len(text.split()), seed=3):
        sentence = needle_routing._needle_sentence(record.context, record.answer)
        assert sentence.endswith(f" {record.answer}.") and sentence.count(".") == 1
        assert sentence in record.context and record.question.split()[-1].rstrip("?") in sentence


def test_haystacks_are_drawn_with_the_seed_the_eval_recorded(tiny_engine) -> None:
    recorded = needle_routing.haystacks(tiny_engine, {"niah_seed": 5}, 200, 3)
    assert recorded == niah_records(tiny_engine, 3, 200, seed=5)
    assert needle_routing.haystacks(tiny_engine, {}, 200, 3) == niah_records(tiny_engine, 3, 200)
    assert recorded != niah_records(tiny_engine, 3, 200)
