"""Where refinement starts: the hypernetwork's adapter, or a fresh LoRA of the same shape.

    python benchmarks/refine_start.py [--steps 10] [--fresh-lrs 1e-3,1e-2] [--limit 40] [--threads 2]

``Doc2LoRA.refine`` takes gradient steps on a document's own sentence endings, starting from
the adapter the hypernetwork wrote. The control takes the same steps on the same sentences
from a fresh start: every chunk block reset the way a new LoRA starts (A Gaussian with
variance 1 / in_features, B zero), the document-independent block kept, so the two differ only
in what the hypernetwork read. On the questions of ``doc2lora eval`` (SQuAD validation, fresh
synthetic facts) it prints token F1, answer-contains and the gold answer NLL of the adapter as
made, of the refined adapter and of the fresh start refined at each learning rate, and
each score also as a ratio to the refined adapter's, with the paired difference (95%).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.evaluation.compare import paired_half_width
from doc2lora_rag.evaluation.evaluate import _answer_scores, _mean
from doc2lora_rag.evaluation.likelihood import answer_nll
from doc2lora_rag.training.fitting import fresh_lora
from doc2lora_rag.training.refine import REFINE_LR, refine_adapter

from eval_setup import add_eval_options, greedy_answers, load_eval


def fresh_start(adapter: LoRAAdapter, seed: int = 0) -> LoRAAdapter:
    """``adapter`` with every chunk block reset to a new LoRA's start; the shared block kept."""
    generator = torch.Generator().manual_seed(seed)
    read = adapter.rank - adapter.bias_rank
    factors = {}
    for name, (a, b) in adapter.factors.items():
        fresh_a, fresh_b = fresh_lora(a.shape[0], read, a.shape[2], b.shape[1], generator)
        a = torch.cat([fresh_a.to(a.device, a.dtype), a[:, read:]], dim=1)
        b = torch.cat([fresh_b.to(b.device, b.dtype), b[:, :, read:]], dim=2)
        factors[name] = (a, b)
    return adapter._replace(factors=factors, metadata={**adapter.metadata, "fresh_start": True})


def score(engine, records, adapters: dict[str, LoRAAdapter]) -> dict[str, list[float]]:
    """Per question: F1 and contains of the greedy answer, and the gold answer's NLL."""
    questions = [r.question for r in records]
    own = [adapters[r.context] for r in records]
    scores = _answer_scores(greedy_answers(engine, questions, own), [r.gold_answers for r in records])
    scores["nll"] = answer_nll(engine, questions, [r.answer for r in records], adapters=own)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="refinement steps of every refined row")
    parser.add_argument("--fresh-lrs", default=f"{REFINE_LR:g},1e-2", help="learning rates of the fresh starts")
    add_eval_options(parser)
    args = parser.parse_args()
    engine, sources = load_eval(args)

    rows = {"adapter as made": lambda text, made: made}
    rows[f"refined, lr {REFINE_LR:g}"] = lambda text, made: engine.refine(made, text, steps=args.steps)
    for lr in (float(x) for x in args.fresh_lrs.split(",")):
        rows[f"fresh start refined, lr {lr:g}"] = lambda text, made, lr=lr: refine_adapter(
            engine, fresh_start(made), engine._chunk_texts(text, made.chunking), steps=args.steps, lr=lr
        )

    results: dict[str, dict] = {}
    for name, records in sources.items():
        started = time.perf_counter()
        made = {text: engine.internalize(text) for text in dict.fromkeys(r.context for r in records)}
        reading = (time.perf_counter() - started) / len(made)  # every row starts from the made adapters
        for row, build in rows.items():
            started = time.perf_counter()
            adapters = {text: build(text, adapter) for text, adapter in made.items()}
            seconds = reading + (time.perf_counter() - started) / len(made)
            results.setdefault(row, {})[name] = {**score(engine, records, adapters), "seconds": seconds}
            print(f"done {name}: {row}", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))

    refined = results[f"refined, lr {REFINE_LR:g}"]
    table = Table(
        title=f"refinement start ({args.steps} steps, {args.limit} questions per source); "
        "in brackets: ratio to the refined adapter, paired difference ± 95%"
    )
    table.add_column("adapter")
    for name in sources:
        for column in ("F1", "contains", "gold NLL", "s / doc"):
            table.add_column(f"{name.split('-')[0]} {column}")

    def cell(values: list[float], reference: list[float]) -> str:
        value, base = _mean(values), _mean(reference)
        ratio = f"{value / base:.2f}x" if base else "-"
        return f"{value:.3f} ({ratio}, {value - base:+.3f} ± {paired_half_width(reference, values):.3f})"

    for row, by_source in results.items():
        cells = []
        for name in sources:
            got, ref = by_source[name], refined[name]
            cells += [cell(got["f1"], ref["f1"]), cell(got["contains"], ref["contains"])]
            cells += [cell(got["nll"], ref["nll"]), f"{got['seconds']:.2f}"]
        table.add_row(row, *cells)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
