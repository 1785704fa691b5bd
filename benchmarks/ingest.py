"""Ingest benchmark: what internalising a document costs next to simply reading it.

For documents of a given number of tokens, on the embedded default engine, it prints one
table with the internalize time, a plain forward pass over the same tokens, their ratio, the
adapter size and the KV-cache size the same document would take in context.

The fair baseline runs the base model (LM head and logits included) over exactly the chunks
``internalize`` reads: the same chat wrapping, the same token-budget batches, the same
padding. A single forward over the whole document is shown as well where it fits the
model's window. Every time is the median of a few runs after a warm-up; forward and
internalize runs alternate so that load from other processes hits both alike.

    python benchmarks/ingest.py                 # 512, 2K, 8K and 32K tokens, both read-outs
    python benchmarks/ingest.py --quick         # 512 and 2K tokens, one run each
    python benchmarks/ingest.py --sizes 1024,4096 --source-layers quarter --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag import Doc2LoRA
from doc2lora_rag.base_model.activations import reading_precision
from doc2lora_rag.base_model.loading import BaseModel, load_base_model
from doc2lora_rag.engine import DEFAULT_CHECKPOINT
from doc2lora_rag.hypernetwork.chunking import chunk_token_ids, pad_right, token_budget_batches

DEFAULT_SIZES = (512, 2048, 8192, 32768)
QUICK_SIZES = (512, 2048)
READ_OUTS = ("quarter", "all")
TARGET_RATIO = 1.3  # internalize time / plain forward time
TARGET_KV_FRACTION = 1 / 20  # adapter bytes / KV-cache bytes, at the largest size
BF16_BYTES = 2

_PLACES = ["Lessay", "Varn Island", "the north quay", "Ardmore", "the old mill", "Hollin Fell"]
_THINGS = ["pump", "ledger", "orchard", "ferry", "weather station", "granary", "kiln", "survey"]
_VERBS = ["recorded", "reported", "counted", "logged", "estimated", "measured"]
_UNITS = ["crates", "litres", "hours", "visitors", "tonnes", "readings"]
_ASIDES = [
    "which matched the previous season",
    "although the ledger for that week was later corrected",
    "as noted by the harbour office",
    "a figure the council disputed",
    "according to the second inspector",
]


def filler_text(base: BaseModel, tokens: int, seed: int = 0) -> tuple[str, int]:
    """Plausible, varied prose of (about) ``tokens`` tokens, built from a fixed seed.

    Returns the text and its exact token count, which is what the table reports.
    """
    rng = random.Random(seed)
    tokenizer = base.tokenizer
    sentences: list[str] = []
    ids: list[int] = []
    while len(ids) < tokens:
        for _ in range(max(16, (tokens - len(ids)) // 12)):
            sentences.append(
                f"On day {rng.randint(1, 365)}, the {rng.choice(_THINGS)} at "
                f"{rng.choice(_PLACES)} {rng.choice(_VERBS)} {rng.randint(2, 9999)} "
                f"{rng.choice(_UNITS)}, {rng.choice(_ASIDES)}."
            )
        ids = tokenizer.encode(" ".join(sentences), add_special_tokens=False)
    cut = tokens
    while True:  # decoding a prefix and encoding it again can merge tokens at the edge
        text = tokenizer.decode(ids[:cut])
        count = len(tokenizer.encode(text, add_special_tokens=False))
        if count <= tokens or cut <= 1:
            return text, count
        cut -= 1


def chunk_batches(engine: Doc2LoRA, text: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The padded chunk batches ``internalize`` feeds the base model, built the same way."""
    chunks = chunk_token_ids(engine.tokenizer, engine.wrapper, text, engine.config.chunk_size, engine.chunking)
    pad_id = engine.tokenizer.pad_token_id
    batches = []
    for batch in token_budget_batches([len(c) for c in chunks], engine.token_budget):
        ids, mask = pad_right([chunks[i] for i in batch], pad_id)
        batches.append((ids.to(engine.base.device), mask.to(engine.base.device)))
    return batches


@torch.inference_mode()
def chunked_forward(engine: Doc2LoRA, text: str) -> None:
    """A plain forward pass, logits included, over the chunks ``internalize`` would read, in
    the precision it reads them in.

    Chunking and tokenising happen inside, as they do inside ``internalize``.
    """
    with reading_precision(engine.model, engine.reading_dtype):
        for ids, mask in chunk_batches(engine, text):
            engine.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.sum().item()


@torch.inference_mode()
def single_forward(engine: Doc2LoRA, ids: torch.Tensor) -> None:
    """One forward pass, logits included, over the whole document at once."""
    with reading_precision(engine.model, engine.reading_dtype):
        engine.model(input_ids=ids, use_cache=False).logits.sum().item()


def kv_cache_bytes(engine: Doc2LoRA, tokens: int) -> int:
    """Bytes of the bf16 KV cache for ``tokens`` tokens: keys and values, every layer."""
    config = engine.model.config.get_text_config()
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * tokens * BF16_BYTES


def stored_bytes(adapter) -> int:
    """Adapter size stored in bf16, whatever dtype it was generated in."""
    return sum((a.numel() + b.numel()) * BF16_BYTES for a, b in adapter.factors.values())


def spread(runs: list[float]) -> float:
    """Run-to-run variation, shown so that noisy timings are not read as precise."""
    return (max(runs) - min(runs)) / statistics.median(runs)


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def read_out_label(engine: Doc2LoRA) -> str:
    sources = engine.config.source_layers
    if sources == list(engine.config.target_layers) and len(sources) > 1:
        return f"all {len(sources)}"
    return "layer " + ",".join(str(s) for s in sources)


@dataclass
class Row:
    tokens: int
    read_out: str
    chunks: int
    internalize_s: float
    chunked_forward_s: float
    single_forward_s: float | None
    adapter_bytes: int
    kv_bytes: int
    spread: float  # largest (max - min) / median over this row's timed runs

    @property
    def ratio(self) -> float:
        return self.internalize_s / self.chunked_forward_s

    @property
    def single_ratio(self) -> float | None:
        return None if self.single_forward_s is None else self.internalize_s / self.single_forward_s

    @property
    def kv_fraction(self) -> float:
        return self.adapter_bytes / self.kv_bytes


def build_engines(read_outs: list[str]) -> tuple[BaseModel, dict[str, Doc2LoRA], str]:
    """One base model shared by an engine per hypernetwork read-out."""
    base = load_base_model()
    engines = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no trained hypernetwork")
        for read_out in read_outs:
            engines[read_out] = Doc2LoRA.from_pretrained(base_model=base, source_layers=read_out)
    shipped = (DEFAULT_CHECKPOINT / "hypernet_config.json").is_file()
    origin = "shipped checkpoint" if shipped else "fresh, untrained (timing does not depend on weights)"
    return base, engines, origin


def measure(
    engines: dict[str, Doc2LoRA], sizes: list[int], repeats: int, console: Console
) -> list[Row]:
    any_engine = next(iter(engines.values()))
    window = any_engine.model.config.max_position_embeddings
    console.print("[dim]warming up...[/dim]")
    warm_text, _ = filler_text(any_engine.base, 512, seed=99)
    for engine in engines.values():
        engine.internalize(warm_text)
    chunked_forward(any_engine, warm_text)
    warm_ids = any_engine.tokenizer(warm_text, return_tensors="pt", add_special_tokens=False)
    single_forward(any_engine, warm_ids["input_ids"].to(any_engine.base.device))
    rows = []
    for size in sizes:
        text, tokens = filler_text(any_engine.base, size)
        ids = torch.tensor([any_engine.tokenizer.encode(text, add_special_tokens=False)])
        ids = ids.to(any_engine.base.device)
        fits = tokens <= window
        forward_runs: list[float] = []
        single_runs: list[float] = []
        internalize_runs: dict[str, list[float]] = {name: [] for name in engines}
        adapters = {}
        for _ in range(repeats):
            forward_runs.append(timed(lambda t=text: chunked_forward(any_engine, t)))
            for name, engine in engines.items():
                start = time.perf_counter()
                adapters[name] = engine.internalize(text)
                internalize_runs[name].append(time.perf_counter() - start)
            if fits:
                single_runs.append(timed(lambda i=ids: single_forward(any_engine, i)))
        for name, engine in engines.items():
            adapter = adapters[name]
            rows.append(
                Row(
                    tokens=tokens,
                    read_out=read_out_label(engine),
                    chunks=adapter.num_chunks,
                    internalize_s=statistics.median(internalize_runs[name]),
                    chunked_forward_s=statistics.median(forward_runs),
                    single_forward_s=statistics.median(single_runs) if fits else None,
                    adapter_bytes=stored_bytes(adapter),
                    kv_bytes=kv_cache_bytes(engine, tokens),
                    spread=max(
                        spread(runs)
                        for runs in (internalize_runs[name], forward_runs, single_runs)
                        if runs
                    ),
                )
            )
        summary = ", ".join(f"{n} {statistics.median(r):.2f} s" for n, r in internalize_runs.items())
        console.print(
            f"[dim]{tokens} tokens: forward {statistics.median(forward_runs):.2f} s, "
            f"internalize {summary}[/dim]"
        )
    return rows


def render(rows: list[Row], title: str, caption: str) -> Table:
    table = Table(title=title, caption=caption, caption_justify="left")
    headers = ("tokens", "read-out", "chunks", "ingest s", "fwd s chunked", "fwd s 1-pass",
               "ingest/fwd", "ingest/1-pass", "adapter bf16", "KV cache bf16", "adapter/KV")
    for header in headers:
        table.add_column(header, justify="left" if header == "read-out" else "right")
    for row in rows:
        style = "green" if row.ratio <= TARGET_RATIO else "red"
        table.add_row(
            f"{row.tokens:,}",
            row.read_out,
            str(row.chunks),
            f"{row.internalize_s:.2f}",
            f"{row.chunked_forward_s:.2f}",
            "-" if row.single_forward_s is None else f"{row.single_forward_s:.2f}",
            f"[{style}]{row.ratio:.2f}x[/{style}]",
            "-" if row.single_ratio is None else f"{row.single_ratio:.2f}x",
            human_bytes(row.adapter_bytes),
            human_bytes(row.kv_bytes),
            f"1/{1 / row.kv_fraction:.1f}",
        )
    return table


def verdict(rows: list[Row]) -> list[str]:
    """The issue's two targets, checked against what was measured."""
    lines = []
    for read_out in dict.fromkeys(row.read_out for row in rows):
        mine = [row for row in rows if row.read_out == read_out]
        misses = [f"{row.tokens:,}" for row in mine if row.ratio > TARGET_RATIO]
        worst = max(row.ratio for row in mine)
        status = "met" if not misses else f"missed at {', '.join(misses)} tokens"
        lines.append(f"{read_out}: internalize <= {TARGET_RATIO}x forward {status} (worst {worst:.2f}x)")
    largest = max(row.tokens for row in rows)
    fraction = next(row.kv_fraction for row in rows if row.tokens == largest)
    status = "met" if fraction <= TARGET_KV_FRACTION else "missed"
    lines.append(
        f"adapter <= 1/20 of KV cache at {largest:,} tokens: {status} (1/{1 / fraction:.1f})"
        + ("" if largest >= 32768 else " [not the 32K size the target names]")
    )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="comma-separated document sizes in tokens")
    parser.add_argument("--quick", action="store_true", help="512 and 2K tokens, one run each")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (median)")
    parser.add_argument(
        "--source-layers",
        nargs="+",
        choices=READ_OUTS,
        default=list(READ_OUTS),
        help="hypernetwork read-outs to compare (default: both)",
    )
    args = parser.parse_args(argv)
    if args.sizes:
        args.sizes = [int(size) for size in args.sizes.split(",")]
    else:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1 or min(args.sizes) < 1:
        parser.error("--repeats and --sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 150))  # one table, never wrapped cells
    load_before = os.getloadavg()
    base, engines, origin = build_engines(args.source_layers)
    rows = measure(engines, args.sizes, args.repeats, console)
    load_after = os.getloadavg()
    first = next(iter(engines.values()))
    precision = str(base.dtype).removeprefix("torch.")
    reading = str(first.reading_dtype).removeprefix("torch.")
    title = f"Ingest cost on {base.name} ({base.device}, {precision} weights, read in {reading})"
    caption = "\n".join(
        [
            f"hypernetwork: {origin}; chunk size {first.config.chunk_size} tokens, "
            f"rank {first.config.rank} per chunk + bias {first.config.bias_rank}",
            f"median of {args.repeats} run(s) after a warm-up; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
            f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}; run-to-run spread "
            f"(max-min)/median up to {max(row.spread for row in rows):.0%}",
            "fwd chunked: base model with logits over the same chat-wrapped chunks and batches "
            "as ingest, in its precision (ingest/fwd is the fair ratio); fwd 1-pass: the raw document at once, "
            f"where it fits {first.model.config.max_position_embeddings} positions",
            "KV cache: 2 x layers x kv_heads x head_dim x tokens x 2 bytes",
            *verdict(rows),
        ]
    )
    console.print(render(rows, title, caption))


if __name__ == "__main__":
    main()
