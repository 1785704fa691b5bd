"""Query benchmark: adapters against in-context reading and classic chunk RAG, on SQuAD.

One run on the embedded default engine, over ``--n`` paragraphs of the last 10 articles of
the SQuAD v1.1 validation set (one question each, the paragraphs themselves the corpus):

* ingest: ``Doc2LoRAIndex.add_documents`` into a fresh store (documents per minute);
* no context: the base model alone, the reference every ratio is taken against;
* adapters: ``Doc2LoRAIndex.query`` (BM25 routing, top-k adapters rank-concatenated);
* in-context: the gold paragraph (the whole document) in the prompt, an oracle;
* chunk RAG: BM25 top-k word-window chunks of the corpus stuffed into the prompt.

Each question runs every mode back to back, in rotating order, so that load from other
processes hits all modes alike. Latency is wall time per query (mean and median) and per
generated token; memory is the peak resident set seen while a query of that mode ran, and its
growth over the set at the query's start, sampled by a thread (torch allocations are
invisible to tracemalloc). Quality is SQuAD token
F1 and whether a gold answer appears in the answer. While the shipped hypernetwork is
untrained its adapters change nothing, and the adapter row then measures overhead only.

    python benchmarks/query.py              # 12 questions, about 3 minutes on 2 cores
    python benchmarks/query.py --n 40 --k 3 --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
import psutil
from rich.console import Console
from rich.table import Table

from doc2lora_rag import Doc2LoRA, Doc2LoRAIndex
from doc2lora_rag.evaluation.metrics import answer_contains, token_f1
from doc2lora_rag.router.bm25 import STOPWORDS

SQUAD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "squad" / "dev-v1.1.json.gz"
TARGET_LATENCY_RATIO = 1.2  # adapter query / no-context query
TARGET_INGEST_PER_MINUTE = 100.0


@dataclass
class Sample:
    question: str
    answers: list[str]
    context: str
    doc_id: str


@dataclass
class ModeResult:
    latencies: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)
    peak_rss_absolute: list[int] = field(default_factory=list)
    f1: list[float] = field(default_factory=list)
    contains: list[float] = field(default_factory=list)
    routed_gold: list[bool] = field(default_factory=list)
    base_only: list[bool] = field(default_factory=list)


# ------------------------------------------------------------------ data


def load_samples(path: Path, n: int) -> list[Sample]:
    """``n`` paragraphs taken round-robin over the last 10 articles, first question each."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        articles = json.load(handle)["data"][-10:]
    samples, depth = [], 0
    while len(samples) < n:
        added = False
        for article in articles:
            if depth < len(article["paragraphs"]) and len(samples) < n:
                paragraph = article["paragraphs"][depth]
                qa = paragraph["qas"][0]
                samples.append(
                    Sample(
                        question=qa["question"],
                        answers=[a["text"] for a in qa["answers"]],
                        context=paragraph["context"],
                        doc_id=f"{article['title']}#{depth}",
                    )
                )
                added = True
        if not added:
            break
        depth += 1
    return samples


# ------------------------------------------------------------------ quality (SQuAD style)


# ------------------------------------------------------------------ measurement


class PeakRSS:
    """Peak resident-set growth over a block, sampled by a background thread."""

    def __init__(self, interval: float = 0.005):
        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0

    def __enter__(self) -> PeakRSS:
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


class ChunkRetriever:
    """Classic RAG: overlapping word windows of the corpus, BM25 over them, top-k stuffed."""

    def __init__(self, texts: list[str], words: int, stride: int):
        self.chunks = []
        self.owner = []
        for doc_index, text in enumerate(texts):
            tokens = text.split()
            for start in range(0, max(1, len(tokens) - words + stride), stride):
                self.chunks.append(" ".join(tokens[start : start + words]))
                self.owner.append(doc_index)
        self.index = bm25s.BM25(method="lucene")
        corpus = bm25s.tokenize(self.chunks, stopwords=STOPWORDS, show_progress=False)
        self.index.index(corpus, show_progress=False)

    def top(self, question: str, k: int) -> tuple[str, set[int]]:
        query = bm25s.tokenize([question], stopwords=STOPWORDS, show_progress=False)
        found, _ = self.index.retrieve(query, k=min(k, len(self.chunks)), show_progress=False)
        picked = [int(i) for i in found[0]]
        return "\n\n".join(self.chunks[i] for i in picked), {self.owner[i] for i in picked}


# ------------------------------------------------------------------ the run


def run(args: argparse.Namespace) -> None:
    console = Console(width=max(Console().width, 150))
    samples = load_samples(Path(args.data), args.n)
    texts = [s.context for s in samples]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = Doc2LoRA.from_pretrained()
    untrained = any("no trained hypernetwork" in str(w.message) for w in caught)

    workdir = tempfile.TemporaryDirectory(prefix="doc2lora-bench-")
    index = Doc2LoRAIndex(Path(workdir.name) / "store", engine=engine, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens)
    engine.internalize("Warm-up paragraph so that ingest timing excludes first-call setup.")
    with PeakRSS() as ingest_memory:
        started = time.perf_counter()
        index.add_documents(texts, ids=[s.doc_id for s in samples])
        ingest_seconds = time.perf_counter() - started
    per_minute = len(texts) / ingest_seconds * 60
    if args.ingest_only:
        console.print(f"ingest: {len(texts)} SQuAD validation paragraphs in {ingest_seconds:.1f} s = "
                      f"{per_minute:.0f} documents/minute (target >= 100)")
        return
    chunks = ChunkRetriever(texts, args.chunk_words, args.chunk_stride)

    def no_context(sample: Sample):
        return engine.complete(sample.question, max_new_tokens=args.max_new_tokens), None, False

    def adapters(sample: Sample):
        answer = index.query(sample.question, k=args.k)
        return answer, sample.doc_id in answer.adapter_ids, answer.base_model_only

    def in_context(sample: Sample):
        completion = engine.complete(sample.question, context=sample.context,
                                     max_new_tokens=args.max_new_tokens)
        return completion, True, False

    def chunk_rag(sample: Sample):
        context, owners = chunks.top(sample.question, args.k)
        completion = engine.complete(sample.question, context=context, max_new_tokens=args.max_new_tokens)
        return completion, samples.index(sample) in owners, False

    modes: dict[str, Callable] = {
        "no context": no_context,
        f"adapters, BM25 top-{args.k}": adapters,
        "in-context, whole doc": in_context,
        f"chunk RAG, BM25 top-{args.k}": chunk_rag,
    }
    results = {name: ModeResult() for name in modes}
    for call in modes.values():  # warm-up, untimed
        call(samples[0])

    order = list(modes)
    for number, sample in enumerate(samples):
        console.print(f"[dim]question {number + 1}/{len(samples)}[/dim]", end="\r")
        rotation = order[number % len(order) :] + order[: number % len(order)]
        for name in rotation:
            with PeakRSS() as memory:
                started = time.perf_counter()
                output, routed_gold, base_only = modes[name](sample)
                elapsed = time.perf_counter() - started
            result = results[name]
            result.latencies.append(elapsed)
            result.tokens.append(output.completion_tokens)
            result.prompt_tokens.append(output.prompt_tokens)
            result.peak_rss.append(memory.growth)
            result.peak_rss_absolute.append(memory.peak)
            f1, contains = token_f1(output.text, sample.answers), answer_contains(output.text, sample.answers)
            result.f1.append(f1)
            result.contains.append(contains)
            if routed_gold is not None:
                result.routed_gold.append(routed_gold)
            result.base_only.append(base_only)

    report(console, args, results, per_minute, ingest_seconds, ingest_memory, len(texts), untrained)
    index.close()
    workdir.cleanup()


def report(console, args, results, per_minute, ingest_seconds, ingest_memory, num_docs, untrained) -> None:
    ingest_peak, ingest_growth = ingest_memory.peak, ingest_memory.growth
    reference = results["no context"]
    ref_latency = statistics.mean(reference.latencies)
    ref_per_token = sum(reference.latencies) / max(1, sum(reference.tokens))
    table = Table(title=f"Query benchmark: SQuAD v1.1 dev, last 10 articles, {num_docs} questions, "
                        f"max {args.max_new_tokens} new tokens, greedy; chunks of {args.chunk_words} words")
    for column in ("mode", "mean s", "median s", "x no-ctx", "ms/token", "x no-ctx /token",
                   "prompt tok", "peak RSS MB", "peak dRSS MB", "F1", "contains", "gold routed"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for name, result in results.items():
        mean = statistics.mean(result.latencies)
        per_token = sum(result.latencies) / max(1, sum(result.tokens))
        routed = f"{statistics.mean(result.routed_gold):.0%}" if result.routed_gold else "-"
        if any(result.base_only):
            routed += f" ({sum(result.base_only)} base only)"
        table.add_row(
            name,
            f"{mean:.2f}",
            f"{statistics.median(result.latencies):.2f}",
            f"{mean / ref_latency:.2f}x",
            f"{per_token * 1000:.0f}",
            f"{per_token / ref_per_token:.2f}x",
            f"{statistics.mean(result.prompt_tokens):.0f}",
            f"{max(result.peak_rss_absolute) / 2**20:.0f}",
            f"{max(result.peak_rss) / 2**20:.1f}",
            f"{statistics.mean(result.f1):.3f}",
            f"{statistics.mean(result.contains):.0%}",
            routed,
        )
    table.add_section()
    table.add_row(f"ingest, {num_docs} docs", f"{ingest_seconds:.2f}", "", "",
                  "", "", "", f"{ingest_peak / 2**20:.0f}", f"{ingest_growth / 2**20:.1f}", "", "",
                  f"{per_minute:.0f} docs/min")
    console.print(table)
    adapter_name = next(n for n in results if n.startswith("adapters"))
    adapter = results[adapter_name]
    ratio = statistics.mean(adapter.latencies) / ref_latency
    token_ratio = (sum(adapter.latencies) / max(1, sum(adapter.tokens))) / ref_per_token
    verdict = lambda ok: "[green]met[/green]" if ok else "[red]missed[/red]"  # noqa: E731
    console.print(f"target adapter latency <= {TARGET_LATENCY_RATIO}x no-context: {ratio:.2f}x per query, "
                  f"{token_ratio:.2f}x per token -> {verdict(ratio <= TARGET_LATENCY_RATIO)}")
    console.print(f"target ingest >= {TARGET_INGEST_PER_MINUTE:.0f} docs/min: {per_minute:.0f} -> "
                  f"{verdict(per_minute >= TARGET_INGEST_PER_MINUTE)}")
    if untrained:
        console.print("[yellow]the hypernetwork is untrained (fresh weights): adapters change nothing, "
                      "so the adapter row's quality equals no-context and only its overhead is real[/yellow]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="paragraphs (and questions) to use")
    parser.add_argument("--ingest-only", action="store_true", help="measure ingest throughput only")
    parser.add_argument("--k", type=int, default=1, help="adapters / chunks per question")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32, help="documents internalised together")
    parser.add_argument("--chunk-words", type=int, default=100)
    parser.add_argument("--chunk-stride", type=int, default=80)
    parser.add_argument("--data", default=str(SQUAD.resolve()))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
