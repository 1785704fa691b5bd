"""Evaluation metrics and the QA evaluator on hand-made cases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from doc2lora_rag.evaluation.evaluate import evaluate_qa
from doc2lora_rag.evaluation.metrics import (
    answer_contains,
    edit_distance,
    normalize_answer,
    number_answer_kind,
    token_f1,
)
from doc2lora_rag.training.data import QARecord, squad_records


def test_normalize_answer() -> None:
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("Denver Broncos", "Denver Broncos", 1.0),
        ("the Denver Broncos won", "Denver Broncos", 0.8),  # precision 2/3, recall 1
        ("Carolina Panthers", "Denver Broncos", 0.0),
        ("Denver", ["Denver Broncos", "Denver"], 1.0),  # best over gold answers
        ("", "Denver", 0.0),
    ],
)
def test_token_f1(prediction: str, gold, expected: float) -> None:
    assert token_f1(prediction, gold) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("13776", "13776", 0), ("13776", "13767", 2), ("1291", "12991", 1), ("", "42", 2), ("kitten", "sitting", 3)],
)
def test_edit_distance(a: str, b: str, expected: int) -> None:
    assert edit_distance(a, b) == expected == edit_distance(b, a)


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("The secret number is 13776.", "exact"),
        ("13767", "reordered"),  # same digits, two swapped
        ("It is 13770, I think", "one edit"),
        ("137761", "one edit"),  # a digit too many: no exact match as a word
        ("1377", "one edit"),
        ("98765", "other"),
        ("I do not know", "other"),
    ],
)
def test_number_answer_kind(prediction: str, expected: str) -> None:
    assert number_answer_kind(prediction, "13776") == expected


def test_another_keys_number_is_told_apart_from_a_wrong_one() -> None:
    others = ["13776", "98765", "52"]  # the document's numbers, the right one among them
    assert number_answer_kind("It is 98765.", "13776", others) == "another key's"
    assert number_answer_kind("13776", "13776", others) == "exact"
    assert number_answer_kind("13767", "13776", others) == "reordered"
    assert number_answer_kind("98765", "13776") == "other"


def test_answer_contains_matches_whole_words_only() -> None:
    assert answer_contains("It was built in 1871 by Odile.", "1871") == 1.0
    assert answer_contains("It was built in 18712.", "1871") == 0.0
    assert answer_contains("The keeper was Tomas Brennick", ["tomas brennick"]) == 1.0
    assert answer_contains("anything", "") == 0.0


@dataclass
class _Completion:
    text: str


class _ScriptedEngine:
    """Answers from a script keyed by (mode, question), so the scores are known exactly."""

    def __init__(self, script: dict[tuple[str, str], str]):
        self.script = script
        self.internalized: list[str] = []

    def internalize(self, text: str):
        self.internalized.append(text)
        return f"adapter:{text}"

    def generate_batch(self, questions, *, adapters=None, contexts=None, max_new_tokens=48):
        if contexts is not None:
            mode = "in_context"
        elif adapters is not None:
            assert all(a.startswith("adapter:") for a in adapters)
            mode = "adapter"
        else:
            mode = "no_context"
        return [_Completion(self.script[(mode, q)]) for q in questions]


def test_evaluate_qa_scores_each_mode_and_the_ratio() -> None:
    records = [
        QARecord("doc one", "q1?", "red"),
        QARecord("doc one", "q2?", "blue whale"),
        QARecord("doc two", "q3?", "1871"),
    ]
    script = {
        ("no_context", "q1?"): "green", ("no_context", "q2?"): "a fish", ("no_context", "q3?"): "1900",
        ("in_context", "q1?"): "red", ("in_context", "q2?"): "the blue whale", ("in_context", "q3?"): "1871",
        ("adapter", "q1?"): "red", ("adapter", "q2?"): "whale", ("adapter", "q3?"): "1900",
    }
    engine = _ScriptedEngine(script)
    report = evaluate_qa(engine, records, batch_size=2, progress=False)
    assert sorted(engine.internalized) == ["doc one", "doc two"]  # one adapter per document
    assert report.num_documents == 2 and report.num_questions == 3
    assert report.scores["no_context"] == {"f1": 0.0, "contains": 0.0}
    assert report.scores["in_context"]["contains"] == pytest.approx(1.0)
    assert report.scores["adapter"]["contains"] == pytest.approx(1 / 3)
    # adapter F1: 1.0 (red) + 2/3 (whale vs blue whale) + 0 = 5/3 over 3 questions
    assert report.scores["adapter"]["f1"] == pytest.approx(5 / 9)
    # every question's score is kept, in question order, for paired comparisons
    assert report.questions == ["q1?", "q2?", "q3?"]
    assert report.per_question["adapter"]["f1"] == pytest.approx([1.0, 2 / 3, 0.0])
    assert report.to_dict()["per_question"]["in_context"]["contains"] == [1.0, 1.0, 1.0]
    assert report.ratio("contains") == pytest.approx(1 / 3)
    assert report.to_dict()["ratios"]["f1"] == pytest.approx((5 / 9) / report.scores["in_context"]["f1"])


def test_unrelated_adapter_mode_uses_another_documents_adapter() -> None:
    records = [QARecord("doc one", "q1?", "red"), QARecord("doc two", "q2?", "blue")]
    seen = []

    class _Recording(_ScriptedEngine):
        def generate_batch(self, questions, *, adapters=None, contexts=None, max_new_tokens=48):
            seen.extend(zip(questions, adapters or [None] * len(questions), strict=True))
            return [_Completion("red") for _ in questions]

    report = evaluate_qa(_Recording({}), records, modes=["unrelated_adapter"], progress=False)
    assert dict(seen) == {"q1?": "adapter:doc two", "q2?": "adapter:doc one"}
    assert report.scores["unrelated_adapter"]["contains"] == pytest.approx(0.5)


def test_refined_modes_refine_each_documents_adapter_once_and_swap_them_for_the_control() -> None:
    records = [QARecord("doc one", "q1?", "red"), QARecord("doc two", "q2?", "blue")]
    seen, refined = [], []

    class _Refining(_ScriptedEngine):
        def refine(self, adapter, text, *, steps=None):
            refined.append((adapter, text, steps))
            return f"adapter:refined {text}"

        def generate_batch(self, questions, *, adapters=None, contexts=None, max_new_tokens=48):
            seen.extend(zip(questions, adapters or [None] * len(questions), strict=True))
            return [_Completion("red") for _ in questions]

    modes = ["refined_adapter", "unrelated_refined"]
    report = evaluate_qa(_Refining({}), records, modes=modes, refine_steps=7, progress=False)
    assert refined == [("adapter:doc one", "doc one", 7), ("adapter:doc two", "doc two", 7)]
    assert seen == [
        ("q1?", "adapter:refined doc one"),
        ("q2?", "adapter:refined doc two"),
        ("q1?", "adapter:refined doc two"),
        ("q2?", "adapter:refined doc one"),
    ]
    assert set(report.seconds_per_document) == {"refined_adapter"}  # no scores, no time for "adapter"
    assert report.to_dict()["refined_ratios"] == {"f1": None, "contains": None}  # no in-context run


def test_squad_answers_are_scored_against_every_accepted_answer(tmp_path: Path) -> None:
    """SQuAD lists up to three answers per question; the official script takes the best match."""
    answers = [{"text": "Denver Broncos"}, {"text": "Broncos"}, {"text": "Denver Broncos"}]
    paragraph = {"context": "The Denver Broncos won.", "qas": [{"question": "Who won?", "answers": answers}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [paragraph]}]}))
    (record,) = squad_records(path, "all")
    assert record.answer == "Denver Broncos"  # a gold training target stays the first answer
    report = evaluate_qa(
        _ScriptedEngine({("in_context", "Who won?"): "the Broncos"}), [record], modes=["in_context"], progress=False
    )
    assert report.scores["in_context"] == {"f1": 1.0, "contains": 1.0}


def test_evaluate_qa_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="unknown modes"):
        evaluate_qa(_ScriptedEngine({}), [QARecord("d", "q", "a")], modes=["telepathy"], progress=False)


def _answer_logits(engine, question: str, answer: str):
    """The gold answer's tokens (end of turn appended) and the logits predicting each, from one
    plain forward pass over prompt and answer."""
    import torch

    tokenizer = engine.tokenizer
    prompt = tokenizer.encode(engine.prompt(question), add_special_tokens=False)
    target = [*tokenizer.encode(answer, add_special_tokens=False), tokenizer.eos_token_id]
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1 : -1].float()
    return torch.tensor(target), logits


def test_answer_nll_matches_a_direct_forward_pass_and_sees_adapters(tiny_engine) -> None:
    import torch

    from doc2lora_rag.evaluation.likelihood import answer_nll

    questions, answers = ["Who keeps it?", "When was the tide logged at dawn?"], ["Ada Moss", "06:40"]
    batched = answer_nll(tiny_engine, questions, answers, batch_size=2)
    for question, answer, value in zip(questions, answers, batched, strict=True):
        target, logits = _answer_logits(tiny_engine, question, answer)
        expected = -logits.log_softmax(-1)[torch.arange(len(target)), target].mean().item()
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-4)
    adapter = tiny_engine.internalize("The lighthouse is kept by Ada Moss.")
    with_adapter = answer_nll(tiny_engine, questions, answers, adapters=[adapter, None], batch_size=2)
    assert with_adapter[0] != pytest.approx(batched[0], abs=1e-6)
    assert with_adapter[1] == pytest.approx(batched[1], rel=1e-4, abs=1e-4)


def test_answer_tokens_reads_each_token_as_a_direct_forward_pass_does(tiny_engine) -> None:
    import torch

    from doc2lora_rag.evaluation.likelihood import answer_nll, answer_tokens

    questions, answers = ["Who keeps it?", "When was the tide logged at dawn?"], ["Ada Moss", "06:40"]
    read = answer_tokens(tiny_engine, questions, answers, batch_size=2)
    for question, answer, tokens in zip(questions, answers, read, strict=True):
        target, logits = _answer_logits(tiny_engine, question, answer)
        assert tokens.picked == (logits.argmax(-1) == target).tolist()
        expected = logits.log_softmax(-1)[torch.arange(len(target)), target]
        assert tokens.logprobs == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-4)
    assert [t.nll for t in read] == pytest.approx(answer_nll(tiny_engine, questions, answers), rel=1e-6)


def test_the_first_miss_is_the_first_token_greedy_decoding_would_not_pick() -> None:
    from doc2lora_rag.evaluation.likelihood import AnswerTokens

    assert AnswerTokens([-0.1, -2.0, -0.3], [True, False, False]).first_miss == 1
    assert AnswerTokens([-0.1, -0.2], [True, True]).first_miss is None
    assert AnswerTokens([-3.0, -1.0], [False, True]).nll == pytest.approx(2.0)


def test_evaluate_general_compares_unrelated_adapters_with_the_base_model() -> None:
    from doc2lora_rag.evaluation.evaluate import evaluate_general

    questions = [("capital of France?", ["Paris"]), ("largest planet?", ["Jupiter"]), ("two plus two?", ["4"])]
    documents = ["The largest planet of the Orvel system is a cold gas giant.", "A ferry crosses the bay."]
    seen = []

    class _General(_ScriptedEngine):
        def generate_batch(self, questions, *, adapters=None, contexts=None, max_new_tokens=48):
            seen.append(list(zip(questions, adapters or [None] * len(questions), strict=True)))
            rows = adapters or [None] * len(questions)
            return [
                _Completion(self.script[("adapter" if a is not None else "no_context", q)])
                for q, a in zip(questions, rows, strict=True)
            ]

    script = {
        ("no_context", "capital of France?"): "Paris.", ("adapter", "capital of France?"): "paris",
        ("no_context", "largest planet?"): "Jupiter", ("adapter", "largest planet?"): "Saturn",
        ("no_context", "two plus two?"): "five", ("adapter", "two plus two?"): "4",
    }
    engine = _General(script)
    report = evaluate_general(engine, documents, questions, batch_size=3, progress=False)
    assert engine.internalized == documents
    base, forced, routed = seen
    assert all(a is None for _, a in base)
    # Forced: question i gets the adapter of document i mod 2.
    assert [a for _, a in forced] == [f"adapter:{documents[0]}", f"adapter:{documents[1]}", f"adapter:{documents[0]}"]
    # Routed: only the question that shares terms with a document gets its adapter.
    assert [a for _, a in routed] == [None, f"adapter:{documents[0]}", None]
    assert report.attached == pytest.approx(1 / 3)
    assert report.scores["no_context"]["contains"] == pytest.approx(2 / 3)
    assert report.scores["unrelated_adapter"]["contains"] == pytest.approx(2 / 3)
    assert report.scores["routed"]["contains"] == pytest.approx(1 / 3)  # Paris. / Saturn / five
    assert report.unchanged == pytest.approx(1 / 3)  # only "Paris." and "paris" agree once normalised
    assert report.agreement == pytest.approx(1 / 3)
    assert [e["question"] for e in report.examples] == ["largest planet?", "two plus two?"]
    assert report.to_dict()["num_documents"] == 2


def test_evaluate_general_needs_a_document() -> None:
    from doc2lora_rag.evaluation.evaluate import evaluate_general

    with pytest.raises(ValueError, match="at least one document"):
        evaluate_general(_ScriptedEngine({}), [], [("q?", ["a"])], progress=False)


def test_shipped_general_questions_have_answers() -> None:
    from doc2lora_rag.evaluation.evaluate import general_questions

    questions = general_questions()
    assert len(questions) >= 50
    assert len({q for q, _ in questions}) == len(questions)
    assert all(q.endswith("?") and answers and all(a.strip() for a in answers) for q, answers in questions)


def test_niah_in_context_limit_zero_runs_no_needle_in_context(tiny_engine) -> None:
    from doc2lora_rag.evaluation.evaluate import evaluate_niah

    limited = evaluate_niah(tiny_engine, [64], count=2, in_context_max_tokens=0, progress=False)[64]
    assert limited["in_context"] is None and "in_context" not in limited["per_needle"]
    unlimited = evaluate_niah(tiny_engine, [64], count=2, progress=False)[64]
    assert len(unlimited["per_needle"]["in_context"]) == 2


def test_niah_keeps_each_answer_beside_its_gold_number_and_hit(tiny_engine) -> None:
    from doc2lora_rag.evaluation.evaluate import evaluate_niah
    from doc2lora_rag.evaluation.metrics import answer_contains

    row = evaluate_niah(tiny_engine, [160], count=2, max_chunks=1, progress=False)[160]
    assert set(row["answers"]) == set(row["per_needle"]) == {"adapter", "focused", "in_context"}
    assert len(row["gold"]) == 2 and all(gold.isdigit() for gold in row["gold"])
    for mode, said in row["answers"].items():
        assert [answer_contains(a, g) for a, g in zip(said, row["gold"], strict=True)] == row["per_needle"][mode]
    json.dumps(row)  # written as is by doc2lora eval --json-out


def test_niah_with_refine_steps_scores_the_best_chunks_refined_as_the_index_answers(tiny_engine, monkeypatch) -> None:
    from doc2lora_rag.evaluation.evaluate import evaluate_niah

    refined_chunks = []
    real = tiny_engine.refine

    def refine(adapter, text, *, steps=None, chunks=None):
        refined_chunks.append((adapter.num_chunks, chunks, steps))
        return real(adapter, text, steps=steps, chunks=chunks)

    monkeypatch.setattr(tiny_engine, "refine", refine)
    row = evaluate_niah(tiny_engine, [160], count=2, max_chunks=1, refine_steps=1, progress=False)[160]
    assert len(row["per_needle"]["focused_refined"]) == 2 and 0.0 <= row["focused_refined"] <= 1.0
    # Only the chosen chunk of each many-chunk haystack is refined, never the whole document.
    assert refined_chunks and all(n > 1 and chunks is not None and len(chunks) == 1 for n, chunks, _ in refined_chunks)
    assert all(steps == 1 for *_, steps in refined_chunks)
    plain = evaluate_niah(tiny_engine, [160], count=2, max_chunks=1, progress=False)[160]
    assert "focused_refined" not in plain and "focused_refined" not in plain["per_needle"]


def test_needle_only_report_gives_counts_and_no_question_scoring_notes(tmp_path: Path) -> None:
    from doc2lora_rag.evaluation.report import write_markdown

    niah = {"4096": {"adapter": 0.0, "in_context": None, "focused": 0.5,
                     "per_needle": {"adapter": [False, False], "focused": [True, False]}}}
    page = write_markdown({"hypernet": "h", "base_model": "b", "qa": {}, "niah": niah}, tmp_path / "r.md", command="c")
    text = page.read_text()
    assert "| 4096 | 0.00 (0/2) | 0.50 (1/2) | not run (past limit) |" in text
    assert "Token F1" not in text  # nothing on the page is a token F1
    assert "other keys" not in text
    niah["4096"] |= {"focused_refined": 1.0}
    niah["4096"]["per_needle"]["focused_refined"] = [True, True]
    page = write_markdown({"hypernet": "h", "base_model": "b", "qa": {}, "niah": niah}, tmp_path / "f.md", command="c")
    text = page.read_text()
    assert "| haystack tokens | adapter | adapter, best chunks | best chunks, refined | in context |" in text
    assert "| 4096 | 0.00 (0/2) | 0.50 (1/2) | 1.00 (2/2) | not run (past limit) |" in text
    results = {"hypernet": "h", "base_model": "b", "qa": {}, "niah": niah, "niah_distractors": 4}
    text = write_markdown(results, tmp_path / "d.md", command="c").read_text()
    assert "Each haystack also holds 4 needles of other keys with other numbers." in text
