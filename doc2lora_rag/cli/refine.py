"""``doc2lora refine``: refine a store's adapters in place by a few gradient steps per chunk.

Ingest writes each adapter in one forward pass; refinement spends seconds per chunk for a
better one (docs/engine.md, "Refinement"). Text, metadata and routing stay as they are, chunks
already refined are skipped, and each document is committed on its own, so an interrupted
run loses nothing and a second run resumes.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import track

from doc2lora_rag.cli.app import app
from doc2lora_rag.cli.engine_spec import EngineSpec
from doc2lora_rag.cli.errors import CommandError, user_errors, warn
from doc2lora_rag.cli.options import (
    BaseModelOption,
    HypernetOption,
    JsonOption,
    ProgressOption,
    RefineAnswerWordsOption,
    RefineByEndingOption,
    RefineQuoteWordsOption,
    StoreOption,
    ThreadsOption,
    check_refine_target,
    open_store,
    resolve_ids,
)


@app.command()
def refine(
    ids: Annotated[
        list[str] | None, typer.Argument(help="documents to refine (ids or file paths; default: all)")
    ] = None,
    store: StoreOption = None,
    steps: Annotated[int, typer.Option(min=1, help="gradient steps per chunk")] = 10,
    question: Annotated[
        str | None, typer.Option(help="refine only the chunks this question would be answered from")
    ] = None,
    max_chunks: Annotated[
        int, typer.Option(min=1, help="chunks a long document answers a --question with, as in ask")
    ] = 3,
    refine_by_ending: RefineByEndingOption = False,
    refine_answer_words: RefineAnswerWordsOption = None,
    refine_quote_words: RefineQuoteWordsOption = None,
    base_model: BaseModelOption = None,
    hypernet: HypernetOption = None,
    threads: ThreadsOption = None,
    progress: ProgressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Refine the adapters of IDS (default: every document) by --steps gradient steps per chunk
    and keep them in the store. Chunks refined before are skipped."""
    from doc2lora_rag.index import Doc2LoRAIndex

    err = Console(stderr=True)
    started = time.monotonic()
    with user_errors():
        check_refine_target(refine_answer_words, refine_quote_words)
        if question is not None and not question.strip():
            raise CommandError("the question is empty")
        adapters = open_store(store, create=False)
        try:
            chosen = resolve_ids(adapters, ids) if ids else adapters.ids()
            spec = EngineSpec.resolve(
                adapters,
                base_model,
                hypernet,
                threads=threads,
                refine_by_ending=refine_by_ending,
                refine_answer_words=refine_answer_words,
                refine_quote_words=refine_quote_words,
            )
            index = Doc2LoRAIndex(adapters, spec.load(warn), max_chunks=max_chunks)
            show = (err.is_terminal if progress is None else progress) and not json_output
            changed = []
            for doc_id in track(chosen, description="refining", console=err, disable=not show):
                changed += index.refine(doc_id, steps=steps, question=question)
        finally:
            adapters.close()
    seconds = time.monotonic() - started
    if json_output:
        summary = {"documents": len(chosen), "refined": changed, "steps": steps, "seconds": round(seconds, 1)}
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(
            f"refined {len(changed)} of {len(chosen)} documents ({len(chosen) - len(changed)} had nothing left "
            f"to refine) by {steps} steps per chunk in {seconds:.1f} s"
        )
