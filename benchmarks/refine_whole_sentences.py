"""Refinement on whole sentences, and two variants of it: the held-out evaluation with
refinement fitting every word of a sentence after its first few, instead of its last two.

    python benchmarks/refine_whole_sentences.py [--quote-words 3] [--span-words K | --then-endings N] [--open-ended]
        -- EVAL OPTIONS...

Refinement (``training/refine.py``) quotes a sentence up to its last two words and fits those
two, so a fact in the middle of a sentence ("X was founded in 1923 by Ana Kor") is only ever
in the quote, never in what is fitted. This runs ``doc2lora eval`` with the options after
``--`` and refinement fitting instead the rest of each sentence after its first
``--quote-words`` words (``--refine-quote-words``, the same sentences in the same steps).
Compare its ``--json-out`` with an evaluation of the same options without it (``doc2lora
compare``): the unrefined rows are the same question for question, so the refined rows differ
by the target alone. Three variants that the library does not offer:

- ``--span-words K`` fits the same words in short pieces: every ``K`` words after the first
  ``--quote-words``, each as its own cloze quoting the sentence up to it (the last piece is
  the sentence's ending), so that no answer fitted is longer than ``K`` words;
- ``--open-ended`` leaves the end of turn out of what is fitted, so that fitting twenty words
  of a sentence does not also teach the adapter to answer in twenty words;
- ``--then-endings N`` fits whole sentences in all but the last ``N`` steps and the last two
  words alone in those, so that the steps that write a sentence's middle are followed by
  steps that teach two-word answers again.

docs/engine.md ("Fitting whole sentences") has the results.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from doc2lora_rag.cli import app
from doc2lora_rag.training import refine
from doc2lora_rag.training.data import sentence_cloze
from doc2lora_rag.training.teacher import Target


def sentence_spans(quote_words: int, span_words: int) -> Callable[..., list[tuple[str, str]]]:
    """A stand-in for ``refine.sentence_endings``: the same sentences, each cut after its first
    ``quote_words`` words into pieces of ``span_words`` (the first piece the shortest), and one
    cloze per piece, quoting the sentence up to it; sentence by sentence, front to back."""
    if quote_words < 1 or span_words < 1:
        raise ValueError(f"quote_words and span_words must be >= 1, not {quote_words} and {span_words}")

    def spans(text: str, answer_words: int = refine.ANSWER_WORDS) -> list[tuple[str, str]]:
        pairs = []
        for words in refine.long_sentences(text):
            ends = range(len(words), quote_words, -span_words)
            pieces = [sentence_cloze(words[:end], min(span_words, end - quote_words)) for end in reversed(ends)]
            pairs.extend(piece for piece in pieces if piece is not None)
        return pairs

    return spans


def then_endings(last_steps: int) -> tuple[Callable[..., list[tuple[str, str]]], Callable[..., list[list[int]]]]:
    """Stand-ins for ``refine.sentence_continuations`` and ``refine.sentence_windows`` that fit
    whole sentences first and their last two words in the final ``last_steps`` steps: the
    first pass writes a sentence's middle, the second brings back short answers. The pairs
    are the continuations followed by the endings; the windows take the first kind for the
    early steps and the second for the late ones, each in turn as refinement takes them."""
    if last_steps < 1:
        raise ValueError(f"last_steps must be >= 1, not {last_steps}")
    continuations, windows = refine.sentence_continuations, refine.sentence_windows
    whole = 0  # continuations among the pairs of the chunk being refined

    def pairs(text: str, quote_words: int) -> list[tuple[str, str]]:
        nonlocal whole
        fitted = continuations(text, quote_words)
        whole = len(fitted)
        return fitted + refine.sentence_endings(text)

    def steps_windows(count: int, steps: int, per_step: int, pinned=(), groups=None) -> list[list[int]]:
        if pinned or groups:
            raise ValueError("--then-endings takes neither a question nor --refine-by-ending")
        first = steps if whole == count else 0 if whole == 0 else max(steps - last_steps, 0)
        early, late = windows(whole, first, per_step), windows(count - whole, steps - first, per_step)
        return [early[i % len(early)] for i in range(first)] + [
            [whole + j for j in late[i % len(late)]] for i in range(steps - first)
        ]

    return pairs, steps_windows


class OpenEndedTarget(Target):
    """A stand-in for refinement's ``Target``: a known answer without the end of turn."""

    @classmethod
    def for_answer(cls, tokenizer, answer: str, top_k: int = 1) -> Target:
        return cls.gold(tokenizer.encode(answer, add_special_tokens=False), top_k)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quote-words", type=int, default=3, help="words of a sentence quoted; the rest is fitted")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--span-words", type=int, help="fit the rest in pieces of this many words, one cloze each")
    variant.add_argument("--then-endings", type=int, help="fit the last two words alone in this many final steps")
    parser.add_argument("--open-ended", action="store_true", help="fit the words without the end of turn after them")
    args = parser.parse_args(ours)
    given = {option.split("=")[0] for option in rest if option.startswith("--")}
    if "--refine-steps" not in given:
        parser.error("pass doc2lora eval options after --, --refine-steps among them: nothing is refined without")
    for option in ("--refine-answer-words", "--refine-quote-words"):
        if option in given:
            parser.error(f"{option} has no say here: --quote-words and --span-words set what is fitted")
    if args.span_words is None:
        target = ["--refine-quote-words", str(args.quote_words)]
    else:  # pieces stand in for refinement's sentence endings
        refine.sentence_endings = sentence_spans(args.quote_words, args.span_words)
        target = []
    if args.then_endings is not None:
        refine.sentence_continuations, refine.sentence_windows = then_endings(args.then_endings)
    if args.open_ended:
        refine.Target = OpenEndedTarget
    app(["eval", *rest, *target])


if __name__ == "__main__":
    main()
