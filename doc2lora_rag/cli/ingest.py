"""``doc2lora ingest``: files and folders into the store, resumable, with progress and a summary."""

from __future__ import annotations

import codecs
import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from doc2lora_rag.cli.app import app
from doc2lora_rag.cli.engine_spec import EngineSpec
from doc2lora_rag.cli.errors import CommandError, user_errors, warn
from doc2lora_rag.cli.ingest_apply import apply_plan
from doc2lora_rag.cli.ingest_build import Builder, bound, local_builder
from doc2lora_rag.cli.ingest_plan import scan
from doc2lora_rag.cli.ingest_summary import IngestSummary, reported
from doc2lora_rag.cli.options import (
    BaseModelOption,
    BatchSizeOption,
    HypernetOption,
    JsonOption,
    MaxCharsOption,
    ProgressOption,
    RefineAnswerWordsOption,
    RefineByEndingOption,
    RefineQuoteWordsOption,
    StoreOption,
    ThreadsOption,
    check_refine_target,
)
from doc2lora_rag.cli.progress import IngestProgress
from doc2lora_rag.documents import MAX_DOCUMENT_CHARS
from doc2lora_rag.readers import SUPPORTED_SUFFIXES, ReaderOptions, discover
from doc2lora_rag.store import AdapterStore, default_store_path
from doc2lora_rag.store.adapter_store import CATALOG_FILE


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files and folders (folders are read recursively)")],
    store: StoreOption = None,
    glob: Annotated[
        list[str] | None,
        typer.Option(help="only files matching this pattern, e.g. '*.md' or 'guides/*.pdf' (repeatable)"),
    ] = None,
    text_field: Annotated[str, typer.Option(help="JSON/JSONL: the field holding the text")] = "text",
    id_field: Annotated[str, typer.Option(help="JSON/JSONL: the field that names a record")] = "id",
    encoding: Annotated[str, typer.Option(help="encoding of text, Markdown, HTML and JSON files")] = "utf-8",
    base_model: BaseModelOption = None,
    hypernet: HypernetOption = None,
    batch_size: BatchSizeOption = 8,
    max_chars: MaxCharsOption = MAX_DOCUMENT_CHARS,
    threads: ThreadsOption = None,
    refine_steps: Annotated[
        int,
        typer.Option(
            min=0, help="gradient steps per chunk on each new adapter: better recall, seconds per chunk (0: none)"
        ),
    ] = 0,
    refine_by_ending: RefineByEndingOption = False,
    refine_answer_words: RefineAnswerWordsOption = None,
    refine_quote_words: RefineQuoteWordsOption = None,
    rescan: Annotated[
        bool, typer.Option("--rescan", help="read every file even when its size and time are unchanged")
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="remove stored documents whose files or records are gone")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report what would change; write nothing")] = False,
    progress: ProgressOption = None,
    json_output: JsonOption = False,
    ray: Annotated[
        bool, typer.Option("--ray", help="internalise on Ray workers (needs the 'ray' extra)")
    ] = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address; default: RAY_ADDRESS or local")] = None,
    workers: Annotated[int, typer.Option(min=1, help="--ray: number of workers")] = 2,
    worker_cpus: Annotated[float, typer.Option(min=0, help="--ray: CPUs per worker")] = 1.0,
    worker_gpus: Annotated[float, typer.Option(min=0, help="--ray: GPUs per worker")] = 0.0,
) -> None:
    """Internalise files into the store. Re-running skips what is stored and unchanged, so an
    interrupted ingest resumes; a changed file replaces its adapter (its path is its id).

    Reads .txt .md .html .json .jsonl .pdf. Exit code 1 when any document failed."""
    err = Console(stderr=True)
    started = time.monotonic()
    with user_errors():
        check_refine_target(refine_answer_words, refine_quote_words)
        store_path = (store or default_store_path()).expanduser().absolute()
        discovery = discover(paths, SUPPORTED_SUFFIXES, glob or ())
        # A store inside an ingested folder is no document: its adapter_config.json files would fail as JSON.
        own = {f for f in discovery.files if store_path in f.parents}
        discovery.files = [f for f in discovery.files if f not in own]
        discovery.ignored += len(own)
        try:  # a typo would otherwise fail every file, one by one
            codecs.lookup(encoding)
        except LookupError as error:
            raise CommandError(f"unknown --encoding {encoding!r}") from error
        if ray:
            from doc2lora_rag.cli.ray_ingest import import_ray

            import_ray()  # say that Ray is missing before any work
        opened = None if dry_run and not (store_path / CATALOG_FILE).is_file() else AdapterStore(store_path)
    summary = IngestSummary(
        store=str(store_path), dry_run=dry_run, files=len(discovery.files), ignored=discovery.ignored
    )

    def make_builder() -> Builder:
        spec = EngineSpec.resolve(
            opened,
            base_model,
            hypernet,
            threads=threads,
            max_chars=max_chars,
            refine_steps=refine_steps,
            refine_by_ending=refine_by_ending,
            refine_answer_words=refine_answer_words,
            refine_quote_words=refine_quote_words,
        )
        if ray:
            from doc2lora_rag.cli.ray_ingest import RayBuilder

            pool = RayBuilder(
                spec, address=ray_address, workers=workers, worker_cpus=worker_cpus, worker_gpus=worker_gpus, warn=warn
            )
            return bound(opened, spec, pool, pool.untrained)
        return local_builder(opened, spec, warn)

    show_progress = (err.is_terminal if progress is None else progress) and not json_output
    store_open = opened if opened is not None else contextlib.nullcontext()  # closed before the summary
    with reported(summary, started, json_output), store_open, IngestProgress(show_progress, err) as bar:
        bar.scanning(len(discovery.files))
        plan, skipped, failures = scan(
            discovery,
            opened,
            ReaderOptions(text_field=text_field, id_field=id_field, encoding=encoding),
            max_chars=max_chars,
            rescan=rescan,
            prune=prune,
            on_file=bar.scanned,
        )
        summary.skipped = skipped
        for doc_id, reason in failures:
            summary.fail(doc_id, reason)
        if dry_run:
            summary.added = sum(d.change == "added" for d in plan.pending)
            summary.updated = len(plan.pending) - summary.added
            summary.removed = len(plan.removals)
        else:
            apply_plan(plan, opened, summary, bar, make_builder, batch_size=batch_size)
