"""What the answer-time benchmarks share: their options, the questions of ``doc2lora eval``
(SQuAD validation and fresh synthetic facts), the reference documents they contrast with, and
plain greedy answers to set against."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.cli.evaluate import _eval_records
from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.training.data import QARecord, squad_records, synthetic_fact_records

SQUAD = Path(__file__).resolve().parents[1].parent / "shared/data/squad/dev-v1.1.json.gz"


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=40, help="questions per data source")
    parser.add_argument("--squad", default=str(SQUAD))
    parser.add_argument("--hypernet", default=None, help="hypernetwork folder; default: the shipped one")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json-out", type=Path, default=None)


def load_eval(args: argparse.Namespace, synthetic: str = "synthetic:") -> tuple[Doc2LoRA, dict[str, list[QARecord]]]:
    """The engine and the evaluation's questions per source, as ``doc2lora eval`` draws them
    (``synthetic``: its fact-document spec, e.g. ``synthetic:120:SEED`` for another draw)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Doc2LoRA.from_pretrained(hypernet=args.hypernet)
    sources = dict([_eval_records(f"squad:{args.squad}", args.limit), _eval_records(synthetic, args.limit)])
    return engine, sources


def reference_texts(squad: str | Path) -> list[str]:
    """4 SQuAD training paragraphs and 4 synthetic fact documents of a seed no evaluation uses."""
    texts = list(dict.fromkeys(r.context for r in squad_records(squad, "train")[::97]))[:4]
    return texts + list(dict.fromkeys(r.context for r in synthetic_fact_records(8, seed=4242)))[:4]


def greedy_answers(
    engine: Doc2LoRA, questions: list[str], adapters: list[LoRAAdapter | None], max_new_tokens: int = 32
) -> list[str]:
    """Greedy answers with ``adapters[i]`` on question i, in batches of 8."""
    done: list[str] = []
    for start in range(0, len(questions), 8):
        batch = engine.generate_batch(
            questions[start : start + 8], adapters=adapters[start : start + 8], max_new_tokens=max_new_tokens
        )
        done += [c.text for c in batch]
    return done
