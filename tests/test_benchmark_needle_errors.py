"""benchmarks/needle_errors.py answers greedily exactly as the library does, so its greedy
rows are the library's answers, and runs beam search within the same token budget."""

from __future__ import annotations

from tests.benchmark_loader import load_benchmark

needle_errors = load_benchmark("needle_errors")


def test_width_one_is_the_library_answer_and_beams_keep_the_budget(tiny_engine) -> None:
    adapter = tiny_engine.internalize("The secret number of the violet heron is 48213.")
    question = "What is the secret number of the violet heron?"
    greedy = tiny_engine.generate(question, adapters=[adapter], max_new_tokens=12)
    assert needle_errors.answer(tiny_engine, question, adapter, 1) == greedy
    beams = needle_errors.answer(tiny_engine, question, adapter, 3, max_new_tokens=5)
    assert isinstance(beams, str) and len(tiny_engine.tokenizer.encode(beams, add_special_tokens=False)) <= 6
