"""benchmarks/refine_whole_sentences.py runs the evaluation with refinement fitting whole
sentences, or the three variants the library does not offer: short pieces, targets without
the end of turn, and endings alone in the last steps."""

from __future__ import annotations

import pytest

from doc2lora_rag.training import refine
from doc2lora_rag.training.refine import sentence_continuations, sentence_endings
from doc2lora_rag.training.teacher import Target
from tests.benchmark_loader import load_benchmark
from tests.conftest import make_tiny_engine
from tests.test_refine import FACTS

whole = load_benchmark("refine_whole_sentences")


def test_spans_fit_the_same_words_a_few_at_a_time_each_quoting_the_sentence_up_to_it() -> None:
    pairs = whole.sentence_spans(3, 2)(FACTS)
    assert pairs == [
        ('How does this sentence of the document end? "Vordorgal Labs was ..."', "founded in"),
        ('How does this sentence of the document end? "Vordorgal Labs was founded in ..."', "1923 by"),
        ('How does this sentence of the document end? "Vordorgal Labs was founded in 1923 by ..."', "Ana Kor"),
        ('How does this sentence of the document end? "The logo is ..."', "deep teal"),
    ]
    # Each sentence's last piece is refinement's own target; an odd remainder makes the first piece shorter.
    assert pairs[2] == sentence_endings(FACTS)[0] and pairs[3] == sentence_endings(FACTS)[1]
    assert [answer for _, answer in whole.sentence_spans(2, 3)(FACTS)[:3]] == ["was", "founded in 1923", "by Ana Kor"]
    # Pieces as long as the sentence are the whole-sentence target.
    assert whole.sentence_spans(3, 50)(FACTS) == sentence_continuations(FACTS, 3)
    with pytest.raises(ValueError, match="span_words"):
        whole.sentence_spans(3, 0)


def test_open_ended_targets_fit_the_words_without_the_end_of_turn() -> None:
    tokenizer = make_tiny_engine().tokenizer
    closed, opened = Target.for_answer(tokenizer, "deep teal"), whole.OpenEndedTarget.for_answer(tokenizer, "deep teal")
    assert closed.tokens[-1] == tokenizer.eos_token_id and opened.tokens.tolist() == closed.tokens[:-1].tolist()


@pytest.mark.parametrize(
    "argv",
    [
        ["--quote-words", "3"],
        ["--", "--limit", "4"],
        ["--", "--refine-steps", "2", "--refine-answer-words", "1"],
        ["--", "--refine-steps=2", "--refine-answer-words=1"],
        ["--span-words", "2", "--", "--refine-steps", "2", "--refine-quote-words", "5"],
    ],
)
def test_it_refuses_a_run_without_refinement_or_with_a_target_it_would_override(argv, monkeypatch) -> None:
    monkeypatch.setattr(whole, "app", lambda args: pytest.fail("the evaluation must not start"))
    monkeypatch.setattr(refine, "sentence_endings", refine.sentence_endings)  # restored if it were patched
    with pytest.raises(SystemExit):
        whole.main(argv)


def test_it_runs_the_evaluation_with_its_options_however_they_are_spelt(monkeypatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(whole, "app", ran.append)
    monkeypatch.setattr(refine, "sentence_endings", refine.sentence_endings)  # put back after the test
    monkeypatch.setattr(refine, "Target", refine.Target)
    whole.main(["--quote-words", "4", "--", "--data", "synthetic:2", "--refine-steps=3"])
    assert ran == [["eval", "--data", "synthetic:2", "--refine-steps=3", "--refine-quote-words", "4"]]
    assert refine.sentence_endings is sentence_endings and refine.Target is Target  # the library's own target

    whole.main(["--span-words", "2", "--open-ended", "--", "--refine-steps", "3"])
    assert ran[-1] == ["eval", "--refine-steps", "3"]
    assert [answer for _, answer in refine.sentence_endings(FACTS)] == ["founded in", "1923 by", "Ana Kor", "deep teal"]
    assert refine.Target is whole.OpenEndedTarget


def test_then_endings_fits_whole_sentences_first_and_their_last_two_words_in_the_final_steps() -> None:
    pairs, windows = whole.then_endings(3)
    fitted = pairs(FACTS, 3)
    assert fitted == sentence_continuations(FACTS, 3) + sentence_endings(FACTS)
    # Two sentences: the two continuations in the first seven steps, the two endings in the last three.
    assert windows(len(fitted), 10, 10) == [[0, 1]] * 7 + [[2, 3]] * 3
    # Each part in turn when a step cannot hold all of it; more final steps than steps: endings throughout.
    assert windows(len(fitted), 5, 1) == [[0], [1], [2], [3], [2]]
    pairs, windows = whole.then_endings(20)
    assert windows(len(pairs(FACTS, 3)), 5, 10) == [[2, 3]] * 5
    with pytest.raises(ValueError, match="question"):
        windows(len(fitted), 4, 10, pinned=[0])
    with pytest.raises(ValueError, match="last_steps"):
        whole.then_endings(0)
