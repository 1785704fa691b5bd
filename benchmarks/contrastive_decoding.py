"""Contrastive decoding with adapters: amplify what a document's adapter adds over a reference.

    python benchmarks/contrastive_decoding.py [--settings "none:0;mean:0.5;base:0.5"] [--limit 40] [--threads 2]

Each setting is ``reference:weight``. Every answer token is chosen greedily from

    (1 + weight) * log p(token | own adapter) - weight * log p(token | reference)

among the tokens the own adapter finds plausible (at least ``--alpha`` times its most likely
token's probability). References: ``none`` (plain greedy with the own adapter), ``base`` (the
base model without an adapter) and ``mean`` (the mean adapter of 8 reference documents: what
an average document's adapter carries, answer form included). The own and the reference
answer run as one batch of twice the rows, paired in a logits processor.

On the questions of ``doc2lora eval`` (SQuAD validation, fresh synthetic facts), single-chunk
needles of 480 tokens, and the general questions with an unrelated adapter forced on, it
reports token F1 and answer-contains; ratios are to the first setting.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from rich.console import Console
from rich.table import Table
from transformers import LogitsProcessor, LogitsProcessorList

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.adapters.runtime import adapters_attached
from doc2lora_rag.cli.evaluate import _interleaved_documents
from doc2lora_rag.evaluation.evaluate import _answer_scores, _mean, general_questions, niah_records
from doc2lora_rag.generation.generate import _generation_config

from eval_setup import add_eval_options, greedy_answers, load_eval, reference_texts

DEFAULT_SETTINGS = "none:0;mean:0.25;mean:0.5;mean:1;base:0.25;base:0.5;base:1"


class PairedContrast(LogitsProcessor):
    """Rows ``i`` and ``n + i`` answer the same prompt with the own and the reference adapter;
    both get the contrasted scores, so greedy decoding picks the same token for the pair."""

    def __init__(self, rows: int, weight: float, alpha: float) -> None:
        self.rows, self.weight, self.log_alpha = rows, weight, math.log(alpha)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        own = scores[: self.rows].float().log_softmax(-1)
        reference = scores[self.rows :].float().log_softmax(-1)
        mixed = own + self.weight * (own - reference)
        implausible = own < own.max(-1, keepdim=True).values + self.log_alpha
        mixed = mixed.masked_fill(implausible, float("-inf"))
        return torch.cat([mixed, mixed]).to(scores.dtype)


@torch.inference_mode()
def contrastive_answers(engine, questions, own, references, weight, alpha, max_new_tokens=32) -> list[str]:
    base, done = engine.base, []
    config = _generation_config(base, max_new_tokens)
    for start in range(0, len(questions), 8):
        chunk = questions[start : start + 8]
        prompts = [engine.prompt(q) for q in chunk] * 2
        rows = own[start : start + 8] + references[start : start + 8]
        batch = base.tokenizer(
            prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        processors = LogitsProcessorList([PairedContrast(len(chunk), weight, alpha)])
        with adapters_attached(base.model, rows, per_row=True):
            output = base.model.generate(**batch, generation_config=config, logits_processor=processors)
        new = output[: len(chunk), batch["input_ids"].shape[1] :]
        done += [t.strip() for t in base.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return done


def mean_adapter(references: list[LoRAAdapter]) -> LoRAAdapter:
    """The mean of the references' read parts, plus the shared bias block once."""
    scaled = []
    for adapter in references:
        read = adapter.rank - adapter.bias_rank
        factors = {}
        for name, (a, b) in adapter.factors.items():
            b = torch.cat([b[:, :, :read] / len(references), b[:, :, read:]], dim=2)
            factors[name] = (a, b)
        scaled.append(adapter._replace(factors=factors))
    return LoRAAdapter.concat(scaled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="reference:weight pairs separated by ;")
    parser.add_argument("--needles", type=int, default=30, help="single-chunk needles of 480 tokens")
    parser.add_argument("--alpha", type=float, default=0.1, help="plausibility cut-off")
    add_eval_options(parser)
    args = parser.parse_args()
    settings = [(item.split(":")[0], float(item.split(":")[1])) for item in args.settings.split(";")]
    engine, sources = load_eval(args)
    sources["needles-480"] = niah_records(engine, args.needles, 480)
    made = {text: engine.internalize(text) for recs in sources.values() for text in {r.context for r in recs}}
    mean = mean_adapter([engine.internalize(text) for text in reference_texts(args.squad)])
    general = general_questions()
    general_docs = _interleaved_documents([sources["squad-validation"], sources["synthetic-heldout"]], 20)

    def score(questions, golds, own, reference, weight):
        if reference == "none" or weight == 0:
            answers = greedy_answers(engine, questions, own)
        else:
            references = [mean if reference == "mean" else None] * len(questions)
            answers = contrastive_answers(engine, questions, own, references, weight, args.alpha)
        scores = _answer_scores(answers, golds)
        return {"f1": _mean(scores["f1"]), "contains": _mean(scores["contains"]), "answers": answers}

    results = {}
    for reference, weight in settings:
        row = {}
        for name, records in sources.items():
            golds = [r.gold_answers for r in records]
            own = [made[r.context] for r in records]
            row[name] = score([r.question for r in records], golds, own, reference, weight)
        forced = [made[general_docs[i % len(general_docs)]] for i in range(len(general))]
        row["general"] = score([q for q, _ in general], [a for _, a in general], forced, reference, weight)
        results[f"{reference}:{weight:g}"] = row
        print(f"done {reference}:{weight:g}", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))

    first = next(iter(results.values()))
    table = Table(title=f"contrastive decoding ({args.limit} questions per source; ratio to the first setting)")
    columns = ("squad-validation", "synthetic-heldout", "needles-480", "general")
    table.add_column("reference:weight")
    for column in columns:
        table.add_column(f"{column} F1 / contains")

    def cell(scores: dict, reference: dict) -> str:
        ratio = f" ({scores['contains'] / reference['contains']:.2f}x)" if reference["contains"] else ""
        return f"{scores['f1']:.3f} / {scores['contains']:.3f}{ratio}"

    for key, row in results.items():
        table.add_row(key, *(cell(row[c], first[c]) for c in columns))
    Console(width=180).print(table)


if __name__ == "__main__":
    main()
