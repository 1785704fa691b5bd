"""``doc2lora eval``: score a hypernetwork against the in-context and no-context baselines."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from doc2lora_rag.cli.app import app
from doc2lora_rag.cli.errors import CommandError, user_errors
from doc2lora_rag.cli.options import (
    RefineAnswerWordsOption,
    RefineByEndingOption,
    RefineQuoteWordsOption,
    check_refine_target,
)

console = Console()


@app.command("eval")
def evaluate(
    hypernet: Annotated[str | None, typer.Option(help="hypernetwork folder; default: the shipped one")] = None,
    base_model: Annotated[str | None, typer.Option(help="HF model id or folder; default: embedded SmolLM2")] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(help="squad:PATH (validation articles), jsonl:PATH, or synthetic:N[:SEED] (fresh fact documents)"),
    ] = None,
    limit: Annotated[int, typer.Option(help="questions per data source")] = 100,
    niah: Annotated[str, typer.Option(help="comma-separated haystack lengths in tokens; empty to skip")] = "",
    niah_count: Annotated[int, typer.Option(help="needles per haystack length")] = 10,
    niah_in_context_max: Annotated[int, typer.Option(help="longest haystack also run in context (0: none)")] = 8192,
    niah_seed: Annotated[
        int | None, typer.Option(help="draw other needles than the evaluation's, to check a finding afresh")
    ] = None,
    niah_max_chunks: Annotated[
        int, typer.Option(help="also answer from the haystack's N best-matching chunks, as the index does (0: skip)")
    ] = 3,
    niah_distractors: Annotated[
        int, typer.Option(help="other keys' needles in each haystack: which number is whose (0: one needle)")
    ] = 0,
    context_distillation: Annotated[bool, typer.Option(help="also run the per-document CD baseline")] = False,
    cd_docs: Annotated[
        int, typer.Option(help="run the CD baseline on the first N documents of each data source only (0: all)")
    ] = 0,
    cd_steps: Annotated[int, typer.Option(help="optimiser steps of the CD baseline per document")] = 30,
    refine_steps: Annotated[
        int, typer.Option(help="also score adapters refined by this many steps per chunk (0: skip)", min=0)
    ] = 0,
    refine_by_ending: RefineByEndingOption = False,
    refine_answer_words: RefineAnswerWordsOption = None,
    refine_quote_words: RefineQuoteWordsOption = None,
    general_docs: Annotated[
        int,
        typer.Option(help="general-knowledge questions with the adapters of this many evaluated documents (0: skip)"),
    ] = 20,
    max_new_tokens: Annotated[int, typer.Option()] = 48,
    chunking: Annotated[
        str, typer.Option(help="where long documents' chunks end: sentences, or every chunk_size tokens")
    ] = "sentences",
    json_out: Annotated[Path | None, typer.Option(help="write all numbers as JSON here")] = None,
    markdown: Annotated[Path | None, typer.Option(help="write a Markdown report (with plots) here")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch")] = None,
) -> None:
    """Token F1 and answer-contains for no-context / in-context / adapter (/ CD), their ratio,
    and needle-in-a-haystack accuracy by length."""
    import torch

    from doc2lora_rag.engine import Doc2LoRA
    from doc2lora_rag.evaluation.evaluate import NIAH_SEED, evaluate_general, evaluate_niah, evaluate_qa

    if threads:
        torch.set_num_threads(threads)
    with user_errors():  # every input is checked before the model loads and hours of scoring start
        check_refine_target(refine_answer_words, refine_quote_words)
        lengths = _niah_lengths(niah)
        sources = [_eval_records(item, limit) for item in data or []]
        engine = Doc2LoRA.from_pretrained(
            hypernet=hypernet,
            base_model=base_model,
            chunking=chunking,
            refine_by_ending=refine_by_ending,
            refine_answer_words=refine_answer_words,
            refine_quote_words=refine_quote_words,
        )
    modes = ["no_context", "in_context", "adapter", "unrelated_adapter"]
    modes += ["refined_adapter", "unrelated_refined"] if refine_steps else []
    modes += ["context_distillation"] if context_distillation and not cd_docs else []
    results: dict = {
        "hypernet": hypernet or "shipped default",
        "hypernet_fingerprint": engine.hypernet.fingerprint,
        "base_model": engine.base.name,
        "chunking": chunking,
        "refine_by_ending": refine_by_ending,
        "refine_answer_words": refine_answer_words,
        "refine_quote_words": refine_quote_words,
        "qa": {},
        "niah": {},
    }
    evaluated: list[list] = []
    for name, records in sources:
        evaluated.append(records)
        runs = [(name, records, modes)]
        if context_distillation and cd_docs:
            # CD costs seconds to minutes per document: compare it with the adapter on a subset.
            subset = _first_documents(records, cd_docs)
            subset_modes = ["in_context", "adapter", *(["refined_adapter"] if refine_steps else [])]
            runs.append((f"{name} (CD subset)", subset, [*subset_modes, "context_distillation"]))
        for run_name, run_records, run_modes in runs:
            report = evaluate_qa(
                engine,
                run_records,
                modes=run_modes,
                max_new_tokens=max_new_tokens,
                cd_steps=cd_steps,
                refine_steps=refine_steps,
                likelihood=True,
            )
            results["qa"][run_name] = report.to_dict()
            _print_qa(run_name, report)
    if general_docs:
        documents = _interleaved_documents(evaluated or [_eval_records("synthetic:", general_docs)[1]], general_docs)
        general = evaluate_general(engine, documents, max_new_tokens=max_new_tokens, refine_steps=refine_steps)
        results["general"] = general.to_dict()
        _print_general(general)
    if lengths:
        seed = NIAH_SEED if niah_seed is None else niah_seed
        results["niah"] = evaluate_niah(
            engine,
            lengths,
            count=niah_count,
            in_context_max_tokens=niah_in_context_max,
            max_chunks=niah_max_chunks or None,
            distractors=niah_distractors,
            refine_steps=refine_steps if niah_max_chunks else 0,
            seed=seed,
        )
        results["niah_distractors"] = niah_distractors
        results["niah_seed"] = seed
        results["niah_max_chunks"] = niah_max_chunks
        results["niah_refine_steps"] = refine_steps if niah_max_chunks else 0
        _print_niah(results["niah"])
    if markdown:
        from doc2lora_rag.evaluation.report import write_markdown

        write_markdown(results, markdown, command="doc2lora eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]))
        console.print(f"wrote {markdown}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=2))
        console.print(f"wrote {json_out}")


def _niah_lengths(niah: str) -> list[int]:
    """``--niah 256,1024``: positive token counts."""
    problem = f"--niah takes comma-separated token counts (e.g. 256,1024), not {niah!r}"
    try:
        lengths = [int(x) for x in niah.split(",") if x.strip()]
    except ValueError:
        raise CommandError(problem) from None
    if any(length < 1 for length in lengths):
        raise CommandError(problem)
    return lengths


def _eval_records(item: str, limit: int):
    from doc2lora_rag.training.data import even_sample, jsonl_records, squad_records, synthetic_fact_records

    kind, _, arg = item.partition(":")
    try:
        if kind == "squad":
            return "squad-validation", even_sample(squad_records(arg, "validation"), limit)
        if kind == "jsonl":
            return Path(arg).stem, jsonl_records(arg)[:limit]
        if kind == "synthetic":
            # A seed no training config uses, so these documents are new to the hypernetwork;
            # synthetic:N:SEED draws others, to check a finding on documents it was not found on.
            count, _, seed = arg.partition(":")
            name = f"synthetic-seed{int(seed)}" if seed else "synthetic-heldout"
            return name, synthetic_fact_records(int(count or limit), seed=int(seed or 987654))[:limit]
    except (ValueError, KeyError, TypeError) as error:  # malformed JSON, a missing field, synthetic:abc
        raise CommandError(f"cannot read eval data {item!r}: {error}") from error
    raise typer.BadParameter(f"unknown eval data {item!r}")


def _first_documents(records: list, count: int) -> list:
    """The records of the first ``count`` distinct documents."""
    kept: list[str] = []
    for record in records:
        if record.context not in kept and len(kept) < count:
            kept.append(record.context)
    return [r for r in records if r.context in kept]


def _interleaved_documents(sources: list[list], count: int) -> list[str]:
    """Up to ``count`` distinct documents, taken in turn from each source's records."""
    queues = [list(dict.fromkeys(r.context for r in records)) for records in sources]
    documents: list[str] = []
    while len(documents) < count and any(queues):
        for queue in queues:
            if queue and len(documents) < count:
                documents.append(queue.pop(0))
    return documents


def _print_qa(name: str, report) -> None:
    table = Table(title=f"{name}: {report.num_questions} questions, {report.num_documents} documents")
    for column in ("mode", "token F1", "answer-contains", "answer NLL", "update s/doc"):
        table.add_column(column)
    for mode, scores in report.scores.items():
        seconds = report.seconds_per_document.get(mode)
        nll = f"{scores['nll']:.3f}" if "nll" in scores else ""
        table.add_row(
            mode, f"{scores['f1']:.3f}", f"{scores['contains']:.3f}", nll, "" if seconds is None else f"{seconds:.2f}"
        )
    for mode in ("adapter", "refined_adapter"):
        if mode in report.scores:
            ratios = [report.ratio(metric, mode) for metric in ("f1", "contains")]
            table.add_row(f"{mode} / in-context", *("" if r is None else f"{r:.3f}" for r in ratios), "", "")
    console.print(table)


def _print_general(report) -> None:
    table = Table(title=f"general questions: {report.num_questions}, adapters of {report.num_documents} documents")
    for column in ("mode", "token F1", "answer-contains"):
        table.add_column(column)
    for mode, scores in report.scores.items():
        table.add_row(mode, f"{scores['f1']:.3f}", f"{scores['contains']:.3f}")
    console.print(table)
    agreement = f"F1 {report.agreement:.3f}, unchanged {report.unchanged:.2f}"
    console.print(f"forced adapter against the base model's answers: {agreement}")
    console.print(f"routed: {report.attached:.2f} of the questions got an adapter")


def _print_niah(results: dict) -> None:
    from doc2lora_rag.evaluation.report import NIAH_COLUMNS, niah_modes

    table = Table(title="needle in a haystack: answer-contains accuracy")
    modes = niah_modes(results)
    for column in ("haystack tokens", *(NIAH_COLUMNS[m] for m in modes), "in context"):
        table.add_column(column)
    for length, row in results.items():
        in_context = "past limit" if row["in_context"] is None else f"{row['in_context']:.2f}"
        table.add_row(str(length), *(f"{row[m]:.2f}" for m in modes), in_context)
    console.print(table)
