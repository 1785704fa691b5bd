"""Reading documents in bf16 against fp32: same answers, less time?

    python benchmarks/reading_precision.py [--needles 30] [--synthetic 20] [--squad 40] [--threads 2]

On the embedded default with the shipped hypernetwork, every document is internalised twice,
its chunks read through the fp32 base model once in fp32 and once in bf16 (autocast, the
engine's choice on a CPU with native bf16), the two reads taking turns. Each adapter answers
its document's question greedily. One table, side by side: answer-contains and token F1 of
each precision, the fraction of answers that come out identical, and internalize time with
its ratio. Needles (single-chunk haystacks of 128, 256 and 480 tokens), held-out synthetic
fact documents and SQuAD validation paragraphs, with seeds no evaluation uses.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.evaluation.evaluate import niah_records
from doc2lora_rag.evaluation.metrics import answer_contains, token_f1
from doc2lora_rag.training.data import QARecord, squad_records, synthetic_fact_records

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev-v1.1.json.gz"
PRECISIONS = (torch.float32, torch.bfloat16)


def record_sets(engine: Doc2LoRA, args: argparse.Namespace) -> dict[str, tuple[list[QARecord], int]]:
    """Named question sets with the answer length each is generated at."""
    sets = {
        "needles": ([r for n in (128, 256, 480) for r in niah_records(engine, args.needles, n, seed=3000 + n)], 12),
        "synthetic": (synthetic_fact_records(2 * args.synthetic, seed=55555), 24),
    }
    if SQUAD.is_file() and args.squad:
        paragraphs = squad_records(SQUAD, "validation")
        step = max(1, len(paragraphs) // args.squad)
        sets["squad"] = (paragraphs[::step][: args.squad], 24)
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--needles", type=int, default=30, help="needles per haystack length")
    parser.add_argument("--synthetic", type=int, default=20, help="synthetic documents (two questions each)")
    parser.add_argument("--squad", type=int, default=40, help="SQuAD validation questions (0: none)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Doc2LoRA.from_pretrained()
    engine.internalize("A warm-up document.")
    table = Table(title=f"{engine.base.name}: documents read in fp32 and in bf16 ({torch.get_num_threads()} threads)")
    for column in ("questions", "count", "fp32 contains / F1", "bf16 contains / F1", "identical answers",
                   "internalize s fp32", "bf16", "fp32 / bf16"):
        table.add_column(column)
    for name, (records, max_new_tokens) in record_sets(engine, args).items():
        answers: dict[torch.dtype, list[str]] = {dtype: [] for dtype in PRECISIONS}
        seconds = dict.fromkeys(PRECISIONS, 0.0)
        for record in records:
            for dtype in PRECISIONS:
                engine.reading_dtype = dtype
                started = time.perf_counter()
                adapter = engine.internalize(record.context)
                seconds[dtype] += time.perf_counter() - started
                answer = engine.generate(record.question, adapters=[adapter], max_new_tokens=max_new_tokens)
                answers[dtype].append(answer)
        scores = {}
        for dtype, said in answers.items():
            pairs = list(zip(said, records, strict=True))
            contains = sum(answer_contains(a, r.gold_answers) for a, r in pairs) / len(records)
            f1 = sum(token_f1(a, r.gold_answers) for a, r in pairs) / len(records)
            scores[dtype] = f"{contains:.3f} / {f1:.3f}"
        same = sum(a == b for a, b in zip(*answers.values(), strict=True)) / len(records)
        fp32, bf16 = seconds[torch.float32], seconds[torch.bfloat16]
        table.add_row(name, str(len(records)), scores[torch.float32], scores[torch.bfloat16], f"{same:.2f}",
                      f"{fp32:.1f}", f"{bf16:.1f}", f"{fp32 / bf16:.2f}x")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
