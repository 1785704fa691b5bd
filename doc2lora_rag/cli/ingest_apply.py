"""Carry out a scan's plan against the store, with this process as the store's one writer.

Metadata refreshes and removals first (cheap), then adapters: documents with the same text
share one adapter (reused from the store when it already holds that text), the rest are
internalised in batches by a builder (in-process or Ray workers) and committed one document
at a time as results arrive, so an interrupted run keeps everything finished.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.cli.ingest_build import Builder, commit
from doc2lora_rag.cli.ingest_plan import PendingDocument, Plan
from doc2lora_rag.cli.ingest_summary import IngestSummary
from doc2lora_rag.cli.progress import IngestProgress
from doc2lora_rag.errors import AdapterFormatError, StoreError, UnknownIdError
from doc2lora_rag.store import AdapterStore


def apply_plan(
    plan: Plan,
    store: AdapterStore,
    summary: IngestSummary,
    progress: IngestProgress,
    make_builder: Callable[[], Builder],
    *,
    batch_size: int,
) -> None:
    """Apply ``plan``, updating ``summary`` as each document commits."""
    if plan.metadata_updates:
        with store.writing():
            for doc_id, metadata in plan.metadata_updates:
                store.set_metadata(doc_id, metadata)
    if plan.removals:
        store.delete(plan.removals)
        summary.removed += len(plan.removals)
    groups: dict[str, list[PendingDocument]] = {}
    for doc in plan.pending:
        groups.setdefault(doc.content_hash, []).append(doc)
    to_build = []
    for digest, docs in groups.items():
        reused = _stored_twin(store, digest)
        if reused is None:
            to_build.append(digest)
            continue
        with store.writing():
            for doc in docs:
                commit(store, doc, reused)
                summary.stored(doc.change)
    if not to_build:
        return
    builder = make_builder()  # loads the engine(s) first, so the rates below measure internalising only
    progress.building(sum(len(groups[d]) for d in to_build), sum(len(groups[d][0].text) for d in to_build))
    started = time.monotonic()
    try:
        batches = [to_build[i : i + batch_size] for i in range(0, len(to_build), batch_size)]
        results = builder.run([[groups[d][0].text for d in batch] for batch in batches])
        for index, built, worker in results:
            with store.writing():
                for digest, item in zip(batches[index], built, strict=True):
                    docs = groups[digest]
                    for doc in docs:
                        if item.adapter is None:
                            summary.fail(doc.id, item.error or "no adapter was made")
                        else:
                            commit(store, doc, item.adapter)
                            summary.stored(doc.change)
                    if item.adapter is not None:
                        summary.internalised += len(docs)
                        summary.tokens += item.tokens
                        summary.workers[worker] += len(docs)
                    progress.built(len(docs), len(docs[0].text), item.tokens)
            summary.build_seconds = time.monotonic() - started
    finally:
        summary.build_seconds = time.monotonic() - started
        builder.close()


def _stored_twin(store: AdapterStore, digest: str) -> LoRAAdapter | None:
    """The stored adapter of identical text, if any: it is exactly what the engine would make."""
    twin = store.find_by_hash(digest)
    if twin is None:
        return None
    # A damaged or vanished twin is no loss: the adapter is made afresh instead.
    with contextlib.suppress(AdapterFormatError, UnknownIdError, StoreError):
        return store.load_adapter(twin.id)
    return None
