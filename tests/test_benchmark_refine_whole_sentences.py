"""benchmarks/refine_whole_sentences.py fits the same sentences as refinement does, each after
its first few words, and every refinement of the evaluation it runs goes through it."""

from __future__ import annotations

import pytest

from doc2lora_rag.training import refine
from doc2lora_rag.training.refine import refine_adapter, sentence_endings
from tests.benchmark_loader import load_benchmark
from tests.conftest import make_tiny_engine

whole = load_benchmark("refine_whole_sentences")

FACTS = "Vordorgal Labs was founded in 1923 by Ana Kor. It employs 345 people. The logo is deep teal."


def test_whole_sentences_quote_the_first_words_and_fit_the_rest_of_the_same_sentences() -> None:
    pairs = whole.whole_sentences(3)(FACTS)
    assert pairs == [
        ('How does this sentence of the document end? "Vordorgal Labs was ..."', "founded in 1923 by Ana Kor"),
        ('How does this sentence of the document end? "The logo is ..."', "deep teal"),
    ]
    # The same sentences as refinement fits; a five-word one quoted by three words is fitted as before.
    assert len(pairs) == len(sentence_endings(FACTS)) and pairs[1] == sentence_endings(FACTS)[1]
    assert whole.whole_sentences(5)(FACTS) == [
        ('How does this sentence of the document end? "Vordorgal Labs was founded in ..."', "1923 by Ana Kor")
    ]
    with pytest.raises(ValueError, match="quote_words"):
        whole.whole_sentences(0)


def test_refinement_fits_what_the_stand_in_gives(monkeypatch) -> None:
    engine = make_tiny_engine(source_layers="all")
    made = engine.internalize(FACTS).select_chunks([0])  # one chunk's block, fitted to the whole text
    fitted: list[str] = []

    def recording_fit(model, paths, trainable, batches, *, steps, lr, frozen=None):
        fitted.extend(engine.tokenizer.batch_decode(batches[0].input_ids))

    monkeypatch.setattr(refine, "fit_lora", recording_fit)
    monkeypatch.setattr(refine, "sentence_endings", whole.whole_sentences(3))
    refine_adapter(engine, made, [FACTS], steps=1)
    assert len(fitted) == 2 and "founded in 1923 by Ana Kor" in fitted[0] and "Labs was founded" not in fitted[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["--quote-words", "3"],
        ["--", "--limit", "4"],
        ["--", "--refine-steps", "2", "--refine-answer-words", "1"],
        ["--", "--refine-steps=2", "--refine-answer-words=1"],
    ],
)
def test_it_refuses_a_run_without_refinement_or_with_a_word_count_it_would_ignore(argv, monkeypatch) -> None:
    monkeypatch.setattr(whole, "app", lambda args: pytest.fail("the evaluation must not start"))
    monkeypatch.setattr(refine, "sentence_endings", refine.sentence_endings)  # restored if it were patched
    with pytest.raises(SystemExit):
        whole.main(argv)


def test_it_runs_the_evaluation_with_its_options_however_they_are_spelt(monkeypatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(whole, "app", ran.append)
    monkeypatch.setattr(refine, "sentence_endings", refine.sentence_endings)  # put back after the test
    whole.main(["--quote-words", "4", "--", "--data", "synthetic:2", "--refine-steps=3"])
    assert ran == [["eval", "--data", "synthetic:2", "--refine-steps=3"]]
    assert refine.sentence_endings(FACTS)[0][1] == "in 1923 by Ana Kor"
