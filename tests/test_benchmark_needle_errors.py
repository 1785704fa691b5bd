"""benchmarks/needle_errors.py answers greedily exactly as the library does, so its greedy
rows are the library's answers, and its beam search prompts and attaches the adapter as the
library does (at width 1 it gives the greedy answer)."""

from __future__ import annotations

import json

import pytest
import torch

from doc2lora_rag.training.data import QARecord
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


def test_the_paired_table_counts_needles_gained_and_lost_against_the_first_network() -> None:
    numbers = ["11", "12", "33", "34", "56", "77"]

    def needles(kinds: str) -> list[dict]:
        return [
            {"number": n, "answer": "", "kind": "exact" if k == "x" else "other"}
            for n, k in zip(numbers, kinds, strict=True)
        ]

    answers = {
        "shipped beams=1 tokens=480": needles("xx.x.."),
        "run beams=1 tokens=480": needles("x.xxxx"),
    }
    table = needle_errors.paired_table(answers, ["shipped", "run"])
    rows = [[column._cells[i] for column in table.columns] for i in range(3)]
    assert rows[0] == ["run", "1", "480", "all (6)", "3", "1", "0.625"]  # 3 gained, 1 lost: 2 * 5/16
    # 11, 33 and 77 have a doubled digit: 33 and 77 gained; 12 lost, 56 gained among the rest.
    assert rows[1][3:] == ["doubled digit (3)", "2", "0", "0.500"]
    assert rows[2][3:] == ["no doubled digit (3)", "1", "1", "1.000"]


def test_the_paired_table_takes_a_reader_whose_name_starts_another_readers() -> None:
    def needles(kinds: str) -> list[dict]:
        return [{"number": "12", "answer": "", "kind": "exact" if k == "x" else "other"} for k in kinds]

    answers = {
        "shipped beams=1 tokens=480": needles("..."),
        "shipped, refined 10 beams=1 tokens=480": needles("x.."),
        "shipped, refined 10 for the question beams=1 tokens=480": needles("xxx"),
    }
    table = needle_errors.paired_table(answers, ["shipped, refined 10", "shipped, refined 10 for the question"])
    rows = [[column._cells[i] for column in table.columns] for i in range(table.row_count)]
    assert [row[3:6] for row in rows] == [
        ["all (3)", "2", "0"],
        ["doubled digit (0)", "0", "0"],
        ["no doubled digit (3)", "2", "0"],
    ]


def test_a_turned_haystack_keeps_its_sentences_and_moves_the_needle() -> None:
    text = "One. Two! The secret number of the red fox is 42277. Four? Five."
    result = needle_errors.turned(text)
    assert result == "The secret number of the red fox is 42277. Four? Five. One. Two!"
    assert sorted(result.split()) == sorted(text.split())


def test_misses_are_counted_apart_for_numbers_with_a_doubled_digit() -> None:
    answers = {
        "shipped beams=1 tokens=480": [
            {"number": "42277", "answer": "4277", "kind": "one edit"},
            {"number": "80400", "answer": "80400", "kind": "exact"},
            {"number": "12345", "answer": "12354", "kind": "reordered"},
            {"number": "13579", "answer": "13579", "kind": "exact"},
            {"number": "24680", "answer": "24680", "kind": "exact"},
        ]
    }
    table = needle_errors.doubled_digit_table(answers)
    row = [column._cells[0] for column in table.columns]
    assert row == ["shipped beams=1 tokens=480", "1/2", "1/3"]


def test_readers_answer_with_the_haystack_its_turned_copy_or_its_refined_adapter(tiny_engine) -> None:
    text = "One two three four five. The secret number of the red fox is 42277. Six seven eight nine ten."
    record = QARecord(context=text, question="What is the secret number of the red fox?", answer="42277")
    assert needle_errors.reader_adapter(tiny_engine, record, "context") is None
    made = needle_errors.reader_adapter(tiny_engine, record, "adapter")
    assert made.factors.keys() == tiny_engine.internalize(text).factors.keys()
    turned = needle_errors.reader_adapter(tiny_engine, record, "turned")
    assert turned.num_chunks == tiny_engine.internalize(needle_errors.turned(text)).num_chunks
    refined = needle_errors.reader_adapter(tiny_engine, record, "refined", refine_steps=2)
    assert refined.metadata["refine_steps"] == 2 and "refine_steps" not in made.metadata
    for_question = needle_errors.reader_adapter(tiny_engine, record, "refined for the question", refine_steps=2)
    again = tiny_engine.refine(made, text, steps=2, question=record.question)
    for name, (a, b) in for_question.factors.items():
        assert torch.equal(a, again.factors[name][0]) and torch.equal(b, again.factors[name][1])


def test_each_refined_reader_refines_by_its_grouping_and_answer_words(tiny_engine, monkeypatch) -> None:
    calls = []

    def recording_refine(engine, adapter, texts, **options):
        calls.append(options)
        return adapter

    monkeypatch.setattr("doc2lora_rag.training.refine.refine_adapter", recording_refine)
    record = QARecord(context="The secret number of the red fox is 42277.", question="q", answer="42277")
    needle_errors.reader_adapter(tiny_engine, record, "refined by ending", refine_steps=2, answer_words=1)
    needle_errors.reader_adapter(tiny_engine, record, "refined", refine_steps=2, answer_words=1)
    needle_errors.reader_adapter(tiny_engine, record, "refined in turn on words", refine_steps=2, answer_words=1)
    assert [(c["steps"], c["by_ending"], c["question"], c["answer_words"]) for c in calls] == [
        (2, True, None, 1),
        (2, False, None, None),
        (2, False, None, 1),
    ]


def test_reused_answers_are_the_earlier_runs_first_needles_and_only_for_the_same_needles() -> None:
    records = [QARecord(context="c", question="q", answer=n) for n in ("111", "222")]
    key = "shipped, refined 10 beams=1 tokens=480"
    needles = [{"number": n, "answer": n, "kind": "exact"} for n in ("111", "222", "333")]
    assert needle_errors.earlier_answers({key: needles}, [key], records) == {key: needles[:2]}
    assert needle_errors.earlier_answers({key: needles[:1]}, [key], records) is None  # too few: answer again
    assert needle_errors.earlier_answers({}, [key], records) is None
    with pytest.raises(SystemExit, match="other needles"):
        needle_errors.earlier_answers({key: needles[1:]}, [key], records)


def test_the_sentence_end_question_quotes_the_needles_sentence_up_to_its_last_two_words() -> None:
    text = "One two three four five. The secret number of the red fox is 42277. Six seven eight nine ten."
    record = QARecord(context=text, question="What is the secret number of the red fox?", answer="42277")
    question = needle_errors.sentence_end_question(record)
    assert question == 'How does this sentence of the document end? "The secret number of the red fox ..."'
    unended = QARecord(context="One two three four five six.", question="q", answer="42277")
    with pytest.raises(ValueError, match="42277"):
        needle_errors.sentence_end_question(unended)


def test_answers_are_kept_with_their_kind_and_tabled_as_shares_of_each_kind() -> None:
    answers: dict[str, list[dict]] = {}
    record = QARecord(context="c", question="q", answer="42277")
    for given in ("42277", "42727", "4277", "no idea"):
        needle_errors.keep_answer(answers, "shipped beams=1 tokens=480", record, given, ["42277"])
    needles = answers["shipped beams=1 tokens=480"]
    assert [n["kind"] for n in needles] == ["exact", "reordered", "one edit", "other"]
    assert all(n["number"] == "42277" for n in needles)
    assert needle_errors.kind_shares(needles) == ["0.25", "0.00", "0.25", "0.25", "0.25"]  # another key's: none


def test_a_run_cut_short_keeps_its_finished_readers_and_resumes_from_them(tiny_engine, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(needle_errors.Doc2LoRA, "from_pretrained", lambda **_: tiny_engine)
    out = tmp_path / "needles.json"
    argv = ["needle_errors.py", "--lengths", "200", "--count", "2", "--refine-steps", "1", "--json-out", str(out)]
    read, modes = needle_errors.reader_adapter, []

    def cut_at_refinement(engine, record, mode, *args):
        if mode == "refined":
            raise KeyboardInterrupt
        return read(engine, record, mode, *args)

    monkeypatch.setattr(needle_errors, "reader_adapter", cut_at_refinement)
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(KeyboardInterrupt):
        needle_errors.main()
    kept = json.loads(out.read_text())
    assert list(kept) == ["shipped beams=1 tokens=200"] and len(kept["shipped beams=1 tokens=200"]) == 2

    def recording(engine, record, mode, *args):
        modes.append(mode)
        return read(engine, record, mode, *args)

    monkeypatch.setattr(needle_errors, "reader_adapter", recording)
    monkeypatch.setattr("sys.argv", [*argv, "--reuse", str(out)])
    needle_errors.main()
    # The first reader is answered again as the check; the refined reader only now.
    assert modes == ["adapter", "adapter", "refined", "refined"]
    resumed = json.loads(out.read_text())
    assert resumed["shipped beams=1 tokens=200"] == kept["shipped beams=1 tokens=200"]
    assert len(resumed["shipped, refined 1 beams=1 tokens=200"]) == 2
