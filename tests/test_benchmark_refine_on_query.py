"""benchmarks/refine_on_query.py on a tiny engine: the phases it times refine what they say."""

from __future__ import annotations

from tests.benchmark_loader import load_benchmark

refine_on_query = load_benchmark("refine_on_query")


def test_the_first_question_refines_its_chunk_and_the_later_one_finds_it_refined(tiny_engine, tmp_path) -> None:
    rows = refine_on_query.measure(tiny_engine, 200, 2, 1, tmp_path)
    assert all(len(values) == 2 for values in rows.values())
    assert all(seconds > 0 for key in ("ingest", "plain", "first", "later") for seconds in rows[key])
    # One chunk answers a needle's question, and only it is refined; the repeat answers alike.
    assert rows["refined chunks"] == [1, 1]
    assert all(same for *_, same in rows["hits"])
