"""benchmarks/needle_misses.py sorts an eval's best-chunk misses by kind, from the answers the
eval kept or, for evals that kept only hits, from the same needles answered again."""

from __future__ import annotations

from doc2lora_rag.evaluation.evaluate import evaluate_niah
from tests.benchmark_loader import load_benchmark

needle_misses = load_benchmark("needle_misses")


def test_misses_are_sorted_by_kind_from_the_answers_the_eval_kept() -> None:
    row = {
        "gold": ["42277", "1234", "5678"],
        "per_needle": {"focused": [0.0, 1.0, 1.0], "focused_refined": [0.0, 0.0, 1.0]},
        "answers": {
            "focused": ["42727", "1234", "5678"],
            "focused_refined": ["4277", "most likely to be found", "5678"],
        },
    }
    answers = needle_misses.recorded_answers(row)
    assert set(answers) == {0, 1}  # needle 2 was answered in every mode
    misses = needle_misses.classify(answers)
    assert [(m["needle"], m["kind"]) for m in misses["focused"]] == [(0, "reordered")]
    assert [(m["needle"], m["kind"]) for m in misses["focused_refined"]] == [(0, "one edit"), (1, "other")]
    assert needle_misses.recorded_answers({"per_needle": row["per_needle"]}) is None
    # An eval that did not refine has no refined row, rather than a row of no misses.
    assert needle_misses.miss_table({"480": misses}, ["focused"]).row_count == 2


def test_an_eval_without_answers_has_its_misses_answered_again_as_it_answered_them(tiny_engine) -> None:
    row = evaluate_niah(tiny_engine, [160], count=3, seed=5, max_chunks=1, refine_steps=1, progress=False)[160]
    results = {"niah_seed": 5, "niah": {"160": row}}
    hits_only = {"per_needle": row["per_needle"]}
    answers, same = needle_misses.answer_again(tiny_engine, results, 160, hits_only, max_chunks=1, refine_steps=1)
    assert answers == needle_misses.recorded_answers(row) and answers  # a random model misses needles
    assert same == len(answers)
    # Hits that the answers do not repeat (another setup's) are told apart.
    flipped = {**row["per_needle"], "adapter": [1.0 - hit for hit in row["per_needle"]["adapter"]]}
    again, repeated = needle_misses.answer_again(tiny_engine, results, 160, {"per_needle": flipped}, 1, 1)
    assert again == answers and repeated == 0
    table = needle_misses.miss_table({"160": needle_misses.classify(answers)}, list(needle_misses.MODES))
    assert table.row_count == 4  # two modes at 160 tokens, and over all lengths
