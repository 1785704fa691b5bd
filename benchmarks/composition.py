"""How chunk adapters add up on long haystacks: needle recall under several composition rules.

    python benchmarks/composition.py [--lengths 1024,4096,8192] [--count 4] [--hypernet DIR] [--threads 2]
        [--chunk-size 256] [--rules "needle chunk,best 3"]

A long document is split into chunks of ``chunk_size`` tokens and its adapter is the sum of
the chunk adapters (rank concatenation, as published). Each chunk adapter also carries what
every chunk of that kind of text shares, so a haystack of n chunks gets that shared part n
times. The table compares, on the same fresh needles (answer-contains):

- ``sum``: the engine's adapter (rank concatenation, no scaling), built from the same chunk
  factors as the other rules;
- ``mean``: the same chunks with B scaled by 1/n;
- ``filler-centred``: the sum minus (n - 1) times the adapter of a filler-only chunk, so the
  shared part counts once (an oracle: the reference is the haystack's own kind of text);
- ``empty-centred``: the same with the adapter of an empty chunk as the reference;
- ``needle chunk``: the adapter of the chunk that holds the needle, alone (an oracle upper
  bound: what reading the right chunk gives without composing);
- ``best 1`` / ``best 3``: the chunks that match the question best by BM25 over the chunks'
  text (``Doc2LoRA.focus``, what ``Doc2LoRAIndex`` answers a long document with).

``--chunk-size`` reads the haystacks in chunks of another size than the network was trained
with; ``--rules`` runs some of the rules only.
"""

from __future__ import annotations

import argparse
import random

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.evaluation.evaluate import NIAH_SEED, niah_records
from doc2lora_rag.evaluation.metrics import answer_contains
from doc2lora_rag.hypernetwork.chunking import chunk_token_ids
from doc2lora_rag.training.data import filler_sentence

RULES = ("sum", "mean", "filler-centred", "empty-centred", "needle chunk", "best 1", "best 3")


def compose(engine: Doc2LoRA, chunk_factors: list[dict], scale: float = 1.0, reference: dict | None = None):
    """One adapter from chunk factors: B scaled by ``scale``, then (with ``reference``) minus
    (n - 1) times the reference chunk's adapter, appended along the rank."""
    n = len(chunk_factors)
    stacked = {}
    for name in engine.config.target_modules:
        a_parts = [f[name][0] for f in chunk_factors]
        b_parts = [scale * f[name][1] for f in chunk_factors]
        if reference is not None and n > 1:
            a_parts.append(reference[name][0])
            b_parts.append(-(n - 1) * reference[name][1])
        stacked[name] = (torch.cat(a_parts), torch.cat(b_parts))
    return engine._adapter(engine.hypernet.assemble(stacked), n, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1024,4096,8192")
    parser.add_argument("--count", type=int, default=4, help="needles per length")
    parser.add_argument("--hypernet", default=None, help="hypernetwork folder; default: the shipped one")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=0, help="tokens per chunk; default: the network's")
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated subset of the rules")
    args = parser.parse_args()
    rules = [r.strip() for r in args.rules.split(",")]
    if unknown := set(rules) - set(RULES):
        parser.error(f"unknown rules {sorted(unknown)}; choose from {RULES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Doc2LoRA.from_pretrained(hypernet=args.hypernet)
    if args.chunk_size:
        # Before any document is read, so internalize and focus both split at this size.
        engine.config.chunk_size = args.chunk_size
    tokenizer, wrapper, size = engine.tokenizer, engine.wrapper, engine.config.chunk_size
    chunking = engine.chunking
    filler = " ".join(filler_sentence(random.Random(NIAH_SEED + 1)) for _ in range(200))
    references = {
        "filler-centred": engine._chunk_factors(chunk_token_ids(tokenizer, wrapper, filler, size, chunking)[:1])[0],
        "empty-centred": engine._chunk_factors([wrapper.wrap([])])[0],
    }
    table = Table(title=f"needle recall by composition rule ({args.count} needles per length, chunks of {size} tokens)")
    for column in ("haystack tokens", "chunks", *rules):
        table.add_column(column)
    for length in (int(x) for x in args.lengths.split(",")):
        hits = dict.fromkeys(rules, 0.0)
        chunk_count = 0
        for record in niah_records(engine, args.count, length):
            chunks = chunk_token_ids(tokenizer, wrapper, record.context, size, chunking)
            factors = engine._chunk_factors(chunks)
            chunk_count = len(chunks)
            texts = [tokenizer.decode(c) for c in chunks]
            holder = next(i for i, text in enumerate(texts) if record.answer in text or "secret number" in text)
            adapters = {
                "sum": compose(engine, factors),  # what engine.internalize returns
                "mean": compose(engine, factors, scale=1 / len(factors)),
                "filler-centred": compose(engine, factors, reference=references["filler-centred"]),
                "empty-centred": compose(engine, factors, reference=references["empty-centred"]),
                "needle chunk": compose(engine, [factors[holder]]),
            }
            adapters["best 1"] = engine.focus(adapters["sum"], record.context, record.question, 1)
            adapters["best 3"] = engine.focus(adapters["sum"], record.context, record.question, 3)
            for rule in rules:
                adapter = adapters[rule]
                answer = engine.generate(record.question, adapters=[adapter], max_new_tokens=16)
                hits[rule] += answer_contains(answer, record.answer) / args.count
        table.add_row(str(length), str(chunk_count), *(f"{hits[r]:.2f}" for r in rules))
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
