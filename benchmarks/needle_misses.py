"""What the index answers when it misses a needle in a long haystack: each miss, by kind.

    python benchmarks/needle_misses.py docs/results-needles.json [--max-chunks 3] [--refine-steps 10]
        [--json-out FILE] [--threads 2]

Sorts every needle that a ``doc2lora eval --niah ... --json-out FILE`` run missed from its best
chunks (``focused``) or from them refined first (``focused_refined``) into the kinds of
``benchmarks/needle_errors.py``: the same digits in another order, one digit inserted, dropped
or changed away, or other (another number, or none). Near misses mean the chunk's adapter
carries the number's digits but not their sequence; other misses, that it answers something
else (the haystack's filler, say). Misses are also counted apart for numbers with a digit twice
in a row, the hypernetwork's known weak spot.

Evals that kept their answers (``answers`` beside ``gold``) are read as they are. Older ones
kept only each needle's hit: their missed needles are answered again through the eval's own
code (``answer_needle``), on the haystacks it drew, with the chunking, ``--max-chunks`` and
``--refine-steps`` it ran with (recorded by newer evals, given here for older ones). A
re-answered needle counts only if it repeats the eval's hit in every mode it re-answers;
the line under the table says how many did.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.evaluation.evaluate import answer_needle
from doc2lora_rag.evaluation.metrics import answer_contains, number_answer_kind
from doc2lora_rag.training.data import has_repeated_digit

from needle_routing import haystacks

MISS_KINDS = ("reordered", "one edit", "other")  # a haystack of one needle holds no other key's number
MODES = ("focused", "focused_refined")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="JSON written by doc2lora eval --niah ... --json-out")
    parser.add_argument("--max-chunks", type=int, default=3, help="the eval's --niah-max-chunks (older evals)")
    parser.add_argument("--refine-steps", type=int, default=10, help="the eval's --refine-steps (older evals)")
    parser.add_argument("--json-out", type=Path, help="keep every missed needle's answers and kinds")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = json.loads(args.results.read_text())
    if any("focused" not in row.get("per_needle", {}) for row in results["niah"].values()):
        raise SystemExit(f"{args.results} has no best-chunk answers (--niah-max-chunks 0?)")
    if results.get("niah_distractors"):  # another key's number is a kind of its own there
        raise SystemExit(f"{args.results} holds other keys' needles: sort those with needle_errors.py --distractors")
    answered = {length: recorded_answers(row) for length, row in results["niah"].items()}
    repeated = total = 0
    if any(answers is None for answers in answered.values()):
        hypernet = None if results["hypernet"] == "shipped default" else results["hypernet"]
        engine = Doc2LoRA.from_pretrained(hypernet=hypernet, chunking=results.get("chunking", "tokens"))
        max_chunks = results.get("niah_max_chunks", args.max_chunks)
        refine_steps = results.get("niah_refine_steps", args.refine_steps)
        for length, row in results["niah"].items():
            if answered[length] is None:
                answered[length], same = answer_again(engine, results, int(length), row, max_chunks, refine_steps)
                repeated, total = repeated + same, total + len(answered[length])
    misses = {length: classify(answers) for length, answers in answered.items()}
    ran = [mode for mode in MODES if all(mode in row["per_needle"] for row in results["niah"].values())]
    console = Console(width=140)
    console.print(miss_table(misses, ran))
    if total:
        console.print(f"re-answered {total} missed needles; {repeated} repeat the eval's hit in every mode")
    if args.json_out:
        args.json_out.write_text(json.dumps(misses, indent=1))


def recorded_answers(row: dict) -> dict[int, dict] | None:
    """The eval's own answers of the needles missed in ``MODES``, by needle index, each as
    ``{"gold": number, mode: answer, ...}``; None for an eval that kept only hits."""
    if "answers" not in row:
        return None
    hits = row["per_needle"]
    return {
        index: {"gold": row["gold"][index], **{mode: row["answers"][mode][index] for mode in MODES if mode in hits}}
        for index in missed_needles(hits)
    }


def missed_needles(hits: dict[str, list[float]]) -> list[int]:
    """The needles missed in at least one of ``MODES``, by index."""
    return [i for i in range(len(hits["focused"])) if any(not hits[mode][i] for mode in MODES if mode in hits)]


def answer_again(
    engine: Doc2LoRA, results: dict, length: int, row: dict, max_chunks: int, refine_steps: int
) -> tuple[dict[int, dict], int]:
    """The needles the eval missed in ``MODES`` at ``length`` tokens, answered again, and how
    many of them repeat the eval's hits in every mode both answered."""
    hits = row["per_needle"]
    records = haystacks(engine, results, length, len(hits["focused"]))
    answers, same = {}, 0
    for index in missed_needles(hits):
        record = records[index]
        said = answer_needle(engine, record, max_chunks=max_chunks, refine_steps=refine_steps)
        kept = {mode: said[mode] for mode in ("adapter", *MODES) if mode in hits and mode in said}
        same += all(answer_contains(answer, record.answer) == hits[mode][index] for mode, answer in kept.items())
        answers[index] = {"gold": record.answer, **{mode: kept[mode] for mode in MODES if mode in kept}}
    return answers, same


def classify(answers: dict[int, dict]) -> dict[str, list[dict]]:
    """Each mode's misses among ``answers``: needle index, number, answer and kind."""
    misses: dict[str, list[dict]] = {}
    for index, needle in sorted(answers.items()):
        for mode in MODES:
            if mode in needle and (kind := number_answer_kind(needle[mode], needle["gold"])) != "exact":
                entry = {"needle": index, "number": needle["gold"], "answer": needle[mode], "kind": kind}
                misses.setdefault(mode, []).append(entry)
    return misses


def miss_table(misses: dict[str, dict[str, list[dict]]], modes: list[str]) -> Table:
    """Misses per haystack length and mode that ran (of ``MODES``; none missed is a row of
    zeros), by kind, and how many hold a doubled digit."""
    table = Table(title="needles missed from the best chunks, by kind")
    for column in ("haystack tokens", "answered from", "missed", *MISS_KINDS, "doubled digit"):
        table.add_column(column, justify="right")
    totals = {mode: [m for by_mode in misses.values() for m in by_mode.get(mode, [])] for mode in modes}
    for length, by_mode in [*misses.items(), ("all", totals)]:
        for mode in modes:
            missed = by_mode.get(mode, [])
            kinds = [sum(m["kind"] == kind for m in missed) for kind in MISS_KINDS]
            doubled = sum(has_repeated_digit(m["number"]) for m in missed)
            table.add_row(str(length), mode.replace("_", ", "), str(len(missed)), *map(str, kinds), str(doubled))
    return table


if __name__ == "__main__":
    main()
