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
