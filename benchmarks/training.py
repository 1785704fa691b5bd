"""Meta-training throughput, and document update latency: hypernetwork vs context distillation.

    python benchmarks/training.py [--steps 6] [--docs 3] [--cd-steps 30] [--threads 2]

Prints two tables measured in one run on the embedded default: training steps per hour at
batch 8 for the shipped training config (targets: >= 1,500 steps/h), and, on the same
documents, seconds to make an adapter with `internalize` vs fitting one by context
distillation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag import Doc2LoRA
from doc2lora_rag.training.context_distill import context_distill
from doc2lora_rag.training.data import synthetic_fact_records
from doc2lora_rag.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def training_speed(engine: Doc2LoRA, steps: int, batch_size: int) -> dict:
    """Median seconds per optimiser step of the shipped config, on gold-target sources
    (the teacher pass is a separate, cached cost and is excluded here)."""
    shipped = json.loads((ROOT / "configs" / "smollm2-135m.json").read_text())
    out = Path(tempfile.mkdtemp(prefix="d2l-speed-"))
    try:
        config = TrainConfig(
            out=str(out),
            steps=steps + 2,
            batch_size=batch_size,
            hypernet=shipped["hypernet"],
            data=[{"kind": "synthetic", "count": 400}, {"kind": "niah", "count": 50, "lengths": [128, 256]}],
            save_every=10_000,
            log_every=10_000,
        )
        trainer = Trainer(config, base=engine.base, progress=False)
        for step in range(steps + 2):  # fill the activation cache first: steady state is cached
            for record, _, chunks in trainer.sample(step):
                trainer.chunk_activations(record, chunks)
        durations = []
        for step in range(steps + 2):
            started = time.perf_counter()
            loss, _ = trainer.loss(trainer.sample(step))
            trainer.optimizer.zero_grad()
            loss.backward()
            trainer.optimizer.step()
            durations.append(time.perf_counter() - started)
        seconds = statistics.median(durations[2:])
        return {"seconds_per_step": seconds, "steps_per_hour": 3600 / seconds}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def update_latency(engine: Doc2LoRA, docs: int, cd_steps: int) -> list[dict]:
    records = synthetic_fact_records(docs * 2, seed=4242, questions_per_doc=2)
    by_doc: dict[str, list[str]] = {}
    for record in records:
        by_doc.setdefault(record.context, []).append(record.question)
    rows = []
    engine.internalize("warm-up document.")
    for context, questions in list(by_doc.items())[:docs]:
        started = time.perf_counter()
        engine.internalize(context)
        internalize_s = time.perf_counter() - started
        started = time.perf_counter()
        context_distill(engine, context, questions, steps=cd_steps)
        cd_s = time.perf_counter() - started
        tokens = len(engine.tokenizer.encode(context))
        rows.append({"tokens": tokens, "internalize_s": internalize_s, "cd_s": cd_s})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--docs", type=int, default=3)
    parser.add_argument("--cd-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    engine = Doc2LoRA.from_pretrained()

    speed = training_speed(engine, args.steps, args.batch_size)
    table = Table(title=f"meta-training on {engine.base.name}, batch {args.batch_size}")
    for column in ("s / step (median)", "steps / hour", "target", "ratio to target"):
        table.add_column(column)
    table.add_row(f"{speed['seconds_per_step']:.2f}", f"{speed['steps_per_hour']:.0f}", "1500",
                  f"{speed['steps_per_hour'] / 1500:.2f}")
    console.print(table)

    rows = update_latency(engine, args.docs, args.cd_steps)
    table = Table(title=f"update latency per document (context distillation: {args.cd_steps} steps)")
    for column in ("doc tokens", "internalize s", "context distillation s", "CD / internalize"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["tokens"]), f"{row['internalize_s']:.3f}", f"{row['cd_s']:.2f}",
                      f"{row['cd_s'] / row['internalize_s']:.0f}x")
    console.print(table)


if __name__ == "__main__":
    main()
