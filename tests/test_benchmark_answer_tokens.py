"""How benchmarks/answer_tokens.py sorts a teacher-forced gold answer by where greedy decoding
would leave it, and what it sums up per reader."""

from __future__ import annotations

import pytest

from doc2lora_rag.evaluation.likelihood import AnswerTokens
from tests.benchmark_loader import load_benchmark

answer_tokens = load_benchmark("answer_tokens")


def _answer(*picked: bool) -> AnswerTokens:
    return AnswerTokens([-0.5 if hit else -2.0 for hit in picked], list(picked))


@pytest.mark.parametrize(
    ("picked", "bucket"),
    [
        ((False, True, True), "token 1"),
        ((True, False, True), "token 2"),
        ((True, True, True, False, True), "token 3+"),
        ((True, True, False), "end of turn"),
        ((True, True, True), "never"),
    ],
)
def test_each_answer_falls_in_the_bucket_of_its_first_miss(picked, bucket) -> None:
    assert answer_tokens.miss_bucket(_answer(*picked)) == bucket


def test_the_summary_separates_the_first_token_from_the_rest() -> None:
    picks = [(False, True, True), (True, True, True), (True, False, True), (True, True, False)]
    answers = [_answer(*picked) for picked in picks]
    summary = answer_tokens.summarise(answers)
    assert summary["answers"] == 4
    assert summary["nll_first"] == pytest.approx((2.0 + 0.5 * 3) / 4)
    assert summary["nll_later"] == pytest.approx((0.5 * 6 + 2.0 * 2) / 8)
    assert [summary[b] for b in answer_tokens.BUCKETS] == [0.25, 0.25, 0.0, 0.25, 0.25]
    assert summary["first_picked"] == 0.75
    # of the three answers whose first token was picked, two were picked whole (the end of
    # turn does not count: a greedy answer that runs on still contains the gold one)
    assert summary["whole_given_first"] == pytest.approx(2 / 3)
