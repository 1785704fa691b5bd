"""Can the hypernetwork fit the documents it trains on? A capacity check before a long run.

    python benchmarks/capacity.py [--task needle|facts|swapped] [--records 32] [--steps 200] [--every 50]
                                  [--hypernet '{"head_norm": "rms"}'] [--lr 1e-3] [--threads 2]

Meta-trains the recipe's hypernetwork (configs/smollm2-135m.json) on a small fixed set of
documents only, and every ``--every`` steps prints the answer loss on those same training
questions: with no adapter, with each document's own adapter, and with another document's
adapter. ``needle`` (the default): 64-token haystacks whose needles share two keys, so each
question recurs with other answers and only reading the document lowers its loss. ``facts``:
synthetic fact documents, whose questions are unique, so the document-independent bias block
can learn the answers by heart (the other-adapter loss falls too). ``swapped``: SQuAD training
questions, each with its paragraph and with a copy whose answer is swapped for another of the
same form (half the records each), so each question has two answers and only reading tells
which. If the own-adapter loss does not fall below the other-adapter loss here, where nothing
has to generalise, a longer run on fresh documents will not help either.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag.training.data import (
    even_sample,
    needle_records,
    squad_records,
    swapped_answer_records,
    synthetic_fact_records,
)
from doc2lora_rag.training.trainer import TrainConfig, Trainer

from eval_setup import SQUAD

ROOT = Path(__file__).resolve().parents[1]
SEED = 777  # a seed of its own: neither the training sources, the probe nor the evaluation use it
NEEDLE_KEYS = ["teal heron", "amber lynx"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["needle", "facts", "swapped"], default="needle")
    parser.add_argument("--records", type=int, default=32, help="questions")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hypernet", default="{}", help="JSON overrides of the recipe's hypernet options")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = json.loads((ROOT / "configs" / "smollm2-135m.json").read_text())
    if args.task == "facts":
        records = synthetic_fact_records(args.records, seed=SEED)
    elif args.task == "swapped":
        originals = squad_records(SQUAD, "train", per_paragraph=1)
        by_question = {r.question: r for r in originals}
        swapped = even_sample(swapped_answer_records(originals, SEED), args.records // 2)
        records = [r for s in swapped for r in (by_question[s.question], s)]
    else:
        words = lambda text: len(text.split()) * 4 // 3  # noqa: E731  (about 4 tokens per 3 words)
        records = needle_records(args.records, 64, words, seed=SEED, keys=NEEDLE_KEYS)
    with tempfile.TemporaryDirectory(prefix="d2l-capacity-") as out:
        data = Path(out) / "records.jsonl"
        data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
        config = TrainConfig(
            out=str(Path(out) / "run"),
            steps=args.steps,
            batch_size=recipe["batch_size"],
            lr=args.lr,
            warmup_steps=min(recipe["warmup_steps"], args.steps // 4),
            save_every=args.steps,
            max_doc_tokens=recipe["max_doc_tokens"],
            chunk_curriculum={"1": 1.0},
            hypernet={**recipe["hypernet"], **json.loads(args.hypernet)},
            data=[{"kind": "jsonl", "path": str(data), "target": "gold"}],
        )
        trainer = Trainer(config)
        records = trainer.sources[0].records
        table = Table(title=f"capacity: {len(set(r.context for r in records))} documents, {len(records)} questions")
        for column in ("step", "no adapter", "own adapter", "other adapter", "gap (other - own)"):
            table.add_column(column, justify="right")
        for until in range(0, args.steps + 1, args.every):
            if until:
                trainer.train(until=until)
            probe = trainer.probe(records)
            table.add_row(
                str(trainer.step),
                f"{probe['probe_base']:.3f}",
                f"{probe['probe_own']:.3f}",
                f"{probe['probe_other']:.3f}",
                f"{probe['probe_gap']:.3f}",
            )
            Console().print(table)


if __name__ == "__main__":
    main()
