"""Refinement on whole sentences: the held-out evaluation with refinement fitting every word of
a sentence after its first few, instead of its last two.

    python benchmarks/refine_whole_sentences.py [--quote-words 3] -- EVAL OPTIONS...

Refinement (``training/refine.py``) quotes a sentence up to its last two words and fits those
two, so a fact in the middle of a sentence ("X was founded in 1923 by Ana Kor") is only ever
in the quote, never in what is fitted. This runs ``doc2lora eval`` with the options after
``--`` and every refinement fitting instead the rest of each sentence after its first
``--quote-words`` words, the same sentences (five words or more) in the same steps; a
five-word sentence quoted by three words is fitted as before. Compare its ``--json-out`` with
an evaluation of the same options without it (``doc2lora compare``): the unrefined rows are
the same question for question, so the refined rows differ by the target alone.
docs/engine.md ("Fitting whole sentences") has the result.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from doc2lora_rag.cli import app
from doc2lora_rag.training import refine
from doc2lora_rag.training.data import sentence_cloze


def whole_sentences(quote_words: int) -> Callable[..., list[tuple[str, str]]]:
    """A stand-in for ``refine.sentence_endings``: the same sentences, each quoted by its first
    ``quote_words`` words and answered by the rest (its last 24 words quoted when longer)."""
    if quote_words < 1:
        raise ValueError(f"quote_words must be >= 1, not {quote_words}")

    def endings(text: str, answer_words: int = refine.ANSWER_WORDS) -> list[tuple[str, str]]:
        return [
            cloze
            for words in refine.long_sentences(text)
            if len(words) > quote_words and (cloze := sentence_cloze(words, len(words) - quote_words)) is not None
        ]

    return endings


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quote-words", type=int, default=3, help="words of a sentence quoted; the rest is fitted")
    args = parser.parse_args(ours)
    given = {option.split("=")[0] for option in rest if option.startswith("--")}
    if "--refine-steps" not in given:
        parser.error("pass doc2lora eval options after --, --refine-steps among them: nothing is refined without")
    if "--refine-answer-words" in given:
        parser.error("--refine-answer-words has no say here: --quote-words sets what is fitted")
    refine.sentence_endings = whole_sentences(args.quote_words)
    app(["eval", *rest])


if __name__ == "__main__":
    main()
