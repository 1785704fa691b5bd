"""benchmarks/needle_errors.py answers greedily exactly as the library does, so its greedy
rows are the library's answers, and its beam search prompts and attaches the adapter as the
library does (at width 1 it gives the greedy answer)."""

from __future__ import annotations

from tests.benchmark_loader import load_benchmark

needle_errors = load_benchmark("needle_errors")


def test_width_one_is_the_library_answer_and_beam_search_prompts_as_it_does(tiny_engine) -> None:
    adapter = tiny_engine.internalize("The secret number of the violet heron is 48213.")
    question = "What is the secret number of the violet heron?"
    greedy = tiny_engine.generate(question, adapters=[adapter], max_new_tokens=12)
    assert needle_errors.answer(tiny_engine, question, adapter, 1) == greedy
    # The beam-search path at width 1 is greedy decoding: same prompt, same adapter, same answer.
    assert needle_errors.beam_search(tiny_engine, question, adapter, 1) == greedy
    assert needle_errors.answer(tiny_engine, question, adapter, 3) == needle_errors.beam_search(
        tiny_engine, question, adapter, 3
    )
