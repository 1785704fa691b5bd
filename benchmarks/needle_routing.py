"""Where a needle from the best chunks is lost: in routing, or in the chunk adapter's reading.

    python benchmarks/needle_routing.py docs/results-needles.json [--max-chunks 3]

Reads the needles of a ``doc2lora eval --niah ... --json-out FILE`` run (the same seeded
haystacks, rebuilt with the engine's tokenizer) and, for each, checks whether the chunks that
BM25 chooses (``Doc2LoRA.focus``, ``--niah-max-chunks`` in the eval) hold the needle's
number. Set against the eval's own hits, that splits every miss into a routing miss (the
needle's chunk was not chosen) and a reading miss (it was, and its adapter answered wrong);
``one chunk chosen`` counts the needles whose question shares terms with one chunk only (that
chunk alone answers, whatever ``--max-chunks``); ``cut`` counts the needles whose sentence a
chunk boundary splits, which no single chunk holds whole, and how many of those were answered
all the same (chunks are split as the eval split them). No model forward pass runs: only the
tokenizer and BM25.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.evaluation.evaluate import NIAH_SEED, niah_records
from doc2lora_rag.router.chunks import best_chunks
from doc2lora_rag.training.data import QARecord


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="JSON written by doc2lora eval --niah ... --json-out")
    parser.add_argument("--max-chunks", type=int, default=3, help="the eval's --niah-max-chunks")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    niah = results["niah"]
    chunking = results.get("chunking", "tokens")  # evals before it was recorded cut every 512 tokens
    engine = Doc2LoRA.from_pretrained()
    table = Table(title="needles from the best chunks: routing against reading")
    columns = ("haystack tokens", "needles", "cut (answered)", "one chunk chosen", "needle chosen")
    for column in (*columns, "answered when chosen", "answered"):
        table.add_column(column, justify="right")
    for length, row in niah.items():
        hits = row.get("per_needle", {}).get("focused")
        if not hits:
            raise SystemExit(f"{args.results} has no best-chunk answers at {length} tokens (--niah-max-chunks 0?)")
        chosen, cut, alone = [], [], 0
        for record in haystacks(engine, results, int(length), len(hits)):
            texts = engine._chunk_texts(record.context, chunking)
            cut.append(not any(_needle_sentence(record.context, record.answer) in text for text in texts))
            picked = best_chunks(record.question, texts, args.max_chunks)
            alone += picked is not None and len(picked) == 1
            chosen.append(any(record.answer in texts[i] for i in (picked or range(len(texts)))))
        found = sum(chosen)
        read = sum(hit for hit, in_chosen in zip(hits, chosen, strict=True) if in_chosen)
        answered_cut = sum(hit for hit, was_cut in zip(hits, cut, strict=True) if was_cut)
        cells = [f"{sum(cut)} ({answered_cut:.0f})", str(alone), str(found), f"{read:.0f} / {found}"]
        table.add_row(length, str(len(hits)), *cells, f"{sum(hits):.0f}")
    Console().print(table)


def haystacks(engine: Doc2LoRA, results: dict, length: int, count: int) -> list[QARecord]:
    """The eval's needles at ``length`` tokens, drawn with the seed it recorded (evals before
    ``--niah-seed`` all drew the default)."""
    return niah_records(engine, count, length, seed=results.get("niah_seed", NIAH_SEED))


def _needle_sentence(context: str, answer: str) -> str:
    """The sentence of ``context`` that holds the needle's number."""
    at = context.index(answer)
    return context[context.rfind(".", 0, at) + 1 : context.index(".", at) + 1].strip()


if __name__ == "__main__":
    main()
