"""Meta-training throughput, and document update latency: hypernetwork vs context distillation.

    python benchmarks/training.py [--steps 6] [--docs 3] [--cd-steps 30] [--threads 2]

Prints two tables measured in one run on the embedded default. First, seconds per training
step at batch 8 for the shipped training config, documents read fresh every step as in a run
(most sampled documents are new), in three precisions side by side: everything in fp32;
documents read in bf16 (the engine's choice on a CPU with native bf16); and steps in bf16 as
well (``step_dtype``). Settings take turns step by step, so load from other processes hits
them alike. Target: >= 1,500 steps/h. On a CPU without native bf16 (no AVX512-BF16 or
AMX) the bf16 rows are left out unless ``--emulated-bf16``: emulated, a step takes minutes.
Second, on the same documents, seconds to make an adapter with `internalize` vs fitting one
by context distillation.
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
from doc2lora_rag.base_model.activations import cpu_has_native_bf16
from doc2lora_rag.training.context_distill import context_distill
from doc2lora_rag.training.data import synthetic_fact_records
from doc2lora_rag.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
TARGET_STEPS_PER_HOUR = 1500
# (label, dtype documents are read in, step_dtype)
SETTINGS = [
    ("fp32", torch.float32, None),
    ("bf16 reading", torch.bfloat16, None),
    ("bf16 reading and steps", torch.bfloat16, "bfloat16"),
]


def training_speed(engine: Doc2LoRA, steps: int, batch_size: int, settings=SETTINGS) -> dict[str, float]:
    """Median seconds per optimiser step of the shipped config for each of ``settings``, on
    gold-target sources (the teacher pass is a separate, cached cost and is excluded here)."""
    shipped = json.loads((ROOT / "configs" / "smollm2-135m.json").read_text())
    out = Path(tempfile.mkdtemp(prefix="d2l-speed-"))
    try:
        trainers = {}
        for label, reading, step_dtype in settings:
            config = TrainConfig(
                out=str(out / label.replace(" ", "-")),
                steps=steps + 2,
                batch_size=batch_size,
                hypernet=shipped["hypernet"],
                max_doc_tokens=shipped["max_doc_tokens"],
                chunk_curriculum=shipped["chunk_curriculum"],
                data=[{"kind": "synthetic", "count": 4000}, {"kind": "niah", "count": 400, "lengths": [128, 256, 480]}],
                save_every=10_000,
                log_every=10_000,
                step_dtype=step_dtype,
            )
            trainers[label] = Trainer(config, base=engine.base, progress=False)
            trainers[label].reading_dtype = reading
        durations: dict[str, list[float]] = {label: [] for label in trainers}
        for step in range(steps + 2):  # the first two steps are warm-up, left out
            for label, trainer in trainers.items():
                trainer._activations.clear()  # a run's documents are mostly new: read them
                started = time.perf_counter()
                with trainer._step_precision():
                    loss, _ = trainer.loss(trainer.sample(step))
                trainer.optimizer.zero_grad()
                loss.backward()
                trainer.optimizer.step()
                durations[label].append(time.perf_counter() - started)
        return {label: statistics.median(runs[2:]) for label, runs in durations.items()}
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
    parser.add_argument("--emulated-bf16", action="store_true", help="time bf16 even where the CPU emulates it")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    engine = Doc2LoRA.from_pretrained()

    settings = SETTINGS
    if engine.base.device.type == "cpu" and not cpu_has_native_bf16() and not args.emulated_bf16:
        settings = SETTINGS[:1]  # fp32 alone
        console.print("this CPU has no native bf16: only fp32 is timed (--emulated-bf16 times the rest)")
    speed = training_speed(engine, args.steps, args.batch_size, settings)
    baseline = speed[SETTINGS[0][0]]
    table = Table(title=f"meta-training on {engine.base.name}, batch {args.batch_size}, documents read every step")
    for column in ("precision", "s / step (median)", "steps / hour", "speed-up over fp32", "ratio to target"):
        table.add_column(column)
    for label, seconds in speed.items():
        table.add_row(label, f"{seconds:.2f}", f"{3600 / seconds:.0f}", f"{baseline / seconds:.2f}x",
                      f"{3600 / seconds / TARGET_STEPS_PER_HOUR:.2f}")
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
