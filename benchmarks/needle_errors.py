"""What a chunk adapter gets wrong when it misses a needle: the kinds of wrong numbers.

    python benchmarks/needle_errors.py [--lengths 128,256,480] [--count 30] [--hypernet DIR ...]
        [--beams 1,4] [--distractors N] [--in-context] [--turned]
        [--refine-steps N [--refine-question] [--refine-by-ending] [--refine-answer-words N]]
        [--sentence-end] [--seed N]
        [--json-out FILE] [--reuse FILE] [--threads 2]

Each haystack fits one chunk, so this measures what a single chunk's adapter recalls, the
limit of the index on long documents (``benchmarks/composition.py``). Every greedy answer is
sorted into one kind, side by side for each hypernetwork given (default: the shipped one):

- ``exact``: the answer contains the secret number;
- ``another key's``: its first number is another needle's (with ``--distractors``);
- ``reordered``: its first number has the same digits in another order;
- ``one edit``: its first number is one digit inserted, dropped or changed away;
- ``other``: anything else (another number, or none).

Reordered and one-edit misses mean the adapter carries the number's digits but not their
exact sequence; other misses mean the number did not get through at all. ``--beams`` answers
with beam search of that width as well (1: greedy, as the library answers), to tell whether a
sequence the adapter finds more likely as a whole would be the right one. ``--distractors N``
puts N needles of other keys into each haystack beside the one asked about: with one number
in a haystack of words an adapter that knows *a* number answers; with several it must know
which is whose. ``--in-context`` also answers with the haystack in the prompt, the reading
that the adapter replaces. ``--turned`` also answers with the adapter of each haystack turned
at its middle sentence (the same sentences from the middle on, then the first half), the needle
at another depth among the same neighbours, as an overlapping chunk would read it: if its
misses are other needles' misses, the miss lies in the context, if the same, in the number.
``--refine-steps N`` also answers with the first network's adapters refined by N gradient
steps on the haystack's own sentence endings (``Doc2LoRA.refine``), the needle's sentence
among them; with ``--refine-question``, also refined for the question (the sentences that
match it best fitted at every step, ``Doc2LoRA.refine(question=)``); with
``--refine-by-ending``, also refined with at most one sentence of each ending a step
(``Doc2LoRA.refine(by_ending=True)``: the haystack's filler ends in a few ways, the needle in its
own, so the needle's sentence is fitted at every step). ``--refine-answer-words N``: those two
readers fit each sentence's last N words instead of two (1: a needle's bare number), the plain
refined reader staying the baseline. Misses are also
counted apart for numbers with a digit twice in a row. ``--sentence-end`` also asks every
adapter to end the needle's own sentence, quoted up to its last two words as refinement
quotes it (``sentence_endings``): a second reading of the same weights, compared needle by
needle with the question's, which tells a number the adapter does not carry from one the
question does not draw out. ``--json-out`` keeps every needle's
answer and kind. With several networks, each after the first is compared with it needle by
needle: needles it answers exactly that the first misses (gained), the reverse
(lost), and the two-sided sign test on those, over all needles and apart for numbers with and
without a doubled digit. ``--seed`` draws other needles than the evaluation's, to check a
finding on needles it was not found on. ``--reuse FILE`` takes the answers of every reader
but the first from an earlier ``--json-out`` of the same seed and lengths that holds them
(the first needles of a draw are those of any longer draw), so that a new reader is paired
with an old one without paying for the old one again; the first reader is answered again, and
how many of its answers repeat the earlier run's word for word is printed as the check that
the two runs read the same needles the same way. ``--json-out`` is written after each reader
too, so a run cut short resumes with ``--reuse`` of its own file, paying again only for the
reader it was in.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag.adapters.runtime import adapters_attached
from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.evaluation.compare import gained_and_lost, sign_test_p
from doc2lora_rag.evaluation.evaluate import NIAH_SEED, niah_records
from doc2lora_rag.evaluation.metrics import NUMBER_ANSWER_KINDS, number_answer_kind
from doc2lora_rag.generation.generate import _generation_config
from doc2lora_rag.training.data import has_repeated_digit
from doc2lora_rag.training.refine import sentence_endings

SENTENCE_END = "sentence end"


def answer(engine: Doc2LoRA, question: str, adapter, beams: int, max_new_tokens: int = 12) -> str:
    """The greedy answer as the library gives it, or beam search of width ``beams``."""
    if beams == 1:
        return engine.generate(question, adapters=[adapter], max_new_tokens=max_new_tokens)
    return beam_search(engine, question, adapter, beams, max_new_tokens)


@torch.inference_mode()
def beam_search(engine: Doc2LoRA, question: str, adapter, beams: int, max_new_tokens: int = 12) -> str:
    """The answer of ``transformers``' beam search with the adapter attached (width 1: greedy)."""
    base = engine.base
    batch = base.tokenizer([engine.prompt(question)], return_tensors="pt", add_special_tokens=False)
    config = _generation_config(base, max_new_tokens)
    config.num_beams = beams
    with adapters_attached(base.model, [adapter]):
        output = base.model.generate(**batch.to(base.device), generation_config=config)
    return base.tokenizer.decode(output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def turned(text: str) -> str:
    """The same sentences from the middle one on, then the first half."""
    sentences = re.split(r"(?<=[.!?]) ", text)
    middle = len(sentences) // 2
    return " ".join(sentences[middle:] + sentences[:middle])


DIGIT_GROUPS = {"doubled digit": has_repeated_digit, "no doubled digit": lambda n: not has_repeated_digit(n)}


def reader_adapter(engine: Doc2LoRA, record, mode: str, refine_steps: int = 0, answer_words: int | None = None):
    """What a reader answers with: nothing (in context), the haystack's adapter, the turned
    haystack's, or the haystack's adapter refined: in turn, for the question, by ending, or in turn
    on ``answer_words``. ``answer_words`` is for all but the first: refined in turn stays the
    baseline, on two words."""
    if mode == "context":
        return None
    source = turned(record.context) if mode == "turned" else record.context
    adapter = engine.internalize(source)
    if mode.startswith("refined"):
        question = record.question if mode == "refined for the question" else None
        by_ending = mode == "refined by ending"
        words = None if mode == "refined" else answer_words
        return engine.refine(
            adapter, source, steps=refine_steps, question=question, by_ending=by_ending, answer_words=words
        )
    return adapter


def sentence_end_question(record) -> str:
    """The needle's sentence quoted up to its last two words, as refinement asks it to be ended."""
    found = [question for question, ending in sentence_endings(record.context) if record.answer in ending]
    if not found:
        raise ValueError(f"no sentence of the haystack ends in its needle's number {record.answer}")
    return found[0]


def keep_answer(answers: dict[str, list[dict]], key: str, record, given: str, numbers: list[str]) -> None:
    """``given`` sorted into its kind, kept under ``key`` with the needle's number."""
    kind = number_answer_kind(given, record.answer, numbers)
    answers.setdefault(key, []).append({"number": record.answer, "answer": given, "kind": kind})


def kind_shares(needles: list[dict]) -> list[str]:
    """Each kind's share of a reader's answers, as table cells."""
    return [f"{sum(n['kind'] == kind for n in needles) / len(needles):.2f}" for kind in NUMBER_ANSWER_KINDS]


def earlier_answers(earlier: dict, keys: list[str], records: list) -> dict[str, list[dict]] | None:
    """An earlier run's answers under ``keys`` to these needles (the first needles of a longer
    draw of the same seed), or None where it lacks any of them."""
    if not all(len(earlier.get(key, [])) >= len(records) for key in keys):
        return None
    found = {key: earlier[key][: len(records)] for key in keys}
    if any([needle["number"] for needle in needles] != [r.answer for r in records] for needles in found.values()):
        raise SystemExit("--reuse: the earlier run asked about other needles (another --seed or --lengths?)")
    return found


def doubled_digit_table(answers: dict[str, list[dict]]) -> Table:
    """Misses among numbers with a digit twice in a row against the rest, per reader."""
    table = Table(title="misses by number: a digit twice in a row (42277) or not")
    for column in ("reader", *(f"missed, {group}" for group in DIGIT_GROUPS)):
        table.add_column(column)
    for key, needles in answers.items():
        cells = []
        for member in DIGIT_GROUPS.values():
            group = [n for n in needles if member(n["number"])]
            cells.append(f"{sum(n['kind'] != 'exact' for n in group)}/{len(group)}")
        table.add_row(key, *cells)
    return table


def paired_table(answers: dict[str, list[dict]], names: list[str]) -> Table:
    """Each network after the first against the first, on the same needles: exact answers
    gained and lost, and the sign test's p-value, over all needles and apart for numbers with
    and without a digit twice in a row."""
    table = Table(title=f"exact answers against {names[0]}, needle by needle")
    for column in ("hypernetwork", "beams", "haystack tokens", "numbers", "gained", "lost", "sign test p"):
        table.add_column(column)
    groups = {"all": lambda n: True, **DIGIT_GROUPS}
    prefix = f"{names[0]} "
    for key, first in answers.items():
        setting = re.fullmatch(rf"{re.escape(prefix)}beams=(\d+) tokens=(\d+)", key)
        if setting is None:  # another reader's, e.g. "<first>, refined 10 beams=1 tokens=480"
            continue
        beams, tokens = setting.groups()
        setting = f"beams={beams} tokens={tokens}"
        for name in names[1:]:
            pairs = list(zip(first, answers[f"{name} {setting}"], strict=True))
            for group, member in groups.items():
                chosen = [(a, b) for a, b in pairs if member(a["number"])]
                gained, lost = gained_and_lost(
                    [a["kind"] == "exact" for a, _ in chosen], [b["kind"] == "exact" for _, b in chosen]
                )
                p_value = f"{sign_test_p(gained, lost):.3f}"
                table.add_row(name, beams, tokens, f"{group} ({len(chosen)})", str(gained), str(lost), p_value)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="128,256,480")
    parser.add_argument("--count", type=int, default=30, help="needles per length")
    parser.add_argument("--hypernet", nargs="+", default=[None], help="hypernetwork folders; default: the shipped one")
    parser.add_argument("--beams", default="1", help="beam widths to answer with (1: greedy)")
    parser.add_argument("--distractors", type=int, default=0, help="needles of other keys in each haystack")
    parser.add_argument("--in-context", action="store_true", help="also answer with the haystack in the prompt")
    parser.add_argument("--turned", action="store_true", help="also read each haystack turned at its middle")
    parser.add_argument("--refine-steps", type=int, default=0, help="also answer with adapters refined this much")
    parser.add_argument(
        "--refine-question", action="store_true", help="with --refine-steps: also refine for the question"
    )
    parser.add_argument(
        "--refine-by-ending",
        action="store_true",
        help="with --refine-steps: also refine one sentence per ending a step",
    )
    parser.add_argument(
        "--refine-in-turn",
        action="store_true",
        help="with --refine-steps: also refine in turn on --refine-answer-words words",
    )
    parser.add_argument(
        "--refine-answer-words",
        type=int,
        default=None,
        help="the last words of a sentence the refined variants fit (default 2)",
    )
    parser.add_argument(
        "--sentence-end", action="store_true", help="also ask each adapter to end the needle's own sentence"
    )
    parser.add_argument("--seed", type=int, default=NIAH_SEED, help="needle draw (default: the evaluation's needles)")
    parser.add_argument("--json-out", type=Path, default=None, help="every needle's answer and kind, as JSON")
    parser.add_argument("--reuse", type=Path, default=None, help="an earlier --json-out of the same needles")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    variants = args.refine_question or args.refine_by_ending or args.refine_in_turn
    if variants and not args.refine_steps:
        parser.error("--refine-question, --refine-by-ending and --refine-in-turn need --refine-steps")
    if args.refine_answer_words is not None and not variants:
        parser.error("--refine-answer-words needs --refine-question, --refine-by-ending or --refine-in-turn")
    if args.refine_in_turn and args.refine_answer_words is None:
        parser.error("--refine-in-turn needs --refine-answer-words: on two words it is the refined reader")
    count = args.refine_answer_words
    words = "" if count is None else f", last {count} word{'s' if count != 1 else ''}"
    if args.threads:
        torch.set_num_threads(args.threads)
    engines = {}
    for folder in args.hypernet:
        shared = next(iter(engines.values())).base if engines else None
        engines[folder or "shipped"] = Doc2LoRA.from_pretrained(hypernet=folder, base_model=shared)
    table = Table(title=f"single-chunk needle answers by kind ({args.count} needles per length)")
    for column in ("hypernetwork", "beams", "haystack tokens", *NUMBER_ANSWER_KINDS):
        table.add_column(column)
    first = next(iter(engines.values()))  # one base model, so one tokenizer, for all networks
    haystacks = {
        int(x): niah_records(first, args.count, int(x), seed=args.seed, distractors=args.distractors)
        for x in args.lengths.split(",")
    }
    widths = [int(x) for x in args.beams.split(",")]
    answers: dict[str, dict] = {}
    readers = [(name, engine, "adapter") for name, engine in engines.items()]
    readers += [("in context", first, "context")] if args.in_context else []
    turned_reader = [f"{next(iter(engines))}, turned"] if args.turned else []
    readers += [(name, first, "turned") for name in turned_reader]
    refined_reader = [f"{next(iter(engines))}, refined {args.refine_steps}"] if args.refine_steps else []
    readers += [(name, first, "refined") for name in refined_reader]
    for wanted, how, mode in (
        (args.refine_question, "for the question", "refined for the question"),
        (args.refine_by_ending, "by ending", "refined by ending"),
        (args.refine_in_turn, "in turn", "refined in turn on words"),
    ):
        if wanted:
            refined_reader.append(f"{next(iter(engines))}, refined {args.refine_steps} {how}{words}")
            readers.append((refined_reader[-1], first, mode))
    earlier = json.loads(args.reuse.read_text()) if args.reuse else {}
    for name, engine, mode in readers:
        in_context = mode == "context"
        reader_widths = [1] if in_context else widths  # beam search is the adapter's alone
        for length, records in haystacks.items():
            keys = [f"{name} beams={beams} tokens={length}" for beams in reader_widths]
            reused = earlier_answers(earlier, keys, records) if name != readers[0][0] else None
            if reused:
                records = []  # answered by the earlier run
                answers.update(reused)
            for record in records:
                adapter = reader_adapter(engine, record, mode, args.refine_steps, args.refine_answer_words)
                numbers = re.findall(r"\d+", record.context)  # the filler holds none
                ending = sentence_end_question(record) if args.sentence_end and not in_context else None
                for beams in reader_widths:
                    if in_context:
                        # It answers in a sentence ("The secret number of ... is ..."), not a bare number.
                        given = engine.generate(record.question, context=record.context, max_new_tokens=32)
                    else:
                        given = answer(engine, record.question, adapter, beams)
                    keep_answer(answers, f"{name} beams={beams} tokens={length}", record, given, numbers)
                    if ending is not None:
                        # Room for a sentence restated whole before its number.
                        ended = answer(engine, ending, adapter, beams, max_new_tokens=24)
                        keep_answer(
                            answers, f"{name}, {SENTENCE_END} beams={beams} tokens={length}", record, ended, numbers
                        )
        if args.json_out:  # what is answered so far, for --reuse should the run be cut short
            args.json_out.write_text(json.dumps(answers, indent=1))
    for key, needles in answers.items():  # each reader's rows, its sentence-end reading beside it
        name, beams, length = re.fullmatch(r"(.*) beams=(\d+) tokens=(\d+)", key).groups()
        table.add_row(name, beams, length, *kind_shares(needles))
    console = Console(width=140)
    console.print(table)
    for key, needles in answers.items():  # the first reader is answered again: it must repeat the earlier run
        if key.startswith(f"{readers[0][0]} beams=") and key in earlier:
            same = sum(a["answer"] == b["answer"] for a, b in zip(needles, earlier[key], strict=False))
            console.print(f"{key}: {same} of {len(needles)} answers word for word those of {args.reuse}")
    compared = list(engines) + turned_reader + refined_reader
    if len(compared) > 1:
        console.print(paired_table(answers, compared))
    if len(refined_reader) > 1:  # for the question or by ending, against all sentences in turn
        console.print(paired_table(answers, refined_reader))
    if args.sentence_end:  # the same adapters, asked to end the needle's sentence instead of the question
        for name, _, _ in readers:
            if any(key.startswith(f"{name}, {SENTENCE_END} beams=") for key in answers):  # not reused readers'
                console.print(paired_table(answers, [name, f"{name}, {SENTENCE_END}"]))
    console.print(doubled_digit_table(answers))
    if args.json_out:
        args.json_out.write_text(json.dumps(answers, indent=1))


if __name__ == "__main__":
    main()
