"""Whether refined chunk adapters still sum: a haystack of a few chunks answered from all its
chunks summed or from its best-matching chunk alone, each as made and refined.

    python benchmarks/refined_sum.py [--tokens 1024] [--count 10] [--steps 10] [--seed N] [--threads 2]
                                     [--json-out FILE]

``refine`` fits each chunk's block with only that block attached, as a question that lands on
one chunk attaches it. A document of no more than ``max_chunks`` chunks is answered with all of
them summed, a sum no refinement step saw. Each needle is answered four ways from the same
adapters; the first table gives answer-contains per way and each needle's hits (x: found), the
second each way against the refined sum, needle by needle, with the two-sided sign test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.evaluation.compare import gained_and_lost, sign_test_p
from doc2lora_rag.evaluation.evaluate import NIAH_SEED, niah_records
from doc2lora_rag.evaluation.metrics import answer_contains

WAYS = ("all chunks summed", "all chunks summed, refined", "best chunk", "best chunk, refined")
BASELINE = WAYS[1]


def measure(engine: Doc2LoRA, tokens: int, count: int, steps: int, seed: int = NIAH_SEED) -> dict[str, list[bool]]:
    """Each way's hit per needle, over ``count`` haystacks of ``tokens`` tokens."""
    hits: dict[str, list[bool]] = {way: [] for way in WAYS}
    for record in niah_records(engine, count, tokens, seed=seed):
        made = engine.internalize(record.context)
        refined = engine.refine(made, record.context, steps=steps)
        best = engine.focus_chunks(made, record.context, record.question, 1) or [0]  # one chunk: [0]
        adapters = (made, refined, made.select_chunks(best), refined.select_chunks(best))
        for way, adapter in zip(WAYS, adapters, strict=True):
            answer = engine.generate(record.question, adapters=[adapter], max_new_tokens=16)
            hits[way].append(bool(answer_contains(answer, record.answer)))
    return hits


def against_refined_sum(hits: dict[str, list[bool]]) -> list[tuple[str, int, int, float]]:
    """Each other way against the refined sum on the same needles: found by it and not by the
    sum (gained), the reverse (lost), and the two-sided sign test's p-value."""
    rows = []
    for way, found in hits.items():
        if way != BASELINE:
            gained, lost = gained_and_lost(hits[BASELINE], found)
            rows.append((way, gained, lost, sign_test_p(gained, lost)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=NIAH_SEED, help="needle draw (default: the evaluation's needles)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json-out", type=Path, help="also write each way's hits per needle here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hits = measure(Doc2LoRA.from_pretrained(), args.tokens, args.count, args.steps, args.seed)
    table = Table(title=f"{args.count} needles of {args.tokens} tokens, {args.steps} refinement steps")
    for column in ("answered from", "answer-contains"):
        table.add_column(column)
    table.add_column("needles", overflow="fold")
    for way, found in hits.items():
        table.add_row(
            way, f"{sum(found) / len(found):.2f} ({sum(found)}/{len(found)})", "".join(".x"[h] for h in found)
        )
    paired = Table(title=f"against {BASELINE}, needle by needle")
    for column in ("answered from", "gained", "lost", "sign test p"):
        paired.add_column(column)
    for way, gained, lost, p_value in against_refined_sum(hits):
        paired.add_row(way, str(gained), str(lost), f"{p_value:.3f}")
    Console().print(table, paired)
    if args.json_out:
        settings = {k: getattr(args, k) for k in ("tokens", "count", "steps", "seed")}
        args.json_out.write_text(json.dumps({"settings": settings, "hits": hits}, indent=1) + "\n")


if __name__ == "__main__":
    main()
