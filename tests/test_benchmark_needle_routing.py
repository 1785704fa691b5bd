"""benchmarks/needle_routing.py finds the needle's whole sentence, so its "cut" column counts
only needles that a chunk boundary really splits."""

from __future__ import annotations

from doc2lora_rag.training.data import needle_records
from tests.benchmark_loader import load_benchmark

needle_routing = load_benchmark("needle_routing")


def test_needle_sentence_is_the_whole_sentence_with_the_number() -> None:
    for record in needle_records(5, 200, lambda text: len(text.split()), seed=3):
        sentence = needle_routing._needle_sentence(record.context, record.answer)
        assert sentence.endswith(f" {record.answer}.") and sentence.count(".") == 1
        assert sentence in record.context and record.question.split()[-1].rstrip("?") in sentence
