"""benchmarks/refined_sum.py on a tiny engine: four ways, one hit per needle each, and the
refined ways answer from refined adapters."""

from __future__ import annotations

from tests.benchmark_loader import load_benchmark

refined_sum = load_benchmark("refined_sum")


def test_every_way_answers_every_needle(tiny_engine, monkeypatch) -> None:
    refined_steps = []
    generate = tiny_engine.generate

    def recording_generate(question, *, adapters, **kwargs):
        refined_steps.append(adapters[0].metadata.get("refine_steps"))
        return generate(question, adapters=adapters, **kwargs)

    monkeypatch.setattr(tiny_engine, "generate", recording_generate)
    hits = refined_sum.measure(tiny_engine, 200, 2, 1)
    assert list(hits) == list(refined_sum.WAYS) and all(len(found) == 2 for found in hits.values())
    assert refined_steps == [None, 1, None, 1] * 2


def test_each_way_is_paired_with_the_refined_sum() -> None:
    hits = {
        "all chunks summed": [True, True, False],
        "all chunks summed, refined": [False, True, False],
        "best chunk": [False, False, False],
        "best chunk, refined": [True, True, True],
    }
    assert refined_sum.against_refined_sum(hits) == [
        ("all chunks summed", 1, 0, 1.0),
        ("best chunk", 0, 1, 1.0),
        ("best chunk, refined", 2, 0, 0.5),
    ]
