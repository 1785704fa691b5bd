"""Adapter strength at answer time: scale the document part, the document-independent block,
or push the adapter away from the mean adapter of reference documents.

    python benchmarks/adapter_strength.py [--settings "1,1,0;1,1,1;0.5,1,0"] [--limit 40] [--threads 2]

Each setting is ``chunk,bias,guide``. An adapter is its chunk blocks (what the hypernetwork
read) plus a learned bias block (the same for every document). The setting answers with

    delta = chunk * ((1 + guide) * chunk blocks - guide * mean chunk blocks of the references)
            + bias * bias block

so ``1,1,0`` is the adapter as made, ``0.5,1,0`` halves what was read, and ``1,1,1`` doubles
how far the adapter stands from an average document's (guidance in weight space). The
references are 4 SQuAD training paragraphs and 4 synthetic fact documents of a seed no
evaluation uses. On the questions of ``doc2lora eval`` (SQuAD validation, fresh synthetic
facts) it reports token F1, answer-contains, the gold answer NLL with the own adapter and
with another document's, and answer-contains on the general questions with an unrelated
adapter forced on; ratios are to the first setting.
"""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console
from rich.table import Table

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.cli.evaluate import _interleaved_documents
from doc2lora_rag.evaluation.evaluate import _answer_scores, _mean, general_questions
from doc2lora_rag.evaluation.likelihood import answer_nll

from eval_setup import add_eval_options, greedy_answers, load_eval, reference_texts

DEFAULT_SETTINGS = "1,1,0;1,1,0.5;1,1,1;1,1,2;1.5,1,0;0.5,1,0;1,0.5,0"


def reweighted(adapter: LoRAAdapter, references: list[LoRAAdapter], chunk: float, bias: float, guide: float):
    """``adapter`` with its parts weighted as the module docstring says (ranks appended)."""
    factors = {}
    for name, (a, b) in adapter.factors.items():
        read = adapter.rank - adapter.bias_rank
        a_parts, b_parts = [a[:, :read]], [b[:, :, :read] * (chunk * (1 + guide))]
        for reference in references if guide else []:
            ra, rb = reference.factors[name]
            kept = reference.rank - reference.bias_rank
            a_parts.append(ra[:, :kept])
            b_parts.append(rb[:, :, :kept] * (-chunk * guide / len(references)))
        a_parts.append(a[:, read:])
        b_parts.append(b[:, :, read:] * bias)
        factors[name] = (torch.cat(a_parts, dim=1), torch.cat(b_parts, dim=2))
    # The appended reference ranks make the chunk bookkeeping meaningless: count one chunk.
    return adapter._replace(factors=factors, num_chunks=1 if guide else adapter.num_chunks, metadata={})


def measure(engine, sources, made, general, general_docs, references, setting) -> dict:
    chunk, bias, guide = setting
    adapters = {text: reweighted(ad, references, chunk, bias, guide) for text, ad in made.items()}
    row: dict = {}
    for name, records in sources.items():
        questions, golds = [r.question for r in records], [r.gold_answers for r in records]
        first_golds = [r.answer for r in records]  # the likelihood scores one answer, as doc2lora eval does
        documents = list(dict.fromkeys(r.context for r in records))
        next_document = dict(zip(documents, documents[1:] + documents[:1], strict=True))  # as eval's unrelated_adapter
        own = [adapters[r.context] for r in records]
        other = [adapters[next_document[r.context]] for r in records]
        scores = _answer_scores(greedy_answers(engine, questions, own), golds)
        row[name] = {
            "f1": _mean(scores["f1"]),
            "contains": _mean(scores["contains"]),
            "nll": _mean(answer_nll(engine, questions, first_golds, adapters=own)),
            "nll_other": _mean(answer_nll(engine, questions, first_golds, adapters=other)),
        }
    forced = [adapters[general_docs[i % len(general_docs)]] for i in range(len(general))]
    scores = _answer_scores(greedy_answers(engine, [q for q, _ in general], forced), [a for _, a in general])
    row["general"] = {"contains": _mean(scores["contains"])}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="chunk,bias,guide triples separated by ;")
    add_eval_options(parser)
    args = parser.parse_args()
    settings = [tuple(float(x) for x in item.split(",")) for item in args.settings.split(";")]
    engine, sources = load_eval(args)
    made = {text: engine.internalize(text) for recs in sources.values() for text in {r.context for r in recs}}
    references = [engine.internalize(text) for text in reference_texts(args.squad)]
    general = general_questions()
    general_docs = _interleaved_documents(list(sources.values()), 20)

    results = {}
    for setting in settings:
        results[",".join(f"{x:g}" for x in setting)] = measure(
            engine, sources, made, general, general_docs, references, setting
        )
        print(f"done {setting}", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))

    first = next(iter(results.values()))
    table = Table(title=f"adapter strength ({args.limit} questions per source; ratio to the first setting)")
    for column in (
        "chunk,bias,guide",
        "SQuAD F1",
        "SQuAD NLL own / other",
        "synthetic F1",
        "synthetic contains",
        "synthetic NLL own / other",
        "general forced contains",
    ):
        table.add_column(column)

    def cell(value: float, reference: float) -> str:
        return f"{value:.3f} ({value / reference:.2f}x)" if reference else f"{value:.3f}"

    for key, row in results.items():
        squad, synthetic = row["squad-validation"], row["synthetic-heldout"]
        table.add_row(
            key,
            cell(squad["f1"], first["squad-validation"]["f1"]),
            f"{squad['nll']:.3f} / {squad['nll_other']:.3f}",
            cell(synthetic["f1"], first["synthetic-heldout"]["f1"]),
            cell(synthetic["contains"], first["synthetic-heldout"]["contains"]),
            f"{synthetic['nll']:.3f} / {synthetic['nll_other']:.3f}",
            cell(row["general"]["contains"], first["general"]["contains"]),
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
