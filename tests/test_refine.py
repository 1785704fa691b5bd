"""Refinement: gradient steps on a generated adapter towards its own chunks' sentence endings."""

from __future__ import annotations

import re

import pytest
import torch

from doc2lora_rag import Doc2LoRA, Doc2LoRAIndex, IncompatibleModelError, LoRAAdapter
from doc2lora_rag.adapters.runtime import adapters_attached
from doc2lora_rag.base_model.prompts import question_prompt
from doc2lora_rag.training import refine
from doc2lora_rag.training.objective import distillation_loss, response_logits, student_batch
from doc2lora_rag.training.refine import (
    ending_groups,
    question_sentences,
    refine_adapter,
    sentence_continuations,
    sentence_endings,
    sentence_windows,
)
from doc2lora_rag.training.teacher import Target
from tests.conftest import make_tiny_engine

TEXT = (
    "The harbour of Veltrano was rebuilt in granite. Its lighthouse keeper was named Oriel Paske. "
    "Ships.\n\nThe western pier holds seven iron cranes today."
)


def _ending_loss(engine: Doc2LoRA, adapter: LoRAAdapter, text: str) -> float:
    """Cross-entropy of the sentence endings of ``text`` with ``adapter`` attached."""
    pairs = sentence_endings(text)
    prompts = [question_prompt(engine.tokenizer, q) for q, _ in pairs]
    batch = student_batch(engine.tokenizer, prompts, [Target.for_answer(engine.tokenizer, a) for _, a in pairs])
    with torch.no_grad(), adapters_attached(engine.model, adapter):
        return distillation_loss(response_logits(engine.model, batch), batch).item()


def test_sentence_endings_ask_for_the_last_two_words_of_each_long_sentence() -> None:
    pairs = sentence_endings(TEXT)
    assert [answer for _, answer in pairs] == ["in granite", "Oriel Paske", "cranes today"]
    assert pairs[0][0] == 'How does this sentence of the document end? "The harbour of Veltrano was rebuilt ..."'
    assert sentence_endings("Too short. Far too short.") == []


def test_sentence_endings_take_as_many_last_words_as_asked() -> None:
    text = "The secret number of the red fox is 42277."
    assert sentence_endings(text) == [
        ('How does this sentence of the document end? "The secret number of the red fox ..."', "is 42277")
    ]
    assert sentence_endings(text, answer_words=1) == [
        ('How does this sentence of the document end? "The secret number of the red fox is ..."', "42277")
    ]
    engine = make_tiny_engine(source_layers="all")
    with pytest.raises(ValueError, match="answer_words"):
        refine_adapter(engine, engine.internalize(text), [text], steps=1, answer_words=0)


FACTS = "Vordorgal Labs was founded in 1923 by Ana Kor. It employs 345 people. The logo is deep teal."


def test_sentence_continuations_quote_the_first_words_and_ask_for_all_the_rest() -> None:
    pairs = sentence_continuations(FACTS, 3)
    assert pairs == [
        ('How does this sentence of the document end? "Vordorgal Labs was ..."', "founded in 1923 by Ana Kor"),
        ('How does this sentence of the document end? "The logo is ..."', "deep teal"),
    ]
    # The sentences refinement fits on their endings; a five-word one quoted by three words is fitted as before.
    assert len(pairs) == len(sentence_endings(FACTS)) and pairs[1] == sentence_endings(FACTS)[1]
    assert sentence_continuations(FACTS, 5) == [
        ('How does this sentence of the document end? "Vordorgal Labs was founded in ..."', "1923 by Ana Kor")
    ]
    with pytest.raises(ValueError, match="quote_words"):
        sentence_continuations(FACTS, 0)


def test_refinement_fits_whole_sentences_when_told_how_many_words_to_quote(monkeypatch) -> None:
    engine = make_tiny_engine(source_layers="all")
    made = engine.internalize(FACTS).select_chunks([0])  # one chunk's block, fitted to the whole text
    fitted: list[str] = []

    def recording_fit(model, paths, trainable, batches, *, steps, lr, frozen=None):
        fitted.extend(engine.tokenizer.batch_decode(batches[0].input_ids))

    monkeypatch.setattr(refine, "fit_lora", recording_fit)
    tagged = refine_adapter(engine, made, [FACTS], steps=1, quote_words=3)
    assert len(fitted) == 2 and "founded in 1923 by Ana Kor" in fitted[0] and "Labs was founded" not in fitted[0]
    assert (tagged.metadata["refine_quote_words"], tagged.metadata["refine_answer_words"]) == (3, None)
    with pytest.raises(ValueError, match="not both"):
        refine_adapter(engine, made, [FACTS], steps=1, quote_words=3, answer_words=2)
    with pytest.raises(ValueError, match="quote_words"):
        refine_adapter(engine, made, [FACTS], steps=1, quote_words=0)


def test_sentence_windows_bound_each_step_and_take_every_sentence_in_turn() -> None:
    assert sentence_windows(5, steps=10, per_step=8) == [[0, 1, 2, 3, 4]]
    windows = sentence_windows(47, steps=10, per_step=8)
    assert len(windows) == 10 and all(len(w) == 8 for w in windows)
    assert set(i for w in windows[:6] for i in w) == set(range(47))  # ceil(47 / 8) steps cover all
    assert windows[6][0] == 48 % 47
    many = sentence_windows(3, steps=100, per_step=2)  # windows repeat: step i takes many[i % len(many)]
    assert many == [[0, 1], [2, 0], [1, 2]]


def test_sentences_are_grouped_by_their_ending_in_order_of_first_appearance() -> None:
    pairs = [("q0", "at dawn"), ("q1", "is 42277"), ("q2", "At dawn"), ("q3", "many years"), ("q4", "at dawn")]
    assert ending_groups(pairs) == [[0, 2, 4], [1], [3]]
    assert ending_groups([]) == []


def test_a_step_takes_one_sentence_of_each_ending_so_a_distinct_one_is_in_every_step() -> None:
    # 47 sentences: 46 of filler that end in one of 9 ways, and one needle (23) that ends its own way.
    endings = [f"filler {i % 9}" for i in range(47)]
    endings[23] = "is 42277"
    groups = ending_groups([(f"q{i}", e) for i, e in enumerate(endings)])
    windows = sentence_windows(47, steps=10, per_step=10, groups=groups)
    assert len(windows) == 10 and all(23 in w and len(w) == 10 for w in windows)
    assert all(len({endings[i] for i in w}) == len(w) for w in windows)  # never two alike in a step
    assert set(i for w in windows for i in w) == set(range(47))  # and every filler sentence in turn
    # More endings than room: groups take turns as sentences do, each group's members in turn.
    assert sentence_windows(5, steps=4, per_step=2, groups=[[0, 2], [1, 4], [3]]) == [[0, 1], [3, 2], [4, 3], [0, 1]]
    # All different: the windows of plain sentences in turn; pinned ones still in every step.
    singles = [[i] for i in range(47)]
    assert sentence_windows(47, steps=10, per_step=8, groups=singles) == sentence_windows(47, steps=10, per_step=8)
    pinned = sentence_windows(47, steps=10, per_step=10, pinned=[5], groups=groups)
    assert all(w[0] == 5 and len(w) == 10 and len({endings[i] for i in w[1:]}) == 9 for w in pinned)


def test_pinned_sentences_are_in_every_window_and_the_rest_take_turns() -> None:
    windows = sentence_windows(47, steps=10, per_step=8, pinned=[30, 5])
    assert len(windows) == 10 and all(w[:2] == [5, 30] and len(w) == 8 for w in windows)
    rest = [i for w in windows for i in w[2:]]
    assert 5 not in rest and 30 not in rest
    assert set(rest[:45]) == set(range(47)) - {5, 30}  # the other 45 in turn, 6 a step
    assert sentence_windows(5, steps=10, per_step=8, pinned=[3]) == [[3, 0, 1, 2, 4]]
    assert sentence_windows(47, steps=10, per_step=8, pinned=[]) == sentence_windows(47, steps=10, per_step=8)
    with pytest.raises(ValueError, match="no room"):
        sentence_windows(47, steps=10, per_step=2, pinned=[0, 1])


def test_the_sentences_a_question_matches_are_found_by_their_words() -> None:
    pairs = sentence_endings(TEXT)  # granite harbour, lighthouse keeper, cranes on the pier
    assert question_sentences("Who kept the lighthouse?", pairs, k=1) == [1]
    assert question_sentences("How many cranes stand on the western pier?", pairs, k=1) == [2]
    assert question_sentences("What colour is the sky?", pairs, k=1) == []  # no shared term
    assert question_sentences(None, pairs, k=1) == []
    assert question_sentences("Who kept the lighthouse?", pairs, k=3) == []  # all fit anyway


def test_refining_for_a_question_fits_its_sentence_at_every_step(monkeypatch) -> None:
    engine = make_tiny_engine(source_layers="all")
    keeper = "The lighthouse keeper of Veltrano was named Oriel Paske."
    text = " ".join(f"Field number {i} of the farm grows tall green barley." for i in range(12)) + " " + keeper
    made = engine.internalize(text).select_chunks([0])  # one chunk's block, fitted to the whole text
    question = "Who was the lighthouse keeper of Veltrano?"
    assert question_sentences(question, sentence_endings(text), k=1) == [12]
    fitted: list[list[str]] = []  # the answers of each step's batch, as fit_lora takes them

    def recording_fit(model, paths, trainable, batches, *, steps, lr, frozen=None):
        for step in range(steps):
            batch = batches[step % len(batches)]
            fitted.append(engine.tokenizer.batch_decode(batch.input_ids[:, -batch.response_mask.shape[1] :]))

    monkeypatch.setattr("doc2lora_rag.training.refine.fit_lora", recording_fit)
    refine_adapter(engine, made, [text], steps=3, sentences_per_step=4)  # in turn: sentences 0-11
    assert not any("Oriel Paske" in answer for step in fitted for answer in step)
    fitted.clear()
    refined = refine_adapter(engine, made, [text], steps=3, sentences_per_step=4, question=question)
    assert len(fitted) == 3 and all(sum("Oriel Paske" in answer for answer in step) == 1 for step in fitted)
    assert all(len(step) == 4 for step in fitted) and refined.refined_chunks == {0}


def test_refining_by_ending_fits_the_one_sentence_that_ends_its_own_way_at_every_step(monkeypatch) -> None:
    engine = make_tiny_engine(source_layers="all")
    keeper = "The lighthouse keeper of Veltrano was named Oriel Paske."
    text = " ".join(f"Field number {i} of the farm grows tall green barley." for i in range(12)) + " " + keeper
    made = engine.internalize(text).select_chunks([0])
    fitted: list[list[str]] = []

    def recording_fit(model, paths, trainable, batches, *, steps, lr, frozen=None):
        for step in range(steps):
            fitted.append(engine.tokenizer.batch_decode(batches[step % len(batches)].input_ids))  # prompt and answer

    monkeypatch.setattr("doc2lora_rag.training.refine.fit_lora", recording_fit)
    refine_adapter(engine, made, [text], steps=3, sentences_per_step=4, by_ending=True)
    # Two endings, so two rows a step: the keeper's sentence, and the barley fields' in turn.
    assert len(fitted) == 3 and all(len(step) == 2 for step in fitted)
    assert all(sum("Oriel Paske" in row for row in step) == 1 for step in fitted)
    fields = [re.search(r"Field number (\d+)", row).group(1) for step in fitted for row in step if "Paske" not in row]
    assert fields == ["0", "1", "2"]


def test_the_engine_s_refinement_style_is_the_default_of_every_refinement_the_index_s_too(tmp_path) -> None:
    engine = make_tiny_engine(source_layers="all")
    engine.refine_by_ending, engine.refine_answer_words = True, 1
    made = engine.internalize(TEXT)
    styled, told = engine.refine(made, TEXT, steps=1), engine.refine(made, TEXT, steps=1, by_ending=False)
    assert (styled.metadata["refine_by_ending"], styled.metadata["refine_answer_words"]) == (True, 1)
    assert (told.metadata["refine_by_ending"], told.metadata["refine_answer_words"]) == (False, 1)
    index = Doc2LoRAIndex.from_documents([{"text": TEXT, "id": "harbour"}], store=tmp_path / "s", engine=engine)
    assert index.refine("harbour", steps=1) == ["harbour"]
    stored = index.store.load_adapter("harbour")
    assert stored.refined_chunks and stored.metadata["refine_by_ending"] is True
    assert stored.metadata["refine_answer_words"] == 1
    with pytest.raises(ValueError, match="refine_answer_words"):
        Doc2LoRA(engine.base, engine.hypernet, refine_answer_words=0)


def test_an_engine_that_fits_whole_sentences_does_so_unless_a_call_names_another_target() -> None:
    engine = make_tiny_engine(source_layers="all")
    engine.refine_quote_words = 3
    made = engine.internalize(TEXT)
    whole, endings = engine.refine(made, TEXT, steps=1), engine.refine(made, TEXT, steps=1, answer_words=1)
    assert (whole.metadata["refine_quote_words"], whole.metadata["refine_answer_words"]) == (3, None)
    assert (endings.metadata["refine_quote_words"], endings.metadata["refine_answer_words"]) == (None, 1)
    assert engine.refine(made, TEXT, steps=1, quote_words=5).metadata["refine_quote_words"] == 5
    assert Doc2LoRA(engine.base, engine.hypernet).refine(made, TEXT, steps=1).metadata["refine_answer_words"] == 2
    with pytest.raises(ValueError, match="refine_quote_words"):
        Doc2LoRA(engine.base, engine.hypernet, refine_quote_words=0)
    with pytest.raises(ValueError, match="not both"):
        Doc2LoRA(engine.base, engine.hypernet, refine_answer_words=2, refine_quote_words=3)


@pytest.mark.parametrize(("per_step", "steps"), [(8, 30), (1, 60)])
def test_refinement_fits_each_chunk_to_its_own_sentences_and_keeps_the_shared_block(per_step: int, steps: int) -> None:
    engine = make_tiny_engine(source_layers="all")
    made = engine.internalize(TEXT)
    texts = engine._chunk_texts(TEXT, made.chunking)
    assert made.num_chunks == len(texts) > 1
    if per_step == 1:  # one sentence a step, on chunks of three: each chunk is still fitted as a whole
        texts = [TEXT if sentence_endings(t) else t for t in texts]
    refined = refine_adapter(engine, made, texts, steps=steps, sentences_per_step=per_step)
    assert refined.num_chunks == made.num_chunks and refined.rank == made.rank
    assert refined.metadata["refine_steps"] == steps
    size, shared = made.chunk_rank, slice(made.rank - made.bias_rank, made.rank)
    for name, (a, b) in made.factors.items():
        ra, rb = refined.factors[name]
        assert ra.dtype == a.dtype
        assert torch.equal(ra[:, shared], a[:, shared]) and torch.equal(rb[:, :, shared], b[:, :, shared])
    for chunk, text in enumerate(texts):
        block = slice(chunk * size, (chunk + 1) * size)
        moved = any(
            not torch.equal(refined.factors[n][1][:, :, block], b[:, :, block]) for n, (_, b) in made.factors.items()
        )
        assert moved == bool(sentence_endings(text)), text
        if sentence_endings(text):  # each chunk's own block, attached as focus attaches it, learnt its sentences
            before = _ending_loss(engine, made.select_chunks([chunk]), text)
            after = _ending_loss(engine, refined.select_chunks([chunk]), text)
            assert after < before - 0.2, (chunk, before, after)


def test_an_engine_with_refine_steps_refines_every_new_adapter_the_same_way() -> None:
    plain = make_tiny_engine(source_layers="all")
    refining = Doc2LoRA(plain.base, plain.hypernet, refine_steps=3)
    made = refining.internalize_many([TEXT, "A second document about the old mill by the river."])
    assert [ad.metadata.get("refine_steps") for ad in made] == [3, 3]
    again = plain.refine(plain.internalize(TEXT), TEXT, steps=3)
    for name, (a, b) in made[0].factors.items():
        assert torch.allclose(a, again.factors[name][0]) and torch.allclose(b, again.factors[name][1])


def test_bad_refinement_requests_are_refused() -> None:
    engine = make_tiny_engine(source_layers="all")
    made = engine.internalize(TEXT)
    assert refine_adapter(engine, made, engine._chunk_texts(TEXT, made.chunking), steps=0) is made
    with pytest.raises(ValueError, match=">= 0"):
        engine.refine(made, TEXT, steps=-1)
    with pytest.raises(ValueError, match="chunk texts"):
        refine_adapter(engine, made, ["one text"], steps=2)
    with pytest.raises(ValueError, match="sentences_per_step"):
        refine_adapter(engine, made, engine._chunk_texts(TEXT, made.chunking), steps=2, sentences_per_step=0)
    with pytest.raises(ValueError, match="refine_steps"):
        Doc2LoRA(engine.base, engine.hypernet, refine_steps=-2)
    other = make_tiny_engine(seed=1, source_layers="all")
    with pytest.raises(IncompatibleModelError):
        other.refine(made, TEXT)


def test_an_index_on_a_refining_engine_stores_refined_adapters(tmp_path) -> None:
    plain = make_tiny_engine(source_layers="all")
    index = Doc2LoRAIndex.from_documents(
        [TEXT], store=tmp_path / "store", engine=Doc2LoRA(plain.base, plain.hypernet, refine_steps=2), ids=["harbour"]
    )
    stored = index.store.load_adapter("harbour")
    assert stored.metadata["refine_steps"] == 2 and stored.metadata["id"] == "harbour"
    made = plain.refine(plain.internalize(TEXT), TEXT, steps=2)
    for name, (a, b) in made.factors.items():
        torch.testing.assert_close(stored.factors[name][0].float(), a.float(), rtol=2e-2, atol=1e-4)
        torch.testing.assert_close(stored.factors[name][1].float(), b.float(), rtol=2e-2, atol=1e-4)


def _blocks_equal(one: LoRAAdapter, other: LoRAAdapter, chunk: int) -> bool:
    block = slice(chunk * one.chunk_rank, (chunk + 1) * one.chunk_rank)
    return all(
        torch.equal(a[:, block], other.factors[n][0][:, block])
        and torch.equal(b[:, :, block], other.factors[n][1][:, :, block])
        for n, (a, b) in one.factors.items()
    )


def test_refining_some_chunks_leaves_the_rest_and_records_which_are_done() -> None:
    engine = make_tiny_engine(source_layers="all")
    made = engine.internalize(TEXT)
    with_sentences = [c for c, t in enumerate(engine._chunk_texts(TEXT, made.chunking)) if sentence_endings(t)]
    assert len(with_sentences) >= 2
    first, second = with_sentences[:2]
    once = engine.refine(made, TEXT, steps=3, chunks=[first])
    assert once.refined_chunks == {first} and once.metadata["refined_chunks"] == [first]
    assert not _blocks_equal(once, made, first)
    assert all(_blocks_equal(once, made, c) for c in range(made.num_chunks) if c != first)
    twice = engine.refine(once, TEXT, steps=3, chunks=[second])
    assert twice.refined_chunks == {first, second}
    assert _blocks_equal(twice, once, first) and not _blocks_equal(twice, once, second)
    whole = engine.refine(made, TEXT, steps=3)  # the same steps, chunk by chunk, whatever was asked
    assert _blocks_equal(whole, twice, first) and _blocks_equal(whole, twice, second)
    assert whole.refined_chunks == set(range(made.num_chunks))
    assert engine.refine(made, TEXT, steps=3, chunks=[]) is made
    with pytest.raises(ValueError, match="chunks must lie in"):
        engine.refine(made, TEXT, steps=3, chunks=[made.num_chunks])


def test_refined_chunks_follow_a_selection_and_older_adapters_count_as_refined_whole() -> None:
    engine = make_tiny_engine(source_layers="all")
    made = engine.internalize(TEXT)
    assert made.num_chunks >= 3 and made.refined_chunks == frozenset()
    marked = made.tagged(refine_steps=2, refined_chunks=[1, 2])
    assert marked.select_chunks([0, 2]).refined_chunks == {1}  # chunk 2 is now the second kept
    assert marked.select_chunks([0]).refined_chunks == frozenset()
    assert made.tagged(refine_steps=2).refined_chunks == set(range(made.num_chunks))
