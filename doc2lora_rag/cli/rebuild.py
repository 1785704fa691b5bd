"""``doc2lora rebuild``: a store's documents into a new store, internalised by another engine.

A store only works with the hypernetwork that wrote it, so when an upgrade ships a new one (or
a collection moves to another base model), the documents must be internalised again. The
catalog keeps every document's text and metadata, so no source file is needed: the old store
is only read, and the new one fills up as adapters are made, resuming where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from doc2lora_rag.cli.app import app
from doc2lora_rag.cli.engine_spec import EngineSpec
from doc2lora_rag.cli.errors import CommandError, user_errors, warn
from doc2lora_rag.cli.ingest_apply import apply_plan
from doc2lora_rag.cli.ingest_build import local_builder
from doc2lora_rag.cli.ingest_plan import PendingDocument, Plan
from doc2lora_rag.cli.ingest_summary import IngestSummary, reported
from doc2lora_rag.cli.options import (
    BaseModelOption,
    BatchSizeOption,
    HypernetOption,
    JsonOption,
    MaxCharsOption,
    ProgressOption,
    StoreOption,
    ThreadsOption,
    open_store,
)
from doc2lora_rag.cli.progress import IngestProgress
from doc2lora_rag.documents import MAX_DOCUMENT_CHARS
from doc2lora_rag.store import AdapterStore, default_store_path


@app.command()
def rebuild(
    source: Annotated[Path, typer.Argument(help="the store to read (left as it is)")],
    store: StoreOption = None,
    base_model: BaseModelOption = None,
    hypernet: HypernetOption = None,
    batch_size: BatchSizeOption = 8,
    max_chars: MaxCharsOption = MAX_DOCUMENT_CHARS,
    threads: ThreadsOption = None,
    progress: ProgressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Internalise every document of SOURCE again into --store with the engine given (default:
    the embedded base model with the shipped hypernetwork), keeping ids and metadata.

    Use it when a store was made by a hypernetwork this installation no longer ships. Re-running
    skips documents already rebuilt. Exit code 1 when any document failed."""
    err = Console(stderr=True)
    started = time.monotonic()
    with user_errors():
        target_path = (store or default_store_path()).expanduser().absolute()
        old = open_store(source, create=False)
        if old.path.resolve() == target_path.resolve():
            old.close()
            raise CommandError("the new store must be another folder than the one rebuilt from")
        target = AdapterStore(target_path)
    summary = IngestSummary(store=str(target_path), read="documents")

    def make_builder():
        spec = EngineSpec.resolve(target, base_model, hypernet, threads=threads, max_chars=max_chars)
        return local_builder(target, spec, warn)

    show_progress = (err.is_terminal if progress is None else progress) and not json_output
    with reported(summary, started, json_output), old, target, IngestProgress(show_progress, err) as bar:
        plan = Plan()
        for doc in old.documents():
            summary.files += 1
            done = target.find(doc.id)
            if done is not None and done.content_hash == doc.content_hash:
                summary.skipped += 1
                continue
            change = "added" if done is None else "updated"
            plan.pending.append(PendingDocument(doc.id, doc.text, doc.metadata, doc.content_hash, change))
        apply_plan(plan, target, summary, bar, make_builder, batch_size=batch_size)
