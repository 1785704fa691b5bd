"""What refinement on first query costs a long document, through the index as users run it.

    python benchmarks/refine_on_query.py [--tokens 32768] [--count 3] [--steps 10] [--threads 2]

Each needle haystack is ingested into an index with ``refine_on_query`` (one forward pass per
chunk), then asked its question twice: the first answer refines the chunks it is answered from
and keeps them in the store, the second finds them refined. A plain index over the same store
answers as the control. Seconds per haystack and ratios, side by side in one run:

- ``ingest``: internalising the haystack;
- ``first question``: refining the answering chunks, then answering;
- ``later question``: the same question again (nothing left to refine);
- ``no refinement``: the same question from an index without ``refine_on_query``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.evaluation.evaluate import niah_records
from doc2lora_rag.evaluation.metrics import answer_contains
from doc2lora_rag.index import Doc2LoRAIndex


def timed(call, *args, **kwargs):
    """``call(*args, **kwargs)`` and its wall seconds."""
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - start


def measure(engine: Doc2LoRA, tokens: int, count: int, steps: int, root: Path) -> dict[str, list]:
    """Seconds per phase and answers per haystack (see the module docstring)."""
    rows: dict[str, list] = {"ingest": [], "plain": [], "first": [], "later": [], "refined chunks": [], "hits": []}
    for number, record in enumerate(niah_records(engine, count, tokens)):
        store = root / f"store-{number}"
        # The router needs other documents to tell the haystack from: two short ones.
        docs = [{"text": record.context, "id": "haystack"}, "A note on the weather.", "A list of train times."]
        index, seconds = timed(Doc2LoRAIndex.from_documents, docs, store=store, engine=engine, max_new_tokens=16)
        rows["ingest"].append(seconds)
        plain, seconds = timed(index.query, record.question, k=1)  # before anything is refined
        rows["plain"].append(seconds)
        refining = Doc2LoRAIndex.load(store, engine=engine, refine_on_query=steps, max_new_tokens=16)
        first, seconds = timed(refining.query, record.question, k=1)
        rows["first"].append(seconds)
        later, seconds = timed(refining.query, record.question, k=1)
        rows["later"].append(seconds)
        rows["refined chunks"].append(len(index.store.load_adapter("haystack").refined_chunks))
        hits = [answer_contains(answer.text, record.answer) for answer in (plain, first)]
        rows["hits"].append((*hits, later.text == first.text))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32768, help="haystack length in tokens")
    parser.add_argument("--count", type=int, default=3, help="haystacks")
    parser.add_argument("--steps", type=int, default=10, help="refinement steps per chunk")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Doc2LoRA.from_pretrained()
    with tempfile.TemporaryDirectory() as root:
        rows = measure(engine, args.tokens, args.count, args.steps, Path(root))
    plain = statistics.mean(rows["plain"])
    table = Table(title=f"{args.count} haystacks of {args.tokens} tokens, refine_on_query={args.steps}")
    for column in ("phase", "s / haystack", "ratio to a question without refinement"):
        table.add_column(column)
    labels = {"ingest": "ingest", "plain": "no refinement", "first": "first question", "later": "later question"}
    for key, label in labels.items():
        seconds = statistics.mean(rows[key])
        table.add_row(label, f"{seconds:.1f}", f"{seconds / plain:.1f}")
    Console().print(table)
    chunks = rows["refined chunks"]
    plain_hits = sum(h[0] for h in rows["hits"])
    refined_hits = sum(h[1] for h in rows["hits"])
    same = sum(h[2] for h in rows["hits"])
    print(f"chunks refined per haystack: {chunks}; needles answered: {plain_hits} plain, {refined_hits} refined")
    print(f"later answers equal to first answers: {same} of {len(chunks)}")


if __name__ == "__main__":
    main()
